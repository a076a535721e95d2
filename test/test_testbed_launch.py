"""launch/testbed.launch.py: every argument described, the policy node's parameters valid; the real launch
packages (not on PyPI) are exercised where they are importable."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from specprune_ros.ros.parameters import configs_from_values, unknown_parameters
from specprune_ros.testbed.ros_bridge import PARAM_DOC, policy_node_parameters
from specprune_ros.testbed.task import JOINT_NAMES

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
