"""Start the SpecPrune OpenVLA-OFT policy node for a real arm.

    ros2 launch specprune_ros policy.launch.py checkpoint:=/models/openvla-7b-oft-libero \\
        primary_image_topic:=/camera/color/image_raw wrist_image_topic:=/wrist/color/image_raw

The node (``policy_node``, named ``specprune_policy``) is a lifecycle node. With ``autostart:=true`` (the
default) this launch file configures it (the model loads) and then activates it; with
``autostart:=false`` it stays unconfigured for a lifecycle manager or ``ros2 lifecycle set``.

Parameters come from ``params_file`` (default: this package's ``config/policy.yaml``). Arguments left
empty keep the file's value; ``dry_run``, ``use_sim_time`` and ``autostart`` always apply, so actuating
outputs stay off unless ``dry_run:=false`` is given on the command line. ``ros2 launch specprune_ros
policy.launch.py --show-args`` lists every argument.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile

from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

PACKAGE = "specprune_ros"
EXECUTABLE = "policy_node"
BOOL_CHOICES = ["true", "false"]
LOG_LEVELS = ["debug", "info", "warn", "error", "fatal"]


def _preset_choices() -> list[str]:
    from specprune_ros.core.presets import PRESETS

    return ["", *PRESETS]


def launch_arguments() -> list[DeclareLaunchArgument]:
    """Every argument of this launch file, each with a description."""
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "policy.yaml")
    return [
        DeclareLaunchArgument(
            "checkpoint", default_value="",
            description="OpenVLA-OFT checkpoint directory (config.json, weights, dataset_statistics.json); "
                        "empty = the params file's `checkpoint`"),
        DeclareLaunchArgument(
            "params_file", default_value=default_params,
            description="ROS 2 parameters YAML with a `specprune_policy: ros__parameters:` section"),
        DeclareLaunchArgument(
            "namespace", default_value="",
            description="namespace of the node and its relative topics (empty = root)"),
        DeclareLaunchArgument(
            "device", default_value="",
            description="torch device of the model, e.g. cuda, cuda:1, cpu; empty = the params file's `device`"),
        DeclareLaunchArgument(
            "dry_run", default_value="true", choices=BOOL_CHOICES,
            description="true: publish action chunks, statistics and diagnostics only, never an actuating "
                        "command; false: the adapters enabled in the params file publish commands"),
        DeclareLaunchArgument(
            "primary_image_topic", default_value="",
            description="sensor_msgs/Image (or CompressedImage) topic of the primary (third-person) camera; "
                        "empty = the params file's camera_topics entry of view `primary`"),
        DeclareLaunchArgument(
            "wrist_image_topic", default_value="",
            description="camera topic of the wrist camera; empty = the params file's camera_topics entry of "
                        "view `wrist`"),
        DeclareLaunchArgument(
            "joint_states_topic", default_value="",
            description="sensor_msgs/JointState topic; empty = the params file's `joint_states_topic`"),
        DeclareLaunchArgument(
            "unnorm_key", default_value="",
            description="dataset key of the action statistics in dataset_statistics.json; empty = the params "
                        "file's value, or the checkpoint's only key"),
        DeclareLaunchArgument(
            "preset", default_value="", choices=_preset_choices(),
            description="token pruning preset (off = unpruned model); empty = the params file's `preset`"),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", choices=BOOL_CHOICES,
            description="take time from /clock (simulation or bag replay)"),
        DeclareLaunchArgument(
            "autostart", default_value="true", choices=BOOL_CHOICES,
            description="configure (load the model) and activate the lifecycle node at start-up; false = "
                        "leave it unconfigured for a lifecycle manager"),
        DeclareLaunchArgument(
            "log_level", default_value="info", choices=LOG_LEVELS,
            description="logging level of the node"),
    ]


def _flag(context: LaunchContext, name: str) -> bool:
    value = LaunchConfiguration(name).perform(context).strip().lower()
    if value not in BOOL_CHOICES:
        raise ValueError(f"launch argument {name}:={value!r} must be true or false")
    return value == "true"


def _camera_topics(context: LaunchContext, params_file: str) -> list[str] | None:
    """camera_topics with the primary/wrist arguments applied, or None when neither argument is set."""
    wanted = {
        "primary": LaunchConfiguration("primary_image_topic").perform(context).strip(),
        "wrist": LaunchConfiguration("wrist_image_topic").perform(context).strip(),
    }
    wanted = {view: topic for view, topic in wanted.items() if topic}
    if not wanted:
        return None
    from specprune_ros.ros.parameters import NODE_NAME, NodeConfig, read_params_file

    file_values = read_params_file(params_file, NODE_NAME)
    views = list(file_values.get("camera_views", NodeConfig.camera_views))
    topics = list(file_values.get("camera_topics", NodeConfig.camera_topics))
    if len(topics) != len(views):
        raise ValueError(f"{params_file}: camera_topics {topics} needs one topic per camera_views entry {views}")
    for view, topic in wanted.items():
        if view not in views:
            raise ValueError(
                f"launch argument {view}_image_topic:={topic} given, but the node has no view {view!r} "
                f"(camera_views in {params_file}: {views})")
        topics[views.index(view)] = topic
    return topics


def _params_file_for_any_namespace(params_file: str, node_name: str) -> str:
    """``params_file`` with its ``specprune_policy:`` section keyed ``/**/specprune_policy``.

    A section named after the bare node name applies only to a node in the root namespace; in a namespace (this
    file's ``namespace`` argument, or a ``PushRosNamespace`` of a launch file including this one) the node would
    silently run on defaults. Such a section is re-keyed, its text untouched (the values keep the types rcl
    gives them), in a copy in the temporary directory named after its content (a relaunch reuses it); other files
    are passed on as they are.
    """
    with open(params_file, encoding="utf-8") as f:
        text = f.read()
    bare = re.compile(rf"^(['\"]?)/?{re.escape(node_name)}\1(\s*:)", re.MULTILINE)  # a top-level key
    rekeyed = bare.sub(lambda m: f"/**/{node_name}{m.group(2)}", text)
    if rekeyed == text:
        return params_file
    digest = hashlib.sha1(rekeyed.encode("utf-8")).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"{node_name}_params_{digest}.yaml")
    if not os.path.isfile(path):
        with tempfile.NamedTemporaryFile("w", dir=tempfile.gettempdir(), suffix=".yaml", delete=False,
                                         encoding="utf-8") as out:
            out.write(rekeyed)
        os.replace(out.name, path)
    return path


def policy_node_actions(context: LaunchContext) -> list:
    """The lifecycle node with its parameters, plus the configure/activate events when autostart is on."""
    params_file = LaunchConfiguration("params_file").perform(context)
    if not os.path.isfile(params_file):
        raise FileNotFoundError(
            f"params_file:={params_file} does not exist; pass params_file:=<path to a YAML with a "
            "`specprune_policy: ros__parameters:` section>")
    # autostart is driven from here (lifecycle events), never by the node itself as well
    overrides: dict = {
        "dry_run": _flag(context, "dry_run"),
        "use_sim_time": _flag(context, "use_sim_time"),
        "autostart": False,
    }
    for name in ("checkpoint", "device", "unnorm_key", "preset", "joint_states_topic"):
        value = LaunchConfiguration(name).perform(context).strip()
        if value:
            # typed as a string whatever it looks like (a substitution would be read as YAML: off -> false)
            overrides[name] = ParameterValue(value, value_type=str)
    topics = _camera_topics(context, params_file)
    if topics is not None:
        overrides["camera_topics"] = topics

    from specprune_ros.ros.parameters import NODE_NAME

    namespace = LaunchConfiguration("namespace").perform(context)
    node = LifecycleNode(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=NODE_NAME,
        namespace=namespace,
        parameters=[_params_file_for_any_namespace(params_file, NODE_NAME), overrides],
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
        output="screen",
        emulate_tty=True,
    )
    actions: list = [node]
    if _flag(context, "autostart"):
        actions += [
            # activate once configuring has finished (and only then: a later deactivate must stick)
            RegisterEventHandler(OnStateTransition(
                target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
                entities=[EmitEvent(event=ChangeState(
                    lifecycle_node_matcher=matches_action(node),
                    transition_id=Transition.TRANSITION_ACTIVATE))],
            )),
            EmitEvent(event=ChangeState(
                lifecycle_node_matcher=matches_action(node),
                transition_id=Transition.TRANSITION_CONFIGURE)),
        ]
    return actions


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([*launch_arguments(), OpaqueFunction(function=policy_node_actions)])
