"""Pruning configuration and its named presets.

Layer indices are given for the 32-layer Llama-2 7B backbone and scaled proportionally for other depths
(:meth:`PruningConfig.layer_at`), so one preset means the same thing on the tiny, mid and full models.
docs/method.md maps every knob to the paper.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .config import ConfigError

#: depth the layer indices below refer to
REFERENCE_DEPTH = 32


def _doc(text: str, **kw):
    return field(metadata={"doc": text}, **kw)


@dataclass(frozen=True)
class ControllerConfig:
    """Coarse/fine action-aware controller (paper section 3.3). Action units are the checkpoint's (LIBERO)."""

    enabled: bool = _doc("run the controller; off = always coarse", default=True)
    warmup_steps: int = _doc("control steps before the controller may enter fine mode", default=10)
    enter_translation: float = _doc("enter fine if |a[0:3]| < this", default=0.35)
    enter_planar: float = _doc("... or if |a[0:2]| < this and a_z < enter_z and |a[3:6]| < enter_rotation", default=0.1)
    enter_z: float = _doc("see enter_planar", default=0.1)
    enter_rotation: float = _doc("see enter_planar", default=0.2)
    leave_z: float = _doc("leave fine (at a chunk boundary) when a_z > this", default=0.2)
    leave_rotation: float = _doc("... or when |a[3:6]| > this", default=0.3)
    measured_enter_linear: float = _doc("measured EE speed (m/s) below which fine mode is entered", default=0.02)
    measured_leave_linear: float = _doc("measured EE speed (m/s) above which fine mode is left", default=0.06)
    measured_leave_angular: float = _doc("measured EE angular speed (rad/s) above which fine mode is left", default=0.5)
    requery_on_fine: bool = _doc("ask the consumer to re-query when fine mode is entered mid-chunk", default=True)

    def __post_init__(self) -> None:
        if self.measured_enter_linear >= self.measured_leave_linear:
            raise ConfigError(
                f"measured_enter_linear={self.measured_enter_linear} must be below "
                f"measured_leave_linear={self.measured_leave_linear} (hysteresis)"
            )
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps={self.warmup_steps} must be >= 0")


@dataclass(frozen=True)
class PruningConfig:
    """All SpecPrune knobs. ``enabled=False`` reproduces the unpruned model exactly."""

    enabled: bool = _doc("prune at all", default=True)
    # --- static (action-level) pruning, per view: (third-person/primary, wrist, further views reuse the last)
    local_k_coarse: tuple[int, ...] = _doc("V_local budget K per view in coarse mode", default=(24, 19))
    local_k_fine: tuple[int, ...] = _doc("V_local budget K per view in fine mode (keeps more)", default=(40, 32))
    local_layers: tuple[int, int] = _doc("layers scoring V_local: top-2K after the first, top-K after both", default=(0, 1))
    global_layers: tuple[int, ...] = _doc("deep layers whose scores form next chunk's V_global", default=(14, 30))
    use_global: bool = _doc("keep V_global (previous chunk's top tokens)", default=True)
    use_dynamic_regions: bool = _doc("keep V_dynamic (patches that changed)", default=True)
    tau: tuple[float, ...] = _doc("cosine similarity at or above which a patch may count as static, per view", default=(0.986, 0.98))
    static_count: tuple[int, ...] = _doc("at most this many most-similar patches per view are static", default=(236, 230))
    # --- dynamic (layer-level) pruning
    dynamic: bool = _doc("prune further inside the pass", default=True)
    score_layers: tuple[int, ...] = _doc("layers whose action-query attention updates the importance EMA", default=(4, 9, 14, 19, 24))
    prune_layers: tuple[int, ...] = _doc("before these layers drop `prune_fraction` of the visual tokens", default=(10, 15, 20, 25))
    prune_fraction: float = _doc("fraction of the surviving visual tokens dropped at each prune layer", default=0.1)
    min_visual_tokens: int = _doc("never fewer visual tokens than this (all non-visual tokens always stay)", default=60)
    ema_beta: float = _doc("S = (1-beta) S + beta s", default=0.2)
    rank_k: float = _doc("sharpness k of the rank weight sigmoid(-k rank)", default=0.1)
    entropy_eps: float = _doc("eps of the confidence 1/(normalized entropy + eps)", default=1e-3)
    controller: ControllerConfig = _doc("coarse/fine controller", default_factory=ControllerConfig)
    # --- not in the paper (docs/method.md)
    proportional: bool = _doc("dropped visual tokens pass their weight to the nearest kept token of their view, "
                              "whose attention logits as a key get + log(weight); off = the paper's plain drop", default=False)
    merge: bool = _doc("with proportional: the kept token's hidden state also becomes the weighted mean of its own and "
                       "those of the tokens it absorbs (ToMe merge)", default=False)

    def __post_init__(self) -> None:
        for name in ("local_k_coarse", "local_k_fine", "tau", "static_count"):
            if len(getattr(self, name)) == 0:
                raise ConfigError(f"{name} needs at least one value (one per view)")
        for kc, kf in zip(self.local_k_coarse, self.local_k_fine):
            if kc < 1 or kf < 1:
                raise ConfigError(f"local budgets must be >= 1, got coarse={self.local_k_coarse} fine={self.local_k_fine}")
        if not all(-1.0 <= t <= 1.0 for t in self.tau):  # a cosine similarity (NaN fails too)
            raise ConfigError(f"tau={self.tau} must lie in [-1, 1] (a cosine similarity)")
        if not all(0 <= c <= 256 for c in self.static_count):
            raise ConfigError(f"static_count={self.static_count} must lie in [0, 256] (patches per view)")
        if not 0.0 <= self.prune_fraction < 1.0:
            raise ConfigError(f"prune_fraction={self.prune_fraction} must lie in [0, 1)")
        if not 0.0 < self.ema_beta <= 1.0:
            raise ConfigError(f"ema_beta={self.ema_beta} must lie in (0, 1]")
        if len(self.local_layers) != 2 or self.local_layers[0] >= self.local_layers[1]:
            raise ConfigError(f"local_layers={self.local_layers} must be two increasing layer indices")
        if self.dynamic and self.prune_layers and self.score_layers:
            if min(self.score_layers) >= min(self.prune_layers):
                raise ConfigError(
                    f"score_layers={self.score_layers} must start before prune_layers={self.prune_layers}: "
                    "a real score must exist before the first prune"
                )
        if self.dynamic and self.prune_layers and not self.score_layers:
            raise ConfigError("prune_layers without score_layers: a real score must exist before the first prune")
        if self.merge and not self.proportional:
            raise ConfigError("merge=True needs proportional=True (the merged token's weight is its key bias)")

    def per_view(self, values: tuple, view_index: int):
        """Value of a per-view tuple for view ``view_index`` (views beyond the tuple reuse its last entry)."""
        return values[min(view_index, len(values) - 1)]

    @staticmethod
    def layer_at(index: int, depth: int) -> int:
        """Map a layer index of the 32-layer reference model to a model of ``depth`` layers."""
        if depth == REFERENCE_DEPTH:
            return index
        return min(depth - 1, int(round(index * depth / REFERENCE_DEPTH)))

    def replace(self, **changes) -> "PruningConfig":
        return dataclasses.replace(self, **changes)


OFF = PruningConfig(enabled=False)
PAPER = PruningConfig()
CONSERVATIVE = PruningConfig(
    local_k_coarse=(40, 32),
    local_k_fine=(64, 52),
    prune_fraction=0.05,
    prune_layers=(15, 25),
    min_visual_tokens=100,
)
AGGRESSIVE = PruningConfig(
    local_k_coarse=(16, 12),
    local_k_fine=(24, 20),
    static_count=(246, 242),
    prune_fraction=0.2,
    min_visual_tokens=40,
)
#: static pruning only (no layer-level pruning, no controller): the paper's first ablation row
STATIC_ONLY = PruningConfig(dynamic=False, controller=ControllerConfig(enabled=False))
#: a wider coarse/fine split than the paper's (not in the paper): coarse mode at aggressive's budget, fine mode
#: ranks half of each view; on the test bed the controller is worth ~12 points at an equal kept-token count with
#: it (docs/testbed.md), and nothing with paper's 24/19 against 40/32
FINE_FOCUS = PruningConfig(local_k_coarse=(16, 12), local_k_fine=(128, 128))

PRESETS: dict[str, PruningConfig] = {
    "off": OFF,
    "conservative": CONSERVATIVE,
    "paper": PAPER,
    "aggressive": AGGRESSIVE,
    "static-only": STATIC_ONLY,
    "fine-focus": FINE_FOCUS,
}

#: suffixes of a preset name that turn on :attr:`PruningConfig.proportional` (``+proportional``) or that and
#: :attr:`PruningConfig.merge` (``+merge``): ``paper+merge`` in the evaluators' preset lists
PROPORTIONAL = "+proportional"
MERGE = "+merge"


def split_weighting(name: str) -> tuple[str, str]:
    """``(rest, suffix)`` of a name ending in ``+proportional`` or ``+merge`` (suffix "" when neither):
    ``paper+merge`` gives ``("paper", "+merge")``. Not validated."""
    suffix = next((c for c in (PROPORTIONAL, MERGE) if name.endswith(c)), "")
    return name.removesuffix(suffix), suffix


def weighting_flags(suffix: str) -> dict[str, bool]:
    """The ``proportional`` and ``merge`` settings a :func:`split_weighting` suffix stands for."""
    return {"proportional": bool(suffix), "merge": suffix == MERGE}


def preset_list(text: str, option: str = "--presets") -> list[str]:
    """The names of a comma-separated preset list, each a preset optionally followed by ``+proportional`` or
    ``+merge``; raises ``ValueError`` (one line, naming ``option``) for an empty list, an unknown name, a
    repeated one, or a weighting suffix on a preset that prunes nothing."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise ValueError(f"{option} is empty; give e.g. paper or off,paper,paper+merge")
    unknown = [p for p in names if split_weighting(p)[0] not in PRESETS]
    if unknown:
        raise ValueError(f"{option}={text!r}: unknown {unknown}; known: {sorted(PRESETS)}, each optionally followed by "
                         f"{PROPORTIONAL!r} or {MERGE!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{option} repeats a name: {names}")
    nothing = [p for p in names if split_weighting(p)[1] and not PRESETS[split_weighting(p)[0]].enabled]
    if nothing:
        raise ValueError(f"{option}={text!r}: {nothing}: the preset prunes nothing, there is nothing to weigh")
    return names
