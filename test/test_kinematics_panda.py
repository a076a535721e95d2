"""Kinematics on the Panda URDF written from Franka's DH table: FK check value, Jacobian vs finite differences, IK."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from specprune_ros.core.kinematics import KinematicModel, KinematicsError

URDF = (Path(__file__).parent / "fixtures" / "panda.urdf").read_text()
ARM = tuple(f"panda_joint{i}" for i in range(1, 8))
READY = np.array([0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4])


@pytest.fixture
def tcp() -> KinematicModel:
    return KinematicModel(URDF, "panda_hand_tcp", ARM)


def test_ready_pose_check_values(tcp):
    flange = tcp.frame_pose(READY, "panda_link8")
    np.testing.assert_allclose(flange.position, [0.3069, 0.0, 0.5903], atol=5e-5)
    pose = tcp.frame_pose(READY)
    np.testing.assert_allclose(pose.position, [0.3069, 0.0, 0.4869], atol=5e-5)
    # the TCP points straight down at the ready pose: z axis = -z of the base
    np.testing.assert_allclose(pose.rotation[:, 2], [0, 0, -1], atol=1e-9)
    # axis-angle of a rotation by pi about x
    np.testing.assert_allclose(np.abs(pose.axis_angle), [math.pi, 0, 0], atol=1e-6)


def test_named_positions_equal_array(tcp):
    named = {n: v for n, v in zip(ARM, READY)}
    named["panda_finger_joint1"] = 0.04
    np.testing.assert_allclose(tcp.frame_pose(named).position, tcp.frame_pose(READY).position)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jacobian_twist_matches_finite_differences(tcp, seed):
    rng = np.random.default_rng(seed)
    q = READY + rng.uniform(-0.3, 0.3, size=7)
    qdot = rng.uniform(-0.5, 0.5, size=7)
    h = 1e-6
    analytic = tcp.ee_twist(q, qdot)
    numeric = tcp.ee_twist_fd(q - qdot * h / 2, q + qdot * h / 2, h)
    np.testing.assert_allclose(analytic, numeric, atol=1e-6)
    assert np.linalg.norm(analytic[:3]) > 1e-3  # a real motion, not a trivially zero comparison
    lin, ang = KinematicModel.speed(analytic)
    assert lin == pytest.approx(np.linalg.norm(numeric[:3]), abs=1e-6)
    assert ang == pytest.approx(np.linalg.norm(numeric[3:]), abs=1e-6)


def test_dls_ik_realises_twist(tcp):
    twist = np.array([0.05, -0.02, 0.03, 0.0, 0.1, -0.05])
    qdot = tcp.ik_velocity(READY, twist, damping=1e-4)
    np.testing.assert_allclose(tcp.ee_twist(READY, qdot), twist, atol=1e-5)


def test_integrate_twists_moves_ee_and_respects_limits(tcp):
    twists = np.tile([0.1, 0.0, 0.0, 0.0, 0.0, 0.0], (10, 1))  # 10 steps of 0.1 m/s along +x
    pos, vel = tcp.integrate_twists(READY, twists, dt=0.05)
    assert pos.shape == (10, 7) and vel.shape == (10, 7)
    moved = tcp.frame_pose(pos[-1]).position - tcp.frame_pose(READY).position
    np.testing.assert_allclose(moved, [0.05, 0, 0], atol=2e-3)
    # a tiny joint velocity bound: every step's |qdot| stays within it
    pos2, vel2 = tcp.integrate_twists(READY, twists, dt=0.05, max_joint_velocity=0.01)
    assert np.all(np.abs(vel2) <= 0.01 + 1e-12)
    assert np.all(pos2 >= tcp.lower - 1e-12) and np.all(pos2 <= tcp.upper + 1e-12)


def test_errors_name_the_problem():
    with pytest.raises(KinematicsError, match="not_a_frame"):
        KinematicModel(URDF, "not_a_frame")
    with pytest.raises(KinematicsError, match="panda_joint9"):
        KinematicModel(URDF, "panda_hand_tcp", ARM + ("panda_joint9",))
    with pytest.raises(KinematicsError, match="URDF"):
        KinematicModel("hello", "panda_hand_tcp")
    model = KinematicModel(URDF, "panda_hand_tcp", ARM)
    with pytest.raises(KinematicsError, match="panda_joint7"):
        model.arm_positions({n: 0.0 for n in ARM[:6]})
