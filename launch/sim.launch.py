"""Run the SpecPrune OpenVLA-OFT policy node closed-loop on one LIBERO task.

    ros2 launch specprune_ros sim.launch.py checkpoint:=/models/openvla-7b-oft-finetuned-libero-spatial \\
        suite:=libero_spatial task_id:=3 preset:=paper device:=cuda

Starts two processes that talk over DDS:

* ``libero_sim_node`` (the LIBERO bridge) with the simulator environment's interpreter ``sim_python``
  (default: ``.venv-sim/bin/python`` of the repository, made by ``make sim-setup``). With the repository's
  ``tools/ros_env.sh`` present (PyPI-wheel setup) it runs inside that script's environment computed for
  the simulator venv; with ``sim_env_script:=''`` it runs ``sim_python`` in the launch environment (a
  sourced ROS install whose Python has LIBERO).
* ``policy_node`` (named ``specprune_policy``, lifecycle; configured and activated here) with
  ``libero_params_file`` (default: this package's ``config/libero.yaml``: the bridge's topics and joint
  names, FK on the bridge's URDF (``libero_eef``), flip + center crop, the LIBERO gripper mapping, proprio =
  EE position + axis-angle + fingers, dry run: the bridge consumes ``~/action_chunk`` itself) with this
  run on top (``specprune_ros.sim.launching.policy_parameters``: checkpoint, preset, the suite's
  ``unnorm_key``, device, ``use_sim_time``), merged into one params file.

The bridge runs one episode per initial state; ``ros2 service call /libero_sim_node/reset
std_srvs/srv/Trigger`` (or ``auto_reset:=true``) starts the next. ``specprune-libero-eval`` runs whole
suites this way. See docs/simulation.md.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, ExecuteProcess, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from specprune_ros.sim import launching
from specprune_ros.sim.protocol import SUITE_MAX_STEPS, ProtocolError

PACKAGE = "specprune_ros"
BOOL_CHOICES = ["true", "false"]
LOG_LEVELS = ["debug", "info", "warn", "error", "fatal"]


def _preset_choices() -> list[str]:
    from specprune_ros.core.presets import PRESETS

    return list(PRESETS)


def launch_arguments() -> list[DeclareLaunchArgument]:
    """Every argument, each with a description; the simulation ones come from ``launching.ARG_DOC``."""
    d = launching.SimLaunchArgs.__dataclass_fields__
    doc = launching.ARG_DOC

    def arg(name: str, **kw) -> DeclareLaunchArgument:
        default = d[name].default
        text = ("true" if default else "false") if isinstance(default, bool) else str(default)
        if isinstance(default, bool):
            kw.setdefault("choices", BOOL_CHOICES)
        return DeclareLaunchArgument(name, default_value=text, description=doc[name], **kw)

    share = get_package_share_directory(PACKAGE)
    return [
        arg("suite", choices=sorted(SUITE_MAX_STEPS)),
        arg("task_id"),
        arg("init_state"),
        arg("checkpoint"),
        arg("preset", choices=_preset_choices()),
        arg("proportional"),
        arg("merge"),
        arg("unnorm_key"),
        arg("fake_policy"),
        arg("device"),
        arg("max_steps"),
        arg("seed"),
        arg("auto_reset"),
        arg("publish_every_step"),
        DeclareLaunchArgument(
            "sim_python", default_value=launching.default_sim_python(),
            description="Python interpreter of the simulator environment (LIBERO + rclpy), e.g. "
                        "<repo>/.venv-sim/bin/python from `make sim-setup`"),
        DeclareLaunchArgument(
            "sim_env_script", default_value=launching.default_env_script(),
            description="script that sets up the ROS environment of the simulator venv (the repository's "
                        "tools/ros_env.sh); empty = run sim_python in the launch environment as it is"),
        DeclareLaunchArgument(
            "libero_params_file", default_value=os.path.join(share, "config", "libero.yaml"),
            description="policy node parameters of the LIBERO preset (a `specprune_policy: ros__parameters:` "
                        "YAML); the simulator bindings are applied on top"),
        DeclareLaunchArgument(
            "log_level", default_value="info", choices=LOG_LEVELS, description="logging level of both nodes"),
    ]


def _flag(context: LaunchContext, name: str) -> bool:
    return LaunchConfiguration(name).perform(context).strip().lower() == "true"


def _int(context: LaunchContext, name: str) -> int:
    text = LaunchConfiguration(name).perform(context).strip()
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"launch argument {name}:={text!r} must be an integer") from None


def sim_actions(context: LaunchContext) -> list:
    """The bridge process and the policy lifecycle node (configured, then activated)."""
    text = {n: LaunchConfiguration(n).perform(context).strip() for n in ("suite", "checkpoint", "preset", "unnorm_key", "device")}
    try:
        args = launching.SimLaunchArgs(
            suite=text["suite"],
            task_id=_int(context, "task_id"),
            init_state=_int(context, "init_state"),
            checkpoint=text["checkpoint"],
            preset=text["preset"],
            proportional=_flag(context, "proportional"),
            merge=_flag(context, "merge"),
            unnorm_key=text["unnorm_key"],
            fake_policy=_flag(context, "fake_policy"),
            device=text["device"],
            max_steps=_int(context, "max_steps"),
            seed=_int(context, "seed"),
            auto_reset=_flag(context, "auto_reset"),
            publish_every_step=_flag(context, "publish_every_step"),
        )
    except ProtocolError as exc:
        raise ValueError(f"sim.launch.py: {exc}") from None
    params_file = LaunchConfiguration("libero_params_file").perform(context)
    if not os.path.isfile(params_file):
        raise FileNotFoundError(
            f"libero_params_file:={params_file} does not exist; pass the LIBERO preset of the policy node "
            "(config/libero.yaml of this package)")
    sim_python = LaunchConfiguration("sim_python").perform(context)
    if not os.access(sim_python, os.X_OK):
        raise FileNotFoundError(
            f"sim_python:={sim_python} is not an executable; run `make sim-setup` (it creates .venv-sim/) "
            "or pass the interpreter of an environment with LIBERO and rclpy")
    log_level = LaunchConfiguration("log_level").perform(context)
    bridge = ExecuteProcess(
        cmd=launching.bridge_command(args, sim_python, LaunchConfiguration("sim_env_script").perform(context))
        + ["--log-level", log_level],
        name=launching.BRIDGE_NODE_NAME,
        output="screen",
    )
    # one params file: the preset with this run on top, strings quoted for rcl's YAML parser; the
    # lifecycle is driven from here (autostart false)
    merged = launching.write_policy_params(
        Path(tempfile.mkdtemp(prefix="specprune_sim_")) / "policy.yaml", args, params_file, autostart=False)
    node = LifecycleNode(
        package=PACKAGE,
        executable="policy_node",
        name=launching.POLICY_NODE_NAME,
        namespace="",
        parameters=[str(merged)],
        ros_arguments=["--log-level", log_level],
        output="screen",
        emulate_tty=True,
    )
    return [
        bridge,
        node,
        RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
            entities=[EmitEvent(event=ChangeState(
                lifecycle_node_matcher=matches_action(node), transition_id=Transition.TRANSITION_ACTIVATE))],
        )),
        EmitEvent(event=ChangeState(
            lifecycle_node_matcher=matches_action(node), transition_id=Transition.TRANSITION_CONFIGURE)),
    ]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([*launch_arguments(), OpaqueFunction(function=sim_actions)])
