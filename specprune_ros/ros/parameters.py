"""Parameters of the policy node: one typed, validated ``NodeConfig`` plus the core's ``PolicyConfig``.

ROS parameters are derived from the two dataclasses (names, types, defaults, descriptions), never
declared a second time. This module imports no ROS: the node calls :func:`parameter_specs` to declare
and :func:`configs_from_values` to validate; tests and tools can check a params file with
:func:`check_params_file`.

Policy parameters keep the ``PolicyConfig`` field names (``checkpoint``, ``preset``, ``device``, ...),
except ``views``, which is the node's ``camera_views``.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from specprune_ros.core.config import non_finite

NODE_NAME = "specprune_policy"

#: parameters every rclpy node may have that are not ours
ROS_BUILTIN_PARAMETERS = ("use_sim_time", "start_type_description_service")

PANDA_ARM = tuple(f"panda_joint{i}" for i in range(1, 8))
PANDA_FINGERS = ("panda_finger_joint1", "panda_finger_joint2")

GRIPPER_MSG_TYPES = ("float64", "float64_multi_array")


class NodeConfigError(ValueError):
    """An invalid node parameter; the message names the parameter, the value and what is allowed."""


def _doc(text: str, **kw) -> Any:
    return field(metadata={"doc": text}, **kw)


@dataclass(frozen=True)
class NodeConfig:
    """Node parameters (the policy's own parameters come from ``PolicyConfig``)."""

    # --- test hook / start-up
    fake_policy: bool = _doc("use the deterministic FakePolicy instead of a checkpoint (tests, wiring checks)", default=False)
    fake_delay: float = _doc("seconds each FakePolicy inference sleeps (simulates a slow model)", default=0.0)
    fake_chunk_len: int = _doc("rows per chunk of the FakePolicy", default=8)
    fake_action_dim: int = _doc("columns per row of the FakePolicy", default=7)
    autostart: bool = _doc("configure and activate at start-up (set false under a lifecycle manager)", default=True)
    warmup: bool = _doc(
        "run one inference on a synthetic observation at configure, so the first real query has no cold-start latency",
        default=True,
    )
    # --- inputs
    camera_views: tuple[str, ...] = _doc("policy view of each camera, in checkpoint image order", default=("primary", "wrist"))
    camera_topics: tuple[str, ...] = _doc(
        "camera topic of each view (same order as camera_views)", default=("camera/image_raw", "wrist_camera/image_raw")
    )
    camera_compressed: tuple[bool, ...] = _doc(
        "per camera: true = sensor_msgs/CompressedImage (JPEG/PNG), false = sensor_msgs/Image; empty = all false",
        default=(False, False),
    )
    joint_states_topic: str = _doc("sensor_msgs/JointState topic", default="joint_states")
    instruction_topic: str = _doc("std_msgs/String task instruction topic (reliable, transient local)", default="instruction")
    instruction: str = _doc("task instruction used until one arrives on instruction_topic", default="")
    robot_description_topic: str = _doc("std_msgs/String URDF topic (transient local)", default="robot_description")
    robot_description_file: str = _doc("URDF file read at configure (instead of waiting for the topic); empty = topic", default="")
    # --- kinematics and proprio
    ee_frame: str = _doc("end-effector frame of the URDF for FK, EE speed and IK; empty = no kinematics", default="panda_hand_tcp")
    arm_joints: tuple[str, ...] = _doc("arm joints (IK moves these; EE speed uses them)", default=PANDA_ARM)
    proprio_sources: tuple[str, ...] = _doc(
        "proprio vector layout: sources in order (joint_positions, joint_velocities, ee_position, ee_axis_angle, ee_axis_angle_libero, "
        "ee_quaternion, gripper) or one layout name (libero, joints, joints_gripper); empty = no proprio",
        default=("libero",),
    )
    proprio_joints: tuple[str, ...] = _doc("joints of the joint_positions / joint_velocities sources", default=())
    gripper_joints: tuple[str, ...] = _doc("joints of the gripper source", default=PANDA_FINGERS)
    gripper_scales: tuple[float, ...] = _doc("multiplier per gripper joint (empty = 1)", default=())
    ee_position_offset: tuple[float, ...] = _doc("added to the FK position in the proprio vector (m, xyz)", default=(0.0, 0.0, 0.0))
    # --- synchronisation
    max_age: float = _doc("seconds: inputs older than this are stale and refused", default=0.5)
    max_skew: float = _doc("seconds: largest stamp difference between inputs of one observation", default=0.1)
    frozen_timeout: float = _doc("seconds of identical camera frames before the camera counts as frozen (0 = off)", default=2.0)
    buffer_size: int = _doc("frames / joint states kept per input for stamp alignment", default=10)
    # --- execution
    execute_steps: int = _doc(
        "rows of each chunk executed before the next query (0 = the whole chunk); the next inference starts "
        "when they are done and none is in flight",
        default=0,
    )
    prefetch_steps: int = _doc(
        "start the next inference when this many executed rows remain, so the arm keeps moving while it runs; "
        "the new chunk then starts at the row matching the rows executed meanwhile (0 = query when the rows run out)",
        default=0,
    )
    honor_requery: bool = _doc(
        "when the controller would enter fine mode inside a chunk (requery_after), execute only the rows up to "
        "that one and query again, as SpecPrune-VLA's LIBERO evaluation does; published as "
        "ActionChunk.requery_after for consumers that execute the chunks themselves (false: whole chunks, -1)",
        default=True,
    )
    episode_status_topic: str = _doc(
        "specprune_ros/EpisodeStatus topic of a simulator bridge: a new episode number resets the policy and "
        "the chunk being executed, as the ~/reset service does (empty = not subscribed)",
        default="",
    )
    dry_run: bool = _doc("publish no actuating command at all (chunks, stats and diagnostics only)", default=True)
    base_frame: str = _doc("frame_id of chunks, twists and the robot base", default="panda_link0")
    action_names: tuple[str, ...] = _doc(
        "name of each action column; the adapters read x y z (0-2), roll pitch yaw (3-5) as an EE delta",
        default=("x", "y", "z", "roll", "pitch", "yaw", "gripper"),
    )
    # --- adapters
    twist_enabled: bool = _doc("publish geometry_msgs/TwistStamped per row at control rate (MoveIt Servo)", default=False)
    twist_topic: str = _doc("TwistStamped topic", default="~/delta_twist_cmds")
    twist_linear_scale: float = _doc("m/s per unit of action columns 0-2", default=1.0)
    twist_angular_scale: float = _doc("rad/s per unit of action columns 3-5", default=1.0)
    max_linear_speed: float = _doc("clip |linear twist| to this (m/s)", default=0.1)
    max_angular_speed: float = _doc("clip |angular twist| to this (rad/s)", default=0.5)
    joint_trajectory_enabled: bool = _doc(
        "publish trajectory_msgs/JointTrajectory per chunk via differential IK (joint_trajectory_controller)", default=False
    )
    joint_trajectory_topic: str = _doc("JointTrajectory topic", default="joint_trajectory_controller/joint_trajectory")
    ik_damping: float = _doc("damped-least-squares damping of the differential IK", default=0.01)
    max_joint_velocity: float = _doc("clip |joint velocity| (rad/s); 0 = the URDF's limits", default=0.5)
    gripper_enabled: bool = _doc("publish a gripper command when the gripper column changes", default=False)
    gripper_topic: str = _doc("gripper command topic", default="gripper/command")
    gripper_msg_type: str = _doc("float64 (std_msgs/Float64) or float64_multi_array (forward_command_controller)", default="float64")
    gripper_index: int = _doc("action column of the gripper", default=6)
    gripper_close_above: float = _doc("action value above which the gripper closes (LIBERO: +1 closes)", default=0.0)
    gripper_open_position: float = _doc("command value that opens the gripper", default=0.04)
    gripper_closed_position: float = _doc("command value that closes the gripper", default=0.0)
    # --- outputs for people
    debug_image: bool = _doc("publish ~/debug_image: the frame the policy saw with pruned patches dimmed", default=False)
    debug_image_view: str = _doc("view of the debug image (empty = the first view)", default="")
    diagnostics_period: float = _doc("seconds between /diagnostics messages", default=1.0)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise NodeConfigError(f"parameter {name}={getattr(self, name)!r}: {why}")

        for f in dataclasses.fields(self):  # no parameter means anything as NaN or inf (a scale of inf makes NaN twists)
            if non_finite(getattr(self, f.name)):
                bad(f.name, "must be finite (not NaN or inf)")
        views = tuple(self.camera_views)
        if not views:
            bad("camera_views", "give at least one view, e.g. [primary, wrist]")
        if len(set(views)) != len(views):
            bad("camera_views", "view names must be distinct")
        if len(self.camera_topics) != len(views):
            bad("camera_topics", f"needs one topic per view ({len(views)} views: {list(views)})")
        if not all(self.camera_topics):
            bad("camera_topics", "a topic name is empty")
        if self.camera_compressed and len(self.camera_compressed) != len(views):
            bad("camera_compressed", f"needs one true/false per view ({len(views)}) or nothing")
        for name in ("max_age", "diagnostics_period"):
            if not getattr(self, name) > 0:
                bad(name, "must be > 0 seconds")
        for name in ("max_skew", "frozen_timeout", "fake_delay"):
            if not getattr(self, name) >= 0:
                bad(name, "must be >= 0")
        if self.buffer_size < 1:
            bad("buffer_size", "must be >= 1")
        if self.execute_steps < 0:
            bad("execute_steps", "must be >= 0 (0 = whole chunk)")
        if self.prefetch_steps < 0:
            bad("prefetch_steps", "must be >= 0 (0 = no prefetch)")
        if self.fake_chunk_len < 1 or self.fake_action_dim < 1:
            bad("fake_chunk_len", "fake_chunk_len and fake_action_dim must be >= 1")
        for name in ("twist_linear_scale", "twist_angular_scale", "max_linear_speed", "max_angular_speed", "max_joint_velocity", "ik_damping"):
            if not getattr(self, name) >= 0:
                bad(name, "must be >= 0")
        if self.gripper_msg_type not in GRIPPER_MSG_TYPES:
            bad("gripper_msg_type", f"choose one of {list(GRIPPER_MSG_TYPES)}")
        if self.debug_image_view and self.debug_image_view not in views:
            bad("debug_image_view", f"not one of camera_views {list(views)}")
        if len(self.ee_position_offset) != 3:
            bad("ee_position_offset", "needs exactly 3 values (x, y, z)")
        uses_adapters = self.twist_enabled or self.joint_trajectory_enabled
        if uses_adapters and len(self.action_names) < 6:
            bad("action_names", "the twist/joint trajectory adapters need >= 6 columns (x y z roll pitch yaw)")
        if self.gripper_enabled and not 0 <= self.gripper_index < max(len(self.action_names), 1):
            bad("gripper_index", f"must index action_names ({len(self.action_names)} columns)")
        if self.joint_trajectory_enabled and not self.ee_frame:
            bad("joint_trajectory_enabled", "the joint trajectory adapter needs kinematics: set ee_frame")
        try:
            proprio = self.proprio_config()
        except ValueError as exc:
            raise NodeConfigError(f"proprio parameters (proprio_sources, proprio_joints, gripper_joints, gripper_scales): {exc}") from None
        if proprio.needs_kinematics and not self.ee_frame:
            bad("ee_frame", f"proprio_sources {list(proprio.sources)} need forward kinematics: name the end-effector frame")
        self.sync_config()

    def proprio_config(self):
        """The :class:`~specprune_ros.core.proprio.ProprioConfig` these parameters describe."""
        from specprune_ros.core.proprio import ProprioConfig

        return ProprioConfig(
            sources=tuple(self.proprio_sources),
            joints=tuple(self.proprio_joints),
            gripper_joints=tuple(self.gripper_joints),
            gripper_scales=tuple(self.gripper_scales),
            ee_position_offset=tuple(self.ee_position_offset),
        )

    def sync_config(self):
        """The :class:`~specprune_ros.core.sync.SyncConfig` these parameters describe (node and bag evaluator)."""
        from specprune_ros.core.sync import SyncConfig

        return SyncConfig(
            views=tuple(self.camera_views),
            max_age=self.max_age,
            max_skew=self.max_skew,
            frozen_timeout=self.frozen_timeout,
            buffer_size=self.buffer_size,
            require_joint_states=bool(self.proprio_config().sources) or bool(self.ee_frame),
        )

    @property
    def compressed(self) -> tuple[bool, ...]:
        return tuple(self.camera_compressed) if self.camera_compressed else (False,) * len(self.camera_views)

    @classmethod
    def fields_doc(cls) -> dict[str, tuple[str, Any, str]]:
        return {f.name: (str(f.type), f.default, f.metadata.get("doc", "")) for f in dataclasses.fields(cls)}


# ------------------------------------------------------------------------------------------------------
# parameter specs derived from the dataclasses
@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter: name, kind (bool, int, float, str, str_list, float_list, bool_list), default, doc."""

    name: str
    kind: str
    default: Any
    doc: str
    owner: str  # "node" or "policy"


def _kind(type_name: str, default: Any) -> str:
    t = type_name.replace(" ", "")
    if t == "bool":
        return "bool"
    if t == "int":
        return "int"
    if t == "float":
        return "float"
    if t in ("str", "str|None"):
        return "str"
    if t.startswith("tuple[str"):
        return "str_list"
    if t.startswith("tuple[float"):
        return "float_list"
    if t.startswith("tuple[bool"):
        return "bool_list"
    raise TypeError(f"no ROS parameter type for field type {type_name!r} (default {default!r})")


def _policy_config_cls():
    from specprune_ros.core.config import PolicyConfig

    return PolicyConfig


#: PolicyConfig fields that are not ROS parameters (views come from camera_views)
POLICY_FIELDS_SKIPPED = ("views",)


def parameter_specs() -> list[ParamSpec]:
    """Every node parameter: NodeConfig fields, then PolicyConfig fields (minus ``views``)."""
    specs = [ParamSpec(n, _kind(t, d), d, doc, "node") for n, (t, d, doc) in NodeConfig.fields_doc().items()]
    taken = {s.name for s in specs}
    for name, (t, d, doc) in _policy_config_cls().fields_doc().items():
        if name in POLICY_FIELDS_SKIPPED:
            continue
        if name in taken:  # a core field shadowing a node field would be a silent second meaning
            raise RuntimeError(f"PolicyConfig field {name!r} clashes with a node parameter")
        specs.append(ParamSpec(name, _kind(t, d), "" if d is None else d, doc, "policy"))
    return specs


def _coerce(spec: ParamSpec, value: Any) -> Any:
    """Parameter value -> Python value of the field type; NodeConfigError naming the parameter otherwise."""
    if value is None:
        return spec.default
    kind = spec.kind
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
        elif kind == "int":
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif kind == "float":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif kind == "str":
            if isinstance(value, str):
                return value
        elif kind.endswith("_list"):
            items = list(value) if not isinstance(value, (str, bytes)) else None
            if items is not None:
                if kind == "str_list" and all(isinstance(v, str) for v in items):
                    return tuple(items)
                if kind == "float_list" and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
                    return tuple(float(v) for v in items)
                if kind == "bool_list" and all(isinstance(v, bool) for v in items):
                    return tuple(items)
    except TypeError:
        pass
    expected = {"str_list": "a list of strings", "float_list": "a list of numbers", "bool_list": "a list of true/false"}
    hint = ""
    if kind in ("str", "str_list") and any(isinstance(v, bool) for v in (value if isinstance(value, (list, tuple)) else [value])):
        hint = " (a bare y, n, yes, no, on, off, true or false is read as a boolean: quote it, e.g. \"y\")"
    raise NodeConfigError(f"parameter {spec.name}={value!r}: expected {expected.get(kind, kind)}{hint}")


def declare_typed(node, name: str, default: Any, doc: str) -> Any:
    """Declare parameter ``name`` of a node whose parameters mirror a dataclass (the simulator bridges) and
    return its value as the type of ``default``: an integer where a float is expected is taken (``-p
    control_rate:=20``); any other type, or a float that is NaN or inf, raises ``ValueError`` naming the
    parameter. Read-only: the bridges read their parameters at start-up, so a set at run time is refused
    instead of reporting success and changing nothing."""
    from rcl_interfaces.msg import ParameterDescriptor

    descriptor = ParameterDescriptor(description=doc, dynamic_typing=True, read_only=True)
    value = node.declare_parameter(name, default, descriptor).value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not type(default):
        raise ValueError(f"parameter {name}={value!r}: expected {type(default).__name__}")
    if non_finite(value):
        raise ValueError(f"parameter {name}={value!r}: must be finite (not NaN or inf)")
    return value


def check_value(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be parameter ``name`` on its own (wrong type, NaN or inf), or None when it can.
    Checks that involve other parameters wait for configure; unknown names are left to the caller."""
    spec = next((s for s in parameter_specs() if s.name == name), None)
    if spec is None:
        return None
    try:
        coerced = _coerce(spec, value)
    except NodeConfigError as exc:
        return str(exc)
    if non_finite(coerced):
        return f"parameter {name}={value!r}: must be finite (not NaN or inf)"
    return None


def check_update(current: Mapping[str, Any], updates: Mapping[str, Any]) -> str | None:
    """Why ``updates`` (name -> value) cannot be set over ``current`` (every parameter's value), or None.

    The configuration they make together is checked as configure checks it (without loading the policy); an
    error naming one of the updated parameters refuses the update. One naming another parameter is left to
    configure, so that related parameters can change one at a time (``camera_views``, then ``camera_topics``).
    """
    from specprune_ros.core.config import ConfigError, PolicyConfig

    try:
        node_cfg, policy_kw = configs_from_values({**current, **updates})
        PolicyConfig(**policy_kw, views=tuple(node_cfg.camera_views))
    except (NodeConfigError, ConfigError) as exc:
        message = str(exc)
        if any(message.startswith((f"parameter {name}=", f"{name}=")) for name in updates):
            return message
    return None


def configs_from_values(values: Mapping[str, Any]) -> tuple[NodeConfig, dict[str, Any]]:
    """Validate parameter values -> (NodeConfig, PolicyConfig keyword arguments without ``views``).

    Missing names take their defaults; unknown names raise :class:`NodeConfigError` with the closest name.
    """
    specs = {s.name: s for s in parameter_specs()}
    unknown = unknown_parameters(values, specs)
    if unknown:
        raise NodeConfigError(f"unknown parameter(s): {name_hints(unknown, specs)}")
    node_kw: dict[str, Any] = {}
    policy_kw: dict[str, Any] = {}
    for name, spec in specs.items():
        if name not in values:
            continue
        value = _coerce(spec, values[name])
        (node_kw if spec.owner == "node" else policy_kw)[name] = value
    if policy_kw.get("unnorm_key") == "":
        policy_kw["unnorm_key"] = None
    return NodeConfig(**node_kw), policy_kw


def name_hints(names, known) -> str:
    """``names`` quoted, each with the closest of ``known`` if one is close: ``'episode' (did you mean 'episodes'?)``."""
    out = []
    for k in names:
        match = difflib.get_close_matches(k, list(known), n=1, cutoff=0.5)
        out.append(f"{k!r}" + (f" (did you mean {match[0]!r}?)" if match else ""))
    return ", ".join(out)


def unknown_parameters(names, known=None) -> list[str]:
    """Names (e.g. from a params file or a node's overrides) that are neither in ``known`` (a node's parameter
    names; default: the policy node's) nor ROS's own parameters (``use_sim_time``, ``qos_overrides.*``)."""
    known = {s.name for s in parameter_specs()} if known is None else known
    return [n for n in names if n not in known and n not in ROS_BUILTIN_PARAMETERS and not n.startswith("qos_overrides.")]


#: scalars rcl's params-file parser reads as booleans (YAML 1.1 plus y/n); PyYAML alone misses y and n
_RCL_BOOLS = {v: True for v in ("y", "yes", "true", "on")} | {v: False for v in ("n", "no", "false", "off")}


def _rcl_yaml_loader():
    """A PyYAML loader that types plain scalars as rcl does, so ``[x, y, z]`` gets the boolean rcl sees."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    pattern = re.compile(r"^(?:y|Y|n|N|yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", pattern, list("yYnNtTfFoO"))
    Loader.add_constructor(
        "tag:yaml.org,2002:bool", lambda loader, node: _RCL_BOOLS[loader.construct_scalar(node).lower()]
    )
    return Loader


def read_params_file(path: str | Path, node_name: str = NODE_NAME) -> dict[str, Any]:
    """The ``ros__parameters`` of ``node_name`` in a ROS 2 params YAML (``/**`` wildcard sections merge in).

    Plain scalars are typed as rcl types them (``y``, ``n``, ``on``, ``off`` are booleans): quote strings.
    """
    import yaml

    data = yaml.load(Path(path).read_text(), Loader=_rcl_yaml_loader()) or {}
    if not isinstance(data, dict):
        raise NodeConfigError(f"{path}: expected a mapping `{node_name}: ros__parameters: ...`")
    out: dict[str, Any] = {}
    for key in ("/**", f"/**/{node_name}", node_name, f"/{node_name}"):
        section = data.get(key)
        if isinstance(section, dict):
            params = section.get("ros__parameters")
            if not isinstance(params, dict):
                raise NodeConfigError(f"{path}: section {key!r} has no `ros__parameters:` mapping")
            out.update(_flatten(params))
    if not out:
        raise NodeConfigError(f"{path}: no `{node_name}: ros__parameters:` section (top-level keys: {sorted(data)})")
    return out


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def check_params_file(path: str | Path, node_name: str = NODE_NAME) -> tuple[NodeConfig, dict[str, Any]]:
    """Validate a params file as the node would at configure time (unknown keys are errors here)."""
    return configs_from_values(read_params_file(path, node_name))


def describe_parameters() -> str:
    """Markdown table of every parameter (for docs/ros-node.md)."""
    rows = ["| parameter | type | default | description |", "|---|---|---|---|"]
    for s in parameter_specs():
        default = list(s.default) if isinstance(s.default, tuple) else s.default
        rows.append(f"| `{s.name}` | {s.kind} | `{default!r}` | {s.doc} |")
    return "\n".join(rows)
