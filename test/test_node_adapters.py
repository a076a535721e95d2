"""Adapter math on a known chunk: twist scaling and clipping, IK trajectory, gripper map (no ROS)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from specprune_ros.core.kinematics import KinematicModel
from specprune_ros.ros.adapters import GripperMap, TwistLimits, joint_trajectory, rows_to_twists

URDF = (Path(__file__).parent / "fixtures" / "panda.urdf").read_text()
ARM = tuple(f"panda_joint{i}" for i in range(1, 8))
READY = np.array([0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4])

CHUNK = np.array(
    [
        [0.02, 0.00, 0.00, 0.0, 0.0, 0.0, -1.0],  # small: passes unclipped
        [0.30, 0.40, 0.00, 0.0, 0.0, 0.6, -1.0],  # |lin| 0.5 m/s -> clipped to 0.1, angular 0.6 -> 0.5
        [0.00, 0.00, -0.05, 0.1, 0.0, 0.0, 1.0],
    ]
)


def test_twist_scaling_and_clipping():
    tw = rows_to_twists(CHUNK, TwistLimits(linear_scale=1.0, angular_scale=1.0, max_linear=0.1, max_angular=0.5))
    np.testing.assert_allclose(tw[0], [0.02, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(tw[1], [0.06, 0.08, 0, 0, 0, 0.5])  # direction kept, norm 0.1
    np.testing.assert_allclose(tw[2], [0, 0, -0.05, 0.1, 0, 0])
    scaled = rows_to_twists(CHUNK, TwistLimits(linear_scale=2.0, angular_scale=0.5, max_linear=1.0, max_angular=1.0))
    np.testing.assert_allclose(scaled[1], [0.6, 0.8, 0, 0, 0, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        rows_to_twists(np.full((1, 7), np.nan), TwistLimits())
    with pytest.raises(ValueError, match="shape"):
        rows_to_twists(np.zeros((2, 3)), TwistLimits())


def test_joint_trajectory_follows_ee_deltas():
    kin = KinematicModel(URDF, "panda_hand_tcp", ARM)
    dt = 0.05
    limits = TwistLimits(max_linear=0.1, max_angular=0.5)
    pos, vel, times = joint_trajectory(kin, READY, CHUNK, dt, limits, damping=1e-3, max_joint_velocity=0.0)
    assert pos.shape == (3, 7) and vel.shape == (3, 7)
    np.testing.assert_allclose(times, [0.05, 0.10, 0.15])
    # end-effector displacement equals the integral of the clipped twists (first order)
    expected = rows_to_twists(CHUNK, limits)[:, :3].sum(axis=0) * dt
    moved = kin.frame_pose(pos[-1]).position - kin.frame_pose(READY).position
    np.testing.assert_allclose(moved, expected, atol=5e-4)
    # velocities are consistent with positions
    np.testing.assert_allclose(np.diff(np.vstack([READY, pos]), axis=0) / dt, vel, atol=1e-9)


def test_joint_velocity_clip():
    kin = KinematicModel(URDF, "panda_hand_tcp", ARM)
    _, vel, _ = joint_trajectory(kin, READY, CHUNK, 0.05, TwistLimits(), max_joint_velocity=0.05)
    assert np.abs(vel).max() <= 0.05 + 1e-12
    assert np.abs(vel).max() > 0.01


def test_gripper_map():
    g = GripperMap(close_above=0.0, open_position=0.04, closed_position=0.0)
    assert [g.command(v) for v in CHUNK[:, 6]] == [0.04, 0.04, 0.0]
    with pytest.raises(ValueError):
        g.command(float("nan"))


def test_limits_and_maps_refuse_nan_and_inf():
    for kw in ({"linear_scale": float("inf")}, {"max_angular": float("nan")}, {"max_linear": -1.0}):
        with pytest.raises(ValueError, match="finite and >= 0"):
            TwistLimits(**kw)
    with pytest.raises(ValueError, match="overflow"):  # finite scale, overflowing product
        rows_to_twists(np.array([[10.0, 0, 0, 0, 0, 0, 1]]), TwistLimits(linear_scale=1e308))
    for kw in ({"open_position": float("nan")}, {"close_above": float("nan")}):
        with pytest.raises(ValueError, match="must be finite"):
            GripperMap(**kw)
