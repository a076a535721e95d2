"""Input alignment and staleness rules: camera frames + joint states + instruction -> one Observation.

Pure Python, no ROS: the policy node and the offline bag evaluator use this same module, so a bag replays
through exactly the rules the robot runs under.

Rules applied by :meth:`Synchronizer.sync` at time ``now`` (seconds, the same clock as the stamps):

1. every view has at least one frame (``no_data``), and its newest frame decoded (``bad_frame``);
2. the reference frame is the NEWEST frame of the reference view (default: the first view); its stamp
   is the observation stamp;
3. every other view uses its frame nearest in stamp to the reference; the joint state likewise;
4. ``now - stamp <= max_age`` for every input used, including each required joint's own stamp
   (``stale``); stamps more than ``max_skew`` in the future are refused too (clocks disagree);
5. ``|stamp - reference stamp| <= max_skew`` for every input used (``skew``);
6. a view whose content has not changed for longer than ``frozen_timeout`` seconds of stamps is
   frozen (``frozen``): a driver that republishes the last frame must not look live;
7. a non-empty instruction (``no_instruction``); joint values present and finite, the URDF when the
   proprio layout needs forward kinematics (``bad_joint_state``, ``no_robot_description``).

On arrival (:meth:`Synchronizer.add_image`, :meth:`Synchronizer.add_joint_state`) a frame or joint state with a
non-finite stamp is refused. Arrival order is kept: the newest frame is the last to arrive, even when its stamp
is older (refusing such a frame would leave a camera blocked, after a single frame stamped ahead by a clock
glitch, until time reached that stamp; an older frame is still held to ``max_age``). A query whose ``now`` lies
before the previous query's (the clock went back: a bag loop, a restarted simulator) clears the buffers and is
refused (``time_jump``), as tf2 clears its buffer; the inputs that follow start afresh.

Anything refused raises :class:`StaleInput` (rules 1-6 timing, ``reason`` says which) or
:class:`SyncInputError` (content); both are :class:`~specprune_ros.core.types.InputError` and carry a
short ``reason`` key for counters.
"""
from __future__ import annotations

import hashlib
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .proprio import ProprioBuilder
from .types import InputError, Observation

# reason keys (used as diagnostic counter names)
NO_DATA = "no_data"
BAD_FRAME = "bad_frame"
STALE = "stale"
SKEW = "skew"
FROZEN = "frozen"
NO_INSTRUCTION = "no_instruction"
BAD_JOINT_STATE = "bad_joint_state"
NO_ROBOT_DESCRIPTION = "no_robot_description"
TIME_JUMP = "time_jump"


class SyncInputError(InputError):
    """Inputs whose content cannot be acted on (bad frame, bad joints, no instruction, no URDF)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class StaleInput(SyncInputError):
    """Inputs that are missing, too old, too far apart in time, or frozen."""


@dataclass(frozen=True)
class SyncConfig:
    """Alignment and staleness limits.

    Attributes:
        views: camera views to assemble, in policy order.
        reference_view: the view whose newest frame sets the observation stamp (default: ``views[0]``).
        max_age: seconds; an input older than this at build time is stale.
        max_skew: seconds; the largest allowed stamp difference between any input and the reference.
        frozen_timeout: seconds of unchanged frame content after which a camera counts as frozen
            (0 disables the check, e.g. for simulators that render identical frames when nothing moves).
        buffer_size: frames kept per view and joint states kept, for nearest-stamp alignment.
        require_joint_states: refuse to build without a joint state (needed for proprio / EE speed).
        fd_min_dt: seconds; the shortest interval used for finite-difference EE speed.
    """

    views: tuple[str, ...] = ("primary", "wrist")
    reference_view: str | None = None
    max_age: float = 0.5
    max_skew: float = 0.1
    frozen_timeout: float = 2.0
    buffer_size: int = 10
    require_joint_states: bool = True
    fd_min_dt: float = 0.02

    def __post_init__(self) -> None:
        views = tuple(self.views)
        object.__setattr__(self, "views", views)
        if not views:
            raise ValueError("SyncConfig.views is empty: give at least one camera view")
        if len(set(views)) != len(views):
            raise ValueError(f"SyncConfig.views repeats a name: {list(views)}")
        if self.reference_view is not None and self.reference_view not in views:
            raise ValueError(f"reference_view {self.reference_view!r} is not one of the views {list(views)}")
        if not self.max_age > 0:
            raise ValueError(f"max_age must be > 0 seconds, got {self.max_age}")
        if not self.max_skew >= 0:
            raise ValueError(f"max_skew must be >= 0 seconds, got {self.max_skew}")
        if not self.frozen_timeout >= 0:
            raise ValueError(f"frozen_timeout must be >= 0 seconds (0 disables), got {self.frozen_timeout}")
        if self.buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {self.buffer_size}")
        if not self.fd_min_dt > 0:
            raise ValueError(f"fd_min_dt must be > 0 seconds, got {self.fd_min_dt}")

    @property
    def reference(self) -> str:
        return self.reference_view or self.views[0]


@dataclass(frozen=True)
class _Frame:
    stamp: float
    rgb: np.ndarray | None  # (H, W, 3) uint8, or None when the frame could not be decoded
    error: str | None
    seq: int  # arrival counter of this view


@dataclass(frozen=True)
class JointSnapshot:
    """Merged joint state after one message: every joint's latest value and its own stamp."""

    stamp: float
    positions: Mapping[str, float]
    velocities: Mapping[str, float]
    joint_stamps: Mapping[str, float]


@dataclass(frozen=True)
class SyncResult:
    """One assembled observation and how it was assembled."""

    observation: Observation
    image_stamps: dict[str, float]
    frame_seqs: dict[str, int]  # per view: arrival number of the frame used (for "newest frame" checks)
    joints: JointSnapshot | None
    age: float  # now - observation stamp
    skew: float  # largest |input stamp - observation stamp|
    ee_speed_source: str  # "jacobian", "finite_difference" or "none"
    extra: dict = field(default_factory=dict)


class Synchronizer:
    """Collects inputs as they arrive; :meth:`sync` assembles the newest consistent observation.

    Not thread-safe by itself: the ROS node calls it under one lock.
    """

    def __init__(self, config: SyncConfig, proprio: ProprioBuilder | None = None) -> None:
        self.config = config
        self.proprio = proprio
        self._frames: dict[str, deque[_Frame]] = {v: deque(maxlen=config.buffer_size) for v in config.views}
        self._seq: dict[str, int] = {v: 0 for v in config.views}
        self._changed_at: dict[str, float] = {}  # view -> stamp at which its content last changed
        self._digest: dict[str, bytes] = {}
        self._joints: deque[JointSnapshot] = deque(maxlen=max(config.buffer_size, 4))
        self._merged_pos: dict[str, float] = {}
        self._merged_vel: dict[str, float] = {}
        self._merged_stamp: dict[str, float] = {}
        self.instruction: str = ""
        self.time_jumps = 0  # jumps of the clock back in time, each of which cleared the buffers
        self._last_now: float | None = None

    # ------------------------------------------------------------------------------------------ inputs
    def add_image(self, view: str, stamp: float, rgb: np.ndarray) -> None:
        """A decoded frame (H, W, 3) uint8 RGB of ``view`` taken at ``stamp``; unknown views are ignored.

        Raises :class:`SyncInputError` (and keeps nothing) for a non-finite stamp (``bad_frame``). When the clock
        itself goes back (a bag loop), :meth:`sync` clears the buffers (``time_jump``).
        """
        if view not in self._frames:
            return
        stamp = float(stamp)
        if not math.isfinite(stamp):
            raise SyncInputError(f"camera view {view!r}: frame stamp {stamp} is not a time", BAD_FRAME)
        img = np.asarray(rgb)
        # a frozen driver repeats frames bit for bit, while live sensor noise changes nearly every pixel, so a
        # 1/16 subsample is enough to tell them apart (and keeps 1080p at 30 Hz cheap)
        sample = np.ascontiguousarray(img[::4, ::4])
        digest = hashlib.blake2b(sample.tobytes(), digest_size=16).digest() + repr(img.shape).encode()
        if self._digest.get(view) != digest:
            self._digest[view] = digest
            self._changed_at[view] = stamp
        self._seq[view] += 1
        self._frames[view].append(_Frame(float(stamp), img, None, self._seq[view]))

    def add_image_error(self, view: str, stamp: float, message: str) -> None:
        """A frame of ``view`` that could not be decoded; it blocks the view until a good frame arrives."""
        if view not in self._frames:
            return
        self._seq[view] += 1
        self._frames[view].append(_Frame(float(stamp), None, message, self._seq[view]))

    def add_joint_state(
        self,
        stamp: float,
        names: Sequence[str],
        positions: Sequence[float],
        velocities: Sequence[float] | None = None,
    ) -> None:
        """One ``sensor_msgs/JointState``; values merge with earlier messages (split publishers work).

        Raises :class:`SyncInputError` (and keeps nothing) when the arrays disagree in length with ``names``, a name
        repeats, or the stamp is not finite.
        """
        names = list(names)
        stamp = float(stamp)
        if not math.isfinite(stamp):
            raise SyncInputError(f"joint state stamp {stamp} is not a time", BAD_JOINT_STATE)
        pos = list(positions)
        vel = list(velocities) if velocities is not None else []
        if len(pos) != len(names):
            raise SyncInputError(
                f"joint state has {len(names)} names but {len(pos)} positions", BAD_JOINT_STATE
            )
        if vel and len(vel) != len(names):
            raise SyncInputError(
                f"joint state has {len(names)} names but {len(vel)} velocities", BAD_JOINT_STATE
            )
        if len(set(names)) != len(names):
            repeated = sorted({n for n in names if names.count(n) > 1})
            raise SyncInputError(f"joint state names joint(s) {repeated} more than once", BAD_JOINT_STATE)
        for i, name in enumerate(names):
            self._merged_pos[name] = float(pos[i])
            self._merged_stamp[name] = float(stamp)
            if vel:
                self._merged_vel[name] = float(vel[i])
            else:
                self._merged_vel.pop(name, None)
        self._joints.append(
            JointSnapshot(float(stamp), dict(self._merged_pos), dict(self._merged_vel), dict(self._merged_stamp))
        )

    def set_instruction(self, text: str) -> None:
        self.instruction = (text or "").strip()

    def set_proprio(self, proprio: ProprioBuilder | None) -> None:
        """Swap the proprio builder (e.g. when robot_description arrives and kinematics become available)."""
        self.proprio = proprio

    def reset(self) -> None:
        """Forget all buffered frames and joint states (the instruction stays)."""
        for v in self._frames:
            self._frames[v].clear()
        self._digest.clear()
        self._changed_at.clear()
        self._joints.clear()
        self._merged_pos.clear()
        self._merged_vel.clear()
        self._merged_stamp.clear()

    # ------------------------------------------------------------------------------------------ queries
    def newest_stamp(self, view: str | None = None) -> float | None:
        frames = self._frames[view or self.config.reference]
        return frames[-1].stamp if frames else None

    def latest_positions(self) -> dict[str, float]:
        """Every joint's newest position (merged over messages); empty before the first joint state."""
        return dict(self._merged_pos)

    def buffered(self) -> dict[str, int]:
        """Items held per buffer (bounded by ``buffer_size``): views and ``joint_states``."""
        out = {v: len(f) for v, f in self._frames.items()}
        out["joint_states"] = len(self._joints)
        return out

    def _check_age(self, what: str, stamp: float, now: float) -> None:
        cfg = self.config
        age = now - stamp
        if age > cfg.max_age:
            raise StaleInput(
                f"{what} is stale: stamp {stamp:.3f} is {age:.3f} s old (max_age {cfg.max_age} s); "
                "check that the publisher is running and clocks agree (use_sim_time?)",
                STALE,
            )
        if -age > cfg.max_skew:
            raise StaleInput(
                f"{what} stamp {stamp:.3f} is {-age:.3f} s in the future; the publisher's clock disagrees with "
                "this node's (use_sim_time?)",
                STALE,
            )

    def _check_skew(self, what: str, stamp: float, ref: float) -> float:
        skew = abs(stamp - ref)
        if skew > self.config.max_skew:
            raise StaleInput(
                f"{what} stamp {stamp:.3f} is {skew:.3f} s from the {self.config.reference} frame {ref:.3f} "
                f"(max_skew {self.config.max_skew} s); inputs are not synchronised",
                SKEW,
            )
        return skew

    def sync(self, now: float, executed_actions: np.ndarray | None = None) -> SyncResult:
        """Assemble the newest consistent observation at time ``now``, or raise with the reason."""
        cfg = self.config
        if not math.isfinite(now):
            raise StaleInput(f"the current time {now} is not a time", STALE)
        last, self._last_now = self._last_now, now
        if last is not None and now < last - 1e-3:  # as tf2 on a jump back: what is buffered is a future to come
            self.reset()
            self.time_jumps += 1
            raise StaleInput(
                f"the clock went back {last - now:.3f} s (from {last:.3f} to {now:.3f}; a bag replayed in a loop, a "
                "restarted simulator?): every buffered frame and joint state was dropped", TIME_JUMP)
        for view in cfg.views:
            if not self._frames[view]:
                raise StaleInput(f"no frame received yet from camera view {view!r}", NO_DATA)
            newest = self._frames[view][-1]
            if newest.error is not None:
                raise SyncInputError(f"camera view {view!r}: {newest.error}", BAD_FRAME)
        ref_frame = self._frames[cfg.reference][-1]
        ref = ref_frame.stamp
        self._check_age(f"camera view {cfg.reference!r}", ref, now)
        images: dict[str, np.ndarray] = {}
        stamps: dict[str, float] = {}
        seqs: dict[str, int] = {}
        max_skew = 0.0
        for view in cfg.views:
            if view == cfg.reference:
                frame = ref_frame
            else:
                good = [f for f in self._frames[view] if f.error is None]
                frame = min(reversed(good), key=lambda f: abs(f.stamp - ref))  # ties: newest
                self._check_age(f"camera view {view!r}", frame.stamp, now)
                max_skew = max(max_skew, self._check_skew(f"camera view {view!r}", frame.stamp, ref))
            if cfg.frozen_timeout > 0:
                unchanged = self._frames[view][-1].stamp - self._changed_at.get(view, frame.stamp)
                if unchanged > cfg.frozen_timeout:
                    raise StaleInput(
                        f"camera view {view!r} is frozen: identical frames for {unchanged:.2f} s "
                        f"(frozen_timeout {cfg.frozen_timeout} s); restart the camera driver",
                        FROZEN,
                    )
            images[view] = frame.rgb
            stamps[view] = frame.stamp
            seqs[view] = frame.seq

        snapshot: JointSnapshot | None = None
        proprio = None
        ee_speed = None
        speed_source = "none"
        needs_joints = cfg.require_joint_states or (self.proprio is not None and self.proprio.config.sources)
        if needs_joints:
            if not self._joints:
                raise StaleInput("no joint state received yet on the joint_states topic", NO_DATA)
            snapshot = min(reversed(self._joints), key=lambda s: abs(s.stamp - ref))  # ties: newest
            max_skew = max(max_skew, self._check_skew("joint state", snapshot.stamp, ref))
            required = self.proprio.required_joints() if self.proprio is not None else []
            for name in required:  # split publishers: each joint's own stamp obeys rule 4 (a slower publisher's
                stamp = snapshot.joint_stamps.get(name)  # last value may lag the frame by its period: no skew rule)
                if stamp is None:
                    continue
                if now - stamp > cfg.max_age:
                    raise StaleInput(
                        f"joint {name!r} is missing from recent joint states: last value is "
                        f"{now - stamp:.3f} s old (max_age {cfg.max_age} s)",
                        STALE,
                    )
                self._check_age(f"joint {name!r}", stamp, now)  # not in the future
            self._check_age("joint state", snapshot.stamp, now)
        if self.proprio is not None and snapshot is not None:
            try:
                if self.proprio.config.sources:
                    proprio = self.proprio.vector(snapshot.positions, snapshot.velocities)
                ee_speed, speed_source = self._ee_speed(snapshot)
            except InputError as exc:
                reason = NO_ROBOT_DESCRIPTION if "robot_description" in str(exc) else BAD_JOINT_STATE
                raise SyncInputError(str(exc), reason) from exc
        if not self.instruction:
            raise SyncInputError(
                "no instruction: publish one on the instruction topic or set the `instruction` parameter",
                NO_INSTRUCTION,
            )
        obs = Observation(
            images=images,
            proprio=proprio,
            instruction=self.instruction,
            stamp=ref,
            executed_actions=executed_actions,
            ee_speed=ee_speed,
        )
        return SyncResult(
            observation=obs,
            image_stamps=stamps,
            frame_seqs=seqs,
            joints=snapshot,
            age=now - ref,
            skew=max_skew,
            ee_speed_source=speed_source,
        )

    def build(self, now: float, executed_actions: np.ndarray | None = None) -> Observation:
        """:meth:`sync` without the bookkeeping: just the Observation."""
        return self.sync(now, executed_actions).observation

    def _ee_speed(self, snapshot: JointSnapshot) -> tuple[tuple[float, float] | None, str]:
        builder = self.proprio
        if builder is None or builder.kinematics is None:
            return None, "none"
        arm = builder.kinematics.arm_joints
        if all(j in snapshot.velocities and np.isfinite(snapshot.velocities[j]) for j in arm):
            return builder.ee_speed(snapshot.positions, snapshot.velocities), "jacobian"
        earlier = [s for s in self._joints if s.stamp <= snapshot.stamp - self.config.fd_min_dt]
        if not earlier:
            return None, "none"
        prev = earlier[-1]
        speed = builder.ee_speed(snapshot.positions, None, previous=(prev.stamp, prev.positions), stamp=snapshot.stamp)
        return speed, ("finite_difference" if speed is not None else "none")
