"""specprune-libero-eval: summaries, resume, CLI errors (pure), and short runs on the real simulator."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from ros_env import subprocess_env

from specprune_ros.sim import libero_eval as E
from specprune_ros.sim import simenv
from specprune_ros.sim.protocol import EpisodeResult

SIM_REASON = simenv.unavailable_reason()
needs_sim = pytest.mark.skipif(SIM_REASON is not None, reason=str(SIM_REASON))


def _episode(preset, task, init, success, steps, lat=(0.1, 0.3), kept=(300, 200)):
    r = EpisodeResult("libero_spatial", task, init, "success" if success else "timeout", success, steps, len(lat),
                      list(lat), list(kept), [600] * len(kept))
    return dict(r.to_dict(), preset=preset, instruction="x")


def test_summary_per_preset():
    eps = [
        _episode("off", 0, 0, True, 100, lat=(0.2, 0.4), kept=(512, 512)),
        _episode("off", 1, 0, False, 220, lat=(0.2,), kept=(512,)),
        _episode("paper", 0, 0, True, 120),
        _episode("paper", 1, 0, True, 80),
    ]
    s = E.summarize(eps)
    assert list(s) == ["off", "paper"]
    assert s["off"]["success_rate"] == 0.5 and s["paper"]["success_rate"] == 1.0
    assert s["off"]["per_task_success_rate"] == {"0": 1.0, "1": 0.0}
    assert s["off"]["mean_steps"] == 160.0 and s["off"]["mean_steps_success"] == 100.0
    assert s["off"]["latency_ms_mean"] == pytest.approx(800 / 3)
    assert s["off"]["latency_ms_p50"] == pytest.approx(200.0)
    assert s["paper"]["tokens_kept_mean"] == 250.0 and s["paper"]["chunks"] == 4


def test_results_resume_and_refuse_another_run(tmp_path):
    cfg = {"suite": "libero_spatial", "checkpoint": "", "unnorm_key": "", "fake_policy": True,
           "max_steps": 16, "seed": 7, "path": "direct", "device": "cpu"}
    res = E.Results.open(tmp_path / E.RESULTS, cfg)
    r = EpisodeResult("libero_spatial", 2, 5, "timeout", False, 16, 2, [0.1, 0.1], [512, 512], [0, 0])
    res.add("paper", r, "pick up the bowl")
    again = E.Results.open(tmp_path / E.RESULTS, cfg)
    assert again.done("paper", 2, 5) and not again.done("off", 2, 5) and not again.done("paper", 2, 6)
    data = json.loads((tmp_path / E.RESULTS).read_text())
    assert data["summary"]["paper"]["episodes"] == 1 and data["episodes"][0]["instruction"] == "pick up the bowl"
    with pytest.raises(E.EvalError, match="max_steps: 16 there vs 20 now"):
        E.Results.open(tmp_path / E.RESULTS, dict(cfg, max_steps=20))


def test_plot_is_written(tmp_path):
    s = E.summarize([_episode("off", 0, 0, True, 100), _episode("paper", 0, 0, False, 220)])
    path = E.plot(s, tmp_path / E.PLOT, "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--fake-policy", "--suite=libero_spatail"], "did you mean 'libero_spatial'"),
        (["--fake-policy", "--presets=off,agressive"], "unknown ['agressive']"),
        (["--fake-policy", "--presets=paper+merg"], "unknown ['paper+merg']"),
        (["--fake-policy", "--presets=off+merge"], "['off+merge']: the preset prunes nothing"),
        ([], "--checkpoint=<dir>"),
        (["--checkpoint=/no/such/dir"], "no such directory"),
        (["--fake-policy", "--tasks=3-12"], "--tasks='3-12': values must lie in 0..9"),
        (["--fake-policy", "--tasks=0-999999999999"], "values must lie in 0..9"),  # refused, not expanded
        (["--fake-policy", "--episodes=5", "--first-init-state=48"], "each task has 50"),
        (["--fake-policy", "--episodes=99999999999999999999"], "--episodes=99999999999999999999 must lie in [1, 50]"),
        (["--fake-policy", "--episode-timeout=-1"], "--episode-timeout=-1.0 must be a finite number"),
        (["--fake-policy", "--episode-timeout=nan"], "--episode-timeout=nan must be a finite number"),
    ],
)
def test_cli_errors_are_one_line(args, message, tmp_path):
    out = subprocess.run([sys.executable, "-m", "specprune_ros.sim.libero_eval", *args, f"--out={tmp_path}"],
                         capture_output=True, text=True, env=subprocess_env())
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_weighting_suffixes_reach_the_policy_config(tmp_path):
    plan = E._plan(E._parser().parse_args(["--fake-policy", "--presets=paper,paper+proportional,conservative+merge",
                                           f"--out={tmp_path}"]))
    got = {p: E._policy_config_values(plan, p)[1] for p in plan.presets}
    assert [(c.preset, c.proportional, c.merge) for c in got.values()] == [
        ("paper", False, False), ("paper", True, False), ("conservative", True, True)]


def test_help_explains():
    out = subprocess.run([sys.executable, "-m", "specprune_ros.sim.libero_eval", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--direct" in out.stdout and "resum" in out.stdout.lower()


def _run(tmp_path, *args):
    cmd = [sys.executable, "-m", "specprune_ros.sim.libero_eval", "--fake-policy", "--tasks=0", "--max-steps=8",
           f"--out={tmp_path}", "--json", *args]
    env = subprocess_env(OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout), json.loads((tmp_path / E.RESULTS).read_text())


@needs_sim
def test_direct_run_and_resume(tmp_path):
    summary, data = _run(tmp_path, "--direct", "--episodes=1", "--presets=off")
    assert summary["off"]["episodes"] == 1
    (ep,) = data["episodes"]
    assert (ep["preset"], ep["task_id"], ep["init_state"], ep["status"], ep["steps"], ep["chunks"]) == (
        "off", 0, 0, "timeout", 8, 1)
    assert ep["instruction"].startswith("pick up the black bowl")
    assert (tmp_path / E.PLOT).is_file()
    # a second run with one more episode keeps the first and adds only initial state 1
    _, data = _run(tmp_path, "--direct", "--episodes=2", "--presets=off")
    assert [(e["init_state"], e["steps"]) for e in data["episodes"]] == [(0, 8), (1, 8)]
    assert data["episodes"][0] == ep


@needs_sim
def test_ros_run_two_episodes_through_reset(tmp_path):
    summary, data = _run(tmp_path, "--episodes=2", "--presets=paper")
    assert [(e["init_state"], e["status"], e["steps"]) for e in data["episodes"]] == [(0, "timeout", 8), (1, "timeout", 8)]
    # each episode's inferences: the one chunk its 8 steps executed (the fake policy reports preset "fake")
    assert [e["chunks"] for e in data["episodes"]] == [1, 1]
    assert summary["paper"]["tokens_kept_mean"] == 512.0
    assert (tmp_path / "logs" / "bridge_task0.log").is_file()


def test_checkpoint_problems_are_reported_before_anything_starts(tiny_checkpoint, tmp_path):
    cmd = [sys.executable, "-m", "specprune_ros.sim.libero_eval", f"--checkpoint={tiny_checkpoint}", "--tasks=0",
           "--episodes=1", f"--out={tmp_path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env())
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "unknown unnorm_key 'libero_spatial_no_noops'" in out.stderr and "tiny_sim" in out.stderr
    assert not (tmp_path / E.RESULTS).exists()


@needs_sim
@pytest.mark.parametrize("path", ["--direct", "--episode-timeout=600"])
def test_a_checkpoint_that_cannot_load_stops_the_run_with_its_reason(tiny_checkpoint, tmp_path, path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    shard = sorted(ckpt.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:1000])  # the layout checks pass, the weights cannot be read
    cmd = [sys.executable, "-m", "specprune_ros.sim.libero_eval", f"--checkpoint={ckpt}", "--unnorm-key=tiny_sim",
           "--tasks=0", "--episodes=1", "--max-steps=2", "--presets=off", f"--out={tmp_path / 'out'}", path]
    out = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(OMP_NUM_THREADS="1"), timeout=600)
    # the ROS path: the policy node stays up, unconfigured; its /diagnostics stops the run long before the timeout
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "cannot read" in out.stderr and shard.name in out.stderr
    results = tmp_path / "out" / E.RESULTS
    assert not results.exists() or json.loads(results.read_text())["episodes"] == []  # nothing recorded as a failure
