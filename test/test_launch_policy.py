"""launch/policy.launch.py against the real ROS 2 `launch` and `launch_ros` packages.

Those packages are not on PyPI (PyPI's `launch` is an unrelated project), so this module skips where they
are missing. docs/development.md says how it was run against the upstream sources.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import time
from pathlib import Path

import pytest
import yaml
from ros_env import INSTALL_PREFIX, REPO_ROOT, ensure


def _missing_launch() -> str | None:
    """Why ROS 2 `launch`/`launch_ros` cannot be used here, or None when they can."""
    try:
        import launch
        import launch_ros  # noqa: F401
    except ImportError as exc:
        return str(exc)
    if not hasattr(launch, "LaunchDescription"):  # e.g. the repository's launch/ folder as a namespace
        return f"`import launch` found {list(getattr(launch, '__path__', []))}, not the ROS 2 package"
    return None


if _missing_launch() is not None:  # what CI sees: launch/launch_ros come only with a ROS 2 install
    pytest.skip(
        f"ROS 2 `launch`/`launch_ros` are not importable ({_missing_launch()}); they ship with a ROS 2 "
        "install (e.g. /opt/ros/kilted), not with PyPI", allow_module_level=True)

import launch  # noqa: E402
import launch_ros.actions  # noqa: E402
from launch import LaunchContext, LaunchDescription  # noqa: E402
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler  # noqa: E402
from launch_ros.events.lifecycle import ChangeState  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402

LAUNCH_FILE = REPO_ROOT / "launch" / "policy.launch.py"
EXPECTED_ARGUMENTS = {
    "checkpoint", "params_file", "namespace", "device", "dry_run", "primary_image_topic",
    "wrist_image_topic", "joint_states_topic", "unnorm_key", "preset", "use_sim_time", "autostart",
    "log_level",
}


def _load_launch_module():
    ensure()  # the install tree (share/specprune_ros) on AMENT_PREFIX_PATH comes from tools/ros_env.sh
    spec = importlib.util.spec_from_file_location("specprune_policy_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def launch_module():
    return _load_launch_module()


def _params_file(tmp_path: Path, **params) -> Path:
    values = {
        "camera_views": ["primary", "wrist"],
        "camera_topics": ["/cam_a/image_raw", "/cam_b/image_raw"],
        **params,
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"specprune_policy": {"ros__parameters": values}}))
    return path


def _resolve(launch_module, arguments: dict[str, str]):
    """Run the argument declarations and the node function as `ros2 launch` would; return the actions."""
    ld = launch_module.generate_launch_description()
    context = LaunchContext()
    context.launch_configurations.update(arguments)
    opaque = None
    for entity in ld.entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.execute(context)  # applies the default, checks choices
        elif isinstance(entity, OpaqueFunction):
            opaque = entity
    assert opaque is not None, "the launch description has no node function"
    actions = opaque.execute(context)
    nodes = [a for a in actions if isinstance(a, launch_ros.actions.LifecycleNode)]
    assert len(nodes) == 1, actions
    node = nodes[0]
    node._perform_substitutions(context)  # name, namespace, parameter files, remappings
    return context, node, actions


class _ParamsLoader(yaml.SafeLoader):
    """launch_ros writes lists of a parameter dict as `!!python/tuple` (rcl's parser takes them as lists)."""


_ParamsLoader.add_constructor("tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node))


def _node_parameters(node) -> tuple[list[str], dict]:
    """(parameter files in order, the merged overrides written by launch_ros for the dict entry)."""
    files = []
    for argument, is_file in node._Node__expanded_parameter_arguments:
        assert is_file
        files.append(argument)
    overrides = yaml.load(Path(files[-1]).read_text(), Loader=_ParamsLoader)
    ((_, section),) = overrides.items()
    return files, section["ros__parameters"]


def _command_line(context, node) -> list[str]:
    """The node's command line up to the arguments that only exist while it runs (e.g. the namespace)."""
    out = []
    for part in node.cmd:
        try:
            out.append(launch.utilities.perform_substitutions(context, part))
        except AttributeError:  # LocalSubstitution("ros_specific_arguments[...]"), filled in at execute
            break
    return out


def test_every_argument_is_declared_with_a_description(launch_module):
    ld = launch_module.generate_launch_description()
    arguments = ld.get_launch_arguments()
    names = [a.name for a in arguments]
    assert sorted(names) == sorted(EXPECTED_ARGUMENTS)
    for argument in arguments:
        assert argument.description and argument.description != "no description given", argument.name
        assert len(argument.description) > 15, f"{argument.name}: {argument.description!r} says too little"
    defaults = {a.name: "".join(s.perform(LaunchContext()) for s in a.default_value) for a in arguments}
    assert defaults["dry_run"] == "true"
    assert defaults["autostart"] == "true"
    assert defaults["params_file"] == str(INSTALL_PREFIX / "share" / "specprune_ros" / "config" / "policy.yaml")


def test_defaults_start_the_lifecycle_node_dry_and_autostart_it(launch_module):
    context, node, actions = _resolve(launch_module, {})
    assert node.node_package == "specprune_ros"
    assert node.node_executable == "policy_node"
    assert node.node_name == "/specprune_policy"
    # the executable resolves in the install tree, where `ros2 run` / `ros2 launch` look for it
    executable = launch.utilities.perform_substitutions(context, node.cmd[0])
    assert Path(executable) == INSTALL_PREFIX / "lib" / "specprune_ros" / "policy_node"
    assert os.access(executable, os.X_OK)

    files, overrides = _node_parameters(node)
    installed = INSTALL_PREFIX / "share" / "specprune_ros" / "config" / "policy.yaml"
    assert installed.is_file(), "config/policy.yaml is not installed"
    # the installed file keyed for any namespace (an including launch file may push one)
    assert Path(files[0]).read_text() == installed.read_text().replace("\nspecprune_policy:", "\n/**/specprune_policy:", 1)
    # empty arguments keep the params file's values; only the always-applied ones are overridden
    assert overrides == {"dry_run": True, "use_sim_time": False, "autostart": False}
    cmd = _command_line(context, node)
    assert cmd[cmd.index("--log-level") + 1] == "info"

    configure = [a for a in actions if isinstance(a, EmitEvent)]
    assert len(configure) == 1 and isinstance(configure[0].event, ChangeState)
    assert configure[0].event.transition_id == Transition.TRANSITION_CONFIGURE
    assert configure[0].event.lifecycle_node_matcher(node)
    handlers = [a for a in actions if isinstance(a, RegisterEventHandler)]
    assert len(handlers) == 1
    activate = handlers[0].event_handler.entities
    assert [e.event.transition_id for e in activate] == [Transition.TRANSITION_ACTIVATE]


def test_arguments_reach_the_node(launch_module, tmp_path):
    params = _params_file(tmp_path, device="cpu", preset="paper")
    context, node, actions = _resolve(launch_module, {
        "params_file": str(params), "checkpoint": "/models/oft", "device": "cuda:1", "namespace": "arm_left",
        "dry_run": "false", "wrist_image_topic": "/wrist/color/image_raw", "joint_states_topic": "/arm/joint_states",
        "unnorm_key": "libero_spatial_no_noops", "preset": "aggressive", "use_sim_time": "true",
        "autostart": "false", "log_level": "debug",
    })
    assert node.node_name == "/arm_left/specprune_policy"
    cmd = _command_line(context, node)
    assert cmd[cmd.index("--log-level") + 1] == "debug"
    files, overrides = _node_parameters(node)
    # the file's `specprune_policy:` section would not reach a namespaced node (nor one under an including
    # file's PushRosNamespace): a copy keyed for any namespace does, its text otherwise the same
    text = params.read_text()
    assert Path(files[0]).read_text() == text.replace("specprune_policy:", "/**/specprune_policy:", 1)
    assert yaml.safe_load(Path(files[0]).read_text())["/**/specprune_policy"] == yaml.safe_load(text)["specprune_policy"]
    assert overrides == {
        "dry_run": False, "use_sim_time": True, "autostart": False, "checkpoint": "/models/oft",
        "device": "cuda:1", "unnorm_key": "libero_spatial_no_noops", "preset": "aggressive",
        "joint_states_topic": "/arm/joint_states",
        # only the wrist camera changes; the primary keeps the params file's topic
        "camera_topics": ["/cam_a/image_raw", "/wrist/color/image_raw"],
    }
    # autostart:=false leaves the node unconfigured: no lifecycle events
    assert not [a for a in actions if isinstance(a, (EmitEvent, RegisterEventHandler))]


def test_string_arguments_stay_strings(launch_module, tmp_path):
    # a substitution as parameter value is read as YAML by launch_ros: `off` -> false, `2024` -> 2024
    _, node, _ = _resolve(launch_module, {"params_file": str(_params_file(tmp_path)), "preset": "off",
                                          "unnorm_key": "2024", "device": "null"})
    _, overrides = _node_parameters(node)
    assert (overrides["preset"], overrides["unnorm_key"], overrides["device"]) == ("off", "2024", "null")


def test_bad_arguments_fail_with_a_clear_message(launch_module, tmp_path):
    with pytest.raises(FileNotFoundError, match="params_file:=.*does not exist"):
        _resolve(launch_module, {"params_file": str(tmp_path / "missing.yaml")})
    one_view = _params_file(tmp_path, camera_views=["primary"], camera_topics=["/cam/image_raw"])
    with pytest.raises(ValueError, match="wrist_image_topic.*no view 'wrist'"):
        _resolve(launch_module, {"params_file": str(one_view), "wrist_image_topic": "/w"})
    with pytest.raises(RuntimeError, match='"dry_run" provided value "maybe" is not valid'):
        _resolve(launch_module, {"dry_run": "maybe"})
    with pytest.raises(RuntimeError, match='"preset" provided value "agressive" is not valid'):
        _resolve(launch_module, {"preset": "agressive"})


def test_ros2_launch_finds_the_installed_file():
    api = pytest.importorskip("ros2launch.api", reason="ros2launch (the `ros2 launch` verb) is not importable")
    path = api.get_share_file_path_from_package(package_name="specprune_ros", file_name="policy.launch.py")
    assert Path(path) == INSTALL_PREFIX / "share" / "specprune_ros" / "launch" / "policy.launch.py"
    assert Path(path).read_text() == LAUNCH_FILE.read_text(), "installed launch file is stale: run make setup"


def _wait_for_state(node_name: str, want: str, stop: threading.Event, result: dict) -> None:
    """Poll <node>/get_state from a node of our own until the state label is `want`; then read parameters."""
    import rclpy
    from lifecycle_msgs.srv import GetState
    from rcl_interfaces.srv import GetParameters
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("launch_test_observer", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def call(client, request):
        future = client.call_async(request)
        executor.spin_until_future_complete(future, timeout_sec=5.0)
        return future.result() if future.done() else None

    try:
        state = node.create_client(GetState, f"{node_name}/get_state")
        params = node.create_client(GetParameters, f"{node_name}/get_parameters")
        deadline = time.monotonic() + 60.0  # only against a hang
        while not stop.is_set() and time.monotonic() < deadline:
            if state.wait_for_service(timeout_sec=0.5):
                response = call(state, GetState.Request())
                if response is not None:
                    result["state"] = response.current_state.label
                    if result["state"] == want:
                        response = call(params, GetParameters.Request(
                            names=["dry_run", "autostart", "camera_topics", "fake_policy"]))
                        if response is not None:
                            v = response.values
                            result["params"] = (v[0].bool_value, v[1].bool_value, list(v[2].string_array_value),
                                                v[3].bool_value)
                        return
            time.sleep(0.2)
    except Exception as exc:  # reported by the test
        result["error"] = repr(exc)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)


@pytest.mark.parametrize("pushed", [False, True], ids=["namespace-argument", "PushRosNamespace"])
def test_launch_service_brings_the_node_to_active(tmp_path, pushed):
    """End to end as `ros2 launch` does it: include the installed file, run, wait for `active`; the namespace
    comes from the file's argument or from an including launch file's PushRosNamespace."""
    ensure()
    try:
        import specprune_ros.ros.policy_node  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"the policy node does not import: {exc}")
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import AnyLaunchDescriptionSource

    # the FakePolicy and no kinematics: no checkpoint or URDF needed to configure
    params = _params_file(tmp_path, fake_policy=True, instruction="pick up the cup", ee_frame="",
                          proprio_sources=["joint_positions"], proprio_joints=["j1"])
    namespace = f"launch_test_{os.getpid()}_{int(pushed)}"
    arguments = {"params_file": str(params), "namespace": "" if pushed else namespace,
                 "primary_image_topic": "/p/image_raw"}
    service = launch.LaunchService(argv=[f"{k}:={v}" for k, v in arguments.items()], noninteractive=True)
    include = IncludeLaunchDescription(
        AnyLaunchDescriptionSource(str(INSTALL_PREFIX / "share" / "specprune_ros" / "launch" / "policy.launch.py")),
        launch_arguments=list(arguments.items()))
    if pushed:
        from launch.actions import GroupAction
        from launch_ros.actions import PushRosNamespace

        include = GroupAction([PushRosNamespace(namespace), include])
    service.include_launch_description(LaunchDescription([include]))

    stop, result = threading.Event(), {}
    watcher = threading.Thread(target=_wait_for_state,
                               args=(f"/{namespace}/specprune_policy", "active", stop, result))

    async def main() -> int:
        run = asyncio.ensure_future(service.run_async())
        watcher.start()
        while watcher.is_alive() and not run.done():
            await asyncio.sleep(0.2)
        pending = service.shutdown()  # a coroutine when called from the service's own loop
        if pending is not None:
            await pending
        return await run

    loop = asyncio.new_event_loop()
    try:
        return_code = loop.run_until_complete(main())
    finally:
        stop.set()
        watcher.join(timeout=30)
        loop.close()
    assert "error" not in result, result["error"]
    assert result.get("state") == "active", f"node never became active (last state: {result.get('state')})"
    # dry run by default, autostart driven by the launch file, the file's values reached the namespaced node
    assert result.get("params") == (True, False, ["/p/image_raw", "/cam_b/image_raw"], True)
    assert return_code == 0
