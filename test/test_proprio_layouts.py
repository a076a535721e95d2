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


# ------------------------------------------------------------------ LIBERO's axis-angle convention
def _x_axis_urdf(axis: str = "1 0 0") -> str:
    """One revolute joint ``j`` about ``axis`` from ``base`` to ``tip``: FK rotation = rotation about axis by q."""
    return f"""<robot name="one_joint">
  <link name="base"/><link name="tip"/>
  <joint name="j" type="revolute"><parent link="base"/><child link="tip"/><axis xyz="{axis}"/>
    <limit lower="-7" upper="7" effort="1" velocity="1"/></joint>
</robot>"""


def test_libero_layout_uses_the_training_axis_angle_convention():
    assert ProprioConfig(sources=("libero",), gripper_joints=FINGERS[:1]).sources == (
        "ee_position", "ee_axis_angle_libero", "gripper"
    )
    kin1 = KinematicModel(_x_axis_urdf(), "tip", ("j",))
    libero = ProprioBuilder(ProprioConfig(sources=("ee_axis_angle_libero",)), kin1)
    principal = ProprioBuilder(ProprioConfig(sources=("ee_axis_angle",)), kin1)
    # about +x by theta: MuJoCo's quaternion (sin(theta/2), 0, 0, cos(theta/2)) has x > 0 for theta in (0, 2 pi)
    # and w < 0 beyond pi; robosuite's formula then gives theta * x, the principal log (theta - 2 pi) * x
    for theta in (0.4, 2.0, 3.0, 3.4, 4.5, 6.0):
        np.testing.assert_allclose(libero.vector({"j": theta}), [theta, 0, 0], atol=1e-9)
        want = theta if theta < math.pi else theta - 2 * math.pi
        np.testing.assert_allclose(principal.vector({"j": theta}), [want, 0, 0], atol=1e-9)


def test_libero_axis_angle_on_tilted_axes_reproduces_the_rotation():
    axis = np.array([1.0, 0.3, -0.2]) / np.linalg.norm([1.0, 0.3, -0.2])
    kin1 = KinematicModel(_x_axis_urdf(" ".join(str(a) for a in axis)), "tip", ("j",))
    builder = ProprioBuilder(ProprioConfig(sources=("ee_axis_angle_libero",)), kin1)
    import pinocchio as pin

    for theta in (1.0, 3.3, 5.0):
        vec = builder.vector({"j": theta})
        np.testing.assert_allclose(vec, theta * axis, atol=1e-9)  # angle 2 acos(w) in [0, 2 pi], x >= 0
        np.testing.assert_allclose(pin.exp3(vec), kin1.frame_pose({"j": theta}).rotation, atol=1e-9)


def test_quaternion_helpers_match_robosuite_on_hand_made_quaternions():
    from specprune_ros.core.proprio import libero_axis_angle, quat_to_axis_angle
    from specprune_ros.sim import protocol

    assert protocol.quat_to_axis_angle is quat_to_axis_angle  # one implementation, shared with the sim path
    for angle in (0.5, 2.9, 3.5, 5.9):  # w > 0 for the first two, w < 0 for the last two
        q = np.array([math.sin(angle / 2) * 0.96, math.sin(angle / 2) * 0.28, 0.0, math.cos(angle / 2)])  # x > 0
        want = angle * np.array([0.96, 0.28, 0.0])
        np.testing.assert_allclose(quat_to_axis_angle(q), want, atol=1e-12)  # MuJoCo's quaternion as it comes
        np.testing.assert_allclose(libero_axis_angle(q), want, atol=1e-12)
        np.testing.assert_allclose(libero_axis_angle(-q), want, atol=1e-12)  # sign of the FK quaternion ignored
    np.testing.assert_allclose(libero_axis_angle(np.array([0.0, 0.0, 0.0, -1.0])), np.zeros(3))
    with pytest.raises(ValueError, match="quaternion"):
        libero_axis_angle(np.array([1.0, 0.0, 0.0]))
