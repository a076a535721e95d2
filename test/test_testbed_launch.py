"""launch/testbed.launch.py: every argument described, the policy node's parameters valid; the real launch
packages (not on PyPI) are exercised where they are importable."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from specprune_ros.ros.parameters import configs_from_values, unknown_parameters
from specprune_ros.testbed.ros_bridge import PARAM_DOC, policy_node_parameters
from specprune_ros.testbed.task import JOINT_NAMES, TabletopTask

LAUNCH_FILE = Path(__file__).resolve().parents[1] / "launch" / "testbed.launch.py"


def _declared_arguments() -> dict[str, str]:
    tree = ast.parse(LAUNCH_FILE.read_text())
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeclareLaunchArgument":
            name = ast.literal_eval(node.args[0])
            desc = next((k.value for k in node.keywords if k.arg == "description"), None)
            out[name] = ast.literal_eval(desc) if desc is not None else ""
    return out


def test_every_launch_argument_has_a_description():
    args = _declared_arguments()
    assert {"checkpoint", "preset", "seed", "episodes", "max_steps", "control_rate", "fake_policy"} <= set(args)
    assert all(len(d) > 15 for d in args.values()), args


def test_policy_node_parameters_are_valid_node_parameters():
    values = policy_node_parameters("checkpoints/testbed", "aggressive")
    assert unknown_parameters(values) == []
    assert values["episode_status_topic"] == "/episode_status" and values["honor_requery"] is False
    node_cfg, policy_kw = configs_from_values(values)
    assert node_cfg.ee_frame == "tcp" and tuple(node_cfg.arm_joints) == JOINT_NAMES[:4]
    assert tuple(node_cfg.gripper_joints) == JOINT_NAMES[4:] and tuple(node_cfg.gripper_scales) == (1.0, -1.0)
    assert policy_kw["preset"] == "aggressive" and policy_kw["checkpoint"] == "checkpoints/testbed"
    assert set(PARAM_DOC) >= {"seed", "episodes", "control_rate", "action_chunk_topic"}


def test_policy_node_proprio_matches_the_task():
    """The node's proprio (joint states -> URDF FK, libero layout, gripper scales) equals the task's."""
    import numpy as np

    from specprune_ros.core.kinematics import KinematicModel
    from specprune_ros.core.proprio import ProprioBuilder, ProprioConfig
    from specprune_ros.testbed.task import GANTRY_URDF, TabletopTask

    values = policy_node_parameters("x")
    cfg = ProprioConfig(sources=tuple(values["proprio_sources"]), gripper_joints=tuple(values["gripper_joints"]),
                        gripper_scales=tuple(values["gripper_scales"]))
    builder = ProprioBuilder(cfg, KinematicModel(GANTRY_URDF, values["ee_frame"], tuple(values["arm_joints"])))
    task = TabletopTask(8)
    for a in ([1, 0.3, -0.5, 0, 0, 0.8, 1.0], [-0.4, 1, 0.5, 0, 0, -0.2, -1.0]):
        task.step(np.array(a))
        vec = builder.vector(dict(zip(JOINT_NAMES, task.joint_positions())))
        np.testing.assert_allclose(vec, task.proprio(), atol=1e-6)


def test_launch_description_with_real_launch_packages():
    try:
        import launch  # noqa: F401
        import launch_ros  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"ROS 2 `launch`/`launch_ros` are not importable ({exc}); they come with a ROS 2 install, "
                    "not with PyPI")
    spec = importlib.util.spec_from_file_location("testbed_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ld = module.generate_launch_description()
    names = {a.name for a in ld.entities if a.__class__.__name__ == "DeclareLaunchArgument"}
    assert names == set(_declared_arguments())


def test_policy_node_control_period_follows_the_bridge_rate():
    assert policy_node_parameters("x")["control_dt"] == 0.05
    values = policy_node_parameters("x", control_rate=5.0)
    assert values["control_dt"] == 0.2  # re-queries after the bridge's 8 rows, not after 8 steps of 0.05 s
    assert configs_from_values(values)[1]["control_dt"] == 0.2
    with pytest.raises(ValueError, match=r"control_rate=0.05 must lie in \[0.1, 200\] Hz"):
        policy_node_parameters("x", control_rate=0.05)


def test_launch_file_gives_both_nodes_the_control_rate(monkeypatch):
    """The launch file's nodes, built with stand-ins for the launch packages (they are not on PyPI)."""
    import sys
    import types

    made = []

    class LaunchConfiguration:
        def __init__(self, name: str) -> None:
            self.name = name

        def perform(self, context) -> str:
            return context.launch_configurations[self.name]

    class DeclareLaunchArgument:
        def __init__(self, name: str, default_value: str = "", **_kw) -> None:
            self.name, self.default_value = name, default_value

    stubs = {"launch": dict(LaunchContext=object, LaunchDescription=list),
             "launch.actions": dict(DeclareLaunchArgument=DeclareLaunchArgument, OpaqueFunction=object),
             "launch.substitutions": dict(LaunchConfiguration=LaunchConfiguration),
             "launch_ros": {}, "launch_ros.actions": dict(Node=lambda **kw: made.append(kw))}
    for name, attrs in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("testbed_launch_stub", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    context = types.SimpleNamespace(launch_configurations={a.name: a.default_value for a in module.launch_arguments()})
    context.launch_configurations.update(control_rate="5.0", fake_policy="true")
    module._nodes(context)
    bridge, policy = ({**k["parameters"][0], "name": k["name"]} for k in made)
    assert bridge["name"] == "testbed_sim_node" and bridge["control_rate"] == 5.0
    assert policy["name"] == "specprune_policy" and policy["control_dt"] == 0.2


def test_ros_loop_gives_both_nodes_the_control_rate_and_scales_its_deadline():
    from specprune_ros.testbed.ros_loop import bridge_command, episode_deadline

    assert "control_rate:=5.0" in bridge_command(0, 1, 240, 5.0)
    assert episode_deadline(2400, 20.0) > 2400 / 20.0 * 2 and episode_deadline(240, 5.0) > 240 / 5.0 * 2
    assert episode_deadline(16, 20.0) < episode_deadline(240, 20.0)


def test_a_still_simulated_scene_is_not_a_frozen_camera():
    """The gantry waits for its first chunk, rendering identical frames: with the node's frozen check on, a node
    slow to receive the instruction and URDF refused them forever and the episode never started."""
    from specprune_ros.core.sync import SyncConfig, Synchronizer

    values = policy_node_parameters("x")
    sync = Synchronizer(SyncConfig(views=("primary", "wrist"), require_joint_states=False,
                                   frozen_timeout=values["frozen_timeout"]))
    sync.set_instruction("put the red cube on the blue plate")
    still = TabletopTask(3).render()
    for k in range(100):  # 5 s of the same picture at 20 Hz
        for view in ("primary", "wrist"):
            sync.add_image(view, 10.0 + 0.05 * k, still[view])
    assert sync.sync(10.0 + 0.05 * 99 + 0.01).observation.stamp == pytest.approx(14.95)
