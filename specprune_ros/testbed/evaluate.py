"""``specprune-testbed-eval``: closed-loop success of a policy on the test-bed task, per pruning preset.

For each variant (a preset name such as ``off`` or ``paper``, optionally suffixed ``+nocontroller`` to run it
with the coarse/fine controller disabled or ``+matched`` to run it without the controller at its own average
budget, and then optionally ``+random`` to keep as many tokens as it does, chosen at random, or ``+oracle``, the
most attended ones), N seeded episodes are run closed loop exactly as a robot would:
render both cameras, build the observation (proprio, instruction, the actions executed since the last query),
``policy.infer``, execute the chunk's rows open loop at the control rate (dropping the rest of a chunk when the
controller asks for a re-query on entering fine mode). Reported per variant: success rate with a 95% Wilson
interval, episode length, inference latency, visual tokens kept, mean sequence length over the layers, the
fraction of queries in fine mode and each episode's mode time-line. Writes ``results.json`` and
``results.png`` (success with intervals, latency, tokens, mode time-lines).

Evaluation seeds start at ``--first-seed`` (default 0) and stay below 1,000,000, where the training
demonstrations' seeds begin.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cli.common import ArgumentParser
from ..core.config import PolicyConfig, PreprocessConfig
from ..core.controller import requery_rows
from ..core.presets import MERGE, PRESETS, PROPORTIONAL, ControllerConfig, PruningConfig, split_weighting, weighting_flags
from ..core.types import MODE_FINE, InputError, Observation, Policy
from . import TESTBED_CHECKPOINT
from .task import TabletopTask, TaskConfig

NO_CONTROLLER = "+nocontroller"
DEFAULT_VARIANTS = ("off", "conservative", "paper", "aggressive", "static-only", "paper+nocontroller", "paper+matched",
                    "paper+random", "fine-focus", "fine-focus+matched")


def _mean_or_none(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (robust at 0 and n successes)."""
    if n <= 0:
        raise ValueError(f"n={n} must be >= 1")
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} must lie in [0, n={n}]")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact at the ends (rounding gave 0.9999999999999999 for n/n), and never excluding the observed rate
    lo = 0.0 if successes == 0 else min(p, max(0.0, centre - half))
    hi = 1.0 if successes == n else max(p, min(1.0, centre + half))
    return lo, hi


def json_safe(value):
    """``value`` with every NaN or infinite float (a statistic without samples) as None: valid JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value, spec: str) -> str:
    """``value`` formatted, or "-" for a statistic without samples."""
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


MATCHED = "+matched"
RANDOM = "+random"
ORACLE = "+oracle"
#: variant suffixes that replace the preset's choice of tokens, keeping its counts
CONTROLS = (RANDOM, ORACLE)


def split_variant(variant: str) -> tuple[str, str, str, str]:
    """(preset, controller suffix, selection suffix, ``+proportional``, ``+merge`` or "") of a variant name:
    ``paper+matched+random`` gives ``("paper", "+matched", "+random", "")``, ``paper+proportional`` gives
    ``("paper", "", "", "+proportional")``. Not validated (:func:`pruning_for`)."""
    rest, proportional = split_weighting(variant)
    control = next((c for c in CONTROLS if rest.endswith(c)), "")
    rest = rest.removesuffix(control)
    controller = next((c for c in (NO_CONTROLLER, MATCHED) if rest.endswith(c)), "")
    return rest.removesuffix(controller), controller, control, proportional


def variant_preset(variant: str) -> str:
    """The preset a variant name runs: ``paper`` for ``paper``, ``paper+nocontroller``, ``paper+matched``,
    ``paper+random``, ``paper+matched+random``, ``paper+oracle``, ..."""
    return split_variant(variant)[0]


def matched_source(variant: str) -> str:
    """The variant whose run gives a ``+matched`` variant its budget: the same without ``+matched``
    (``paper`` for ``paper+matched``, ``paper+random`` for ``paper+matched+random``)."""
    base, controller, control, proportional = split_variant(variant)
    return base + (controller if controller != MATCHED else "") + control + proportional


def pruning_for(variant: str, fine_fraction: float | None = None) -> PruningConfig:
    """The pruning configuration of a variant name: ``preset``, ``preset+nocontroller`` or ``preset+matched``,
    each optionally followed by ``+random`` or ``+oracle`` (these two keep the configuration;
    :class:`~specprune_ros.core.pruning.RandomSelection` or :class:`~specprune_ros.core.pruning.OracleSelection`
    replaces its choice of tokens at run time), then optionally by ``+proportional`` (the dropped tokens'
    attention weight carried to the kept ones: ``PruningConfig.proportional``) or ``+merge`` (their hidden states
    too: ``proportional`` and ``merge``).

    ``+nocontroller`` runs the preset with the coarse/fine controller disabled (always the coarse budget).
    ``+matched`` disables it too but gives every query the preset's average V_local budget instead: the
    coarse and fine budgets weighted by ``fine_fraction``, the share of the preset's own queries that ran in
    fine mode. Its V_local budget is on average the preset's with its controller, so the two compare the
    controller's choice of *when* to keep more tokens at an equal budget; the kept counts, which add V_global and
    V_dynamic, can still differ by a few percent (on the test bed ``fine-focus+matched`` keeps 2% fewer), as the
    summary's ``kept_per_view`` shows.
    """
    base, controller, control, proportional = split_variant(variant)
    if base not in PRESETS:
        raise ValueError(f"unknown variant {variant!r}: use a preset ({', '.join(sorted(PRESETS))}), optionally "
                         f"followed by {NO_CONTROLLER!r} or {MATCHED!r}, then optionally by {RANDOM!r} or {ORACLE!r}, "
                         f"then optionally by {PROPORTIONAL!r} or {MERGE!r}")
    if (control or proportional) and not PRESETS[base].enabled:
        raise ValueError(f"{variant}: {base} prunes nothing, there is no selection to replace or weigh")
    cfg = PRESETS[base].replace(**weighting_flags(proportional))
    if controller:
        cfg = dataclasses.replace(cfg, controller=dataclasses.replace(cfg.controller, enabled=False))
    if controller == MATCHED:
        if fine_fraction is None or not 0 <= fine_fraction <= 1:
            raise ValueError(f"{variant}: needs the fine-mode fraction (0..1) of {matched_source(variant)}'s own run, "
                             f"got {fine_fraction}")
        k = tuple(max(1, int(round(fine_fraction * kf + (1 - fine_fraction) * kc)))
                  for kc, kf in zip(cfg.local_k_coarse, cfg.local_k_fine))
        cfg = dataclasses.replace(cfg, local_k_coarse=k, local_k_fine=k)
    return cfg


class OraclePolicy:
    """A policy whose preset's choice of tokens is made by :class:`~specprune_ros.core.pruning.OracleSelection`:
    before each query an unpruned pass of the same observation ranks the visual tokens by the attention the action
    placeholders pay them, averaged over every layer (what the action read-out gathers), and the pruned pass keeps
    the preset's counts of the best. An evaluation instrument: the best an attention-ranked selection could do at
    the preset's budget, to set beside the preset's own choice and a random one. Its latency is the pruned pass's."""

    def __init__(self, policy: Policy) -> None:
        from ..core.pruning import OracleSelection

        self.policy = policy
        policy.pruner = OracleSelection(policy.pruning, policy.pruner.n_layers, policy.pruner.views)

    def __getattr__(self, name: str):
        return getattr(self.policy, name)

    def infer(self, obs: Observation):
        import torch

        from ..core.premise import unpruned_attention

        hooks = unpruned_attention(self.policy, obs)
        self.policy.pruner.scores = torch.stack([action for _, action in hooks.layers]).mean(dim=0)
        return self.policy.infer(obs)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation parameters.

    Attributes:
        checkpoint: checkpoint directory (released layout), e.g. the committed ``checkpoints/testbed``.
        variants: presets to compare (``off`` is the unpruned baseline); ``<preset>+nocontroller`` disables the
            coarse/fine controller of that preset, ``<preset>+matched`` too but at its average budget (see
            :func:`pruning_for`), ``<preset>+random`` keeps as many tokens as the preset, chosen at random,
            ``<preset>+oracle`` as many, those the action placeholders attend to most in an unpruned pass of the
            same observation (:class:`OraclePolicy`).
        episodes: episodes per variant (seeds first_seed .. first_seed + episodes - 1, the same for every variant).
        first_seed: first task seed; the last seed used (with the extra checks' ranges at +50000, +60000 and
            +70000) must stay below 1000000.
        max_steps: control steps before an episode counts as failed.
        measured_speed: pass the measured end-effector speed (from the joint velocities) to the controller.
        open_loop_seeds: expert trajectories (seeds first_seed + 50000 ...) on which every variant's actions are
            compared with the expert's labels and with ``off`` (see :func:`open_loop_fidelity`); 0 = skip.
        overlay_episodes: save kept-token overlays (PNG) of the first queries of this many episodes per variant.
        grounding_seeds: scenes (seeds first_seed + 60000 ...) on which :func:`instruction_following` checks that the
            first chunk heads for the named object, each object named in turn; 0 = skip.
        agreement_seeds: expert trajectories (seeds first_seed + 70000 ...) on which :func:`attention_agreement`
            checks the method's premise on the unpruned policy; 0 = skip.
        threads: torch CPU threads.
    """

    checkpoint: str = str(TESTBED_CHECKPOINT)
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    episodes: int = 50
    first_seed: int = 0
    max_steps: int = 240
    measured_speed: bool = False
    open_loop_seeds: int = 0
    overlay_episodes: int = 0
    grounding_seeds: int = 0
    agreement_seeds: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("variants is empty: name at least one preset, e.g. off,paper")
        for i, v in enumerate(self.variants):
            pruning_for(v, fine_fraction=0.0)
            base = matched_source(v)
            if base != v and base not in self.variants[:i]:
                raise ValueError(f"variant {v} needs {base} evaluated before it (its budget is matched to {base}'s run)")
            if base != v and self.episodes == 0:
                raise ValueError(f"variant {v} needs closed-loop episodes (its budget comes from {base}'s episodes)")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants repeat: {list(self.variants)}")
        extra = (self.open_loop_seeds, self.grounding_seeds, self.agreement_seeds)
        if self.episodes < 0 or (self.episodes == 0 and not any(extra)):
            raise ValueError(f"episodes={self.episodes} must be >= 1 (or 0 with open_loop_seeds, grounding_seeds or "
                             "agreement_seeds > 0)")
        if self.overlay_episodes < 0:
            raise ValueError(f"overlay_episodes={self.overlay_episodes} must be >= 0")
        for name in ("episodes", "open_loop_seeds", "grounding_seeds", "agreement_seeds", "first_seed"):
            if getattr(self, name) > 1_000_000:
                raise ValueError(f"{name}={getattr(self, name)} must be <= 1000000")
        if min(extra) < 0:
            raise ValueError(f"open_loop_seeds={self.open_loop_seeds}, grounding_seeds={self.grounding_seeds} and "
                             f"agreement_seeds={self.agreement_seeds} must be >= 0")
        if self.first_seed < 0:
            raise ValueError(f"first_seed={self.first_seed} must be >= 0")
        last = max([self.first_seed + self.episodes, *(self.first_seed + off + n for off, n in
                   ((50_000, self.open_loop_seeds), (60_000, self.grounding_seeds), (70_000, self.agreement_seeds)) if n)])
        if last > 1_000_000:  # the demonstrations' task seeds start there: evaluation never sees training scenes
            raise ValueError(f"first_seed={self.first_seed} with these counts reaches task seed {last - 1}; evaluation "
                             "seeds stay below 1000000, where the training demonstrations' seeds begin")
        if self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps} must be >= 1")
        if self.threads < 1:
            raise ValueError(f"threads={self.threads} must be >= 1")


def named_kept_fraction(task: TabletopTask, kept_patches: dict[str, list[int]],
                        preprocess: PreprocessConfig = PreprocessConfig()) -> dict[str, float | None]:
    """Per view: fraction of the patches showing the named object that survived static pruning (None if none)."""
    from .train import patch_labels

    out: dict[str, float | None] = {}
    for view, kept in kept_patches.items():
        named = np.flatnonzero(patch_labels(task, view, preprocess) == 1)
        out[view] = float(np.isin(named, kept).mean()) if len(named) else None
    return out


def run_episode(policy: Policy, seed: int, task_config: TaskConfig = TaskConfig(), measured_speed: bool = False,
                overlay_dir: Path | None = None, overlay_queries: int = 0) -> dict:
    """One closed-loop episode; returns its record (success, steps, per-query statistics).

    Two progress measures stay informative when success is rare: ``grasped`` (the named object was held at
    some step) and ``closest_mm`` (the smallest horizontal distance from the tool point to the named object
    while it was not held, millimetres). ``wrong_grasp`` says that another object was held at some step
    (the policy went for the wrong object).

    With ``overlay_dir``, the first ``overlay_queries`` queries are saved as PNGs: both views with the pruned
    patches dimmed and the named object's patches outlined (red: pruned, green: kept).
    """
    task = TabletopTask(seed, task_config)
    policy.reset()
    executed: np.ndarray | None = None
    queries: list[dict] = []
    error = None
    target = task.scene.target

    def distance() -> float:  # horizontal, tool point to the named object, metres
        return float(np.linalg.norm(task.state.ee[:2] - task.state.object_pos[target, :2]))

    closest = distance()
    grasped = wrong_grasp = False
    while not task.done:
        speed = None
        if measured_speed:
            jv = task.joint_velocities()
            speed = (float(np.linalg.norm(jv[0:3])), float(abs(jv[3])))
        obs = Observation(images=task.render(), proprio=task.proprio(), instruction=task.instruction,
                          stamp=task.state.step * task_config.control_dt, executed_actions=executed, ee_speed=speed)
        try:
            chunk = policy.infer(obs)
        except InputError as err:
            error = f"policy refused the observation: {err}"
            break
        except FloatingPointError as err:  # non-finite actions: the episode fails, the evaluation goes on
            error = f"invalid action from the policy: {err}"
            break
        st = chunk.stats
        named = named_kept_fraction(task, st.kept_patches) if st.kept_patches else {}
        if overlay_dir is not None and len(queries) < overlay_queries and st.kept_patches:
            _save_overlay(task, obs, st, Path(overlay_dir) / f"seed{seed}_q{len(queries):02d}_{st.mode}.png")
        cut = requery_rows(st.requery, st.requery_after, len(chunk.actions))
        n_rows = len(chunk.actions) if cut is None else cut
        done_rows = []
        try:
            for a in chunk.actions[:n_rows]:
                task.step(a)
                done_rows.append(a)
                grasped = grasped or task.state.held == target
                wrong_grasp = wrong_grasp or task.state.held not in (-1, target)
                if task.state.held != target:
                    closest = min(closest, distance())
                if task.done:
                    break
        except ValueError as err:
            error = f"invalid action from the policy: {err}"
            break
        executed = np.asarray(done_rows, dtype=np.float64)
        queries.append({
            "step": int(task.state.step - len(done_rows)),
            "mode": st.mode,
            "latency_ms": float(st.timings_ms.get("total", float("nan"))),
            "kept": {k: int(v) for k, v in st.kept_per_view.items()},
            "mean_seq_len": float(np.mean(st.tokens_per_layer)) if st.tokens_per_layer else float("nan"),
            "total_tokens": int(st.total_tokens),
            "requery": bool(cut is not None),
            "named_kept": named,
        })
    return {"seed": seed, "instruction": task.instruction, "success": bool(task.success), "steps": int(task.state.step),
            "grasped": grasped, "wrong_grasp": wrong_grasp, "closest_mm": 1000 * closest, "error": error,
            "queries": queries}


def open_loop_fidelity(policies: dict[str, Policy], seeds: list[int], task_config: TaskConfig = TaskConfig(),
                       chunk_len: int = 8) -> dict[str, dict]:
    """Action error of each policy on the expert's own trajectories (no closed loop).

    Every ``chunk_len`` steps of an expert rollout each policy gets the same observation (with the expert's
    executed actions since the previous query); reported per variant: mean |a - expert label| over the chunk
    (all dimensions and translation only) and mean |a - a_off| against the unpruned variant ``off`` if present.
    Meaningful even when closed-loop success is low: it isolates what pruning changes in the actions.
    """
    from .expert import expert_action

    errs: dict[str, list[np.ndarray]] = {v: [] for v in policies}
    diffs: dict[str, list[np.ndarray]] = {v: [] for v in policies}
    named: dict[str, list[dict]] = {v: [] for v in policies}
    kept: dict[str, list[dict]] = {v: [] for v in policies}
    for seed in seeds:
        task = TabletopTask(seed, task_config)
        labels = []
        sim = TabletopTask(seed, task_config)
        while not sim.done:  # the expert's whole trajectory, to know the labels ahead of time
            a = expert_action(sim)
            sim.step(a)
            labels.append(a)
        labels = np.array(labels)  # (T, 7)
        for pol in policies.values():
            pol.reset()
        executed = None
        for t in range(0, len(labels), chunk_len):
            obs = Observation(images=task.render(), proprio=task.proprio(), instruction=task.instruction,
                              stamp=t * task_config.control_dt, executed_actions=executed)
            idx = np.minimum(np.arange(t, t + chunk_len), len(labels) - 1)
            chunks = {v: pol.infer(obs) for v, pol in policies.items()}
            outs = {v: c.actions for v, c in chunks.items()}
            for v, c in chunks.items():
                if c.stats.kept_patches:
                    named[v].append(named_kept_fraction(task, c.stats.kept_patches))
                kept[v].append(dict(c.stats.kept_per_view))
            for v, a in outs.items():
                errs[v].append(np.abs(a - labels[idx]).mean(axis=0))  # (7,)
                if "off" in outs:
                    diffs[v].append(np.abs(a - outs["off"]).mean(axis=0))
            executed = labels[t:t + chunk_len]
            for a in executed:
                task.step(a)
    out = {}
    for v in policies:
        e = np.mean(errs[v], axis=0)
        views = sorted({k for d in kept[v] for k in d})
        out[v] = {"l1_to_expert": float(e.mean()), "l1_to_expert_xyz": float(e[:3].mean()),
                  "l1_to_expert_per_dim": e.tolist(), "queries": len(errs[v]),
                  "kept_per_view": {k: float(np.mean([d[k] for d in kept[v]])) for k in views},
                  "named_kept": {k: _mean_or_none([d.get(k) for d in named[v]]) for k in views}}
        if diffs[v]:
            d = np.mean(diffs[v], axis=0)
            out[v].update({"l1_to_off": float(d.mean()), "l1_to_off_xyz": float(d[:3].mean())})
    return out


#: expert chunks closer than this (mean |difference|, action units) count as the same: the names they belong to
#: cannot be told apart by the first chunk (e.g. objects in the same direction, where the expert's actions saturate)
SAME_CHUNK_TOL = 0.05


def _pairwise_l1(chunks: np.ndarray) -> np.ndarray:
    """(N, N) mean absolute difference between the chunks (N, T, A)."""
    return np.abs(chunks[:, None] - chunks[None]).mean(axis=(2, 3))


def instruction_following(policies: dict[str, Policy], seeds: list[int], task_config: TaskConfig = TaskConfig()) -> dict[str, dict]:
    """Does the first chunk do what the instruction asks? Per variant, on the first frame of each seed.

    Every object of the scene is named in turn (same frames and proprio; only the instruction changes). For each
    name the expert's plan is the reference: a query is *aligned* when the policy's chunk is nearer (mean absolute
    difference) to the expert's chunk for the named object than to its chunk for any object the expert treats
    differently (expert chunks within :data:`SAME_CHUNK_TOL` of each other are one class: two objects in the same
    direction are reached by the same first actions). ``chance`` is the most a policy that ignores the name can
    score (the share of names in a scene's largest class, averaged); a policy that reads the name scores 1.
    ``spread`` and ``expert_spread``: mean |difference| between the chunks for different names, near 0 when the
    instruction is ignored.
    """
    from .expert import expert_plan
    from .train import relabelled_scene

    scenes = []
    for seed in seeds:
        task = TabletopTask(seed, task_config)
        frames, scene = task.render(), task.scene
        named, expert = [], []
        for offset in range(len(scene.objects)):
            named.append(relabelled_scene(scene, offset, other_plate=False))
            task.scene = named[-1]
            expert.append(expert_plan(task, 8))
        task.scene = scene
        expert = np.array(expert)  # (N, 8, 7)
        scenes.append((task, frames, named, expert, _pairwise_l1(expert)))
    out = {}
    for variant, pol in policies.items():
        hits, total, spreads, chance, expert_spreads = 0, 0, [], [], []
        for task, frames, named, expert, dist in scenes:
            same = dist <= SAME_CHUNK_TOL
            chunks = []
            for k, sc in enumerate(named):
                pol.reset()
                obs = Observation(images=frames, proprio=task.proprio(), instruction=sc.instruction, stamp=0.0)
                chunks.append(np.asarray(pol.infer(obs).actions, dtype=np.float64)[: expert.shape[1]])
                nearest = int(np.argmin(np.abs(chunks[-1][None] - expert).mean(axis=(1, 2))))
                hits += bool(same[k, nearest])
                total += 1
            n = len(chunks)
            pairs = ~np.eye(n, dtype=bool)
            spreads.append(float(_pairwise_l1(np.array(chunks))[pairs].mean()) if n > 1 else 0.0)
            expert_spreads.append(float(dist[pairs].mean()) if n > 1 else 0.0)
            chance.append(float(same.sum(axis=1).max()) / n)
        out[variant] = {"aligned": hits / total, "queries": total, "chance": float(np.mean(chance)),
                        "spread": float(np.mean(spreads)), "expert_spread": float(np.mean(expert_spreads))}
    return out


def attention_agreement(policy: Policy, seeds: list[int], task_config: TaskConfig = TaskConfig(), every: int = 16,
                        top: int | None = None) -> dict:
    """Does the method's premise hold for this policy? :class:`~specprune_ros.core.premise.PremiseMeter` on the
    expert's trajectories of ``seeds``, a frame every ``every`` steps (unpruned passes of ``policy``, an
    :class:`~specprune_ros.core.policy.OFTPolicy`). V_local keeps the visual tokens the task words attend to in
    decoder layers 0 and 1 on the grounds that they are the last layer's favourites (the paper: 85-95% of the
    top-20 on OpenVLA-OFT). ``top``: tokens per view compared (None: the meter's default, the paper's 20)."""
    from ..core.premise import PremiseMeter
    from .expert import expert_action

    meter = PremiseMeter() if top is None else PremiseMeter(top)
    for seed in seeds:
        task = TabletopTask(seed, task_config)
        while not task.done:
            if task.state.step % every == 0:
                meter.add(policy, Observation(images=task.render(), proprio=task.proprio(), instruction=task.instruction,
                                              stamp=0.0))
            task.step(expert_action(task))
    return meter.result()


def _save_overlay(task: TabletopTask, obs: Observation, stats, path: Path) -> None:
    import cv2

    from ..core.images import dim_pruned_patches
    from ..core.preprocess import policy_frame
    from .train import patch_labels

    pre = PreprocessConfig()
    tiles = []
    for view in ("primary", "wrist"):
        frame = policy_frame(np.asarray(obs.images[view]), pre)  # what the towers saw, (224, 224, 3)
        kept = stats.kept_patches.get(view, list(range(256)))
        img = dim_pruned_patches(frame, kept).copy()
        for idx in np.flatnonzero(patch_labels(task, view, pre) == 1):
            r, c = divmod(int(idx), 16)
            color = (0, 200, 0) if idx in set(kept) else (230, 0, 0)
            cv2.rectangle(img, (c * 14, r * 14), (c * 14 + 13, r * 14 + 13), color, 1)
        tiles.append(img)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(tiles, axis=1), cv2.COLOR_RGB2BGR))


def summarize(variant: str, episodes: list[dict]) -> dict:
    n = len(episodes)
    k = sum(e["success"] for e in episodes)
    lo, hi = wilson_interval(k, n)
    q = [x for e in episodes for x in e["queries"]]
    lat = np.array([x["latency_ms"] for x in q])
    views = sorted({v for x in q for v in x["kept"]})
    succ_len = [e["steps"] for e in episodes if e["success"]]
    return {
        "variant": variant,
        "episodes": n,
        "successes": int(k),
        "success_rate": k / n,
        "wilson95": [lo, hi],
        "mean_steps": float(np.mean([e["steps"] for e in episodes])),
        "mean_steps_success": float(np.mean(succ_len)) if succ_len else None,
        "grasp_rate": float(np.mean([e["grasped"] for e in episodes])),
        "wrong_grasp_rate": float(np.mean([e["wrong_grasp"] for e in episodes])),
        "closest_mm_median": float(np.median([e["closest_mm"] for e in episodes])),
        "queries": len(q),
        "latency_ms": {"mean": float(np.mean(lat)), "p50": float(np.percentile(lat, 50)),
                       "p90": float(np.percentile(lat, 90))} if q else {"mean": None, "p50": None, "p90": None},
        "kept_per_view": {v: float(np.mean([x["kept"].get(v, np.nan) for x in q])) for v in views},
        "mean_seq_len": float(np.mean([x["mean_seq_len"] for x in q])) if q else None,
        "total_tokens": int(q[0]["total_tokens"]) if q else None,
        "fine_fraction": float(np.mean([x["mode"] == MODE_FINE for x in q])) if q else 0.0,
        "requeries": int(sum(x["requery"] for x in q)),
        "named_kept": {v: _mean_or_none([x["named_kept"].get(v) for x in q]) for v in views},
        "errors": [e["error"] for e in episodes if e["error"]],
    }


def plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = results["summary"]
    names = [s["variant"] for s in summ]
    x = np.arange(len(names))
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0, 0]
    rate = np.array([s["success_rate"] for s in summ]) * 100
    err = np.clip(np.array([[s["success_rate"] - s["wilson95"][0], s["wilson95"][1] - s["success_rate"]] for s in summ]).T * 100, 0, None)
    ax.bar(x, rate, yerr=err, capsize=4, color="tab:green")
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("success % (95% Wilson)")
    ax.set_ylim(0, 105)
    ax.set_title(f"closed-loop success, {summ[0]['episodes']} episodes each")
    ax = axes[0, 1]
    ax.bar(x, [s["latency_ms"]["mean"] or 0.0 for s in summ], color="tab:blue")
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("latency per chunk, ms (mean)")
    ax = axes[1, 0]
    views = sorted({v for s in summ for v in s["kept_per_view"]})
    w = 0.8 / max(1, len(views))
    for i, v in enumerate(views):
        ax.bar(x + i * w - 0.4 + w / 2, [s["kept_per_view"].get(v, 0) for s in summ], w, label=f"{v} kept after static")
    ax.plot(x, [s["mean_seq_len"] or 0 for s in summ], "k.-", label="mean sequence length over layers")
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("tokens")
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    row = 0
    labels = []
    for s_name, eps in results["episodes"].items():
        for e in eps[:4]:
            for qd in e["queries"]:
                color = "tab:orange" if qd["mode"] == MODE_FINE else ("tab:gray" if qd["mode"] == "off" else "tab:blue")
                ax.broken_barh([(qd["step"], 8)], (row - 0.4, 0.8), color=color)
            ax.plot([e["steps"]], [row], "g*" if e["success"] else "rx")
            labels.append(f"{s_name} s{e['seed']}")
            row += 1
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.set_xlabel("control step (blue coarse, orange fine, gray off; * success, x failure)")
    ax.set_title("mode time-line (first episodes)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def evaluate(cfg: EvalConfig, out_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Run every variant and return (and optionally write) the results."""
    import torch

    from ..core.policy import build_policy

    torch.set_num_threads(cfg.threads)
    task_config = TaskConfig(max_steps=cfg.max_steps)
    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.episodes))
    results: dict = {"config": dataclasses.asdict(cfg), "summary": [], "episodes": {}}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(cfg.variants) * len(seeds), desc="episodes", unit="ep")
    t0 = time.perf_counter()
    fine: dict[str, float] = {}

    def pruning(variant: str) -> PruningConfig:
        return pruning_for(variant, fine.get(matched_source(variant)))

    def make_policy(variant: str) -> Policy:
        policy = build_policy(PolicyConfig(checkpoint=cfg.checkpoint, preset=variant_preset(variant)), pruning(variant))
        if split_variant(variant)[2] == RANDOM:
            from ..core.pruning import RandomSelection

            policy.pruner = RandomSelection(policy.pruning, policy.pruner.n_layers, policy.pruner.views)
        if split_variant(variant)[2] == ORACLE:
            return OraclePolicy(policy)
        return policy

    for variant in cfg.variants if seeds else ():
        policy = make_policy(variant)
        eps = []
        for k, seed in enumerate(seeds):
            overlay = Path(out_dir) / "overlays" / variant if (out_dir is not None and k < cfg.overlay_episodes) else None
            eps.append(run_episode(policy, seed, task_config, cfg.measured_speed, overlay, overlay_queries=40))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(variant=variant, success=f"{sum(e['success'] for e in eps)}/{len(eps)}")
        results["episodes"][variant] = eps
        results["summary"].append(summarize(variant, eps))
        fine[variant] = results["summary"][-1]["fine_fraction"]
        used = pruning(variant)
        results["summary"][-1]["local_k"] = {"coarse": list(used.local_k_coarse), "fine": list(used.local_k_fine)}
    if bar is not None:
        bar.close()
    if cfg.open_loop_seeds or cfg.grounding_seeds:
        policies = {v: make_policy(v) for v in cfg.variants}
    if cfg.open_loop_seeds:
        ol_seeds = list(range(cfg.first_seed + 50_000, cfg.first_seed + 50_000 + cfg.open_loop_seeds))
        results["open_loop"] = open_loop_fidelity(policies, ol_seeds, task_config)
    if cfg.grounding_seeds:
        g_seeds = list(range(cfg.first_seed + 60_000, cfg.first_seed + 60_000 + cfg.grounding_seeds))
        results["instruction_following"] = instruction_following(policies, g_seeds, task_config)
    if cfg.agreement_seeds:
        a_seeds = list(range(cfg.first_seed + 70_000, cfg.first_seed + 70_000 + cfg.agreement_seeds))
        unpruned = build_policy(PolicyConfig(checkpoint=cfg.checkpoint, preset="off"))
        results["attention_agreement"] = attention_agreement(unpruned, a_seeds, task_config)
    results["wall_s"] = time.perf_counter() - t0
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(json_safe(results), indent=1, allow_nan=False))
        if results["summary"]:
            plot(results, out / "results.png")
    return results


def reproduce_record(checkpoint: str | Path, seeds: list[int], preset: str = "off", max_steps: int = 240) -> dict:
    """What a checkpoint does on a few fixed seeds with 1 CPU thread: each episode's first action chunk and its
    closed-loop outcome (the content of a committed checkpoint's ``reproduce.json``)."""
    import torch

    from ..core.policy import build_policy

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        policy = build_policy(PolicyConfig(checkpoint=str(checkpoint), preset=preset))
        first = []
        for seed in seeds:
            task = TabletopTask(seed)
            policy.reset()
            obs = Observation(images=task.render(), proprio=task.proprio(), instruction=task.instruction)
            first.append(np.asarray(policy.infer(obs).actions, dtype=np.float64).round(6).tolist())
        episodes = [run_episode(policy, seed, TaskConfig(max_steps=max_steps)) for seed in seeds]
    finally:
        torch.set_num_threads(before)
    return {"preset": preset, "max_steps": max_steps, "threads": 1, "seeds": list(seeds),
            "success": [e["success"] for e in episodes], "grasped": [e["grasped"] for e in episodes],
            "steps": [e["steps"] for e in episodes], "first_chunk": first}


def table(results: dict) -> str:
    lines = ["| variant | success % (95% CI) | grasped % | wrong object % | closest mm | steps | latency ms "
             "| kept primary/wrist | named object kept % primary/wrist | mean seq len | fine % |",
             "|---|---|---|---|---|---|---|---|---|---|---|"] if results["summary"] else []
    for s in results["summary"]:
        kept = "/".join(_fmt(s["kept_per_view"].get(v), ".0f") for v in ("primary", "wrist"))
        nk = s.get("named_kept", {})
        named = "/".join("-" if nk.get(v) is None else f"{100 * nk[v]:.0f}" for v in ("primary", "wrist"))
        lines.append(
            f"| {s['variant']} | {100 * s['success_rate']:.0f} ({100 * s['wilson95'][0]:.0f}-{100 * s['wilson95'][1]:.0f}) "
            f"| {100 * s['grasp_rate']:.0f} | {100 * s['wrong_grasp_rate']:.0f} | {s['closest_mm_median']:.0f} "
            f"| {s['mean_steps']:.0f} | {_fmt(s['latency_ms']['mean'], '.1f')} | {kept} | {named} | {_fmt(s['mean_seq_len'], '.0f')} "
            f"| {100 * s['fine_fraction']:.0f} |")
    if results.get("open_loop"):
        lines += ["", "| variant | open-loop L1 to expert (xyz) | L1 to off (xyz) | kept primary/wrist "
                      "| named object kept % primary/wrist |", "|---|---|---|---|---|"]
        for v, o in results["open_loop"].items():
            kp = "/".join(_fmt(o["kept_per_view"].get(w), ".0f") for w in ("primary", "wrist"))
            nk = "/".join("-" if o["named_kept"].get(w) is None else f"{100 * o['named_kept'][w]:.0f}"
                          for w in ("primary", "wrist"))
            lines.append(f"| {v} | {o['l1_to_expert']:.3f} ({o['l1_to_expert_xyz']:.3f}) "
                         f"| {_fmt(o.get('l1_to_off'), '.3f')} ({_fmt(o.get('l1_to_off_xyz'), '.3f')}) "
                         f"| {kp} | {nk} |")
    if results.get("instruction_following"):
        lines += ["", "| variant | first chunk as the expert's for the named object % (ignoring the name: at most) "
                      "| spread between names (expert) |", "|---|---|---|"]
        for v, g in results["instruction_following"].items():
            lines.append(f"| {v} | {100 * g['aligned']:.0f} ({100 * g['chance']:.0f}) "
                         f"| {g['spread']:.3f} ({g['expert_spread']:.3f}) |")
    if results.get("attention_agreement"):
        a = results["attention_agreement"]
        lines += ["", f"Premise of V_local (unpruned, {a['frames']} frames, each view): of the top-{a['top']} visual tokens by "
                      "task-word attention, found again in the last layer's top (chance "
                      f"{100 * a['chance']:.0f}%): layer 0 {100 * a['text_l0_in_last']:.0f}%, layer 1 "
                      f"{100 * a['text_l1_in_last']:.0f}%, layers 0+1 {100 * a['text_l01_in_last']:.0f}%; layers 0+1 in the "
                      f"last layer's action-query top {100 * a['text_l01_in_action_last']:.0f}%, last layer's text top "
                      f"there {100 * a['text_last_in_action_last']:.0f}%",
                  "", "Action read-out per layer (unpruned): share of its attention on the visual tokens / visual tokens "
                      "it spreads over (512 = uniform): " + ", ".join(
                          f"{i}: {100 * s:.0f}% / {t:.0f}" for i, (s, t) in
                          enumerate(zip(a["action_visual_share"], a["action_visual_tokens"])))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    d = EvalConfig()
    p = ArgumentParser(
        prog="specprune-testbed-eval",
        description="Closed-loop success of a checkpoint on the test-bed task for the unpruned baseline and each "
        "pruning preset: success with 95% Wilson intervals, episode length, latency, tokens kept, mode time-lines. "
        "Writes <out>/results.json and <out>/results.png.",
    )
    p.add_argument("--checkpoint", default=d.checkpoint, help=f"checkpoint directory (default {d.checkpoint})")
    p.add_argument("--variants", default=",".join(d.variants),
                   help=f"comma-separated presets; '<preset>{NO_CONTROLLER}' disables its controller, '<preset>{MATCHED}' "
                   "disables it and gives every query the preset's average V_local budget (list the preset first; "
                   "the tokens kept can differ a little: compare the kept columns), "
                   f"'<preset>{RANDOM}' keeps as many tokens as the preset, chosen at random, '<preset>{ORACLE}' as "
                   "many, those the action placeholders attend to most in an unpruned pass of the same observation; "
                   f"the two last follow the others too: '<preset>{MATCHED}{RANDOM}' (list '<preset>{RANDOM}' first); "
                   f"'{PROPORTIONAL}' last carries the dropped tokens' attention weight to the kept ones, '{MERGE}' "
                   "their hidden states too "
                   f"(default {','.join(d.variants)}; presets: {', '.join(sorted(PRESETS))})")
    p.add_argument("--episodes", type=int, default=d.episodes, help=f"episodes per variant (default {d.episodes})")
    p.add_argument("--first-seed", type=int, default=d.first_seed, help="first task seed (default 0); every seed used, the "
                   "extra checks' at +50000/+60000/+70000 included, stays below 1000000 (the training scenes')")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help=f"step limit per episode (default {d.max_steps})")
    p.add_argument("--measured-speed", action="store_true", help="pass the measured EE speed to the controller")
    p.add_argument("--overlays", type=int, default=0,
                   help="save kept-token overlays of the first queries of this many episodes per variant (<out>/overlays)")
    p.add_argument("--open-loop-seeds", type=int, default=0,
                   help="also compare every variant's actions with the expert's on this many expert trajectories")
    p.add_argument("--grounding-seeds", type=int, default=0,
                   help="also check on this many scenes, naming each object in turn, that the first chunk heads for "
                   "the named object (instruction following)")
    p.add_argument("--agreement-seeds", type=int, default=0,
                   help="also check on this many expert trajectories whether the unpruned policy's layers 0-1 text "
                   "attention picks the tokens its last layer attends to (the premise of V_local)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (default 1)")
    p.add_argument("--out", default="testbed_eval", help="output directory (default testbed_eval)")
    p.add_argument("--json", action="store_true", help="print what the table shows as one JSON object instead: summary, and open_loop, "
                   "instruction_following and attention_agreement when those checks ran (null: no samples)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--write-reproduce", metavar="SEEDS", default=None,
                   help="instead of evaluating: record the first chunk and closed-loop outcome of these comma-separated "
                   "seeds (preset off, 1 thread) in <checkpoint>/reproduce.json, which the tests check")
    args = p.parse_args(argv)
    if args.write_reproduce is not None:
        try:
            try:
                seeds = [int(x) for x in args.write_reproduce.split(",") if x.strip()]
            except ValueError:
                seeds = []
            if not seeds or min(seeds) < 0:
                raise ValueError(f"--write-reproduce={args.write_reproduce!r}: give non-negative seeds, e.g. 0,1,2")
            rec = reproduce_record(args.checkpoint, seeds, max_steps=args.max_steps)
            path = Path(args.checkpoint) / "reproduce.json"
            path.write_text(json.dumps(rec, indent=1) + "\n")
        except (ValueError, OSError) as err:
            print(f"specprune-testbed-eval: error: {err}", file=sys.stderr)
            return 2
        print(json.dumps({k: rec[k] for k in ("seeds", "success", "grasped", "steps")}) if args.json else
              f"seeds {seeds}: success {rec['success']}, grasped {rec['grasped']}, steps {rec['steps']}; wrote {path}")
        return 0
    try:
        cfg = EvalConfig(checkpoint=args.checkpoint, variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()),
                         episodes=args.episodes, first_seed=args.first_seed, max_steps=args.max_steps,
                         measured_speed=args.measured_speed, open_loop_seeds=args.open_loop_seeds,
                         overlay_episodes=args.overlays, grounding_seeds=args.grounding_seeds,
                         agreement_seeds=args.agreement_seeds, threads=args.threads)
        Path(args.out).mkdir(parents=True, exist_ok=True)  # an unusable --out fails now, not after the episodes
        res = evaluate(cfg, args.out, progress=not args.no_progress)
    except (ValueError, OSError) as err:
        print(f"specprune-testbed-eval: error: {err}", file=sys.stderr)
        return 2
    if args.json:  # what the table shows: the summary and the checks that were run (results.json adds the episodes)
        shown = {k: res[k] for k in ("summary", "open_loop", "instruction_following", "attention_agreement") if k in res}
        print(json.dumps(json_safe(shown), indent=1, allow_nan=False))
    else:
        print(table(res))
        written = [Path(args.out) / "results.json"] + ([Path(args.out) / "results.png"] if res["summary"] else [])
        print("wrote " + " and ".join(str(w) for w in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
