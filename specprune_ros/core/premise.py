"""The premise of V_local, measured on a policy and its own observations.

V_local keeps the visual tokens the task words attend to in decoder layers 0 and 1, on the grounds that these
are the tokens the last layers attend to: on OpenVLA-OFT, 85-95% of the top-20 of the first two layers
reappear in the last layer's top-20 (the paper). Whether a given checkpoint has that property can be checked
on the observations it will see, before pruning is turned on: :class:`PremiseMeter` runs the unpruned pass
and compares the top tokens per view.
"""
from __future__ import annotations

import numpy as np
import torch

from .model import PATCHES_PER_VIEW, SequenceLayout
from .types import Observation

#: visual tokens per view compared (the paper's top-20)
PREMISE_TOP = 20
#: the shares :meth:`PremiseMeter.result` reports
PREMISE_KEYS = ("text_l0_in_last", "text_l1_in_last", "text_l01_in_last", "text_l01_in_action_last",
                "text_last_in_action_last")


class MeanAttention:
    """Layer hooks that keep, at every layer, the head-averaged attention of the task words (the prompt after its
    fixed prefix) and of the action placeholders, each averaged over its rows: two (L,) per layer. Prune nothing."""

    def __init__(self, layout: SequenceLayout, prefix_len: int) -> None:
        self.text = layout.prompt_positions(prefix_len)
        self.action = layout.action_positions()
        self.layout = layout
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []

    def score_rows(self, layer: int, position_ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.text, self.action]).to(position_ids.device)

    def after_layer(self, layer: int, probs: torch.Tensor, position_ids: torch.Tensor) -> None:
        p = probs.mean(dim=1)[0].float()  # (R, L)
        self.layers.append((p[: len(self.text)].mean(dim=0), p[len(self.text):].mean(dim=0)))


def unpruned_attention(policy, obs: Observation) -> MeanAttention:
    """One unpruned pass of ``policy`` (an :class:`~specprune_ros.core.policy.OFTPolicy`, any preset: its pruner is
    not used) on ``obs``; the hooks hold every layer's mean task-word and action-placeholder attention."""
    model = policy.model
    _, pixels, proprio, prompt_ids, prefix, layout = policy.model_inputs(obs)
    hooks = MeanAttention(layout, prefix)
    with torch.inference_mode():
        seq = model.assemble(model.embed_vision(pixels), proprio, prompt_ids)
        model.run_layers(seq, torch.arange(seq.shape[1], device=seq.device)[None], hooks)
    return hooks


class PremiseMeter:
    """Accumulates, over observations, per view: the share of the ``top`` visual tokens by the task words'
    attention at layer 0, at layer 1 and by the sum of both (what V_local ranks by, in effect) that are also among
    the last layer's ``top``; the same against the last layer's ``top`` by the action placeholders' attention
    (what the action read-out attends to); and the share of the last layer's text top among its action top.
    Chance for a random set is top / 256.

    Per layer, also how the read-out spreads its attention: the share the action placeholders pay the visual
    tokens (the rest goes to the BOS token, proprio, prompt and themselves), and over how many visual tokens it
    spreads (the exponential of the entropy of their attention over the visual tokens: 512 for a uniform
    spread, 1 for one token). A read-out that averages over hundreds of patches loses what it reads from any
    pruned set that is not a uniform sample; the selection by attention has most to gain where a few tokens
    carry the read-out.
    """

    def __init__(self, top: int = PREMISE_TOP) -> None:
        if not 1 <= top <= PATCHES_PER_VIEW:
            raise ValueError(f"top={top} must lie in [1, {PATCHES_PER_VIEW}]")
        self.top = top
        self.shares: dict[str, list[float]] = {k: [] for k in PREMISE_KEYS}
        self.readout: list[list[tuple[float, float]]] = []  # per frame, per layer: (visual share, effective tokens)
        self.frames = 0

    def add(self, policy, obs: Observation) -> None:
        """One unpruned pass of ``policy`` (:func:`unpruned_attention`) on ``obs``."""
        hooks = unpruned_attention(policy, obs)
        layout = hooks.layout
        (t0, _), (t1, _), (tl, al) = hooks.layers[0], hooks.layers[1], hooks.layers[-1]
        for v in range(layout.n_views):
            lo = layout.vis_start + v * PATCHES_PER_VIEW

            def best(scores: torch.Tensor) -> set[int]:
                return set(torch.topk(scores[lo:lo + PATCHES_PER_VIEW], self.top).indices.tolist())

            last, action, l01 = best(tl), best(al), best(t0 + t1)
            for key, a, b in (("text_l0_in_last", best(t0), last), ("text_l1_in_last", best(t1), last),
                              ("text_l01_in_last", l01, last), ("text_l01_in_action_last", l01, action),
                              ("text_last_in_action_last", last, action)):
                self.shares[key].append(len(a & b) / self.top)
        visual = slice(layout.vis_start, layout.vis_start + layout.n_visual)
        spread = []
        for _, action in hooks.layers:
            mass = action[visual].sum()
            q = action[visual] / mass.clamp_min(1e-12)
            spread.append((float(mass), float(torch.exp(-(q * q.clamp_min(1e-12).log()).sum()))))
        self.readout.append(spread)
        self.frames += 1

    def result(self) -> dict:
        """Mean shares (0..1) over every frame and view, ``chance``, ``top`` and ``frames``; per layer the mean
        visual share of the read-out's attention (``action_visual_share``) and the mean number of visual tokens it
        spreads over (``action_visual_tokens``)."""
        if not self.frames:
            raise ValueError("no observation was measured")
        out = {k: float(np.mean(v)) for k, v in self.shares.items()}
        spread = np.asarray(self.readout).mean(axis=0)  # (layers, 2)
        out.update({"chance": self.top / PATCHES_PER_VIEW, "top": self.top, "frames": self.frames,
                    "action_visual_share": spread[:, 0].round(4).tolist(),
                    "action_visual_tokens": spread[:, 1].round(1).tolist()})
        return out
