"""The proprio vector a checkpoint expects, and the measured end-effector speed, from joint states.

Pure Python (no ROS). A proprio vector is the concatenation, in the configured order, of *sources*:

==================== ====================== ===================================================
source               width                  value
==================== ====================== ===================================================
``joint_positions``  len(joints)            positions of ``joints``, in that order (rad / m)
``joint_velocities`` len(joints)            velocities of ``joints`` (rad/s, m/s; 0 if absent)
``ee_position``      3                      FK position of the EE frame in the URDF root frame
                                            plus ``ee_position_offset`` (m)
``ee_axis_angle``    3                      EE orientation as axis * angle (rad), angle in [0, pi]
                                            (principal logarithm of the rotation)
``ee_axis_angle_libero`` 3                  EE orientation in LIBERO's training convention: quaternion
                                            with ``x >= 0``, then angle ``2 acos(w)`` in [0, 2 pi]
                                            (:func:`libero_axis_angle`)
``ee_quaternion``    4                      EE orientation as a unit quaternion (x, y, z, w), w >= 0
``gripper``          len(gripper_joints)    positions of ``gripper_joints`` times ``gripper_scales``
==================== ====================== ===================================================

The LIBERO checkpoints use ``ee_position, ee_axis_angle_libero, gripper`` (8-D, the ``libero`` layout) with
the two finger joints. Their training data holds robosuite's ``quat2axisangle`` of MuJoCo's end-effector
quaternion as MuJoCo reports it (``angle = 2 acos(w)`` in [0, 2 pi], ``axis = xyz / sqrt(1 - w^2)``); with
the gripper pointing down MuJoCo's ``w`` changes sign freely while ``x`` stays above 0.8, so choosing the
quaternion sign with ``x >= 0`` reproduces it from a rotation matrix. The principal logarithm
(``ee_axis_angle``) flips the axis whenever MuJoCo's ``w < 0``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import math

import numpy as np

from .kinematics import KinematicModel, KinematicsError
from .types import InputError

SOURCES = (
    "joint_positions", "joint_velocities", "ee_position", "ee_axis_angle", "ee_axis_angle_libero", "ee_quaternion", "gripper"
)
#: sources that need forward kinematics (a URDF and an EE frame)
FK_SOURCES = ("ee_position", "ee_axis_angle", "ee_axis_angle_libero", "ee_quaternion")
#: named layouts
LAYOUTS: dict[str, tuple[str, ...]] = {
    "libero": ("ee_position", "ee_axis_angle_libero", "gripper"),
    "joints": ("joint_positions",),
    "joints_gripper": ("joint_positions", "gripper"),
}


@dataclass(frozen=True)
class ProprioConfig:
    """How to build the proprio vector.

    Attributes:
        sources: source names in order (see the module table), or a single layout name from ``LAYOUTS``
            (``("libero",)``); empty: the checkpoint takes no proprio.
        joints: joints for ``joint_positions`` / ``joint_velocities``.
        gripper_joints: joints for ``gripper``.
        gripper_scales: one multiplier per gripper joint (empty: all 1).
        ee_position_offset: added to the FK position, e.g. the robot base position in the training world.
    """

    sources: tuple[str, ...] = LAYOUTS["libero"]
    joints: tuple[str, ...] = ()
    gripper_joints: tuple[str, ...] = ()
    gripper_scales: tuple[float, ...] = ()
    ee_position_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        sources = tuple(self.sources)
        if len(sources) == 1 and sources[0] in LAYOUTS:
            sources = LAYOUTS[sources[0]]
        object.__setattr__(self, "sources", sources)
        bad = [s for s in sources if s not in SOURCES]
        if bad:
            raise ValueError(f"unknown proprio source(s) {bad}; choose from {list(SOURCES)} or a layout {list(LAYOUTS)}")
        if len(set(sources)) != len(sources):
            raise ValueError(f"proprio sources repeat: {list(sources)}")
        if any(s in sources for s in ("joint_positions", "joint_velocities")) and not self.joints:
            raise ValueError("proprio source joint_positions/joint_velocities needs a non-empty joint list (proprio_joints)")
        if "gripper" in sources and not self.gripper_joints:
            raise ValueError("proprio source 'gripper' needs gripper_joints (e.g. [panda_finger_joint1, panda_finger_joint2])")
        if self.gripper_scales and len(self.gripper_scales) != len(self.gripper_joints):
            raise ValueError(
                f"gripper_scales has {len(self.gripper_scales)} values for {len(self.gripper_joints)} gripper joints"
            )
        if len(self.ee_position_offset) != 3:
            raise ValueError(f"ee_position_offset must have 3 values, got {list(self.ee_position_offset)}")

    @property
    def dim(self) -> int:
        widths = {
            "joint_positions": len(self.joints),
            "joint_velocities": len(self.joints),
            "ee_position": 3,
            "ee_axis_angle": 3,
            "ee_axis_angle_libero": 3,
            "ee_quaternion": 4,
            "gripper": len(self.gripper_joints),
        }
        return sum(widths[s] for s in self.sources)

    @property
    def needs_kinematics(self) -> bool:
        return any(s in FK_SOURCES for s in self.sources)

    def layout(self) -> list[str]:
        """Name of each element of the vector, e.g. ``["ee_position.x", ..., "gripper.panda_finger_joint1"]``."""
        names: list[str] = []
        for s in self.sources:
            if s in ("joint_positions", "joint_velocities"):
                names += [f"{s}.{j}" for j in self.joints]
            elif s == "ee_position":
                names += [f"{s}.{a}" for a in "xyz"]
            elif s in ("ee_axis_angle", "ee_axis_angle_libero"):
                names += [f"{s}.{a}" for a in "xyz"]
            elif s == "ee_quaternion":
                names += [f"{s}.{a}" for a in "xyzw"]
            else:
                names += [f"{s}.{j}" for j in self.gripper_joints]
        return names


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """Axis-angle vector (3,) of a unit quaternion (x, y, z, w) taken as it is: angle ``2 acos(w)`` in [0, 2 pi].

    robosuite's ``quat2axisangle``, the convention of the LIBERO training data: ``w`` is clipped to
    [-1, 1], ``axis = xyz / sqrt(1 - w^2)``, and a (near) identity rotation gives zeros. ``q`` and ``-q``
    give different vectors (same rotation) unless the angle is pi.
    """
    q = np.asarray(quat_xyzw, dtype=np.float64)
    if q.shape != (4,) or not np.all(np.isfinite(q)):
        raise ValueError(f"expected a finite (4,) quaternion (x, y, z, w), got {q.tolist()}")
    w = float(np.clip(q[3], -1.0, 1.0))
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * math.acos(w) / den  # (3,)


def libero_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """LIBERO's axis-angle (3,) of a rotation given as a unit quaternion (x, y, z, w) of either sign.

    The sign is chosen so that ``x >= 0`` (MuJoCo's choice throughout LIBERO's workspace, where the
    gripper points down and ``x > 0.8``), then :func:`quat_to_axis_angle` applies robosuite's formula.
    """
    q = np.asarray(quat_xyzw, dtype=np.float64)
    if q.shape == (4,) and q[0] < 0:
        q = -q
    return quat_to_axis_angle(q)


def check_joint_values(values: Mapping[str, float], needed: tuple[str, ...] | list[str], what: str = "position") -> None:
    """Raise :class:`InputError` if any needed joint is missing or not finite."""
    missing = [j for j in needed if j not in values]
    if missing:
        raise InputError(
            f"joint state lacks joint(s) {missing} (has {sorted(values)}); check the joint names in the parameters"
        )
    bad = [j for j in needed if not np.isfinite(values[j])]
    if bad:
        raise InputError(f"joint {what}(s) of {bad} are NaN or inf: {[values[j] for j in bad]}")


class ProprioBuilder:
    """Turns named joint positions/velocities into the proprio vector and the EE speed."""

    def __init__(self, config: ProprioConfig, kinematics: KinematicModel | None = None) -> None:
        self.config = config
        self.kinematics = kinematics

    def required_joints(self) -> list[str]:
        """Joints whose positions must be present, finite and fresh: the proprio's, and with kinematics the arm
        joints and every joint of the chain to the end-effector frame (its pose depends on each)."""
        names: list[str] = list(self.config.joints) + list(self.config.gripper_joints)
        if self.kinematics is not None:
            names += list(self.kinematics.pose_joints)
        return list(dict.fromkeys(names))

    def vector(self, positions: Mapping[str, float], velocities: Mapping[str, float] | None = None) -> np.ndarray:
        """Proprio vector, shape (config.dim,). Raises InputError for missing/non-finite joints or no URDF."""
        cfg = self.config
        if cfg.needs_kinematics and self.kinematics is None:
            raise InputError(
                "the proprio layout needs forward kinematics but no robot_description (URDF) has arrived; "
                "publish it (robot_state_publisher does) or set robot_description_file"
            )
        check_joint_values(positions, self.required_joints())
        try:
            pose = self.kinematics.frame_pose(dict(positions)) if cfg.needs_kinematics else None
        except KinematicsError as exc:  # e.g. a NaN on an EE-chain joint that is not among the listed ones
            raise InputError(str(exc)) from None
        parts: list[np.ndarray] = []
        for s in cfg.sources:
            if s == "joint_positions":
                parts.append(np.array([positions[j] for j in cfg.joints], dtype=np.float64))
            elif s == "joint_velocities":
                vel = velocities or {}
                parts.append(np.array([vel.get(j, 0.0) for j in cfg.joints], dtype=np.float64))
            elif s == "ee_position":
                parts.append(pose.position + np.asarray(cfg.ee_position_offset, dtype=np.float64))
            elif s == "ee_axis_angle":
                parts.append(pose.axis_angle)
            elif s == "ee_axis_angle_libero":
                parts.append(libero_axis_angle(pose.quaternion_xyzw))
            elif s == "ee_quaternion":
                parts.append(pose.quaternion_xyzw)
            else:  # gripper
                scales = cfg.gripper_scales or (1.0,) * len(cfg.gripper_joints)
                parts.append(np.array([positions[j] * k for j, k in zip(cfg.gripper_joints, scales)], dtype=np.float64))
        out = np.concatenate(parts) if parts else np.zeros(0)
        if not np.all(np.isfinite(out)):
            raise InputError(f"proprio vector is not finite: {out.tolist()}")
        return out

    def ee_speed(
        self,
        positions: Mapping[str, float],
        velocities: Mapping[str, float] | None,
        previous: tuple[float, Mapping[str, float]] | None = None,
        stamp: float | None = None,
    ) -> tuple[float, float] | None:
        """``(linear m/s, angular rad/s)`` of the EE frame, or None without kinematics or enough data.

        Uses ``J(q) qdot`` when every arm joint has a finite velocity; otherwise the finite difference
        between ``previous = (stamp, positions)`` and the current positions at ``stamp``.
        """
        kin = self.kinematics
        if kin is None:
            return None
        check_joint_values(positions, kin.pose_joints)
        if velocities is not None and all(j in velocities and np.isfinite(velocities[j]) for j in kin.arm_joints):
            qdot = np.array([velocities[j] for j in kin.arm_joints])
            return KinematicModel.speed(kin.ee_twist(dict(positions), qdot))
        if previous is None or stamp is None:
            return None
        prev_stamp, prev_positions = previous
        dt = stamp - prev_stamp
        if dt <= 0 or any(j not in prev_positions or not np.isfinite(prev_positions[j]) for j in kin.pose_joints):
            return None
        return KinematicModel.speed(kin.ee_twist_fd(dict(prev_positions), dict(positions), dt))
