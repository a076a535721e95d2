"""launch/sim.launch.py against the real ROS 2 `launch` and `launch_ros` packages.

Those packages are not on PyPI (PyPI's `launch` is an unrelated project), so this module skips where they
are missing; docs/development.md says how to run it against the upstream sources.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from ros_env import INSTALL_PREFIX, REPO_ROOT, ensure

try:
    import launch
    import launch_ros.actions
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, EmitEvent, ExecuteProcess, OpaqueFunction, RegisterEventHandler
    from launch_ros.events.lifecycle import ChangeState
except ImportError as exc:  # what CI sees: launch/launch_ros come only with a ROS 2 install
    pytest.skip(
        f"ROS 2 `launch`/`launch_ros` are not importable ({exc}); they ship with a ROS 2 install "
        "(e.g. /opt/ros/kilted), not with PyPI", allow_module_level=True)

from lifecycle_msgs.msg import Transition

from specprune_ros.ros.parameters import configs_from_values, read_params_file

LAUNCH_FILE = REPO_ROOT / "launch" / "sim.launch.py"
SHARE = INSTALL_PREFIX / "share" / "specprune_ros"
EXPECTED_ARGUMENTS = {
    "suite", "task_id", "init_state", "checkpoint", "preset", "proportional", "merge", "unnorm_key", "fake_policy", "device",
    "max_steps", "seed", "auto_reset", "publish_every_step", "sim_python", "sim_env_script",
    "libero_params_file", "log_level",
}


@pytest.fixture(scope="module")
def launch_module():
    ensure()
    spec = importlib.util.spec_from_file_location("specprune_sim_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resolve(launch_module, arguments: dict[str, str], sim_python: Path):
    ld = launch_module.generate_launch_description()
    context = LaunchContext()
    context.launch_configurations.update({"sim_python": str(sim_python), **arguments})
    opaque = None
    for entity in ld.entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.execute(context)
        elif isinstance(entity, OpaqueFunction):
            opaque = entity
    actions = opaque.execute(context)
    (bridge,) = [a for a in actions if isinstance(a, ExecuteProcess) and not isinstance(a, launch_ros.actions.Node)]
    (node,) = [a for a in actions if isinstance(a, launch_ros.actions.LifecycleNode)]
    node._perform_substitutions(context)
    cmd = [launch.utilities.perform_substitutions(context, part) for part in bridge.cmd]
    files = [arg for arg, is_file in node._Node__expanded_parameter_arguments]
    assert len(files) == 1, files
    return actions, cmd, node, files, read_params_file(files[0])


@pytest.fixture
def sim_python(tmp_path) -> Path:
    py = tmp_path / "venv-sim" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text("#!/bin/sh\n")
    py.chmod(0o755)
    return py


def test_every_argument_is_declared_with_a_description(launch_module):
    arguments = launch_module.generate_launch_description().get_launch_arguments()
    assert {a.name for a in arguments} == EXPECTED_ARGUMENTS
    for argument in arguments:
        assert argument.description and len(argument.description) > 15, argument.name
    defaults = {a.name: "".join(s.perform(LaunchContext()) for s in a.default_value) for a in arguments}
    assert defaults["suite"] == "libero_spatial" and defaults["fake_policy"] == "false"
    assert defaults["libero_params_file"] == str(SHARE / "config" / "libero.yaml")
    assert defaults["sim_python"].endswith(".venv-sim/bin/python")


def test_starts_the_bridge_in_the_sim_venv_and_the_policy_on_sim_time(launch_module, sim_python):
    actions, cmd, node, files, overrides = _resolve(
        launch_module,
        {"suite": "libero_goal", "task_id": "3", "init_state": "5", "checkpoint": "/models/oft-goal", "preset": "paper",
         "proportional": "true", "merge": "true"},
        sim_python,
    )
    assert str(sim_python) in cmd and f"VENV={sim_python.parent.parent}" in cmd
    assert cmd[cmd.index(str(sim_python)) + 1 : cmd.index(str(sim_python)) + 3] == ["-m", "specprune_ros.sim.libero_node"]
    assert {"suite:='libero_goal'", "task_id:=3", "init_state:=5"} <= {cmd[i + 1] for i, a in enumerate(cmd) if a == "-p"}
    assert "action_chunk:=/specprune_policy/action_chunk" in cmd

    assert node.node_executable == "policy_node" and node.node_name == "/specprune_policy"
    preset = read_params_file(SHARE / "config" / "libero.yaml")
    run = {
        "use_sim_time": True, "checkpoint": "/models/oft-goal", "preset": "paper", "proportional": True, "merge": True,
        "unnorm_key": "libero_goal_no_noops", "device": "cpu", "fake_policy": False, "autostart": False,
    }
    assert overrides == {**preset, **run}  # the LIBERO preset with this run on top, in one file
    node_cfg, policy_kw = configs_from_values(overrides)
    assert policy_kw["flip"] and policy_kw["center_crop"] and policy_kw["libero_gripper"] and node_cfg.dry_run
    configure = [a for a in actions if isinstance(a, EmitEvent)]
    assert [e.event.transition_id for e in configure] == [Transition.TRANSITION_CONFIGURE]
    assert isinstance(configure[0].event, ChangeState)
    (handler,) = [a for a in actions if isinstance(a, RegisterEventHandler)]
    assert [e.event.transition_id for e in handler.event_handler.entities] == [Transition.TRANSITION_ACTIVATE]


def test_bad_arguments_fail_with_a_clear_message(launch_module, sim_python, tmp_path):
    with pytest.raises(ValueError, match="checkpoint:=.*fake_policy:=true"):
        _resolve(launch_module, {}, sim_python)
    with pytest.raises(ValueError, match="task_id:='three' must be an integer"):
        _resolve(launch_module, {"fake_policy": "true", "task_id": "three"}, sim_python)
    with pytest.raises(RuntimeError, match='"suite" provided value "libero_spatail" is not valid'):
        _resolve(launch_module, {"suite": "libero_spatail"}, sim_python)
    with pytest.raises(FileNotFoundError, match="make sim-setup"):
        _resolve(launch_module, {"fake_policy": "true"}, tmp_path / "nowhere" / "python")
