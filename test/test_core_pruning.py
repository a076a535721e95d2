"""Pruning selection on hand-built attention maps and frames; engine invariants on the tiny model."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_observation

from specprune_ros.core.config import ConfigError, PolicyConfig
from specprune_ros.core.model import SequenceLayout
from specprune_ros.core.policy import build_policy
from specprune_ros.core.presets import PRESETS, ControllerConfig, PruningConfig
from specprune_ros.core.pruning import (
    OracleSelection,
    RandomSelection,
    SpecPruner,
    changed_patches,
    grid_cell,
    importance,
    patch_distances,
    lookback_steps,
    patch_cosine,
    top_indices,
)


# ---------------------------------------------------------------------------------------------- pure parts
def test_patch_cosine_finds_the_changed_patch():
    rng = np.random.default_rng(0)
    a = rng.integers(1, 256, (224, 224, 3), dtype=np.uint8)
    b = a.copy()
    b[14 * 3 : 14 * 4, 14 * 7 : 14 * 8] = 255 - b[14 * 3 : 14 * 4, 14 * 7 : 14 * 8]  # patch row 3, col 7
    sim = patch_cosine(b, a)
    assert sim.shape == (256,)
    assert np.argmin(sim) == 3 * 16 + 7
    np.testing.assert_allclose(np.delete(sim, 3 * 16 + 7), 1.0, atol=1e-6)


def test_changed_patches_threshold_and_count():
    sim = np.linspace(0.9, 1.0, 256)  # patch i has similarity rising with i
    dyn = changed_patches(sim, tau=0.95, static_count=1000)
    np.testing.assert_array_equal(dyn, sim < 0.95)
    dyn = changed_patches(sim, tau=0.95, static_count=10)
    assert dyn.sum() == 246 and not dyn[-10:].any()  # only the 10 most similar are static


def test_lookback_formula():
    assert lookback_steps(0.0) == 6
    assert lookback_steps(6.0) == 5
    assert lookback_steps(9.0) == 3
    assert lookback_steps(100.0) == 1  # never below one step


def test_importance_rank_and_confidence():
    att = torch.tensor([0.1, 0.5, 0.2, 0.2])
    s = importance(att, k=0.5, eps=1e-3)
    assert int(torch.argmax(s)) == 1
    assert s[2] > s[3]  # tie broken by index: lower index ranks first
    peaked = importance(torch.tensor([0.97, 0.01, 0.01, 0.01]), k=0.5, eps=1e-3)
    flat = importance(torch.tensor([0.25, 0.25, 0.25, 0.26]), k=0.5, eps=1e-3)
    assert peaked.sum() > flat.sum()  # confident layers weigh more


def test_top_indices():
    scores = torch.tensor([0.0, 3.0, 1.0, 3.0, 2.0])
    assert top_indices(scores, torch.tensor([0, 1, 2, 3, 4]), 3).tolist() == [1, 3, 4]
    assert top_indices(scores, torch.tensor([0, 2]), 5).tolist() == [2, 0]


# ---------------------------------------------------------------------------------------- hand-built maps
P, PREFIX, H = 10, 4, 2
LAYOUT = SequenceLayout(n_views=2, has_proprio=True, prompt_len=P, n_action_tokens=56)


def text_probs(pos: torch.Tensor, favourites: dict[int, float], n_rows: int) -> torch.Tensor:
    """(1, H, n_rows, L') attention with extra mass on the given ORIGINAL positions."""
    w = torch.full((pos.numel(),), 1e-3)
    for p, v in favourites.items():
        w[(pos == p).nonzero()] = v
    return (w / w.sum()).expand(1, H, n_rows, -1).clone()


def run_static(cfg: PruningConfig, fav0: dict, fav1: dict, frames=None, pruner=None):
    pruner = pruner or SpecPruner(cfg, n_layers=32, views=("primary", "wrist"))
    frames = frames or [np.zeros((224, 224, 3), np.uint8)] * 2
    pruner.begin(LAYOUT, frames, PREFIX, None, None, chunk_len=8)
    pos = torch.arange(LAYOUT.length)[None]
    rows = pruner.score_rows(0, pos)
    assert rows.tolist() == list(range(LAYOUT.prompt_start + PREFIX, LAYOUT.prompt_start + P))
    keep = pruner.after_layer(0, text_probs(pos[0], fav0, rows.numel()), pos)
    pos = pos[:, keep]
    rows = pruner.score_rows(1, pos)
    keep = pruner.after_layer(1, text_probs(pos[0], fav1, rows.numel()), pos)
    return pruner, pos[:, keep].squeeze(0)


CFG = PruningConfig(local_k_coarse=(2, 1), local_k_fine=(4, 2), use_global=False, use_dynamic_regions=True, dynamic=False,
                    controller=ControllerConfig(enabled=False))
V0, V1 = 1, 1 + 256  # first position of each view


def test_static_selection_exact():
    fav0 = {V0 + 10: 9.0, V0 + 20: 8.0, V0 + 30: 7.0, V0 + 40: 6.0, V0 + 50: 5.0, V1 + 3: 9.0, V1 + 4: 8.0, V1 + 5: 1.0}
    fav1 = {V0 + 30: 9.0, V0 + 40: 8.5, V1 + 4: 9.0}
    pruner, kept = run_static(CFG, fav0, fav1)
    visual = kept[(kept >= 1) & (kept < 513)]
    # layer 0 keeps top-2K (primary 4, wrist 2); layer 1 keeps top-K of layer 0 ∪ its own top-K among survivors
    assert visual.tolist() == [V0 + 10, V0 + 20, V0 + 30, V0 + 40, V1 + 3, V1 + 4]
    assert pruner.record.kept_patches == {"primary": [10, 20, 30, 40], "wrist": [3, 4]}
    assert pruner.record.kept_per_view == {"primary": 4, "wrist": 2}
    # every non-visual token survives, in order, with its original position id
    nonvisual = kept[(kept < 1) | (kept >= 513)]
    assert nonvisual.tolist() == [0] + list(range(513, LAYOUT.length))


def test_views_have_separate_budgets():
    # all mass on the wrist view: the primary view still keeps its own K
    fav = {V1 + i: 10.0 - i * 0.1 for i in range(20)}
    pruner, kept = run_static(CFG, fav, fav)
    assert pruner.record.kept_per_view["primary"] >= CFG.local_k_coarse[0]
    assert pruner.record.kept_per_view["wrist"] == 1


def test_dynamic_regions_are_kept():
    a = np.zeros((224, 224, 3), np.uint8) + 40
    b = a.copy()
    b[0:14, 14:28, 0] = 200  # primary patch 1 changes colour (cosine ignores pure brightness)
    pruner = SpecPruner(CFG.replace(tau=(0.999,), static_count=(256,)), n_layers=32, views=("primary", "wrist"))
    run_static(pruner.cfg, {}, {}, frames=[a, a], pruner=pruner)  # first query: no reference frame
    assert pruner.record.lookback is None and pruner.record.dynamic_per_view == {}
    _, kept = run_static(pruner.cfg, {}, {}, frames=[b, a], pruner=pruner)
    assert pruner.record.lookback == 6
    assert pruner.record.dynamic_per_view == {"primary": 1, "wrist": 0}
    assert V0 + 1 in kept.tolist()


def test_dynamic_regions_can_be_switched_off():
    a = np.zeros((224, 224, 3), np.uint8) + 40
    b = a.copy()
    b[98:112, 28:42, 0] = 200  # primary patch 114 (row 7, column 2) changes colour
    for on in (True, False):
        pruner = SpecPruner(CFG.replace(tau=(0.999,), static_count=(256,), use_dynamic_regions=on), n_layers=32,
                            views=("primary", "wrist"))
        run_static(pruner.cfg, {}, {}, frames=[a, a], pruner=pruner)
        _, kept = run_static(pruner.cfg, {}, {}, frames=[b, a], pruner=pruner)
        assert (V0 + 114 in kept.tolist()) is on  # uniform text scores: only V_dynamic keeps patch 114
        assert pruner.record.dynamic_per_view == ({"primary": 1, "wrist": 0} if on else {})
        assert (pruner.record.lookback is not None) is on  # no frame difference, no look-back reported


def test_the_reference_frame_is_found_with_one_step_chunks():
    """A consumer re-querying after every row: the frame T steps back is still there (the history is kept by
    age, not by count)."""
    pruner = SpecPruner(CFG, n_layers=32, views=("primary", "wrist"))
    frames = [np.zeros((224, 224, 3), np.uint8)] * 2
    lookbacks = []
    for _ in range(10):
        pruner.begin(LAYOUT, frames, PREFIX, np.zeros((1, 7)), None, chunk_len=1)
        lookbacks.append(pruner.record.lookback)
    assert lookbacks == [None] * 6 + [6] * 4  # no motion: T = 6 steps; query k runs at step k
    assert len(pruner.history) == 7  # steps 3..9: the newest frame at least 6 steps old, and the newer ones


def test_global_set_carries_over_and_resets():
    cfg = CFG.replace(use_global=True, global_layers=(14, 30))
    pruner = SpecPruner(cfg, n_layers=32, views=("primary", "wrist"))
    _, kept = run_static(cfg, {V0 + 77: 9.0}, {V0 + 77: 9.0}, pruner=pruner)
    pos = kept[None]
    for layer in range(2, 32):
        rows = pruner.score_rows(layer, pos)
        probs = text_probs(pos[0], {V0 + 77: 5.0, V1 + 9: 5.0}, rows.numel()) if rows is not None else None
        assert pruner.after_layer(layer, probs, pos) is None
    assert 77 in pruner.global_sets[0].tolist()
    # next chunk: patch 77 is protected although layers 0/1 now favour others
    _, kept = run_static(cfg, {V0 + 5: 9.0, V0 + 6: 8.0}, {V0 + 5: 9.0}, pruner=pruner)
    assert V0 + 77 in kept.tolist()
    pruner.reset()
    assert pruner.global_sets == {}


def test_dynamic_pruning_floor_and_score_first():
    cfg = PruningConfig(local_k_coarse=(100, 100), dynamic=True, score_layers=(4,), prune_layers=(10, 15, 20, 25),
                        prune_fraction=0.5, min_visual_tokens=150, use_global=False, controller=ControllerConfig(enabled=False))
    pruner = SpecPruner(cfg, n_layers=32, views=("primary", "wrist"))
    _, kept = run_static(cfg, {}, {}, pruner=pruner)
    pos = kept[None]
    n_vis = [int(((pos >= 1) & (pos < 513)).sum())]
    for layer in range(2, 32):
        rows = pruner.score_rows(layer, pos)
        probs = None
        if rows is not None:
            probs = torch.rand(1, H, rows.numel(), pos.shape[1], generator=torch.Generator().manual_seed(layer)).softmax(-1)
        keep = pruner.after_layer(layer, probs, pos)
        if keep is not None:
            pos = pos[:, keep]
            n_vis.append(int(((pos >= 1) & (pos < 513)).sum()))
    assert n_vis[0] == 200
    assert n_vis[1:] == [150]  # half would be 100: the floor stops it; later prunes have nothing to drop
    assert int((pos >= 513).sum()) == LAYOUT.length - 513  # non-visual all there


def test_random_selection_keeps_the_methods_counts_per_view_but_not_its_tokens():
    fav0 = {V0 + 10: 9.0, V0 + 20: 8.0, V0 + 30: 7.0, V0 + 40: 6.0, V1 + 3: 9.0, V1 + 4: 8.0}
    fav1 = {V0 + 30: 9.0, V0 + 40: 8.5, V1 + 4: 9.0}
    method, kept = run_static(CFG, fav0, fav1)
    draws = []
    for seed in range(6):
        pruner = RandomSelection(CFG, 32, ("primary", "wrist"), seed=seed)
        pruner.begin(LAYOUT, [np.zeros((224, 224, 3), np.uint8)] * 2, PREFIX, None, None, chunk_len=8)
        pos = torch.arange(LAYOUT.length)[None]
        keep0 = pruner.after_layer(0, text_probs(pos[0], fav0, pruner.score_rows(0, pos).numel()), pos)
        pos = pos[:, keep0]
        # after layer 0: the method's count (top-2K per view), other patches
        assert [int(((pos >= a) & (pos < a + 256)).sum()) for a in (V0, V1)] == [4, 2]
        keep1 = pruner.after_layer(1, text_probs(pos[0], fav1, pruner.score_rows(1, pos).numel()), pos)
        random_kept = pos[0, keep1]
        # after layer 1: |layer 0's top-K ∪ layer 1's top-K among the survivors|, between K and 2K per view
        assert 2 <= pruner.record.kept_per_view["primary"] <= 4 and pruner.record.kept_per_view["wrist"] in (1, 2)
        assert len(pruner.record.kept_patches["primary"]) == pruner.record.kept_per_view["primary"]
        nonvisual = random_kept[(random_kept < 1) | (random_kept >= 513)]
        assert nonvisual.tolist() == [0] + list(range(513, LAYOUT.length)) and (random_kept.diff() > 0).all()
        draws.append(pruner.record.kept_patches["primary"])
    assert method.record.kept_patches["primary"] == [10, 20, 30, 40]
    assert len({tuple(d) for d in draws}) > 1 and any(d != [10, 20, 30, 40] for d in draws)
    again = RandomSelection(CFG, 32, ("primary", "wrist"), seed=0)
    run_static(CFG, fav0, fav1, pruner=again)
    assert again.record.kept_patches["primary"] == draws[0]  # seeded
    # the dynamic prunes: the method's rule (drop int(n * fraction), not below the floor) on the control's n
    cfg = CFG.replace(local_k_coarse=(100, 100), dynamic=True, score_layers=(4,), prune_layers=(10, 20), prune_fraction=0.3,
                      min_visual_tokens=60)
    pruner = RandomSelection(cfg, 32, ("primary", "wrist"), seed=3)
    _, kept = run_static(cfg, {}, {}, pruner=pruner)
    pos = kept[None]
    for layer in range(2, 32):
        rows = pruner.score_rows(layer, pos)
        probs = None
        if rows is not None:
            probs = torch.rand(1, H, rows.numel(), pos.shape[1], generator=torch.Generator().manual_seed(layer)).softmax(-1)
        n = [int(((pos >= a) & (pos < a + 256)).sum()) for a in (V0, V1)]
        keep = pruner.after_layer(layer, probs, pos)
        if keep is not None:
            pos = pos[:, keep]
            after = [int(((pos >= a) & (pos < a + 256)).sum()) for a in (V0, V1)]
            assert sum(after) == sum(n) - min(int(sum(n) * 0.3), sum(n) - 60)
            assert int((pos >= 513).sum()) == LAYOUT.length - 513


def test_oracle_selection_keeps_the_best_scored_tokens_at_the_methods_counts():
    fav0 = {V0 + 10: 9.0, V0 + 20: 8.0, V0 + 30: 7.0, V0 + 40: 6.0, V1 + 3: 9.0, V1 + 4: 8.0}
    fav1 = {V0 + 30: 9.0, V0 + 40: 8.5, V1 + 4: 9.0}
    pruner = OracleSelection(CFG, 32, ("primary", "wrist"))
    with pytest.raises(RuntimeError, match="scores must be set"):
        run_static(CFG, fav0, fav1, pruner=pruner)
    scores = torch.zeros(LAYOUT.length)
    best = [V0 + 200, V0 + 201, V0 + 202, V0 + 203, V0 + 204, V1 + 100, V1 + 101]
    scores[best] = torch.arange(len(best), 0, -1, dtype=torch.float32)  # V0+200 best, then in order
    pruner = OracleSelection(CFG, 32, ("primary", "wrist"))
    pruner.scores = scores
    _, kept = run_static(CFG, fav0, fav1, pruner=pruner)
    # layer 0: the method's counts (4, 2) of the oracle's best; layer 1: |protected ∪ top-2K ∪ top-K| counted whole
    # (4, here all of layer 0's survivors) -- the oracle's best four primary patches and two wrist ones
    assert pruner.record.kept_patches["primary"] == [200, 201, 202, 203]
    assert pruner.record.kept_patches["wrist"] == [100, 101]
    assert kept[(kept < 1) | (kept >= 513)].tolist() == [0] + list(range(513, LAYOUT.length))


def test_proportional_weights_go_to_the_nearest_kept_token_of_the_view():
    cfg = CFG.replace(proportional=True)
    fav0 = {V0 + 0: 9.0, V0 + 1: 8.0, V0 + 255: 7.0, V0 + 254: 6.0, V1 + 17: 9.0, V1 + 18: 8.0}
    fav1 = {V0 + 0: 9.0, V0 + 255: 9.0, V1 + 17: 9.0}
    pruner = SpecPruner(cfg, n_layers=32, views=("primary", "wrist"))
    pos0 = torch.arange(LAYOUT.length)[None]
    pruner.begin(LAYOUT, [np.zeros((224, 224, 3), np.uint8)] * 2, PREFIX, None, None, chunk_len=8)
    assert pruner.key_bias(0, pos0) is None  # nothing dropped yet
    keep = pruner.after_layer(0, text_probs(pos0[0], fav0, pruner.score_rows(0, pos0).numel()), pos0)
    pos1 = pos0[:, keep]
    bias1 = pruner.key_bias(1, pos1)
    keep = pruner.after_layer(1, text_probs(pos1[0], fav1, pruner.score_rows(1, pos1).numel()), pos1)
    pos2 = pos1[:, keep]
    weight = pruner.key_bias(2, pos2).exp()
    by_pos = dict(zip(pos2[0].tolist(), weight.tolist()))
    # layer 0 keeps the primary view's top-2K = patches 0, 1, 254, 255: each of the 252 others goes to the nearest of
    # them in the 16 x 16 grid; layer 1 keeps 0 and 255 (its top-K) and 1 (layer 0's top-K): 254 and what it carried go
    # to 255. The wrist keeps 17 and 18, then 17: all 256 weights end on 17.
    kept_primary = [V0 + 0, V0 + 1, V0 + 255]
    assert sorted(p for p in by_pos if V0 <= p < V1) == kept_primary
    cells = grid_cell(torch.arange(256))
    first = torch.bincount(torch.cdist(cells, cells[[0, 1, 254, 255]]).argmin(dim=1), minlength=4).tolist()
    assert [by_pos[p] for p in kept_primary] == pytest.approx([first[0], first[1], first[2] + first[3]])
    assert by_pos[V1 + 17] == pytest.approx(256)
    assert all(by_pos[p] == pytest.approx(1.0) for p in by_pos if not V0 <= p < V1 + 256)  # non-visual: weight 1
    assert bias1 is not None and bias1.numel() == pos1.shape[1]
    assert weight.sum() == pytest.approx(pos0.shape[1])  # no weight lost: 512 visual + the non-visual tokens
    assert SpecPruner(CFG, n_layers=32, views=("primary", "wrist")).key_bias(0, pos0) is None  # off by default


def test_merge_averages_each_kept_token_with_the_dropped_ones_it_absorbs():
    cfg = CFG.replace(proportional=True, merge=True)
    fav0 = {V0 + 0: 9.0, V0 + 1: 8.0, V0 + 255: 7.0, V0 + 254: 6.0, V1 + 17: 9.0, V1 + 18: 8.0}
    pruner = SpecPruner(cfg, n_layers=32, views=("primary", "wrist"))
    pos = torch.arange(LAYOUT.length)[None]
    pruner.begin(LAYOUT, [np.zeros((224, 224, 3), np.uint8)] * 2, PREFIX, None, None, chunk_len=8)
    pruner.key_bias(0, pos)
    keep = pruner.after_layer(0, text_probs(pos[0], fav0, pruner.score_rows(0, pos).numel()), pos)
    hidden = torch.randn(1, LAYOUT.length, 8)
    merged = pruner.merge(hidden, keep, pos)
    kept = set(keep.tolist())
    dist = patch_distances(2)
    for view, kept_patches in ((0, [0, 1, 254, 255]), (1, [17, 18])):
        base = view * 256
        others = [p for p in range(256) if p not in kept_patches]
        owner = dist[[base + p for p in others]][:, [base + k for k in kept_patches]].argmin(dim=1)
        for j, k in enumerate(kept_patches):
            members = [V0 + base + k] + [V0 + base + p for p, o in zip(others, owner.tolist()) if o == j]
            torch.testing.assert_close(merged[0, V0 + base + k], hidden[0, members].mean(dim=0))
    untouched = [i for i in range(LAYOUT.length) if not V0 <= i < V1 + 256 or i not in kept]
    torch.testing.assert_close(merged[0, untouched], hidden[0, untouched])  # dropped ones are gathered away anyway
    assert SpecPruner(CFG.replace(proportional=True), n_layers=32, views=("primary", "wrist")).merge(hidden, keep, pos) is hidden
    with pytest.raises(ConfigError, match="proportional"):
        CFG.replace(merge=True)
    with pytest.raises(ConfigError, match="proportional"):
        PolicyConfig(merge=True)


@pytest.mark.parametrize("change, message", [({"static_count": (-1,)}, "static_count"), ({"static_count": (300,)}, "static_count"),
                                             ({"tau": (1.5,)}, "tau"), ({"tau": (float("nan"),)}, "tau")])
def test_frame_difference_settings_are_bounded(change, message):
    with pytest.raises(ConfigError, match=message):
        CFG.replace(**change)


def test_a_key_bias_of_log_w_is_w_identical_tokens(tiny_checkpoint, observation):
    """The layer loop adds ``key_bias`` to every row's logits: a token weighted 3 acts on the others as three
    identical copies of it (same hidden state, same position) would, in every layer."""
    pol = build_policy(PolicyConfig(checkpoint=str(tiny_checkpoint), preset="off"))
    model = pol.model
    torch.manual_seed(0)
    seq = torch.randn(1, 40, model.llm.config.hidden_size)
    pos = torch.arange(40)[None]

    class Bias:
        def score_rows(self, layer, position_ids):
            return None

        def after_layer(self, layer, probs, position_ids):
            return None

        def key_bias(self, layer, position_ids):
            return (position_ids[0] == 7).float() * float(np.log(3.0))

    with torch.no_grad():
        weighted, _, _ = model.run_layers(seq, pos, Bias())
        copies = torch.cat([seq[:, :8], seq[:, 7:8], seq[:, 7:8], seq[:, 8:]], dim=1)
        copied, _, _ = model.run_layers(copies, torch.cat([pos[:, :8], pos[:, 7:8], pos[:, 7:8], pos[:, 8:]], dim=1))
        plain, _, _ = model.run_layers(seq, pos)
    others = torch.cat([copied[:, :8], copied[:, 10:]], dim=1)
    torch.testing.assert_close(weighted, others, atol=1e-5, rtol=1e-4)
    assert (weighted - plain).abs().max() > 1e-3


def test_proportional_pruning_keeps_the_counts_and_changes_the_actions(tiny_checkpoint):
    obs = [make_observation(seed=i) for i in range(2)]
    plain = build_policy(PolicyConfig(checkpoint=str(tiny_checkpoint), preset="paper"))
    prop = build_policy(PolicyConfig(checkpoint=str(tiny_checkpoint), preset="paper", proportional=True))
    assert prop.pruning == PRESETS["paper"].replace(proportional=True) and not plain.pruning.proportional
    for o in obs:
        a, b = plain.infer(o), prop.infer(o)
        # the first layer's choice is the same (nothing weighted yet); later rankings read the weighted attention
        assert a.stats.tokens_per_layer[:2] == b.stats.tokens_per_layer[:2]
        assert np.abs(a.actions - b.actions).max() > 1e-4 and np.all(np.isfinite(b.actions))
    merged = build_policy(PolicyConfig(checkpoint=str(tiny_checkpoint), preset="paper", proportional=True, merge=True))
    assert merged.pruning.merge
    prop.reset()  # both start the episode afresh: only the merge differs
    for o in obs:
        b, c = prop.infer(o), merged.infer(o)
        assert np.abs(b.actions - c.actions).max() > 1e-4 and np.all(np.isfinite(c.actions))
    off = build_policy(PolicyConfig(checkpoint=str(tiny_checkpoint), preset="off", proportional=True))
    assert not off.pruning.enabled  # nothing pruned, nothing to weigh


def test_no_prune_without_a_score():
    with pytest.raises(ValueError, match="real score"):
        PruningConfig(score_layers=(12,), prune_layers=(10,))


# --------------------------------------------------------------------------------------------- tiny model
def test_keep_everything_equals_unpruned(tiny_checkpoint, observation):
    """The pruning machinery with budgets that keep every token reproduces the unpruned pass exactly."""
    base = build_policy(PolicyConfig(checkpoint=str(tiny_checkpoint), preset="off")).infer(observation)
    keep_all = PruningConfig(local_k_coarse=(256, 256), local_k_fine=(256, 256), dynamic=False)
    pol = build_policy(PolicyConfig(checkpoint=str(tiny_checkpoint), preset="paper"), pruning=keep_all)
    out = pol.infer(observation)
    assert out.stats.tokens_per_layer == base.stats.tokens_per_layer
    np.testing.assert_array_equal(out.actions, base.actions)


def test_paper_preset_prunes_and_reports(tiny_checkpoint):
    pol = build_policy(PolicyConfig(checkpoint=str(tiny_checkpoint), preset="paper"))
    chunks = [pol.infer(make_observation(seed=i)) for i in range(3)]
    for c in chunks:
        s = c.stats
        assert s.tokens_per_layer[0] == s.total_tokens
        assert all(a >= b for a, b in zip(s.tokens_per_layer, s.tokens_per_layer[1:]))
        assert s.tokens_per_layer[-1] < s.total_tokens
        assert set(s.kept_per_view) == {"primary", "wrist"}
        assert all(len(s.kept_patches[v]) == s.kept_per_view[v] for v in s.kept_per_view)
        assert s.mode == "coarse" and s.preset == "paper"
        assert {"vision", "static_prune", "llm", "head", "total"} <= set(s.timings_ms)
        assert np.all(np.isfinite(c.actions))
    assert chunks[0].stats.lookback is None and chunks[1].stats.lookback is not None
    # global set of the previous chunk is carried, and cleared by reset()
    assert pol.pruner.global_sets and any(len(g) for g in pol.pruner.global_sets.values())
    pol.reset()
    assert pol.pruner.global_sets == {} and pol.pruner.history == []


def test_presets_are_ordered():
    assert not PRESETS["off"].enabled
    c, p, a = PRESETS["conservative"], PRESETS["paper"], PRESETS["aggressive"]
    assert c.local_k_coarse > p.local_k_coarse > a.local_k_coarse
    assert all(f >= k for f, k in zip(p.local_k_fine, p.local_k_coarse))  # fine keeps more (paper)
    ff = PRESETS["fine-focus"]  # coarse as aggressive, fine far above paper's, everything else paper's
    assert ff.local_k_coarse == a.local_k_coarse and min(ff.local_k_fine) > max(p.local_k_fine)
    assert ff.replace(local_k_coarse=p.local_k_coarse, local_k_fine=p.local_k_fine) == p


def test_preset_lists_take_weighting_suffixes():
    from specprune_ros.core.presets import preset_list, split_weighting, weighting_flags

    assert preset_list(" off, paper ,paper+proportional,static-only+merge") == [
        "off", "paper", "paper+proportional", "static-only+merge"]
    assert [split_weighting(n) for n in ("paper", "paper+proportional", "aggressive+merge")] == [
        ("paper", ""), ("paper", "+proportional"), ("aggressive", "+merge")]
    assert weighting_flags("+merge") == {"proportional": True, "merge": True}
    assert weighting_flags("") == {"proportional": False, "merge": False}
    for text, message in [(" , ", "is empty"), ("paper+merg", "unknown ['paper+merg']"), ("paper,paper", "repeats"),
                          ("off+proportional", "prunes nothing")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            preset_list(text)


def test_every_preset_is_named_where_presets_are_listed():
    root = Path(__file__).resolve().parents[1]
    msg = (root / "msg" / "ActionChunk.msg").read_text()
    listed = {
        "ActionChunk.msg": msg.split("\nstring preset")[0].rsplit("\n\n", 1)[-1],  # the comment above the field
        "PolicyConfig.preset": PolicyConfig.__dataclass_fields__["preset"].metadata.get("doc", ""),
        "config/policy.yaml": (root / "config" / "policy.yaml").read_text(),
    }
    for where, text in listed.items():
        missing = [name for name in PRESETS if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)]
        assert not missing, f"{where} does not name {missing}"
