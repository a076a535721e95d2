"""The OpenVLA-OFT LIBERO evaluation protocol as pure Python (no simulator, no ROS).

One episode: reset the task to an initial state, run ``wait_steps`` no-op steps with
``[0, 0, 0, 0, 0, 0, -1]`` (objects settle, gripper open), then execute the policy's action chunks
open-loop, one row per 20 Hz control step, querying the policy only when the queue is empty; the episode
ends with success as soon as the simulator reports the task done, or with a timeout after the suite's
``max_steps`` policy steps (wait steps not counted).

:class:`Episode` implements that state machine over any :class:`SimBackend` (the LIBERO wrapper in
:mod:`specprune_ros.sim.libero_env`, or a scripted fake in tests); :func:`run_episode` closes the loop
with any :class:`~specprune_ros.core.types.Policy` in one process. The ROS bridge node drives the same
:class:`Episode`, so the protocol lives in exactly one place.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from ..core.controller import requery_rows
from ..core.proprio import quat_to_axis_angle  # noqa: F401  (the training convention; re-exported here)
from ..core.types import Observation, Policy

#: Policy steps per episode in the OFT evaluation (wait steps come on top).
SUITE_MAX_STEPS: dict[str, int] = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
#: No-op steps after each reset, before the first policy query.
WAIT_STEPS = 10
#: The no-op action of the wait steps: no motion, gripper open (-1 opens in LIBERO).
DUMMY_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
#: LIBERO's control period (20 Hz).
CONTROL_DT = 0.05
#: Action dimension of LIBERO's Panda with the OSC_POSE controller: dx dy dz droll dpitch dyaw gripper.
ACTION_DIM = 7
ACTION_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
#: Seed, trials per task and camera resolution of the OFT evaluation.
SEED = 7
TRIALS_PER_TASK = 50
IMAGE_SIZE = 256

#: Joint names of the simulated Panda (MuJoCo's, used on /joint_states and in the generated URDF).
ARM_JOINTS = tuple(f"robot0_joint{i}" for i in range(1, 8))
GRIPPER_JOINTS = ("gripper0_finger_joint1", "gripper0_finger_joint2")
#: URDF link whose world pose is LIBERO's (robot0_eef_pos, robot0_eef_quat).
EEF_LINK = "libero_eef"
#: Bridge camera (frame key) -> image topic, relative to the bridge's namespace.
CAMERA_TOPICS = {"agentview": "agentview/image_raw", "wrist": "wrist/image_raw"}

STATUS_WAITING = "waiting"
STATUS_RUNNING = "running"
STATUS_SUCCESS = "success"
STATUS_TIMEOUT = "timeout"
STATUS_FAILURE = "failure"
#: The episode was replaced by a reset (``~/reset``) before it ended.
STATUS_ABORTED = "aborted"
END_STATUSES = (STATUS_SUCCESS, STATUS_TIMEOUT, STATUS_FAILURE, STATUS_ABORTED)


class ProtocolError(ValueError):
    """Bad protocol configuration or an action chunk that must not be executed."""


def unnorm_key_for(suite: str) -> str:
    """The ``dataset_statistics.json`` key of the released OFT checkpoint for ``suite``."""
    check_suite(suite)
    return f"{suite}_no_noops"


def check_suite(suite: str) -> None:
    if suite not in SUITE_MAX_STEPS:
        import difflib

        near = difflib.get_close_matches(suite, list(SUITE_MAX_STEPS), n=1, cutoff=0.5)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ProtocolError(f"unknown LIBERO suite {suite!r}{hint}; known: {sorted(SUITE_MAX_STEPS)}")


@dataclass(frozen=True)
class SimFrame:
    """What the simulator shows after a step.

    Attributes:
        images: camera name (``"agentview"``, ``"wrist"``) -> uint8 RGB (H, W, 3) exactly as rendered
            (LIBERO renders upside down; flipping is the policy's configuration, not the simulator's).
        eef_pos: end-effector position (3,) in the world frame, metres.
        eef_quat: end-effector orientation (4,) as (x, y, z, w).
        gripper_qpos: the two finger joint positions (2,), metres.
        joint_pos: arm joint positions (7,), radians.
        joint_vel: arm joint velocities (7,), rad/s.
        gripper_qvel: the two finger joint velocities (2,), m/s; None when unknown.
    """

    images: dict[str, np.ndarray]
    eef_pos: np.ndarray
    eef_quat: np.ndarray
    gripper_qpos: np.ndarray
    joint_pos: np.ndarray
    joint_vel: np.ndarray
    gripper_qvel: np.ndarray | None = None

    def proprio(self) -> np.ndarray:
        """The OFT LIBERO proprio state (8,): eef_pos(3) + axis-angle(eef_quat)(3) + gripper_qpos(2)."""
        return libero_proprio(self.eef_pos, self.eef_quat, self.gripper_qpos)


def libero_proprio(eef_pos: np.ndarray, eef_quat_xyzw: np.ndarray, gripper_qpos: np.ndarray) -> np.ndarray:
    """eef_pos(3) + axis-angle(eef_quat)(3) + gripper_qpos(2) -> (8,), as the OFT LIBERO checkpoints expect."""
    pos = np.asarray(eef_pos, dtype=np.float64).reshape(3)
    grip = np.asarray(gripper_qpos, dtype=np.float64).reshape(2)
    return np.concatenate([pos, quat_to_axis_angle(eef_quat_xyzw), grip])  # (8,)


class SimBackend(Protocol):
    """What :class:`Episode` needs from a simulator."""

    def reset(self, init_state: int) -> SimFrame:
        """Restore initial state number ``init_state`` of the task and return the first frame."""
        ...

    def step(self, action: np.ndarray) -> tuple[SimFrame, bool]:
        """Execute one 7-D action for one control period; ``True`` when the task is done (success)."""
        ...


@dataclass(frozen=True)
class ProtocolConfig:
    """The episode rules.

    Attributes:
        suite: LIBERO suite, one of :data:`SUITE_MAX_STEPS`.
        max_steps: policy steps before a timeout; 0 = the suite's OFT value (220/280/300/520/400).
        wait_steps: no-op steps after each reset (OFT: 10).
        open_loop_steps: rows of each chunk to execute before querying again; 0 = all rows (OFT: 8 of 8).
    """

    suite: str = "libero_spatial"
    max_steps: int = 0
    wait_steps: int = WAIT_STEPS
    open_loop_steps: int = 0

    def __post_init__(self) -> None:
        check_suite(self.suite)
        if self.max_steps < 0:
            raise ProtocolError(f"max_steps={self.max_steps} must be >= 0 (0 = the suite's value)")
        if self.wait_steps < 0:
            raise ProtocolError(f"wait_steps={self.wait_steps} must be >= 0")
        if self.open_loop_steps < 0:
            raise ProtocolError(f"open_loop_steps={self.open_loop_steps} must be >= 0 (0 = whole chunk)")

    @property
    def step_limit(self) -> int:
        """Policy steps allowed per episode."""
        return self.max_steps or SUITE_MAX_STEPS[self.suite]


def check_chunk(actions: np.ndarray, action_dim: int = ACTION_DIM) -> np.ndarray:
    """Return ``actions`` as float64 (T, action_dim), or raise :class:`ProtocolError` saying what is wrong."""
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] != action_dim:
        raise ProtocolError(
            f"action chunk has shape {a.shape}; LIBERO needs (rows >= 1, {action_dim}) rows of "
            f"{' '.join(ACTION_NAMES)}"
        )
    if not np.all(np.isfinite(a)):
        bad = sorted({int(i) for i in np.argwhere(~np.isfinite(a))[:, 0]})
        raise ProtocolError(f"action chunk has NaN or inf in row(s) {bad}; nothing was executed")
    return a


class Episode:
    """One LIBERO episode under the OFT protocol, over any :class:`SimBackend`.

    ``start()`` resets and runs the wait steps; then ``execute(chunk)`` steps the simulator through the
    chunk's rows in order until the chunk is used up (or ``open_loop_steps`` rows), the task is done, or
    the step limit is reached. Every executed row is kept in ``executed`` (wait steps in ``wait_actions``).
    """

    def __init__(self, backend: SimBackend, config: ProtocolConfig) -> None:
        self.backend = backend
        self.config = config
        self.status = STATUS_WAITING
        self.step = 0  # policy steps executed in this episode
        self.sim_steps = 0  # all simulator steps in this episode, wait steps included
        self.frame: SimFrame | None = None
        self.executed: list[np.ndarray] = []
        self.wait_actions: list[np.ndarray] = []
        self.error = ""
        self.init_state = -1

    @property
    def running(self) -> bool:
        return self.status == STATUS_RUNNING

    @property
    def done(self) -> bool:
        return self.status in END_STATUSES

    @property
    def success(self) -> bool:
        return self.status == STATUS_SUCCESS

    def start(self, init_state: int, on_step: Callable[[SimFrame], None] | None = None) -> SimFrame:
        """Reset to ``init_state``, run the wait steps, and return the frame the first query sees."""
        self.status = STATUS_WAITING
        self.step = 0
        self.sim_steps = 0
        self.executed = []
        self.wait_actions = []
        self.error = ""
        self.init_state = init_state
        try:
            self.frame = self.backend.reset(init_state)
            dummy = np.asarray(DUMMY_ACTION, dtype=np.float64)
            for _ in range(self.config.wait_steps):
                # OFT ignores `done` during the wait steps: the objects are still settling.
                self.frame, _ = self.backend.step(dummy.copy())
                self.wait_actions.append(dummy.copy())
                self.sim_steps += 1
                if on_step is not None:
                    on_step(self.frame)
        except Exception as exc:  # the simulator failed (e.g. unstable physics): end the episode visibly
            self.status = STATUS_FAILURE
            self.error = f"{type(exc).__name__}: {exc}"
            raise
        self.status = STATUS_RUNNING
        return self.frame

    def execute(self, actions: np.ndarray, on_step: Callable[[SimFrame], None] | None = None) -> int:
        """Execute a chunk's rows in order; return how many rows ran.

        Raises :class:`ProtocolError` (and executes nothing) for a malformed chunk or when no episode is
        running. ``on_step`` is called after every simulator step with the new frame.
        """
        if not self.running:
            raise ProtocolError(f"no episode is running (status {self.status!r}); start or reset one first")
        rows = check_chunk(actions)
        if self.config.open_loop_steps:
            rows = rows[: self.config.open_loop_steps]
        n = 0
        for row in rows:
            try:
                self.frame, task_done = self.backend.step(row.copy())
            except Exception as exc:
                self.status = STATUS_FAILURE
                self.error = f"{type(exc).__name__}: {exc}"
                raise
            self.executed.append(row.copy())
            self.step += 1
            self.sim_steps += 1
            n += 1
            if task_done:
                self.status = STATUS_SUCCESS
            elif self.step >= self.config.step_limit:
                self.status = STATUS_TIMEOUT
            if on_step is not None:
                on_step(self.frame)
            if self.done:
                break
        return n


@dataclass
class EpisodeResult:
    """Outcome of one closed-loop episode."""

    suite: str
    task_id: int
    init_state: int
    status: str
    success: bool
    steps: int
    chunks: int
    latency_s: list[float] = field(default_factory=list)
    tokens_kept: list[int] = field(default_factory=list)
    tokens_total: list[int] = field(default_factory=list)
    requeries: int = 0  # chunks cut short for an early query (coarse-to-fine switch)
    error: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def frame_to_observation(
    frame: SimFrame,
    instruction: str,
    stamp: float,
    views: tuple[str, ...] = ("primary", "wrist"),
    executed_actions: np.ndarray | None = None,
) -> Observation:
    """The policy's observation of a frame: agentview -> first view, wrist camera -> second, as rendered."""
    cams = {"primary": frame.images["agentview"], "wrist": frame.images["wrist"]}
    images = {v: cams[v] for v in views if v in cams}
    return Observation(
        images=images,
        proprio=frame.proprio(),
        instruction=instruction,
        stamp=stamp,
        executed_actions=executed_actions,
    )


def run_episode(
    backend: SimBackend,
    policy: Policy,
    config: ProtocolConfig,
    instruction: str,
    task_id: int,
    init_state: int,
    on_chunk: Callable[[Episode], None] | None = None,
    honor_requery: bool = True,
) -> EpisodeResult:
    """Run one episode closed-loop in this process: query ``policy`` whenever the queue is empty.

    Time is simulated (``stamp`` = simulator steps x 0.05 s), so a slow policy is not penalized. With
    ``honor_requery`` a chunk whose statistics say the controller enters fine mode after row ``k``
    (``requery_after``) has only rows ``0..k`` executed before the next query, as SpecPrune-VLA's LIBERO
    evaluation drops the queued actions on a coarse-to-fine switch.
    """
    policy.reset()
    episode = Episode(backend, config)
    result = EpisodeResult(config.suite, task_id, init_state, STATUS_WAITING, False, 0, 0)
    try:
        frame = episode.start(init_state)
        last: np.ndarray | None = None
        while episode.running:
            obs = frame_to_observation(
                frame, instruction, episode.sim_steps * CONTROL_DT, tuple(policy.views), last
            )
            t0 = time.perf_counter()
            chunk = policy.infer(obs)
            result.latency_s.append(time.perf_counter() - t0)
            stats = chunk.stats
            result.tokens_kept.append(int(sum(stats.kept_per_view.values())))
            result.tokens_total.append(int(stats.total_tokens))
            actions = np.asarray(chunk.actions, dtype=np.float64)  # (T, A)
            cut = requery_rows(bool(getattr(stats, "requery", False)), getattr(stats, "requery_after", None), len(actions))
            if honor_requery and cut is not None:
                actions = actions[:cut]
                result.requeries += 1
            before = len(episode.executed)
            episode.execute(actions)
            last = np.stack(episode.executed[before:])  # (N, A) rows executed since this query
            frame = episode.frame
            result.chunks += 1
            if on_chunk is not None:
                on_chunk(episode)
    except Exception as exc:
        result.error = episode.error or f"{type(exc).__name__}: {exc}"
        episode.status = STATUS_FAILURE
    result.status = episode.status
    result.success = episode.success
    result.steps = episode.step
    return result
