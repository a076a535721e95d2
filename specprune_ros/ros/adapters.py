"""Controller adapters: action rows -> EE twists (MoveIt Servo), joint trajectories (differential IK), gripper commands.

The math is here as plain numpy functions (no ROS types) so it is tested without ROS; the node wraps the
results in messages (see :mod:`specprune_ros.ros.conversions`). Action layout: columns 0-2 are a
translation delta (x, y, z), 3-5 a rotation delta (axis-angle / roll-pitch-yaw rates), one column the
gripper; each row is held for ``dt`` seconds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specprune_ros.core.kinematics import KinematicModel


@dataclass(frozen=True)
class TwistLimits:
    """Scale from action units to m/s and rad/s, and the norms the result is clipped to."""

    linear_scale: float = 1.0
    angular_scale: float = 1.0
    max_linear: float = 0.1
    max_angular: float = 0.5

    def __post_init__(self) -> None:
        for name in ("linear_scale", "angular_scale", "max_linear", "max_angular"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"TwistLimits.{name}={getattr(self, name)} must be finite and >= 0")


def _clip_norm(v: np.ndarray, limit: float) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v * (limit / n) if n > limit else v


def rows_to_twists(actions: np.ndarray, limits: TwistLimits) -> np.ndarray:
    """Twists (T, 6) = (vx, vy, vz, wx, wy, wz) from action rows (T, A >= 6), each part norm-clipped.

    Clipping scales the vector as a whole, so the direction of motion is kept.
    """
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 6:
        raise ValueError(f"expected action rows of shape (T, >=6), got {a.shape}")
    if not np.all(np.isfinite(a[:, :6])):
        raise ValueError("action rows contain NaN or inf; refusing to command the robot")
    out = np.zeros((a.shape[0], 6))
    for t in range(a.shape[0]):
        out[t, :3] = _clip_norm(a[t, 0:3] * limits.linear_scale, limits.max_linear)
        out[t, 3:] = _clip_norm(a[t, 3:6] * limits.angular_scale, limits.max_angular)
    if not np.all(np.isfinite(out)):  # a scale so large that the scaled action overflows
        raise ValueError("scaled action rows overflow to NaN or inf; refusing to command the robot")
    return out


def joint_trajectory(
    kinematics: KinematicModel,
    start: np.ndarray,
    actions: np.ndarray,
    dt: float,
    limits: TwistLimits,
    damping: float = 1e-2,
    max_joint_velocity: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joint-space trajectory that follows the chunk's EE deltas from ``start`` (N,) arm positions.

    Each row becomes a clipped twist (see :func:`rows_to_twists`), held for ``dt`` and integrated by
    damped-least-squares IK with joint velocities clipped to ``max_joint_velocity`` (0 = the URDF's limits)
    and positions clipped to the URDF's limits.

    Returns:
        positions (T, N), velocities (T, N), time_from_start (T,) = dt, 2 dt, ...
    """
    twists = rows_to_twists(actions, limits)  # (T, 6)
    vmax = None if max_joint_velocity <= 0 else max_joint_velocity
    pos, vel = kinematics.integrate_twists(start, twists, dt, damping=damping, max_joint_velocity=vmax)
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(vel))):
        raise ValueError("the joint trajectory is not finite; refusing to command the robot")
    times = dt * np.arange(1, twists.shape[0] + 1)  # (T,)
    return pos, vel, times


@dataclass(frozen=True)
class GripperMap:
    """Action value -> gripper command: above ``close_above`` closes, otherwise opens."""

    close_above: float = 0.0
    open_position: float = 0.04
    closed_position: float = 0.0

    def __post_init__(self) -> None:
        for name in ("close_above", "open_position", "closed_position"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"GripperMap.{name}={getattr(self, name)} must be finite")

    def command(self, value: float) -> float:
        if not np.isfinite(value):
            raise ValueError(f"gripper action {value} is not finite")
        return self.closed_position if value > self.close_above else self.open_position
