"""specprune-testbed-eval: intervals, variants, the closed-loop episode runner, the end-to-end report."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from specprune_ros.core.fake import FakePolicy
from specprune_ros.core.types import ActionChunk, Observation, StepStats
from specprune_ros.testbed import evaluate as ev
from specprune_ros.testbed.expert import expert_action
from specprune_ros.testbed.task import TabletopTask, TaskConfig


class MirrorExpertPolicy:
    """A Policy that keeps its own copy of the task, advanced by ``executed_actions``, and plans with the expert.

    It succeeds only if the runner reports exactly the actions it executed. With ``target`` it plans for
    that object instead of the named one (a policy that misreads the instruction).
    """

    views = ("primary", "wrist")
    proprio_dim = 8
    action_dim = 7
    chunk_len = 8

    def __init__(self, seed: int, target: int | None = None) -> None:
        self.seed = seed
        self.target = target
        self.reset()

    def reset(self) -> None:
        self.mirror = TabletopTask(self.seed)
        self.calls = 0

    def infer(self, obs: Observation) -> ActionChunk:
        obs.validate(self.views, self.proprio_dim)
        if obs.executed_actions is not None:
            for a in obs.executed_actions:
                self.mirror.step(a)
        np.testing.assert_allclose(obs.proprio, self.mirror.proprio())
        plan = TabletopTask(self.seed)
        if self.target is not None:
            plan.scene = dataclasses.replace(plan.scene, target=self.target)
        plan.restore(self.mirror.snapshot())
        rows = []
        for _ in range(self.chunk_len):
            a = expert_action(plan) if not plan.done else np.zeros(7)
            if not plan.done:
                plan.step(a)
            rows.append(a)
        self.calls += 1
        stats = StepStats(timings_ms={"total": 1.0}, tokens_per_layer=[10, 8], kept_per_view={"primary": 5, "wrist": 4},
                          total_tokens=10, mode="coarse" if self.calls % 2 else "fine", preset="mirror")
        return ActionChunk(np.array(rows), 0.05, obs.stamp, stats)


def test_wilson_interval_known_values():
    lo, hi = ev.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert ev.wilson_interval(0, 20)[0] == 0.0 and ev.wilson_interval(20, 20)[1] == 1.0
    assert ev.wilson_interval(20, 20)[0] == pytest.approx(0.8389, abs=1e-3)
    with pytest.raises(ValueError, match="successes"):
        ev.wilson_interval(5, 4)


def test_wilson_interval_holds_the_observed_rate_and_is_exact_at_the_ends():
    for n in range(1, 201):
        for k in {0, n, n // 3}:
            lo, hi = ev.wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0, (k, n)
        assert ev.wilson_interval(n, n)[1] == 1.0 and ev.wilson_interval(0, n)[0] == 0.0  # was 0.9999999999999999


def test_a_variant_without_queries_or_with_every_success_is_reported_and_plotted(tmp_path):
    """4/4 successes made a negative error bar (the run failed after its episodes); a variant whose policy never
    answered (NaN actions) has no latency or sequence length: null in JSON, "-" in the table."""
    ok = {"seed": 0, "success": True, "queries": [], "steps": 3, "grasped": True, "wrong_grasp": False, "closest_mm": 1.0,
          "error": "", "modes": []}
    failed = dict(ok, success=False, grasped=False, error="invalid action from the policy: NaN")
    results = {"summary": [ev.summarize("off", [ok] * 4), ev.summarize("paper", [failed] * 4)],
               "episodes": {"off": [ok] * 4, "paper": [failed] * 4}}
    assert results["summary"][0]["wilson95"][1] == 1.0
    assert results["summary"][1]["latency_ms"] == {"mean": None, "p50": None, "p90": None}
    row = ev.table(results).splitlines()[3]
    assert row.startswith("| paper | 0 (0-49) |") and "| - |" in row
    ev.plot(results, tmp_path / "results.png")
    assert (tmp_path / "results.png").stat().st_size > 0
    json.dumps(ev.json_safe(results), allow_nan=False)
    assert ev.json_safe({"a": [float("nan"), 1.0, float("inf")]}) == {"a": [None, 1.0, None]}


def test_variants_and_config_validation():
    assert ev.pruning_for("paper").controller.enabled
    assert not ev.pruning_for("paper+nocontroller").controller.enabled
    assert not ev.pruning_for("off").enabled
    with pytest.raises(ValueError, match="unknown variant 'papr'"):
        ev.EvalConfig(variants=("papr",))
    with pytest.raises(ValueError, match="episodes"):
        ev.EvalConfig(episodes=0)
    # +matched: controller off, every query gets the preset's average budget (coarse 24/19, fine 40/32)
    matched = ev.pruning_for("paper+matched", fine_fraction=0.25)
    assert not matched.controller.enabled and matched.local_k_coarse == matched.local_k_fine == (28, 22)
    assert ev.pruning_for("paper+matched", fine_fraction=0.0).local_k_coarse == (24, 19)
    with pytest.raises(ValueError, match="fine-mode fraction"):
        ev.pruning_for("paper+matched")
    with pytest.raises(ValueError, match="unknown variant"):
        ev.pruning_for("paper+nocontroller+matched", fine_fraction=0.5)
    with pytest.raises(ValueError, match="needs paper evaluated before"):
        ev.EvalConfig(variants=("off", "paper+matched", "paper"))
    # +random: the preset's own configuration (its choice replaced at run time); nothing to replace when off
    assert ev.pruning_for("paper+random") == ev.pruning_for("paper") and ev.variant_preset("paper+random") == "paper"
    with pytest.raises(ValueError, match="prunes nothing"):
        ev.pruning_for("off+random")
    assert ev.pruning_for("paper+oracle") == ev.pruning_for("paper") and ev.variant_preset("aggressive+oracle") == "aggressive"
    for bad in ("off+oracle", "paper+oracle+random", "paper+random+matched", "off+matched+random"):
        with pytest.raises(ValueError):
            ev.pruning_for(bad)
    # a controller suffix, then a selection suffix: the controller's benefit at equal budget with another choice
    assert ev.split_variant("paper+matched+random") == ("paper", "+matched", "+random", "")
    # +proportional last: the preset's configuration with PruningConfig.proportional
    assert ev.split_variant("paper+random+proportional") == ("paper", "", "+random", "+proportional")
    assert ev.pruning_for("paper+proportional") == ev.pruning_for("paper").replace(proportional=True)
    assert ev.pruning_for("paper+matched+proportional", fine_fraction=0.25) == matched.replace(proportional=True)
    assert ev.matched_source("paper+matched+random+proportional") == "paper+random+proportional"
    assert ev.pruning_for("paper+merge") == ev.pruning_for("paper").replace(proportional=True, merge=True)
    assert ev.split_variant("paper+random+merge") == ("paper", "", "+random", "+merge")
    for bad in ("off+proportional", "paper+proportional+random"):
        with pytest.raises(ValueError):
            ev.pruning_for(bad)
    assert ev.pruning_for("paper+matched+random", fine_fraction=0.25) == matched
    assert ev.pruning_for("paper+nocontroller+oracle") == ev.pruning_for("paper+nocontroller")
    assert ev.matched_source("paper+matched+random") == "paper+random" and ev.matched_source("paper+matched") == "paper"
    assert ev.matched_source("paper+random") == "paper+random"
    with pytest.raises(ValueError, match="needs paper\\+random evaluated before"):
        ev.EvalConfig(variants=("paper", "paper+matched+random"))
    ev.EvalConfig(variants=("paper+random", "paper+matched+random"))
    assert ev.EvalConfig(first_seed=999_980, episodes=20).first_seed == 999_980  # the last seeds below them
    for bad, message in [({"overlay_episodes": -3}, "overlay_episodes=-3"), ({"episodes": 10**20}, "episodes="),
                         ({"first_seed": 999_990, "episodes": 20}, "reaches task seed 1000009"),  # training scenes
                         ({"first_seed": 930_000, "agreement_seeds": 1}, "reaches task seed 1000000")]:
        with pytest.raises(ValueError, match=message):
            ev.EvalConfig(**bad)


def test_an_unusable_out_is_refused_before_any_episode(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert ev.main([f"--out={afile}", "--variants=off", "--episodes=1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "specprune-testbed-eval: error:" in err and "afile" in err and "Traceback" not in err


def test_run_episode_feeds_executed_actions_and_succeeds_with_the_expert():
    rec = ev.run_episode(MirrorExpertPolicy(12), 12)
    assert rec["success"] and rec["error"] is None
    n = len(rec["queries"])
    assert 8 * (n - 1) < rec["steps"] <= 8 * n
    assert [q["step"] for q in rec["queries"]] == [8 * i for i in range(len(rec["queries"]))]
    fake = ev.run_episode(FakePolicy(), 12, TaskConfig(max_steps=16))
    s = ev.summarize("mirror", [rec, fake])
    assert s["successes"] == 1 and s["episodes"] == 2 and s["kept_per_view"]["primary"] < 256
    assert 0 < s["fine_fraction"] < 1
    # the expert grasps within its alignment tolerance; 16 steps of a fake policy grasp nothing
    assert rec["grasped"] and rec["closest_mm"] <= 1000 * 1.5 * 0.004 + 1e-6
    start = TabletopTask(12)
    start_mm = 1000 * float(np.linalg.norm(start.state.ee[:2] - start.state.object_pos[start.scene.target, :2]))
    assert not fake["grasped"] and 0 < fake["closest_mm"] <= start_mm
    assert s["grasp_rate"] == 0.5 and s["closest_mm_median"] == pytest.approx((rec["closest_mm"] + fake["closest_mm"]) / 2)


def test_run_episode_tells_a_grasp_of_another_object():
    named = TabletopTask(12).scene.target
    other = (named + 1) % len(TabletopTask(12).scene.objects)
    wrong = ev.run_episode(MirrorExpertPolicy(12, target=other), 12)
    right = ev.run_episode(MirrorExpertPolicy(12), 12)
    assert wrong["wrong_grasp"] and not wrong["grasped"] and not wrong["success"]
    assert right["grasped"] and not right["wrong_grasp"]
    s = ev.summarize("mirror", [wrong, right])
    assert s["wrong_grasp_rate"] == 0.5 and s["grasp_rate"] == 0.5
    assert "| 50 | 50 |" in ev.table({"summary": [s]})  # grasped %, wrong object %


def test_run_episode_reports_invalid_actions_as_failure():
    class NaNPolicy(FakePolicy):
        def infer(self, obs):
            chunk = super().infer(obs)
            chunk.actions[:] = np.nan
            return chunk

    rec = ev.run_episode(NaNPolicy(), 0)
    assert not rec["success"] and "invalid action" in rec["error"]

    class RaisingPolicy(FakePolicy):  # what OFTPolicy does when the model's actions are not finite
        def infer(self, obs):
            raise FloatingPointError("the model produced NaN or inf actions")

    rec = ev.run_episode(RaisingPolicy(), 0)
    assert not rec["success"] and "invalid action from the policy: the model produced NaN" in rec["error"]


def test_evaluate_end_to_end_writes_json_and_plot(tiny_checkpoint, tmp_path, capsys):
    # the tiny checkpoint has random weights: this checks the plumbing, not success
    code = ev.main([f"--checkpoint={tiny_checkpoint}", "--variants=off,paper,paper+matched,paper+random,paper+oracle,paper+matched+random", "--episodes=1",
                    "--max-steps=16", "--grounding-seeds=1", f"--out={tmp_path}", "--no-progress", "--json"])
    assert code == 0
    shown = json.loads(capsys.readouterr().out)
    summary = shown["summary"]
    assert [s["variant"] for s in summary] == ["off", "paper", "paper+matched", "paper+random", "paper+oracle",
                                               "paper+matched+random"]
    assert set(shown) == {"summary", "instruction_following"}  # the checks that ran, as the table shows them
    res = json.loads((tmp_path / "results.json").read_text())
    f = res["summary"][1]["fine_fraction"]
    assert res["summary"][2]["local_k"]["coarse"] == list(ev.pruning_for("paper+matched", f).local_k_coarse)
    assert res["summary"][2]["fine_fraction"] == 0.0  # no controller
    # paper+matched+random: the budget of paper+random's own run, no controller, random tokens
    assert res["summary"][5]["local_k"]["coarse"] == list(
        ev.pruning_for("paper+matched", res["summary"][3]["fine_fraction"]).local_k_coarse)
    assert res["summary"][5]["fine_fraction"] == 0.0 and res["summary"][5]["mean_seq_len"] < res["summary"][0]["mean_seq_len"]
    assert set(res["instruction_following"]) == {s["variant"] for s in summary}
    # the random control prunes (its own tokens: test_core_pruning) about as much as paper
    assert abs(res["summary"][3]["kept_per_view"]["primary"] - res["summary"][1]["kept_per_view"]["primary"]) <= 24
    assert abs(res["summary"][4]["kept_per_view"]["primary"] - res["summary"][1]["kept_per_view"]["primary"]) <= 24
    assert res["summary"][3]["mean_seq_len"] < res["summary"][0]["mean_seq_len"]
    assert all(g["queries"] == len(TabletopTask(60_000).scene.objects) for g in res["instruction_following"].values())
    assert res["summary"][0]["kept_per_view"]["primary"] == 256
    assert res["summary"][1]["kept_per_view"]["primary"] < 256
    assert res["summary"][1]["mean_seq_len"] < res["summary"][0]["mean_seq_len"]
    assert (tmp_path / "results.png").stat().st_size > 10_000
    assert ev.main([f"--checkpoint={tmp_path / 'missing'}", "--episodes=1", "--variants=off", "--no-progress"]) == 2
    assert "missing" in capsys.readouterr().err


def test_default_checkpoint_is_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository root
    assert (Path(ev.EvalConfig().checkpoint) / "config.json").is_file()


class NameReader(MirrorExpertPolicy):
    """Plans with the expert for the object its instruction names (``read``) or always for object 0."""

    def __init__(self, seed: int, read: bool) -> None:
        super().__init__(seed)
        self.read = read

    def infer(self, obs: Observation) -> ActionChunk:
        names = [o.name for o in self.mirror.scene.objects]
        self.target = next(i for i, n in enumerate(names) if f"the {n} " in obs.instruction) if self.read else 0
        return super().infer(obs)


@pytest.mark.parametrize("seed", [60_000, 60_003])
def test_instruction_following_tells_a_reader_from_a_policy_that_ignores_the_name(seed):
    n_obj = len(TabletopTask(seed).scene.objects)
    out = ev.instruction_following({"reads": NameReader(seed, True), "ignores": NameReader(seed, False)}, [seed])
    reads, ignores = out["reads"], out["ignores"]
    assert reads["aligned"] == 1.0 and reads["queries"] == n_obj
    assert 1 / n_obj <= ignores["aligned"] <= ignores["chance"] < 1
    assert ignores["spread"] == 0.0 < ignores["expert_spread"] == reads["expert_spread"] == pytest.approx(reads["spread"])
    table = ev.table({"summary": [], "instruction_following": out})
    assert f"| reads | 100 ({100 * reads['chance']:.0f}) |" in table
    assert "success %" not in table  # no closed-loop episodes: no empty success table


def test_open_loop_fidelity_zero_for_the_expert_and_off_against_itself():
    class Replay(MirrorExpertPolicy):
        pass

    out = ev.open_loop_fidelity({"off": MirrorExpertPolicy(31), "copy": Replay(31)}, [31])
    # equal to the labels except past the episode's end (the mirror pads with zeros, labels repeat the last)
    assert out["off"]["l1_to_expert"] < 0.01
    assert out["copy"]["l1_to_off"] == pytest.approx(0.0, abs=1e-12) and out["copy"]["queries"] > 5
    fake = ev.open_loop_fidelity({"off": MirrorExpertPolicy(31), "fake": FakePolicy()}, [31])
    assert fake["fake"]["l1_to_off"] > 0.05


def test_write_reproduce_records_what_the_checkpoint_does(tiny_checkpoint, tmp_path, capsys):
    import shutil

    from specprune_ros.core.config import PolicyConfig
    from specprune_ros.core.policy import build_policy

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    assert ev.main([f"--checkpoint={ckpt}", "--write-reproduce=3,4", "--max-steps=16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seeds"] == [3, 4]
    rec = json.loads((ckpt / "reproduce.json").read_text())
    assert rec["seeds"] == [3, 4] and rec["preset"] == "off" and rec["max_steps"] == 16
    policy = build_policy(PolicyConfig(checkpoint=str(ckpt), preset="off"))
    for seed, first, steps in zip(rec["seeds"], rec["first_chunk"], rec["steps"]):
        task = TabletopTask(seed)
        policy.reset()
        chunk = policy.infer(Observation(images=task.render(), proprio=task.proprio(), instruction=task.instruction))
        np.testing.assert_allclose(chunk.actions, np.array(first), atol=1e-5)
        assert steps == ev.run_episode(policy, seed, TaskConfig(max_steps=16))["steps"]
    assert ev.main([f"--checkpoint={ckpt}", "--write-reproduce=-1"]) == 2
    assert "non-negative" in capsys.readouterr().err


def test_attention_agreement_measures_the_premise_of_v_local(tiny_checkpoint):
    from specprune_ros.core.config import PolicyConfig
    from specprune_ros.core.policy import build_policy

    pol = build_policy(PolicyConfig(checkpoint=str(tiny_checkpoint), preset="off"))
    a = ev.attention_agreement(pol, [70_000], TaskConfig(max_steps=40), every=16)
    assert a["frames"] == 3 and a["chance"] == 20 / 256 and a["top"] == 20
    shares = [v for k, v in a.items() if k.startswith("text_")]
    assert len(shares) == 5 and all(0 <= v <= 1 for v in shares)
    # every token of a view: every set is the whole view, the shares are 1; one token: the argmax, which differs
    whole = ev.attention_agreement(pol, [70_000], TaskConfig(max_steps=20), every=16, top=256)
    assert all(v == 1.0 for k, v in whole.items() if k.startswith("text_"))
    one = ev.attention_agreement(pol, [70_000], TaskConfig(max_steps=20), every=16, top=1)
    assert any(v < 1.0 for k, v in one.items() if k.startswith("text_"))
    n_layers = pol.model.n_layers
    assert len(a["action_visual_share"]) == len(a["action_visual_tokens"]) == n_layers
    assert all(0 < s <= 1 for s in a["action_visual_share"]) and all(1 <= t <= 512 for t in a["action_visual_tokens"])
    assert "spreads over (512 = uniform): 0: " in ev.table({"summary": [], "attention_agreement": a})
    with pytest.raises(ValueError, match="agreement_seeds"):
        ev.EvalConfig(agreement_seeds=-1)
    assert ev.EvalConfig(variants=("off",), episodes=0, agreement_seeds=2).agreement_seeds == 2


def test_premise_meter_measures_where_the_readout_looks(monkeypatch):
    import torch

    from specprune_ros.core import premise
    from specprune_ros.core.model import SequenceLayout

    layout = SequenceLayout(n_views=2, has_proprio=True, prompt_len=12, n_action_tokens=56)
    hooks = premise.MeanAttention(layout, prefix_len=5)
    text = torch.rand(layout.length, generator=torch.Generator().manual_seed(0))
    half_uniform = torch.zeros(layout.length)
    half_uniform[0] = 0.5  # half on BOS, half spread evenly over the 512 patches
    half_uniform[1:513] = 0.5 / 512
    one_patch = torch.zeros(layout.length)
    one_patch[300] = 1.0
    hooks.layers = [(text, half_uniform), (text, one_patch)]
    monkeypatch.setattr(premise, "unpruned_attention", lambda policy, obs: hooks)
    meter = premise.PremiseMeter()
    meter.add(None, None)
    r = meter.result()
    assert r["action_visual_share"] == pytest.approx([0.5, 1.0]) and r["action_visual_tokens"] == pytest.approx([512, 1], abs=0.1)
