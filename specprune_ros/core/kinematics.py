"""Robot kinematics from a URDF string with Pinocchio: forward kinematics, end-effector twist, differential IK.

Pure Python (no ROS). The ROS node builds a :class:`KinematicModel` from the ``robot_description`` topic; the
bag evaluator builds the same thing from a URDF file. All poses and twists are expressed in the URDF's root
link frame (e.g. ``panda_link0``); twists are "local world aligned": the linear part is the velocity of the
frame origin, both parts expressed in root-frame axes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np


class KinematicsError(ValueError):
    """A URDF, frame or joint set that cannot be used; the message says which and what exists instead."""


def _pin():
    try:
        import pinocchio
    except ImportError as exc:  # pragma: no cover - pin is in requirements.txt
        raise KinematicsError("Pinocchio is not installed: `pip install pin` (it is in requirements.txt)") from exc
    return pinocchio


@dataclass(frozen=True)
class Pose:
    """A rigid transform of a frame in the root frame.

    Attributes:
        position: shape (3,), metres.
        rotation: shape (3, 3), rotation matrix (columns are the frame's axes in the root frame).
    """

    position: np.ndarray
    rotation: np.ndarray

    @property
    def axis_angle(self) -> np.ndarray:
        """Rotation as an axis-angle vector (axis * angle, angle in [0, pi]), shape (3,)."""
        return np.asarray(_pin().log3(self.rotation), dtype=np.float64)

    @property
    def quaternion_xyzw(self) -> np.ndarray:
        """Rotation as a unit quaternion (x, y, z, w) with w >= 0, shape (4,)."""
        pin = _pin()
        q = pin.Quaternion(self.rotation).coeffs()  # (x, y, z, w)
        q = np.asarray(q, dtype=np.float64)
        return -q if q[3] < 0 else q


class KinematicModel:
    """Kinematics of one robot for one end-effector frame.

    Args:
        urdf: the URDF document as a string (the ``robot_description`` contents).
        ee_frame: name of the end-effector frame (a link or joint of the URDF), e.g. ``panda_hand_tcp``.
        arm_joints: names of the joints that differential IK may move, in the order the node reports
            them (e.g. the 7 arm joints, excluding fingers). None: every 1-DoF joint of the model.

    Joint values are always passed by name (``Mapping[str, float]``) or as arrays in ``arm_joints`` order;
    joints of the model that are not given keep the value last given (initially the neutral value).
    """

    def __init__(self, urdf: str, ee_frame: str, arm_joints: Sequence[str] | None = None) -> None:
        pin = _pin()
        if not isinstance(urdf, str) or "<robot" not in urdf:
            raise KinematicsError("robot_description is not a URDF document (no <robot> element)")
        try:
            self.model = pin.buildModelFromXML(urdf)
        except Exception as exc:  # Pinocchio raises ValueError/RuntimeError with its own text
            raise KinematicsError(f"could not parse the URDF: {exc}") from exc
        self.data = self.model.createData()
        if not self.model.existFrame(ee_frame):
            frames = sorted({f.name for f in self.model.frames if f.name != "universe"})
            raise KinematicsError(f"end-effector frame {ee_frame!r} is not in the URDF; frames: {frames}")
        self.ee_frame = ee_frame
        self.ee_frame_id = self.model.getFrameId(ee_frame)
        # 1-DoF joints (revolute, prismatic, continuous); continuous joints have nq = 2 (cos, sin), nv = 1.
        self.joint_names: tuple[str, ...] = tuple(
            name for jid, name in enumerate(self.model.names) if jid > 0 and self.model.joints[jid].nv == 1
        )
        if arm_joints is None:
            arm_joints = self.joint_names
        unknown = [j for j in arm_joints if j not in self.joint_names]
        if unknown:
            raise KinematicsError(f"joint(s) {unknown} are not 1-DoF joints of the URDF; joints: {list(self.joint_names)}")
        if len(set(arm_joints)) != len(arm_joints):
            raise KinematicsError(f"arm joints repeat a name: {list(arm_joints)}")
        self.arm_joints: tuple[str, ...] = tuple(arm_joints)
        ids = [self.model.getJointId(j) for j in self.arm_joints]
        self._arm_idx_v = np.array([self.model.joints[i].idx_v for i in ids], dtype=np.int64)  # (N,)
        self._q = np.asarray(pin.neutral(self.model), dtype=np.float64)  # (nq,)
        #: 1-DoF joints between the root and the end-effector frame: the ones its pose depends on
        self.chain_joints: tuple[str, ...] = tuple(
            self.model.names[j] for j in self.model.supports[self.model.frames[self.ee_frame_id].parentJoint]
            if self.model.names[j] in self.joint_names
        )
        #: every joint the end-effector pose and speed depend on: the arm joints and the chain's, once each
        self.pose_joints: tuple[str, ...] = tuple(dict.fromkeys([*self.arm_joints, *self.chain_joints]))
        lower = []
        upper = []
        vmax = []
        for jid in ids:
            joint = self.model.joints[jid]
            if joint.nq == 1:
                lower.append(float(self.model.lowerPositionLimit[joint.idx_q]))
                upper.append(float(self.model.upperPositionLimit[joint.idx_q]))
            else:  # continuous joint: unbounded
                lower.append(-np.inf)
                upper.append(np.inf)
            vmax.append(float(self.model.velocityLimit[joint.idx_v]))
        #: position limits of the arm joints, shape (N,) each (inf where unbounded)
        self.lower = np.array(lower)
        self.upper = np.array(upper)
        #: velocity limits of the arm joints, shape (N,) (0 or inf where the URDF gives none)
        self.velocity_limit = np.array(vmax)

    # ----------------------------------------------------------------------------------------------
    # joint configuration
    def _set(self, q: np.ndarray, name: str, value: float) -> None:
        joint = self.model.joints[self.model.getJointId(name)]
        if joint.nq == 1:
            q[joint.idx_q] = value
        else:  # continuous: (cos, sin)
            q[joint.idx_q] = np.cos(value)
            q[joint.idx_q + 1] = np.sin(value)

    def configuration(self, positions: Mapping[str, float] | np.ndarray) -> np.ndarray:
        """Full Pinocchio configuration, shape (nq,), from named positions or an arm-order array (N,).

        Joints not given keep their last value (fingers, for example, rarely matter for the arm's FK). A NaN or
        infinite value raises :class:`KinematicsError` for a joint of the end-effector chain or of ``arm_joints``,
        and is ignored (the last value kept) for any other joint.
        """
        q = self._q.copy()
        if isinstance(positions, Mapping):
            bad = [n for n, v in positions.items() if n in self.joint_names and not np.isfinite(v)]
            needed = [n for n in bad if n in self.pose_joints]
            if needed:
                raise KinematicsError(f"joint position(s) of {needed} are NaN or inf; the end-effector pose needs them")
            for name, value in positions.items():
                if name in self.joint_names and name not in bad:
                    self._set(q, name, float(value))
        else:
            arr = np.asarray(positions, dtype=np.float64).reshape(-1)
            if arr.shape != (len(self.arm_joints),):
                raise KinematicsError(
                    f"expected {len(self.arm_joints)} arm joint values {list(self.arm_joints)}, got shape {arr.shape}"
                )
            if not np.all(np.isfinite(arr)):
                raise KinematicsError(f"arm joint values are NaN or inf: {arr.tolist()}")
            for name, value in zip(self.arm_joints, arr):
                self._set(q, name, float(value))
        self._q = q
        return q

    def arm_positions(self, positions: Mapping[str, float]) -> np.ndarray:
        """Arm joint positions in ``arm_joints`` order, shape (N,); raises if any is missing."""
        missing = [j for j in self.arm_joints if j not in positions]
        if missing:
            raise KinematicsError(f"joint state lacks arm joint(s) {missing}")
        return np.array([float(positions[j]) for j in self.arm_joints])

    # ----------------------------------------------------------------------------------------------
    # forward kinematics
    def frame_pose(self, positions: Mapping[str, float] | np.ndarray, frame: str | None = None) -> Pose:
        """Pose of ``frame`` (default: the end-effector frame) in the root frame."""
        pin = _pin()
        fid = self.ee_frame_id if frame is None else self._frame_id(frame)
        q = self.configuration(positions)
        pin.framesForwardKinematics(self.model, self.data, q)
        placement = self.data.oMf[fid]
        return Pose(np.array(placement.translation, dtype=np.float64), np.array(placement.rotation, dtype=np.float64))

    def _frame_id(self, frame: str) -> int:
        if not self.model.existFrame(frame):
            raise KinematicsError(f"frame {frame!r} is not in the URDF")
        return self.model.getFrameId(frame)

    def jacobian(self, positions: Mapping[str, float] | np.ndarray) -> np.ndarray:
        """End-effector Jacobian w.r.t. the arm joints, shape (6, N): rows (vx, vy, vz, wx, wy, wz)."""
        pin = _pin()
        q = self.configuration(positions)
        full = pin.computeFrameJacobian(self.model, self.data, q, self.ee_frame_id, pin.LOCAL_WORLD_ALIGNED)  # (6, nv)
        return np.asarray(full, dtype=np.float64)[:, self._arm_idx_v]  # (6, N)

    # ----------------------------------------------------------------------------------------------
    # end-effector velocity
    def ee_twist(self, positions: Mapping[str, float] | np.ndarray, velocities: np.ndarray) -> np.ndarray:
        """End-effector twist ``J(q) qdot``, shape (6,): (linear m/s, angular rad/s) in root-frame axes.

        ``velocities`` are the arm joint velocities in ``arm_joints`` order, shape (N,).
        """
        qdot = np.asarray(velocities, dtype=np.float64).reshape(-1)  # (N,)
        if qdot.shape != (len(self.arm_joints),):
            raise KinematicsError(f"expected {len(self.arm_joints)} joint velocities, got shape {qdot.shape}")
        return self.jacobian(positions) @ qdot  # (6, N) @ (N,) -> (6,)

    def ee_twist_fd(
        self,
        positions_before: Mapping[str, float] | np.ndarray,
        positions_after: Mapping[str, float] | np.ndarray,
        dt: float,
    ) -> np.ndarray:
        """End-effector twist from two configurations ``dt`` seconds apart (finite difference), shape (6,).

        Linear part: origin displacement / dt. Angular part: ``log3(R0^T R1)`` rotated into root axes / dt.
        """
        if not dt > 0:
            raise KinematicsError(f"finite-difference time step must be > 0, got {dt}")
        p0 = self.frame_pose(positions_before)
        p1 = self.frame_pose(positions_after)
        linear = (p1.position - p0.position) / dt
        rel = p0.rotation.T @ p1.rotation  # rotation from pose 0 to pose 1, in frame-0 axes
        angular = p0.rotation @ np.asarray(_pin().log3(rel)) / dt
        return np.concatenate([linear, angular])

    @staticmethod
    def speed(twist: np.ndarray) -> tuple[float, float]:
        """``(|linear| m/s, |angular| rad/s)`` of a twist, shape (6,)."""
        t = np.asarray(twist, dtype=np.float64)
        return float(np.linalg.norm(t[:3])), float(np.linalg.norm(t[3:6]))

    # ----------------------------------------------------------------------------------------------
    # differential inverse kinematics
    def ik_velocity(
        self, positions: Mapping[str, float] | np.ndarray, twist: np.ndarray, damping: float = 1e-2
    ) -> np.ndarray:
        """Joint velocities (N,) that realise ``twist`` (6,) by damped least squares.

        ``qdot = J^T (J J^T + damping^2 I)^-1 twist``: exact away from singularities, bounded near them.
        """
        J = self.jacobian(positions)  # (6, N)
        v = np.asarray(twist, dtype=np.float64).reshape(6)
        JJt = J @ J.T + (damping**2) * np.eye(6)  # (6, 6)
        return J.T @ np.linalg.solve(JJt, v)  # (N,)

    def integrate_twists(
        self,
        start: np.ndarray,
        twists: np.ndarray,
        dt: float,
        damping: float = 1e-2,
        max_joint_velocity: np.ndarray | float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Roll differential IK over a sequence of twists held for ``dt`` each.

        Args:
            start: arm joint positions, shape (N,).
            twists: shape (T, 6), one twist per control step.
            dt: seconds per step.
            max_joint_velocity: per-joint (N,) or scalar bound on |qdot|; None uses the URDF's limits
                (joints whose URDF limit is 0 are left unbounded). A step whose qdot exceeds the bound is
                scaled down as a whole, so the end-effector direction is kept.

        Returns:
            positions (T, N) after each step (clipped to the URDF's position limits) and velocities (T, N).
        """
        q = np.asarray(start, dtype=np.float64).reshape(-1).copy()  # (N,)
        tw = np.asarray(twists, dtype=np.float64).reshape(-1, 6)  # (T, 6)
        if max_joint_velocity is None:
            vmax = np.where(self.velocity_limit > 0, self.velocity_limit, np.inf)
        else:
            vmax = np.broadcast_to(np.asarray(max_joint_velocity, dtype=np.float64), q.shape)
        positions = np.zeros((tw.shape[0], q.shape[0]))
        velocities = np.zeros_like(positions)
        for t in range(tw.shape[0]):
            qdot = self.ik_velocity(q, tw[t], damping)  # (N,)
            ratio = np.max(np.abs(qdot) / vmax)
            if ratio > 1.0:
                qdot = qdot / ratio
            q_next = np.clip(q + qdot * dt, self.lower, self.upper)
            velocities[t] = (q_next - q) / dt
            positions[t] = q_next
            q = q_next
        return positions, velocities
