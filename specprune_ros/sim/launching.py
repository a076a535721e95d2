"""How the LIBERO closed loop is wired: the bridge's command line and the policy node's parameters.

One source for ``launch/sim.launch.py`` and for ``specprune-libero-eval``, which starts the same two
processes itself (``ros2 launch`` is not installable from PyPI). Pure Python: no ROS, no simulator.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..rosenv import ENV_SCRIPT
from .protocol import (
    ARM_JOINTS,
    CAMERA_TOPICS,
    EEF_LINK,
    GRIPPER_JOINTS,
    SEED,
    ProtocolError,
    check_suite,
    unnorm_key_for,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
POLICY_NODE_NAME = "specprune_policy"
BRIDGE_NODE_NAME = "libero_sim_node"
#: Where the policy node publishes its chunks (its private ``~/action_chunk``).
POLICY_CHUNK_TOPIC = f"/{POLICY_NODE_NAME}/action_chunk"
#: The LIBERO parameter preset of the policy node (flip, center crop, gripper mapping, proprio layout).
LIBERO_PARAMS = "config/libero.yaml"


@dataclass(frozen=True)
class SimLaunchArgs:
    """Arguments of ``sim.launch.py`` (and of one episode group of ``specprune-libero-eval``)."""

    suite: str = "libero_spatial"
    task_id: int = 0
    init_state: int = 0
    checkpoint: str = ""
    preset: str = "paper"
    proportional: bool = False
    merge: bool = False
    unnorm_key: str = ""
    fake_policy: bool = False
    device: str = "cpu"
    max_steps: int = 0
    seed: int = SEED
    auto_reset: bool = False
    publish_every_step: bool = False

    def __post_init__(self) -> None:
        check_suite(self.suite)
        if self.task_id < 0 or self.init_state < 0 or self.max_steps < 0:
            raise ProtocolError(
                f"task_id={self.task_id}, init_state={self.init_state}, max_steps={self.max_steps} must be >= 0"
            )
        if self.merge and not self.proportional:
            raise ProtocolError("merge:=true needs proportional:=true (the merge weights are the proportional ones)")
        if not self.fake_policy and not self.checkpoint:
            raise ProtocolError(
                "no policy: set checkpoint:=<checkpoint dir> (e.g. a released OpenVLA-OFT LIBERO checkpoint, or "
                "one from `specprune-make-tiny`) or fake_policy:=true"
            )

    @property
    def resolved_unnorm_key(self) -> str:
        """The given key, else the suite's OFT key (``libero_spatial_no_noops``, ...)."""
        return self.unnorm_key or unnorm_key_for(self.suite)


#: Launch argument descriptions (sim.launch.py declares exactly these, with SimLaunchArgs' defaults).
ARG_DOC: dict[str, str] = {
    "suite": "LIBERO suite: libero_spatial, libero_object, libero_goal, libero_10 or libero_90",
    "task_id": "task index within the suite (0-based, OFT task order)",
    "init_state": "official initial state of the first episode (0..49); the bridge's ~/reset moves to the next",
    "checkpoint": "OpenVLA-OFT checkpoint directory (released layout); empty only with fake_policy:=true",
    "preset": "pruning preset: off (unpruned baseline), conservative, paper, aggressive, static-only, fine-focus",
    "proportional": "true: each dropped visual token's attention weight goes to the nearest kept token of its view "
    "(docs/method.md, section 6; not in the paper)",
    "merge": "true (with proportional:=true): each kept token's hidden state also becomes the weighted mean of "
    "the tokens it stands for",
    "unnorm_key": "dataset_statistics.json key; empty = the suite's key, e.g. libero_spatial_no_noops "
    "(a tiny test checkpoint needs tiny_sim)",
    "fake_policy": "true: deterministic fake policy instead of a model (checks the wiring, solves nothing)",
    "device": "torch device of the policy: cpu, cuda, cuda:N",
    "max_steps": "policy steps per episode; 0 = the suite's OFT limit (220/280/300/520/400)",
    "seed": "simulator seed (OFT evaluation: 7)",
    "auto_reset": "start the next initial state as soon as an episode ends",
    "publish_every_step": "publish camera images at every simulator step (to watch), not only when a chunk is due",
}


def default_sim_python() -> str:
    """``$SPECPRUNE_SIM_PYTHON``, else the simulator venv's interpreter (``$SPECPRUNE_SIM_VENV``, by default
    ``.venv-sim`` beside this repository: the venv the other simulator tools use)."""
    from .simenv import sim_python  # late: only this default needs it

    return os.environ.get("SPECPRUNE_SIM_PYTHON") or str(sim_python())


def default_env_script() -> str:
    """``tools/ros_env.sh`` of this repository when present (PyPI wheel setup), else empty (sourced ROS)."""
    return str(ENV_SCRIPT) if ENV_SCRIPT.is_file() else ""


def _ros_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_ros_value(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("'", "") + "'"
    return repr(value)


def bridge_parameters(args: SimLaunchArgs) -> dict[str, Any]:
    """Parameters of ``libero_sim_node``."""
    return {
        "suite": args.suite,
        "task_id": args.task_id,
        "init_state": args.init_state,
        "seed": args.seed,
        "max_steps": args.max_steps,
        "auto_reset": args.auto_reset,
        "publish_every_step": args.publish_every_step,
    }


def bridge_command(
    args: SimLaunchArgs, sim_python: str | None = None, env_script: str | None = None, extra: dict | None = None
) -> list[str]:
    """Command line that runs the bridge in the simulator venv.

    With ``env_script`` (default: this repository's ``tools/ros_env.sh``) the command runs inside that
    script's ROS environment computed for the simulator venv; with ``env_script=""`` it runs
    ``sim_python`` directly (a sourced ROS installation already provides the environment).
    """
    python = sim_python or default_sim_python()
    script = default_env_script() if env_script is None else env_script
    params = dict(bridge_parameters(args), **(extra or {}))
    cmd: list[str] = []
    if script:
        venv = str(Path(python).absolute().parent.parent)  # <venv>/bin/python (not resolved: it is a symlink)
        # the caller's Python and library paths belong to another venv (or a sourced ROS); the script
        # computes the simulator venv's, keeping ROS_DOMAIN_ID
        cmd = ["env", "-u", "PYTHONPATH", "-u", "LD_LIBRARY_PATH", "-u", "SPECPRUNE_ROS_ISOLATE", f"VENV={venv}", "bash", script]
    cmd += [python, "-m", "specprune_ros.sim.libero_node", "--ros-args", "-r", f"__node:={BRIDGE_NODE_NAME}"]
    cmd += ["-r", f"action_chunk:={POLICY_CHUNK_TOPIC}"]
    return cmd + ros_param_args(params)


def ros_param_args(params: dict[str, Any]) -> list[str]:
    """``-p name:=VALUE`` arguments (after ``--ros-args``) for ``params``: booleans lower case, lists
    bracketed, strings quoted."""
    return [arg for name, value in params.items() for arg in ("-p", f"{name}:={_ros_value(value)}")]


def policy_parameters(args: SimLaunchArgs) -> dict[str, Any]:
    """The policy node's parameters of one run, applied on top of ``config/libero.yaml``.

    ``libero.yaml`` carries everything that binds the node to this bridge and to the LIBERO checkpoints
    (topics, joint names, the URDF's ``libero_eef`` link, flip + center crop, gripper mapping, proprio
    layout, no frozen-camera check, dry run: the bridge consumes ``~/action_chunk`` itself);
    :func:`sim_bindings` lists the values it must have. These add the run: checkpoint, preset and its
    ``proportional`` and ``merge`` options, the suite's ``unnorm_key``, device, fake policy, and simulated time.
    """
    return {
        "use_sim_time": True,
        "checkpoint": args.checkpoint,
        "preset": args.preset,
        "proportional": args.proportional,
        "merge": args.merge,
        "unnorm_key": args.resolved_unnorm_key,
        "device": args.device,
        "fake_policy": args.fake_policy,
    }


def sim_bindings() -> dict[str, Any]:
    """Policy node parameters that must hold for the bridge (what ``config/libero.yaml`` sets)."""
    return {
        "camera_views": ["primary", "wrist"],
        "camera_topics": ["/" + CAMERA_TOPICS["agentview"], "/" + CAMERA_TOPICS["wrist"]],
        "joint_states_topic": "/joint_states",
        "instruction_topic": "/instruction",
        "robot_description_topic": "/robot_description",
        "ee_frame": EEF_LINK,
        "arm_joints": list(ARM_JOINTS),
        "gripper_joints": list(GRIPPER_JOINTS),
        "gripper_scales": [1.0, 1.0],  # the bridge publishes MuJoCo's finger positions, as LIBERO's proprio has them
        "ee_position_offset": [0.0, 0.0, 0.0],  # the URDF's root is LIBERO's world frame
        "flip": True,
        "center_crop": True,
        "libero_gripper": True,
        "control_dt": 0.05,
        "execute_steps": 0,
        "honor_requery": True,  # the bridge cuts a chunk at requery_after; the node's execution mirror must too
        "episode_status_topic": "/episode_status",  # the bridge's episode counter resets the policy
        "frozen_timeout": 0.0,
        "dry_run": True,
    }


def policy_command(params_file: str | Path, python: str | None = None) -> list[str]:
    """Command line of the policy node with one params file (see :func:`write_policy_params`).

    Runs in the policy venv (``python``, default: the interpreter running this code), whose environment
    must be ``tools/ros_env.sh``'s for that venv.
    """
    import sys

    return [
        python or sys.executable, "-m", "specprune_ros.ros.policy_node", "--ros-args",
        "-r", f"__node:={POLICY_NODE_NAME}", "--params-file", str(params_file),
    ]


def write_policy_params(
    path: Path, args: SimLaunchArgs, libero_params: str | Path | None = None, **extra: Any
) -> Path:
    """One params file for the policy node: ``config/libero.yaml`` (if present), this run's values and
    ``extra`` on top, every string quoted (so a bare ``y`` in the preset cannot turn into a boolean)."""
    from specprune_ros.ros.parameters import read_params_file

    preset = Path(libero_params) if libero_params is not None else REPO_ROOT / LIBERO_PARAMS
    values = read_params_file(preset, POLICY_NODE_NAME) if preset.is_file() else {}
    values.update(policy_parameters(args))
    values.update(extra)
    return write_params_file(path, values)


class _QuotedDumper(yaml.SafeDumper):
    """Writes every string quoted: rcl's YAML 1.1 parser reads bare y, n, on, off as booleans."""


_QuotedDumper.add_representer(str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style='"'))


def write_params_file(path: Path, params: dict[str, Any], node_name: str = POLICY_NODE_NAME) -> Path:
    """Write ``params`` as a ROS 2 params YAML for ``node_name`` (strings quoted)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {node_name: {"ros__parameters": {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}}}
    path.write_text(yaml.dump(data, Dumper=_QuotedDumper, sort_keys=False))
    return path
