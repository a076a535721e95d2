"""The policy contract: observations in, action chunks out.

Everything that consumes a policy (the ROS node, bag evaluation, the simulators, benchmarks) talks to it
only through :class:`Policy`: ``infer(observation) -> ActionChunk`` and ``reset()``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol, runtime_checkable

import numpy as np

#: Mode reported when no action-aware controller runs (pruning off or controller disabled).
MODE_OFF = "off"
MODE_COARSE = "coarse"
MODE_FINE = "fine"


class InputError(ValueError):
    """An observation that must not be acted on (wrong size, NaN, missing view, ...).

    The message says what was wrong and how to fix it. Consumers report it and publish nothing.
    """


@dataclass(frozen=True)
class Observation:
    """One synchronized observation.

    Attributes:
        images: view name (e.g. ``"primary"``, ``"wrist"``) -> uint8 RGB frame, shape (H, W, 3), any size.
        proprio: proprioceptive state in the checkpoint's units, shape (P,), or None for checkpoints
            trained without proprio.
        instruction: the task in natural language, e.g. ``"put the bowl on the plate"``.
        stamp: observation time in seconds (ROS time or simulated time); copied to the chunk.
        executed_actions: actions (un-normalized, shape (N, A)) executed since the previous query, in
            order; feeds the coarse/fine controller and the look-back of the frame difference. None when
            the consumer does not know. A query that fails after its observation was accepted (NaN actions,
            an error in the pass) has still counted them: the next query passes only the rows executed since.
        ee_speed: measured end-effector speed ``(linear m/s, angular rad/s)`` if the consumer has it
            (joint states + URDF), else None.
    """

    images: Mapping[str, np.ndarray]
    proprio: np.ndarray | None
    instruction: str
    stamp: float = 0.0
    executed_actions: np.ndarray | None = None
    ee_speed: tuple[float, float] | None = None

    def validate(self, views: tuple[str, ...], proprio_dim: int | None, action_dim: int | None = None) -> None:
        """Raise :class:`InputError` unless this observation can be acted on by a policy with ``views``, a proprio
        state of ``proprio_dim`` (None: it takes none) and, when given, actions of ``action_dim``."""
        missing = [v for v in views if v not in self.images]
        if missing:
            raise InputError(
                f"observation lacks camera view(s) {missing}; the policy needs {list(views)} "
                f"and got {sorted(self.images)}"
            )
        for view in views:
            img = np.asarray(self.images[view])
            if img.dtype != np.uint8:
                raise InputError(f"view {view!r}: expected uint8 RGB, got dtype {img.dtype}")
            if img.ndim != 3 or img.shape[2] != 3:
                raise InputError(f"view {view!r}: expected an (H, W, 3) RGB image, got shape {img.shape}")
            if img.shape[0] < 14 or img.shape[1] < 14:
                raise InputError(f"view {view!r}: image {img.shape[1]}x{img.shape[0]} is too small")
        if proprio_dim is not None:
            if self.proprio is None:
                raise InputError(f"the policy needs a {proprio_dim}-D proprio state and got none")
            p = _real_array("proprio", self.proprio)
            if p.shape != (proprio_dim,):
                raise InputError(f"proprio must have shape ({proprio_dim},), got {p.shape}")
            if not np.all(np.isfinite(p)):
                raise InputError(f"proprio contains NaN or inf: {p.tolist()}")
        elif self.proprio is not None:  # it would be ignored: a checkpoint that lost its proprio projector?
            raise InputError("a proprio state was given, but this policy takes none (its checkpoint has no "
                             "proprio_projector file); leave the proprio out or use the checkpoint that has one")
        if not isinstance(self.instruction, str):
            raise InputError(f"the instruction must be text, got {type(self.instruction).__name__}")
        try:
            self.instruction.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"the instruction is not valid UTF-8 text: {self.instruction!r}") from None
        if not self.instruction.strip():
            raise InputError("no instruction: set one before asking for actions")
        if self.ee_speed is not None:
            speed = _real_array("ee_speed", self.ee_speed)
            if speed.shape != (2,) or not np.all(np.isfinite(speed)):
                raise InputError(f"ee_speed must be (linear m/s, angular rad/s), finite; got {self.ee_speed}")
        if self.executed_actions is not None:
            executed = _real_array("executed_actions", self.executed_actions)
            if executed.ndim != 2 or (action_dim is not None and executed.shape[1] != action_dim):
                raise InputError(f"executed_actions must have shape (N, {action_dim or 'A'}), got {executed.shape}")
            if not np.all(np.isfinite(executed)):
                raise InputError("executed_actions contain NaN or inf")


def _real_array(name: str, value) -> np.ndarray:
    """``value`` as a float64 array; InputError for text, objects or complex numbers."""
    a = np.asarray(value)
    if a.dtype.kind not in "biuf":
        raise InputError(f"{name} must hold real numbers, got dtype {a.dtype} ({str(value)[:60]})")
    return a.astype(np.float64)


@dataclass
class StepStats:
    """What one ``infer`` call did. Times are milliseconds; token counts are per pass.

    Attributes:
        timings_ms: ``preprocess``, ``vision``, ``static_prune``, ``llm``, ``head``, ``total``.
        tokens_per_layer: sequence length entering each decoder layer (len == number of layers).
        visual_tokens_per_layer: visual tokens entering each decoder layer.
        kept_per_view: visual tokens of each view that survived static pruning.
        kept_patches: view -> sorted patch indices (0..255, row-major 16x16) kept after static pruning.
        total_tokens: full (unpruned) sequence length L.
        mode: ``"coarse"``, ``"fine"`` or ``"off"``.
        lookback: frame-difference look-back T in control steps (None when unused / first query).
        requery: the controller would enter fine mode inside this chunk; the consumer may re-query early.
        requery_after: the row after which that happens (execute rows 0..requery_after, then query again).
        preset: the pruning preset name.
    """

    timings_ms: dict[str, float] = field(default_factory=dict)
    tokens_per_layer: list[int] = field(default_factory=list)
    visual_tokens_per_layer: list[int] = field(default_factory=list)
    kept_per_view: dict[str, int] = field(default_factory=dict)
    kept_patches: dict[str, list[int]] = field(default_factory=dict)
    total_tokens: int = 0
    mode: str = MODE_OFF
    lookback: int | None = None
    requery: bool = False
    requery_after: int | None = None
    preset: str = "off"

    def to_dict(self) -> dict:
        return {
            "timings_ms": dict(self.timings_ms),
            "tokens_per_layer": list(self.tokens_per_layer),
            "visual_tokens_per_layer": list(self.visual_tokens_per_layer),
            "kept_per_view": dict(self.kept_per_view),
            "kept_patches": {k: list(v) for k, v in self.kept_patches.items()},
            "total_tokens": self.total_tokens,
            "mode": self.mode,
            "lookback": self.lookback,
            "requery": self.requery,
            "requery_after": self.requery_after,
            "preset": self.preset,
        }


@dataclass
class ActionChunk:
    """A chunk of actions to execute open-loop, one row per control step.

    Attributes:
        actions: shape (T_chunk, A), un-normalized (robot units), gripper post-processed if configured.
        dt: seconds between consecutive rows (the control period the checkpoint was trained at).
        stamp: the observation stamp this chunk was computed from.
        stats: what the pass did (timings, token counts, mode).
    """

    actions: np.ndarray
    dt: float
    stamp: float
    stats: StepStats = field(default_factory=StepStats)

    def to_dict(self) -> dict:
        return {
            "actions": np.asarray(self.actions, dtype=np.float64).tolist(),
            "dt": self.dt,
            "stamp": self.stamp,
            "stats": self.stats.to_dict(),
        }


@runtime_checkable
class Policy(Protocol):
    """The whole contract between a policy and its consumers."""

    #: camera view names the policy needs, in checkpoint order
    views: tuple[str, ...]
    #: proprio dimension, or None when the policy takes none
    proprio_dim: int | None
    #: action dimension (columns of ``ActionChunk.actions``)
    action_dim: int
    #: rows per chunk
    chunk_len: int

    def infer(self, obs: Observation) -> ActionChunk:
        """Compute one action chunk. Raises :class:`InputError` for observations it must not act on."""
        ...

    def reset(self) -> None:
        """Start a new episode: forget carried-over state (global token set, frame history, mode)."""
        ...


def warm_up(policy: Policy, views, proprio_dim: int | None) -> None:
    """One inference on mid-grey 224x224 frames, then ``reset`` (also when the inference raised): first-call costs
    (allocations, kernels, caches) are paid here, out of every timing and before the first real observation."""
    frames = {v: np.full((224, 224, 3), 128, np.uint8) for v in views}
    proprio = np.zeros(proprio_dim) if proprio_dim else None
    try:
        policy.infer(Observation(images=frames, proprio=proprio, instruction="warm up", stamp=0.0))
    finally:
        policy.reset()
