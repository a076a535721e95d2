"""Proprio vectors from joint states (LIBERO layout via FK, joint layouts) and the measured EE speed."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from specprune_ros.core.kinematics import KinematicModel
from specprune_ros.core.proprio import ProprioBuilder, ProprioConfig
from specprune_ros.core.types import InputError

URDF = (Path(__file__).parent / "fixtures" / "panda.urdf").read_text()
ARM = tuple(f"panda_joint{i}" for i in range(1, 8))
FINGERS = ("panda_finger_joint1", "panda_finger_joint2")
READY = [0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4]


def _positions(q=READY, fingers=(0.04, 0.04)) -> dict[str, float]:
    out = dict(zip(ARM, q))
    out.update(zip(FINGERS, fingers))
    return out


@pytest.fixture
def kin() -> KinematicModel:
    return KinematicModel(URDF, "panda_hand_tcp", ARM)


def test_libero_layout(kin):
    cfg = ProprioConfig(sources=("libero",), gripper_joints=FINGERS, gripper_scales=(1.0, -1.0),
                        ee_position_offset=(-0.5, 0.0, 1.0))
    assert cfg.dim == 8
    assert cfg.layout()[:3] == ["ee_position.x", "ee_position.y", "ee_position.z"]
    vec = ProprioBuilder(cfg, kin).vector(_positions(fingers=(0.03, 0.03)))
    assert vec.shape == (8,)
    np.testing.assert_allclose(vec[:3], [0.3069 - 0.5, 0.0, 0.4869 + 1.0], atol=5e-5)
    np.testing.assert_allclose(np.abs(vec[3:6]), [math.pi, 0, 0], atol=1e-6)
    np.testing.assert_allclose(vec[6:], [0.03, -0.03])


def test_joint_layout_with_quaternion(kin):
    cfg = ProprioConfig(sources=("joint_positions", "ee_quaternion", "gripper"), joints=ARM, gripper_joints=FINGERS[:1])
    vec = ProprioBuilder(cfg, kin).vector(_positions())
    assert vec.shape == (cfg.dim,) == (12,)
    np.testing.assert_allclose(vec[:7], READY)
    assert np.linalg.norm(vec[7:11]) == pytest.approx(1.0)
    np.testing.assert_allclose(vec[11], 0.04)


def test_bad_joint_states_raise_input_error(kin):
    builder = ProprioBuilder(ProprioConfig(sources=("libero",), gripper_joints=FINGERS), kin)
    pos = _positions()
    del pos["panda_joint4"]
    with pytest.raises(InputError, match="panda_joint4"):
        builder.vector(pos)
    pos = _positions()
    pos["panda_finger_joint2"] = float("nan")
    with pytest.raises(InputError, match="NaN or inf"):
        builder.vector(pos)
    pos = _positions()
    pos["panda_joint1"] = float("inf")
    with pytest.raises(InputError, match="panda_joint1"):
        builder.vector(pos)


def test_fk_layout_without_urdf_is_refused():
    builder = ProprioBuilder(ProprioConfig(sources=("libero",), gripper_joints=FINGERS), None)
    with pytest.raises(InputError, match="robot_description"):
        builder.vector(_positions())


def test_config_validation_names_the_value():
    with pytest.raises(ValueError, match="ee_velocity"):
        ProprioConfig(sources=("ee_velocity",))
    with pytest.raises(ValueError, match="gripper_joints"):
        ProprioConfig(sources=("gripper",))
    with pytest.raises(ValueError, match="gripper_scales has 1"):
        ProprioConfig(sources=("gripper",), gripper_joints=FINGERS, gripper_scales=(1.0,))
    assert ProprioConfig(sources=()).dim == 0


def test_ee_speed_jacobian_and_finite_difference_agree(kin):
    builder = ProprioBuilder(ProprioConfig(sources=("libero",), gripper_joints=FINGERS), kin)
    rng = np.random.default_rng(3)
    qdot = rng.uniform(-0.4, 0.4, size=7)
    dt = 1e-4
    q0 = np.array(READY)
    q1 = q0 + qdot * dt
    vel = dict(zip(ARM, qdot))
    from_jacobian = builder.ee_speed(_positions(q1), vel)
    from_fd = builder.ee_speed(_positions(q1), None, previous=(10.0, _positions(q0)), stamp=10.0 + dt)
    assert from_jacobian is not None and from_fd is not None
    assert from_jacobian[0] > 0.01
    np.testing.assert_allclose(from_fd, from_jacobian, rtol=2e-3)
    # no velocities and no previous sample: unknown, not zero
    assert builder.ee_speed(_positions(), None) is None
    # NaN velocity falls back to finite differences
    vel_nan = dict(vel, panda_joint3=float("nan"))
    np.testing.assert_allclose(
        builder.ee_speed(_positions(q1), vel_nan, previous=(0.0, _positions(q0)), stamp=dt), from_fd
    )
