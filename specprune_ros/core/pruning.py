"""SpecPrune-VLA token pruning: pure selection functions plus the per-pass hooks of the layer loop.

Static (action-level) pruning keeps, per view, V_global (previous chunk's deep-layer favourites) ∪ V_local
(top tokens by task-prompt attention at layers 0 and 1 of this pass) ∪ V_dynamic (patches that changed);
dynamic (layer-level) pruning then drops the least important visual tokens at a few layers, by an EMA of
action-query attention. Non-visual tokens are never dropped; survivors keep their original positions.
See docs/method.md for the mapping to the paper.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .controller import ModeController
from .model import GRID, PATCHES_PER_VIEW, SequenceLayout
from .presets import PruningConfig
from .types import MODE_FINE

PATCH_PX = 14


# ----------------------------------------------------------------------------------------------------------
# Pure functions
def patch_cosine(frame: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Cosine similarity of aligned 14x14x3 pixel patches of two (224, 224, 3) frames -> (256,), row-major."""
    def patches(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32).reshape(GRID, PATCH_PX, GRID, PATCH_PX, 3)  # (16, 14, 16, 14, 3)
        return x.transpose(0, 2, 1, 3, 4).reshape(GRID * GRID, -1)  # (256, 588)

    a, b = patches(frame), patches(ref)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    # Two black patches are identical: similarity 1.
    return np.where(den > 0, num / np.maximum(den, 1e-12), np.where((a == b).all(axis=1), 1.0, 0.0))


def changed_patches(similarity: np.ndarray, tau: float, static_count: int) -> np.ndarray:
    """Bool (256,): True for patches kept as dynamic.

    Patches with similarity >= tau are static candidates; at most ``static_count`` of them, the most
    similar, are marked static; every other patch is dynamic.
    """
    order = np.argsort(-similarity, kind="stable")
    candidates = order[similarity[order] >= tau][:static_count]
    dynamic = np.ones(similarity.shape[0], dtype=bool)
    dynamic[candidates] = False
    return dynamic


#: the longest frame-difference look-back (control steps)
MAX_LOOKBACK = 6


def lookback_steps(translation: float) -> int:
    """Frame-difference look-back T from the norm of the summed executed translation since the last query."""
    return max(1, min(int(-16.0 / 3.0 * translation / 6.0 + 22.0 / 3.0) + 3, MAX_LOOKBACK))


def importance(attention: torch.Tensor, k: float, eps: float) -> torch.Tensor:
    """Per-token importance ``w_rank * w_conf`` from one layer's mean attention to the visual tokens.

    attention (N,) >= 0. ``w_rank_i = sigmoid(-k rank_i) / sum_j sigmoid(-k rank_j)`` (rank 0 = most
    attended); ``w_conf = 1 / (normalized entropy + eps)``.
    """
    n = attention.shape[0]
    q = attention / attention.sum().clamp_min(1e-12)
    entropy = -(q * q.clamp_min(1e-12).log()).sum() / math.log(max(n, 2))
    order = torch.argsort(attention, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=attention.device)
    w = torch.sigmoid(-k * rank.float())
    return w / w.sum() / (entropy + eps)


def top_indices(scores: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` candidates (indices into ``scores``) with the highest score (ties: lower index first)."""
    if candidates.numel() == 0 or k <= 0:
        return candidates[:0]
    vals = scores[candidates]
    order = torch.argsort(vals, descending=True, stable=True)[: min(k, candidates.numel())]
    return candidates[order]


# ----------------------------------------------------------------------------------------------------------
def grid_cell(patch: torch.Tensor) -> torch.Tensor:
    """(N,) patch indices of a view (row-major) -> (N, 2) float (row, column) in its square patch grid."""
    return torch.stack([patch // GRID, patch % GRID], dim=1).float()


@functools.lru_cache(maxsize=4)
def patch_distances(n_views: int) -> torch.Tensor:
    """(V*256, V*256) grid distance between the visual tokens of ``n_views`` views; inf between different views."""
    cells = grid_cell(torch.arange(PATCHES_PER_VIEW))
    within = torch.cdist(cells, cells)
    out = torch.full((n_views * PATCHES_PER_VIEW,) * 2, float("inf"))
    for v in range(n_views):
        block = slice(v * PATCHES_PER_VIEW, (v + 1) * PATCHES_PER_VIEW)
        out[block, block] = within
    return out


@dataclass
class PruneRecord:
    """What the last pass kept (per view: patch indices 0..255 after static pruning)."""

    kept_per_view: dict[str, int] = field(default_factory=dict)
    kept_patches: dict[str, list[int]] = field(default_factory=dict)
    mode: str = "coarse"
    lookback: int | None = None
    requery: bool = False
    requery_after: int | None = None
    dynamic_per_view: dict[str, int] = field(default_factory=dict)
    global_per_view: dict[str, int] = field(default_factory=dict)


class SpecPruner:
    """Carries episode state (global sets, frame history, controller) and acts as the layer-loop hooks."""

    def __init__(self, cfg: PruningConfig, n_layers: int, views: tuple[str, ...]) -> None:
        self.cfg = cfg
        self.n_layers = n_layers
        self.views = tuple(views)

        def scaled(layers):
            return {cfg.layer_at(i, n_layers) for i in layers}

        self.l0, self.l1 = cfg.local_layers
        if self.l1 >= n_layers:
            raise ValueError(f"local_layers={cfg.local_layers} need a model with more than {self.l1} layers")
        self.global_layers = scaled(cfg.global_layers) if cfg.use_global else set()
        self.score_layers = scaled(cfg.score_layers) if cfg.dynamic else set()
        # "prune before layer p" happens after layer p-1
        self.prune_after = {p - 1 for p in scaled(cfg.prune_layers) if p >= 1} if cfg.dynamic else set()
        self.controller = ModeController(cfg.controller)
        self.reset()

    # -- episode state ---------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.global_sets: dict[int, np.ndarray] = {}
        self.history: list[tuple[int, list[np.ndarray]]] = []  # (control step, policy-ready frames)
        self.step = 0
        self.queries = 0
        self.controller.reset()
        self.record = PruneRecord()
        self.in_loop_ms = 0.0
        self._weight: torch.Tensor | None = None  # set per pass by begin() (proportional attention)

    def begin(
        self,
        layout: SequenceLayout,
        frames: list[np.ndarray],
        prefix_len: int,
        executed: np.ndarray | None,
        ee_speed: tuple[float, float] | None,
        chunk_len: int,
    ) -> "SpecPruner":
        """Prepare one pass: controller, V_dynamic and V_global. Returns the hooks for ``run_layers``."""
        cfg = self.cfg
        if self.queries > 0:
            self.step += len(executed) if executed is not None else chunk_len
        mode = self.controller.update(executed, ee_speed)
        translation = float(np.linalg.norm(np.asarray(executed, dtype=np.float64)[:, :3].sum(axis=0))) if executed is not None and len(executed) else 0.0
        lookback = lookback_steps(translation)
        ref = None  # the frame difference's reference: the newest frame at least T steps old (none without V_dynamic)
        if cfg.use_dynamic_regions:
            ref = next((old for step, old in reversed(self.history) if step <= self.step - lookback), None)
        self.record = PruneRecord(mode=mode, lookback=lookback if ref is not None else None)

        L = layout.length
        self.layout = layout
        self.budget = [cfg.per_view(cfg.local_k_fine if mode == MODE_FINE else cfg.local_k_coarse, v) for v in range(len(self.views))]
        protected = np.zeros(L, dtype=bool)  # nonvisual ∪ V_global ∪ V_dynamic, over ORIGINAL positions
        protected[: layout.vis_start] = True
        protected[layout.vis_start + layout.n_visual :] = True
        for v in range(len(self.views)):
            base = layout.vis_start + v * PATCHES_PER_VIEW
            if ref is not None:
                dyn = changed_patches(patch_cosine(frames[v], ref[v]), cfg.per_view(cfg.tau, v), cfg.per_view(cfg.static_count, v))
                protected[base : base + PATCHES_PER_VIEW] |= dyn
                self.record.dynamic_per_view[self.views[v]] = int(dyn.sum())
            glob = self.global_sets.get(v, np.zeros(0, dtype=int))
            protected[base + glob] = True
            self.record.global_per_view[self.views[v]] = int(len(glob))
        self._protected = torch.from_numpy(protected)
        self._text_pos = layout.prompt_positions(prefix_len)
        self._action_pos = layout.action_positions()
        self._local0: dict[int, torch.Tensor] = {}
        self._score: torch.Tensor | None = None  # EMA importance over original positions
        self._next_global: dict[int, set[int]] = {v: set() for v in range(len(self.views))}
        self._n_text = 0
        # proportional attention: how many original visual tokens each token stands for, over ORIGINAL positions
        self._weight = torch.ones(L) if cfg.proportional else None
        self._entered: torch.Tensor | None = None  # original positions that entered the previous layer
        self.in_loop_ms = 0.0
        # frames back to the newest one at least the longest look-back old (however short the chunks executed)
        history = self.history + [(self.step, [f.copy() for f in frames])]
        old = [i for i, (step, _) in enumerate(history) if step <= self.step - MAX_LOOKBACK]
        self.history = history[old[-1] if old else 0 :]
        self.queries += 1
        return self

    def finish(self, actions: np.ndarray) -> None:
        """After the pass: may the consumer re-query when the chunk enters fine mode mid-way?"""
        row = self.controller.fine_switch_row(actions)
        self.record.requery_after = row
        self.record.requery = row is not None

    # -- layer-loop hooks ------------------------------------------------------------------------------------
    def _needs(self, layer: int) -> tuple[bool, bool]:
        text = layer in (self.l0, self.l1) or layer in self.global_layers
        return text, layer in self.score_layers

    def score_rows(self, layer: int, position_ids: torch.Tensor) -> torch.Tensor | None:
        text, action = self._needs(layer)
        if not (text or action):
            return None
        if position_ids.shape[0] != 1:
            raise ValueError(f"pruning selects tokens per observation: batch size must be 1, got {position_ids.shape[0]}")
        pos = position_ids.squeeze(0)
        rows = []
        self._n_text = 0
        if text:
            idx = torch.searchsorted(pos, self._text_pos.to(pos.device))
            rows.append(idx)
            self._n_text = idx.numel()
        if action:
            rows.append(torch.searchsorted(pos, self._action_pos.to(pos.device)))
        return torch.cat(rows)

    def key_bias(self, layer: int, position_ids: torch.Tensor) -> torch.Tensor | None:
        """With ``proportional``: (L',) log of the weight of each token entering ``layer`` (the number of original
        visual tokens it stands for), added to its attention logits as a key; None while every weight is 1.

        Visual tokens dropped since the previous layer pass their weight to the nearest surviving token of their
        view in the patch grid (ties: the first). A read-out that spreads its attention over many patches then
        keeps about the share it gave the dropped region, placed where that region was, instead of having it
        spread over the survivors (ToMe's proportional attention, with the dropped tokens' values left out). The
        rankings after the first drop read these weighted probabilities: a kept token is ranked by the attention
        its whole region gets, which favours tokens standing for large, otherwise unrepresented regions.
        """
        if self._weight is None:
            return None
        t0 = time.perf_counter()
        pos = position_ids.squeeze(0)
        if self._entered is not None and pos.numel() < self._entered.numel():
            self._carry_weight(self._entered[~torch.isin(self._entered, pos)], pos)
        self._entered = pos
        weight = self._weight.to(pos.device)[pos]
        self.in_loop_ms += (time.perf_counter() - t0) * 1e3
        return None if bool((weight == 1).all()) else weight.log()

    def _nearest(self, dropped: torch.Tensor, survivors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For the visual ones among ``dropped`` (original positions): (those that have a surviving visual token of
        their view, the index into ``survivors`` of the nearest one in the patch grid; ties: the first)."""
        start, n = self.layout.vis_start, self.layout.n_visual
        is_vis = (survivors >= start) & (survivors < start + n)
        dropped = dropped[(dropped >= start) & (dropped < start + n)]
        if dropped.numel() == 0 or not bool(is_vis.any()):
            return dropped[:0], dropped[:0]
        columns = survivors.clamp(start, start + n - 1) - start
        dist = patch_distances(n // PATCHES_PER_VIEW)[(dropped - start)[:, None], columns[None, :]]  # (G, K), a copy
        dist[:, ~is_vis] = float("inf")  # non-visual survivors never absorb
        best, nearest = dist.min(dim=1)
        same = best.isfinite()
        return dropped[same], nearest[same]

    def _carry_weight(self, dropped: torch.Tensor, survivors: torch.Tensor) -> None:
        """Each dropped visual token's weight to the nearest survivor of its view (none left: the weight is lost)."""
        dropped, survivors = dropped.cpu(), survivors.cpu()
        moved, nearest = self._nearest(dropped, survivors)
        self._weight.index_add_(0, survivors[nearest], self._weight[moved])
        self._weight[dropped] = 0.0

    def merge(self, hidden: torch.Tensor, keep: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """With ``merge``: before ``keep`` (1-D indices) is applied, each kept visual token's hidden state becomes the
        weighted mean of its own and those of the dropped tokens that pass their weight to it (the same nearest-token
        rule as the weights, weights taken before they move). Otherwise ``hidden`` unchanged."""
        if not self.cfg.merge or self._weight is None:
            return hidden
        t0 = time.perf_counter()
        pos = position_ids.squeeze(0).cpu()
        kept = torch.zeros(pos.numel(), dtype=torch.bool)
        kept[keep.cpu()] = True
        moved, nearest = self._nearest(pos[~kept], pos[kept])
        if moved.numel():
            index_of = torch.full((self.layout.length,), -1, dtype=torch.long)
            index_of[pos] = torch.arange(pos.numel())
            device = hidden.device
            src = index_of[moved].to(device)  # indices into the pass
            dst = torch.nonzero(kept).squeeze(1)[nearest].to(device)
            weight = self._weight[pos].to(device, torch.float32)  # (L',) before the carry
            total = weight.clone().index_add_(0, dst, weight[src])
            h = hidden[0].float() * weight[:, None]
            h.index_add_(0, dst, h[src])
            targets = dst.unique()
            hidden = hidden.clone()
            hidden[0, targets] = (h[targets] / total[targets, None]).to(hidden.dtype)
        self.in_loop_ms += (time.perf_counter() - t0) * 1e3
        return hidden

    def after_layer(self, layer: int, probs: torch.Tensor | None, position_ids: torch.Tensor) -> torch.Tensor | None:
        if probs is None and layer not in self.prune_after:
            if layer == self.n_layers - 1:
                self._commit_global()
            return None
        t0 = time.perf_counter()
        cfg, layout = self.cfg, self.layout
        pos = position_ids.squeeze(0)  # (L',) original positions
        device = pos.device
        view_of = layout.visual_view(pos)
        is_vis = view_of >= 0
        keep: torch.Tensor | None = None
        text_scores = act_rows = None
        if probs is not None:
            p = probs.mean(dim=1).squeeze(0)  # (R, L') mean over heads
            if self._n_text:
                text_scores = p[: self._n_text].mean(dim=0)  # (L',)
            if p.shape[0] > self._n_text:
                act_rows = p[self._n_text :]  # (56, L')

        if layer in (self.l0, self.l1) and text_scores is not None:
            keep = self._protected.to(device)[pos].clone()
            for v in range(len(self.views)):
                cand = torch.nonzero(view_of == v).squeeze(1)
                k = self.budget[v]
                if layer == self.l0:
                    top = top_indices(text_scores, cand, 2 * k)
                    self._local0[v] = pos[top[:k]]
                    keep[top] = True
                else:
                    keep[top_indices(text_scores, cand, k)] = True
                    keep |= torch.isin(pos, self._local0.get(v, pos[:0]))
            if layer == self.l1:
                self._record_static(pos, keep, view_of)

        if layer in self.global_layers and text_scores is not None:
            for v in range(len(self.views)):
                cand = torch.nonzero(view_of == v).squeeze(1)
                if keep is not None:
                    cand = cand[keep[cand]]
                top = top_indices(text_scores, cand, max(1, self.budget[v] // 2))
                self._next_global[v].update(((pos[top] - layout.vis_start) % PATCHES_PER_VIEW).tolist())

        if layer in self.score_layers and act_rows is not None:
            vis_idx = torch.nonzero(is_vis).squeeze(1)
            if vis_idx.numel():
                s = importance(act_rows.mean(dim=0)[vis_idx], cfg.rank_k, cfg.entropy_eps)
                if self._score is None:
                    self._score = torch.zeros(layout.length, device=device)
                where = pos[vis_idx]
                self._score[where] = (1 - cfg.ema_beta) * self._score[where] + cfg.ema_beta * s

        if layer in self.prune_after and self._score is not None:
            alive = is_vis if keep is None else (is_vis & keep)
            vis_idx = torch.nonzero(alive).squeeze(1)
            n = vis_idx.numel()
            n_drop = min(int(n * cfg.prune_fraction), max(0, n - cfg.min_visual_tokens))
            if n_drop > 0:
                order = torch.argsort(self._score[pos[vis_idx]], stable=True)
                keep = torch.ones_like(is_vis) if keep is None else keep
                keep[vis_idx[order[:n_drop]]] = False

        if layer == self.n_layers - 1:
            self._commit_global()
        self.in_loop_ms += (time.perf_counter() - t0) * 1e3
        return None if keep is None else torch.nonzero(keep).squeeze(1)

    def _record_static(self, pos: torch.Tensor, keep: torch.Tensor, view_of: torch.Tensor) -> None:
        for v, name in enumerate(self.views):
            sel = pos[keep & (view_of == v)]
            patches = ((sel - self.layout.vis_start) % PATCHES_PER_VIEW).tolist()
            self.record.kept_patches[name] = sorted(patches)
            self.record.kept_per_view[name] = len(patches)

    def _commit_global(self) -> None:
        if self.cfg.use_global:
            self.global_sets = {v: np.array(sorted(s), dtype=int) for v, s in self._next_global.items()}


class MatchedSelection(SpecPruner):
    """A preset's pruning with each choice of *which* visual tokens to keep replaced by :meth:`choose`: wherever
    the preset drops visual tokens (after the V_local layers, at the dynamic prune layers), each view keeps as many
    as the preset keeps there, chosen among that view's tokens still in the pass. Budgets, the controller and the
    layers where the sequence shrinks are the preset's: a control for its selection at an equal budget.

    After the second V_local layer the preset keeps its protected set ∪ its first layer's top-K ∪ its second
    layer's top-K among the survivors. Its count in its own pass is not observable here (the survivors differ),
    so the control keeps that union's size with the first two sets counted whole, as they are in the preset's
    own pass, and the second layer's top-K taken among the control's survivors: at most the first layer's count.
    After the first V_local layer and at the dynamic prunes the counts are the preset's rule exactly.
    """

    def choose(self, candidates: torch.Tensor, positions: torch.Tensor, n: int) -> torch.Tensor:
        """``n`` of ``candidates`` (indices into the pass, one view's tokens; ``positions`` their original
        positions) to keep."""
        raise NotImplementedError

    def after_layer(self, layer: int, probs: torch.Tensor | None, position_ids: torch.Tensor) -> torch.Tensor | None:
        keep = super().after_layer(layer, probs, position_ids)
        if keep is None:
            return None
        pos = position_ids.squeeze(0)
        layout = self.layout
        view_of = layout.visual_view(pos)
        kept = torch.zeros_like(pos, dtype=torch.bool)
        kept[keep] = True
        chosen = kept & (view_of < 0)
        for v in range(len(self.views)):
            cand = torch.nonzero(view_of == v).squeeze(1)
            n = int((kept & (view_of == v)).sum())
            if layer == self.l1 and probs is not None:
                base = layout.vis_start + v * PATCHES_PER_VIEW
                whole = torch.nonzero(self._protected[base:base + PATCHES_PER_VIEW]).squeeze(1).to(pos.device) + base
                whole = torch.cat([whole, self._local0.get(v, whole[:0]).to(whole.device)])
                n = min(cand.numel(), n + int((~torch.isin(whole.unique(), pos)).sum()))
            chosen[self.choose(cand, pos[cand], n)] = True
        if layer == self.l1:
            self._record_static(pos, chosen, view_of)
        return torch.nonzero(chosen).squeeze(1)


class RandomSelection(MatchedSelection):
    """:class:`MatchedSelection` drawing the kept tokens uniformly at random. Seeded; the draws continue across
    episodes (the same sequence on every run)."""

    def __init__(self, cfg: PruningConfig, n_layers: int, views: tuple[str, ...], seed: int = 0) -> None:
        super().__init__(cfg, n_layers, views)
        self.generator = torch.Generator().manual_seed(seed)

    def choose(self, candidates: torch.Tensor, positions: torch.Tensor, n: int) -> torch.Tensor:
        return candidates[torch.randperm(candidates.numel(), generator=self.generator)[:n]]


class OracleSelection(MatchedSelection):
    """:class:`MatchedSelection` keeping the tokens with the highest ``scores`` (over original positions), which
    the caller sets before each pass from what it knows about the observation, e.g. the attention the action
    placeholders pay each visual token in an unpruned pass of the same observation: the best an attention-ranked
    choice made before the pass could do at the preset's budget. Not a pruning method (it needs the full pass)."""

    def __init__(self, cfg: PruningConfig, n_layers: int, views: tuple[str, ...]) -> None:
        super().__init__(cfg, n_layers, views)
        self.scores: torch.Tensor | None = None

    def choose(self, candidates: torch.Tensor, positions: torch.Tensor, n: int) -> torch.Tensor:
        if self.scores is None:
            raise RuntimeError("OracleSelection.scores must be set before each pass")
        scores = self.scores.to(positions.device)[positions]  # (C,)
        return candidates[top_indices(scores, torch.arange(candidates.numel(), device=positions.device), n)]
