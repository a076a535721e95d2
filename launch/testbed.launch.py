"""Closed loop on the CPU: the test-bed task (``testbed_sim_node``) and the pruned policy (``policy_node``).

    ros2 launch specprune_ros testbed.launch.py preset:=paper episodes:=10

The bridge publishes the task's two cameras, joint states, instruction and the gantry URDF in real time and
executes the policy node's action chunks; the policy node (lifecycle, configures and activates itself) runs
the trained test-bed checkpoint with the chosen pruning preset, building LIBERO-style proprio from the joint
states through the URDF. Watch ``/episode_status`` for success, ``/specprune_policy/inference_stats`` and
``/diagnostics`` for tokens kept and latency. ``--show-args`` lists every argument.
"""
from __future__ import annotations

import os

from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "specprune_ros"
BOOL_CHOICES = ["true", "false"]
LOG_LEVELS = ["debug", "info", "warn", "error", "fatal"]


def default_checkpoint() -> str:
    """The committed test-bed checkpoint: the package share (if installed there) or the source tree."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(os.path.join(get_package_share_directory(PACKAGE), "checkpoints", "testbed"))
    except Exception:  # noqa: BLE001 - package not installed: fall back to the source tree
        pass
    here = os.path.dirname(os.path.realpath(__file__))
    candidates.append(os.path.normpath(os.path.join(here, "..", "checkpoints", "testbed")))
    for path in candidates:
        if os.path.isfile(os.path.join(path, "config.json")):
            return path
    return candidates[-1]


def _preset_choices() -> list[str]:
    from specprune_ros.core.presets import PRESETS

    return list(PRESETS)


def launch_arguments() -> list[DeclareLaunchArgument]:
    """Every argument of this launch file, each with a description."""
    return [
        DeclareLaunchArgument(
            "checkpoint", default_value=default_checkpoint(),
            description="policy checkpoint directory (released OpenVLA-OFT layout); default: the committed "
                        "test-bed checkpoint checkpoints/testbed"),
        DeclareLaunchArgument(
            "preset", default_value="paper", choices=_preset_choices(),
            description="token pruning preset of the policy node (off = unpruned baseline)"),
        DeclareLaunchArgument(
            "device", default_value="cpu",
            description="torch device of the policy (cpu; cuda if available)"),
        DeclareLaunchArgument(
            "seed", default_value="0",
            description="task seed of the first episode; episode k uses seed + k"),
        DeclareLaunchArgument(
            "episodes", default_value="0",
            description="episodes the bridge runs before it stops resetting (0 = keep going)"),
        DeclareLaunchArgument(
            "max_steps", default_value="240",
            description="executed control steps before an episode times out"),
        DeclareLaunchArgument(
            "control_rate", default_value="20.0",
            description="Hz at which the bridge executes action rows and publishes joint states (trained at 20); "
                        "the policy node's control_dt is 1 / control_rate"),
        DeclareLaunchArgument(
            "reset_delay", default_value="1.0",
            description="seconds between the end of an episode and the start of the next"),
        DeclareLaunchArgument(
            "fake_policy", default_value="false", choices=BOOL_CHOICES,
            description="true: the policy node runs its deterministic FakePolicy instead of the checkpoint "
                        "(wiring checks without a model)"),
        DeclareLaunchArgument(
            "log_level", default_value="info", choices=LOG_LEVELS,
            description="logging level of both nodes"),
    ]


def _nodes(context: LaunchContext) -> list:
    from specprune_ros.testbed.ros_bridge import policy_node_parameters

    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    checkpoint = arg("checkpoint")
    fake = arg("fake_policy").lower() == "true"
    if not fake and not os.path.isfile(os.path.join(checkpoint, "config.json")):
        raise FileNotFoundError(
            f"checkpoint:={checkpoint} has no config.json; pass checkpoint:=<test-bed checkpoint directory> "
            "(train one with specprune-train) or fake_policy:=true")
    control_rate = float(arg("control_rate"))
    bridge = Node(
        package=PACKAGE,
        executable="testbed_sim_node",
        name="testbed_sim_node",
        parameters=[{
            "seed": int(arg("seed")),
            "episodes": int(arg("episodes")),
            "max_steps": int(arg("max_steps")),
            "control_rate": control_rate,
            "reset_delay": float(arg("reset_delay")),
            "action_chunk_topic": "/specprune_policy/action_chunk",
        }],
        ros_arguments=["--log-level", arg("log_level")],
        output="screen",
        emulate_tty=True,
    )
    # the policy node's control period is the bridge's: it re-queries when the bridge has executed the rows
    params = policy_node_parameters(checkpoint, arg("preset"), arg("device"), fake_policy=fake, control_rate=control_rate)
    policy = Node(
        package=PACKAGE,
        executable="policy_node",
        name="specprune_policy",
        parameters=[params],
        ros_arguments=["--log-level", arg("log_level")],
        output="screen",
        emulate_tty=True,
    )
    return [bridge, policy]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([*launch_arguments(), OpaqueFunction(function=_nodes)])
