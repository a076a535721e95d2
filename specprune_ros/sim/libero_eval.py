"""``specprune-libero-eval``: the OFT LIBERO evaluation, per pruning preset, through ROS 2 or directly.

For each preset (``off`` = the unpruned baseline), each task of the suite and each episode (episode i
starts from the task's official initial state i), run the OFT protocol and record success, episode
length, inference latency and kept visual tokens. Results go to ``<out>/libero_eval.json`` after every
episode (a rerun with the same ``--out`` skips the episodes already there) and a plot to
``<out>/libero_eval.png``.

Two paths:

* ROS 2 (default): the bridge ``libero_sim_node`` (simulator venv) and ``policy_node`` run as separate
  processes wired as ``launch/sim.launch.py`` wires them; this process watches ``/episode_status`` and
  ``~/action_chunk`` and calls the bridge's ``~/reset``. One policy node per preset, one bridge per task.
* ``--direct``: the simulator wrapper and the policy in one process, no ROS. LIBERO lives in the simulator
  venv, torch in the project venv: started from the project venv, the tool re-runs itself with the
  simulator venv's interpreter and the project venv's packages appended to its path (after LIBERO's, so
  LIBERO keeps its own OpenCV).

The released OFT checkpoints need a GPU (``--device cuda``); on a CPU a tiny random checkpoint
(``specprune-make-tiny``) or ``--fake-policy`` proves the loop and solves nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cli.common import ArgumentParser
from ..rosenv import ENV_SCRIPT, stop_process
from .protocol import SUITE_MAX_STEPS, TRIALS_PER_TASK, EpisodeResult, ProtocolError, check_suite

RESULTS = "libero_eval.json"
PLOT = "libero_eval.png"
_POLICY_SITE_ENV = "SPECPRUNE_POLICY_SITE"
_REEXEC_ENV = "SPECPRUNE_LIBERO_EVAL_REEXEC"
#: run settings that must agree for a resumed results file
CONFIG_KEYS = ("suite", "checkpoint", "unnorm_key", "fake_policy", "max_steps", "seed", "path")


class EvalError(RuntimeError):
    """A user-facing error: printed without a traceback."""


def _range_list(text: str, what: str, upper: int) -> list[int]:
    """``"0-3,7"`` -> [0, 1, 2, 3, 7]."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                out += list(range(max(lo, 0), min(hi, upper) + 1))  # what lies outside is refused below
                out += [v for v in (lo, hi) if not 0 <= v < upper]
            else:
                out.append(int(part))
        except ValueError:
            raise EvalError(f"--{what}={text!r}: use numbers and ranges such as 0-3,7") from None
    if not out or any(not 0 <= v < upper for v in out):
        raise EvalError(f"--{what}={text!r}: values must lie in 0..{upper - 1}")
    return sorted(set(out))


@dataclass
class EvalPlan:
    suite: str
    tasks: list[int]
    init_states: list[int]
    presets: list[str]
    checkpoint: str
    unnorm_key: str
    fake_policy: bool
    device: str
    max_steps: int
    seed: int
    path: str  # "ros" or "direct"
    out: Path

    def config(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "checkpoint": self.checkpoint,
            "unnorm_key": self.unnorm_key,
            "fake_policy": self.fake_policy,
            "max_steps": self.max_steps or SUITE_MAX_STEPS[self.suite],
            "seed": self.seed,
            "path": self.path,
            "device": self.device,
        }


@dataclass
class Results:
    """The JSON file: run configuration, one record per episode, summary per preset."""

    path: Path
    config: dict[str, Any]
    episodes: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path, config: dict[str, Any]) -> "Results":
        if not path.exists():
            return cls(path, config)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise EvalError(f"{path} is not a results file of this tool ({exc}); use another --out") from None
        if not isinstance(data, dict) or not isinstance(data.get("config", {}), dict):
            raise EvalError(f"{path} is not a results file of this tool; use another --out")
        old = data.get("config", {})
        diff = [k for k in CONFIG_KEYS if old.get(k) != config.get(k)]
        if diff:
            details = ", ".join(f"{k}: {old.get(k)!r} there vs {config.get(k)!r} now" for k in diff)
            raise EvalError(f"{path} holds results of another run ({details}); use another --out or delete it")
        return cls(path, config, list(data.get("episodes", [])))

    def done(self, preset: str, task_id: int, init_state: int) -> bool:
        return any(
            e["preset"] == preset and e["task_id"] == task_id and e["init_state"] == init_state for e in self.episodes
        )

    def add(self, preset: str, result: EpisodeResult, instruction: str) -> None:
        record = dict(result.to_dict(), preset=preset, instruction=instruction)
        self.episodes.append(record)
        self.save()

    def summary(self) -> dict[str, Any]:
        return summarize(self.episodes)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"config": self.config, "summary": self.summary(), "episodes": self.episodes}, indent=1))
        tmp.replace(self.path)


def _mean(values: list[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return float(s[lo] + (s[hi] - s[lo]) * (k - lo))


def summarize(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Per preset: success rate (overall and per task), failure and aborted counts, episode lengths, latency, kept
    visual tokens."""
    out: dict[str, Any] = {}
    for preset in dict.fromkeys(e["preset"] for e in episodes):
        eps = [e for e in episodes if e["preset"] == preset]
        lat = [1e3 * v for e in eps for v in e["latency_s"]]
        kept = [float(v) for e in eps for v in e["tokens_kept"]]
        total = [float(v) for e in eps for v in e["tokens_total"]]
        per_task: dict[str, float] = {}
        for task in sorted({e["task_id"] for e in eps}):
            te = [e for e in eps if e["task_id"] == task]
            per_task[str(task)] = sum(e["success"] for e in te) / len(te)
        out[preset] = {
            "episodes": len(eps),
            "successes": sum(bool(e["success"]) for e in eps),
            "success_rate": sum(bool(e["success"]) for e in eps) / len(eps),
            "failures": sum(e["status"] == "failure" for e in eps),
            "aborted": sum(e["status"] == "aborted" for e in eps),
            "mean_steps": _mean([float(e["steps"]) for e in eps]),
            "mean_steps_success": _mean([float(e["steps"]) for e in eps if e["success"]]),
            "chunks": len(lat),
            "requeries": sum(int(e.get("requeries", 0)) for e in eps),
            "latency_ms_mean": _mean(lat),
            "latency_ms_p50": _percentile(lat, 0.5),
            "latency_ms_p90": _percentile(lat, 0.9),
            "tokens_kept_mean": _mean(kept),
            "tokens_total_mean": _mean(total),
            "per_task_success_rate": per_task,
        }
    return out


def plot(summary: dict[str, Any], path: Path, title: str) -> Path | None:
    """Success rate, latency and kept visual tokens per preset, side by side."""
    if not summary:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(summary)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    panels = [
        ("success rate (%)", [100 * summary[p]["success_rate"] for p in presets]),
        ("latency per chunk (ms, mean)", [summary[p]["latency_ms_mean"] or 0.0 for p in presets]),
        ("visual tokens kept (mean)", [summary[p]["tokens_kept_mean"] or 0.0 for p in presets]),
    ]
    for ax, (label, values) in zip(axes, panels):
        bars = ax.bar(presets, values, color=["#777777" if p == "off" else "#3b75af" for p in presets])
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.set_ylim(0, 105 if label.startswith("success") else max(max(values), 1e-9) * 1.15)
        ax.tick_params(axis="x", labelrotation=20)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- direct


def preset_arguments(name: str) -> dict[str, Any]:
    """``SimLaunchArgs`` fields of a ``--presets`` entry: ``paper+merge`` gives preset paper, proportional and
    merge on (:func:`~specprune_ros.core.presets.split_weighting`)."""
    from specprune_ros.core.presets import split_weighting, weighting_flags

    preset, suffix = split_weighting(name)
    return dict(preset=preset, **weighting_flags(suffix))


def _policy_config_values(plan: EvalPlan, preset: str) -> tuple[Any, Any]:
    """(NodeConfig, PolicyConfig) from config/libero.yaml + this run: the ROS path's settings exactly."""
    from specprune_ros.core.config import PolicyConfig
    from specprune_ros.ros.parameters import NODE_NAME, configs_from_values, read_params_file

    from .launching import LIBERO_PARAMS, REPO_ROOT, SimLaunchArgs, policy_parameters

    values = read_params_file(REPO_ROOT / LIBERO_PARAMS, NODE_NAME)
    args = SimLaunchArgs(
        suite=plan.suite, checkpoint=plan.checkpoint, **preset_arguments(preset), unnorm_key=plan.unnorm_key,
        fake_policy=plan.fake_policy, device=plan.device, max_steps=plan.max_steps, seed=plan.seed,
    )
    values.update(policy_parameters(args))
    node_cfg, policy_kw = configs_from_values(values)
    return node_cfg, PolicyConfig(**policy_kw, views=tuple(node_cfg.camera_views))


def _make_policy(plan: EvalPlan, preset: str):
    node_cfg, policy_cfg = _policy_config_values(plan, preset)
    if plan.fake_policy:
        from specprune_ros.core.fake import FakePolicy

        return FakePolicy(views=policy_cfg.views, proprio_dim=8, chunk_len=node_cfg.fake_chunk_len, dt=policy_cfg.control_dt)
    from specprune_ros.core.checkpoint import CheckpointError
    from specprune_ros.core.config import ConfigError
    from specprune_ros.core.policy import build_policy

    try:
        return build_policy(policy_cfg)
    except (CheckpointError, ConfigError) as exc:  # e.g. a weight file that cannot be read
        raise EvalError(f"--checkpoint={plan.checkpoint}: {exc}") from None


def run_direct(plan: EvalPlan, results: Results, progress) -> None:
    from .libero_env import LiberoSim, TaskSpec
    from .protocol import ProtocolConfig, run_episode

    protocol = ProtocolConfig(suite=plan.suite, max_steps=plan.max_steps)
    for preset in plan.presets:
        todo = {t: [i for i in plan.init_states if not results.done(preset, t, i)] for t in plan.tasks}
        if not any(todo.values()):
            continue
        policy = _make_policy(plan, preset)
        for task_id, states in todo.items():
            if not states:
                continue
            sim = LiberoSim(TaskSpec(plan.suite, task_id, plan.seed))
            try:
                for init_state in states:
                    progress.set_description(f"{preset} task {task_id} init {init_state}")
                    res = run_episode(sim, policy, protocol, sim.instruction, task_id, init_state)
                    results.add(preset, res, sim.instruction)
                    _advance(progress, results, preset)
            finally:
                sim.close()


def _advance(progress, results: Results, preset: str) -> None:
    s = results.summary().get(preset, {})
    progress.set_postfix(success=f"{s.get('successes', 0)}/{s.get('episodes', 0)}")
    progress.update(1)


# ---------------------------------------------------------------------------------------------- ROS 2


class _RosRun:
    """This process's watcher node plus the two child processes."""

    def __init__(self, plan: EvalPlan, log_dir: Path) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_srvs.srv import Trigger

        from specprune_ros.msg import ActionChunk, EpisodeStatus
        from specprune_ros.ros.diagnostics import ConfigureFailureWatch

        from .launching import POLICY_NODE_NAME

        self.plan = plan
        self.log_dir = log_dir
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("specprune_libero_eval", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        # every status, not the last only: a reset publishes a replaced episode's 'aborted' and then 'waiting'
        statuses = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.status: list = []
        self.chunks: list = []
        self.node.create_subscription(EpisodeStatus, "/episode_status", self.status.append, statuses)
        self.node.create_subscription(ActionChunk, "/specprune_policy/action_chunk", self.chunks.append, 50)
        self.policy_watch = ConfigureFailureWatch(self.node, POLICY_NODE_NAME)  # up but unconfigured: a bad checkpoint
        self.reset_client = self.node.create_client(Trigger, "/libero_sim_node/reset")
        self.Trigger = Trigger
        self.policy_proc: subprocess.Popen | None = None
        self.bridge_proc: subprocess.Popen | None = None

    def close(self) -> None:
        self.stop_bridge()
        self.stop_policy()
        self.node.destroy_node()
        import rclpy

        rclpy.try_shutdown(context=self.context)

    def start_policy(self, preset: str) -> None:
        from .launching import SimLaunchArgs, policy_command, write_policy_params

        args = SimLaunchArgs(
            suite=self.plan.suite, checkpoint=self.plan.checkpoint, **preset_arguments(preset),
            unnorm_key=self.plan.unnorm_key, fake_policy=self.plan.fake_policy, device=self.plan.device,
        )
        params = write_policy_params(self.log_dir / f"policy_{preset}.yaml", args)
        self.policy_watch.clear()
        log = open(self.log_dir / f"policy_{preset}.log", "w")
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        self.policy_proc = subprocess.Popen(
            policy_command(params), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(Path.cwd())
        )
        self.policy_log = log.name

    def stop_policy(self) -> None:
        stop_process(self.policy_proc, sig=signal.SIGTERM, timeout=30)
        self.policy_proc = None

    def start_bridge(self, task_id: int, init_state: int) -> None:
        from . import simenv
        from .launching import SimLaunchArgs, bridge_command

        args = SimLaunchArgs(
            suite=self.plan.suite, task_id=task_id, init_state=init_state, fake_policy=True,
            max_steps=self.plan.max_steps, seed=self.plan.seed,
        )
        log = open(self.log_dir / f"bridge_task{task_id}.log", "a")
        self.status.clear()
        self.bridge_proc = subprocess.Popen(bridge_command(args), env=simenv.sim_env(), stdout=log, stderr=subprocess.STDOUT)
        self.bridge_log = log.name
        self.episode_index = 0

    def stop_bridge(self) -> None:
        stop_process(self.bridge_proc, sig=signal.SIGTERM, timeout=30)
        self.bridge_proc = None

    def _check_alive(self) -> None:
        if self.policy_watch.error is not None:
            raise EvalError(f"the policy node could not start: {self.policy_watch.error} (log: {self.policy_log})")
        for name, proc, log in (("policy node", self.policy_proc, getattr(self, "policy_log", "")),
                                ("bridge", self.bridge_proc, getattr(self, "bridge_log", ""))):
            if proc is not None and proc.poll() is not None:
                tail = Path(log).read_text()[-2000:] if log else ""
                raise EvalError(f"the {name} exited with code {proc.returncode}; its log ({log}) ends with:\n{tail}")

    def spin_until(self, predicate, timeout: float, what: str) -> bool:
        end = time.monotonic() + timeout
        while not predicate():
            self._check_alive()
            if time.monotonic() > end:
                return False
            self.executor.spin_once(timeout_sec=0.1)
        return True

    def next_episode(self) -> None:
        """Ask the bridge for the next initial state (it increments the episode index)."""
        if not self.reset_client.wait_for_service(timeout_sec=60.0):
            raise EvalError("the bridge offers no /libero_sim_node/reset service")
        future = self.reset_client.call_async(self.Trigger.Request())
        self.spin_until(future.done, 300.0, "the reset")
        res = future.result()
        if res is None or not res.success:
            raise EvalError(f"the bridge could not reset: {getattr(res, 'message', 'no answer')}")
        self.episode_index += 1

    def watch_episode(self, task_id: int, init_state: int, timeout: float) -> tuple[EpisodeResult, str]:
        """Wait for the current episode's end; the chunks that arrived meanwhile are its inferences."""
        index = self.episode_index
        first = 0

        def ended() -> bool:
            return bool(self.status) and self.status[-1].episode == index and self.status[-1].status in (
                "success", "timeout", "failure", "aborted")

        finished = self.spin_until(ended, timeout, "the episode's end")
        st = self.status[-1] if self.status else None
        # this episode's inferences: chunks computed from its observations, from its first query up to
        # (not including) its final observation, which the policy may still answer after the end
        ns = lambda stamp: stamp.sec * 10**9 + stamp.nanosec  # noqa: E731
        running = [m for m in self.status if m.episode == index and m.status == "running"]
        start = ns(running[0].header.stamp) if running else 0
        stop = ns(st.header.stamp) if finished else None
        chunks = [c for c in self.chunks[first:] if start <= ns(c.header.stamp) and (stop is None or ns(c.header.stamp) < stop)]
        del self.chunks[:]
        res = EpisodeResult(
            suite=self.plan.suite, task_id=task_id, init_state=init_state,
            status=st.status if finished else "failure", success=bool(finished and st.success),
            steps=int(st.step) if st is not None else 0, chunks=len(chunks),
            latency_s=[float(c.inference_latency) for c in chunks],
            tokens_kept=[int(c.tokens_kept) for c in chunks],
            tokens_total=[int(c.tokens_total) for c in chunks],
            error=(f"no end of episode within {timeout:.0f} s (see {self.log_dir})" if not finished else
                   "aborted: another client reset the bridge during the episode" if st.status == "aborted" else ""),
        )
        return res, (st.instruction if st is not None else "")


def run_ros(plan: EvalPlan, results: Results, progress, episode_timeout: float) -> None:
    log_dir = plan.out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    run = _RosRun(plan, log_dir)
    try:
        for preset in plan.presets:
            todo = {t: [i for i in plan.init_states if not results.done(preset, t, i)] for t in plan.tasks}
            if not any(todo.values()):
                continue
            run.start_policy(preset)
            for task_id, states in todo.items():
                prev = None
                for init_state in states:
                    progress.set_description(f"{preset} task {task_id} init {init_state}")
                    if prev is not None and init_state == prev + 1 and run.bridge_proc is not None:
                        run.next_episode()
                    else:  # first episode of the task, or a gap left by an earlier run
                        run.stop_bridge()
                        run.start_bridge(task_id, init_state)
                    res, instruction = run.watch_episode(task_id, init_state, episode_timeout)
                    results.add(preset, res, instruction)
                    _advance(progress, results, preset)
                    prev = init_state
                    if res.error:  # the loop is stuck (or another client reset it): next episode with fresh processes
                        run.stop_bridge()
                        prev = None
                run.stop_bridge()
            run.stop_policy()
    finally:
        run.close()


# ---------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="specprune-libero-eval",
        description=__doc__.split("\n\n")[0] + " Resumable; writes JSON and a plot.",
        epilog="Example (GPU, released checkpoint): specprune-libero-eval --suite=libero_spatial "
        "--checkpoint=/models/openvla-7b-oft-finetuned-libero-spatial --device=cuda --presets=off,paper "
        "--episodes=50 --out=runs/spatial. CPU smoke run: specprune-libero-eval --fake-policy --tasks=0 "
        "--episodes=2 --max-steps=16 --out=runs/smoke. See docs/simulation.md.",
    )
    p.add_argument("--suite", default="libero_spatial", help=f"LIBERO suite: {', '.join(SUITE_MAX_STEPS)} (default: libero_spatial)")
    p.add_argument("--tasks", default="", help="task ids, e.g. 0-9 or 0,3,5 (default: every task of the suite)")
    p.add_argument("--episodes", type=int, default=TRIALS_PER_TASK, help="episodes per task; episode i uses initial state i (OFT: 50)")
    p.add_argument("--first-init-state", type=int, default=0, help="initial state of the first episode (default: 0)")
    p.add_argument("--presets", default="off,paper", help="pruning presets to compare, comma-separated; off = unpruned "
                   "baseline; a preset name followed by +proportional or +merge turns that option on, e.g. paper+merge "
                   "(default: off,paper)")
    p.add_argument("--checkpoint", default="", help="OpenVLA-OFT checkpoint directory (released layout)")
    p.add_argument("--unnorm-key", default="", help="dataset_statistics.json key (default: the suite's, e.g. libero_spatial_no_noops)")
    p.add_argument("--fake-policy", action="store_true", help="deterministic fake policy instead of a model (wiring check)")
    p.add_argument("--device", default="cpu", help="torch device of the policy: cpu, cuda, cuda:N (default: cpu)")
    p.add_argument("--max-steps", type=int, default=0, help="policy steps per episode; 0 = the suite's OFT limit")
    p.add_argument("--seed", type=int, default=7, help="simulator seed (OFT: 7)")
    p.add_argument("--direct", action="store_true", help="simulator and policy in one process, without ROS 2")
    p.add_argument("--episode-timeout", type=float, default=3600.0, help="ROS path: wall seconds before an episode counts as stuck (default: 3600)")
    p.add_argument("--out", default="libero_eval_out", help="output directory (results JSON, plot, logs); reused to resume")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    return p


def _plan(ns: argparse.Namespace) -> EvalPlan:
    try:
        check_suite(ns.suite)
    except ProtocolError as exc:
        raise EvalError(str(exc)) from None
    from specprune_ros.core.presets import preset_list

    try:
        presets = preset_list(ns.presets)
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    if not ns.fake_policy and not ns.checkpoint:
        raise EvalError("give --checkpoint=<dir> (a released OFT LIBERO checkpoint, or `specprune-make-tiny`'s) or --fake-policy")
    if ns.checkpoint and not Path(ns.checkpoint).is_dir():
        raise EvalError(f"--checkpoint={ns.checkpoint}: no such directory")
    if not (math.isfinite(ns.episode_timeout) and ns.episode_timeout > 0):
        raise EvalError(f"--episode-timeout={ns.episode_timeout} must be a finite number of seconds > 0")
    if not 1 <= ns.episodes <= TRIALS_PER_TASK:
        raise EvalError(f"--episodes={ns.episodes} must lie in [1, {TRIALS_PER_TASK}] (each task has {TRIALS_PER_TASK} "
                        "initial states)")
    if ns.first_init_state < 0 or ns.max_steps < 0:
        raise EvalError("--first-init-state and --max-steps must be >= 0")
    n_tasks = 90 if ns.suite == "libero_90" else 10
    tasks = _range_list(ns.tasks, "tasks", n_tasks) if ns.tasks else list(range(n_tasks))
    init_states = list(range(ns.first_init_state, ns.first_init_state + ns.episodes))
    if init_states[-1] >= TRIALS_PER_TASK:
        raise EvalError(f"initial states {init_states[0]}..{init_states[-1]}: each task has {TRIALS_PER_TASK} (0..49)")
    return EvalPlan(
        suite=ns.suite, tasks=tasks, init_states=init_states, presets=presets,
        checkpoint=str(Path(ns.checkpoint).resolve()) if ns.checkpoint else "", unnorm_key=ns.unnorm_key,
        fake_policy=ns.fake_policy, device=ns.device, max_steps=ns.max_steps, seed=ns.seed,
        path="direct" if ns.direct else "ros", out=Path(ns.out),
    )


def _validate_policy(plan: EvalPlan) -> None:
    """Fail now, not after a process start and a timeout: parameters, checkpoint layout, unnorm key."""
    for preset in plan.presets:
        try:
            _, policy_cfg = _policy_config_values(plan, preset)
        except ValueError as exc:
            raise EvalError(f"policy parameters: {exc}") from None
    if plan.fake_policy:
        return
    from specprune_ros.core.checkpoint import inspect_checkpoint

    try:
        inspect_checkpoint(plan.checkpoint).resolve_unnorm_key(policy_cfg.unnorm_key)
    except (ValueError, OSError, KeyError) as exc:
        raise EvalError(f"--checkpoint={plan.checkpoint}: {exc}") from None


def _reexec(argv: list[str], python: str, env: dict[str, str], prefix: list[str] | None = None) -> int:
    env = dict(env, **{_REEXEC_ENV: "1"})
    cmd = (prefix or []) + [python, "-m", "specprune_ros.sim.libero_eval", *argv]
    return subprocess.run(cmd, env=env).returncode


def _ensure_environment(ns: argparse.Namespace, argv: list[str]) -> int | None:
    """Re-run in the right environment when this one lacks what the path needs; None = go on here."""
    from .launching import REPO_ROOT

    if os.environ.get(_REEXEC_ENV):
        site = os.environ.get(_POLICY_SITE_ENV)
        if site and site not in sys.path:
            sys.path.append(site)  # after LIBERO's packages: the simulator keeps its own OpenCV
        return None
    if ns.direct:
        if importlib.util.find_spec("libero") is not None:
            return None
        from . import simenv

        reason = simenv.unavailable_reason()
        if reason:
            raise EvalError(f"--direct needs LIBERO: {reason}")
        import sysconfig

        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **{_POLICY_SITE_ENV: sysconfig.get_paths()["purelib"]})
        env.setdefault("OMP_NUM_THREADS", "1")
        return _reexec(argv, str(simenv.sim_python()), env)
    try:
        import rclpy  # noqa: F401
        from specprune_ros.msg import ActionChunk  # noqa: F401
        from std_srvs.srv import Trigger  # noqa: F401
    except ImportError:
        if not ENV_SCRIPT.is_file():
            raise EvalError("rclpy and the specprune_ros messages are not importable: source your ROS 2 setup") from None
        env = dict(os.environ, VENV=sys.prefix)
        return _reexec(argv, sys.executable, env, prefix=["bash", str(ENV_SCRIPT)])
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = _parser().parse_args(argv)
    try:
        plan = _plan(ns)
        code = _ensure_environment(ns, argv)
        if code is not None:
            return code
        _validate_policy(plan)
        results = Results.open(plan.out / RESULTS, plan.config())
        total = len(plan.presets) * len(plan.tasks) * len(plan.init_states)
        pending = sum(
            not results.done(p, t, i) for p in plan.presets for t in plan.tasks for i in plan.init_states
        )
        from tqdm import tqdm

        # stdout carries only the summary; LIBERO prints progress notes of its own
        with tqdm(total=total, initial=total - pending, unit="episode", file=sys.stderr, dynamic_ncols=True) as progress, \
                contextlib.redirect_stdout(sys.stderr):
            if plan.path == "direct":
                run_direct(plan, results, progress)
            else:
                run_ros(plan, results, progress, ns.episode_timeout)
        results.save()
        summary = results.summary()
        figure = plot(summary, plan.out / PLOT, f"{plan.suite}: {len(plan.tasks)} task(s) x {len(plan.init_states)} episode(s) ({plan.path})")
    except (EvalError, OSError) as exc:  # OSError: an --out that cannot be written
        print(f"specprune-libero-eval: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("specprune-libero-eval: interrupted; rerun with the same --out to resume", file=sys.stderr)
        return 130
    if ns.json:
        print(json.dumps(summary, indent=2))
    else:
        for preset, s in summary.items():
            lat = f"{s['latency_ms_mean']:.1f} ms" if s["latency_ms_mean"] is not None else "-"
            kept = f"{s['tokens_kept_mean']:.0f}" if s["tokens_kept_mean"] is not None else "-"
            print(
                f"{preset:>12}: success {s['successes']}/{s['episodes']} ({100 * s['success_rate']:.1f}%), "
                f"mean steps {s['mean_steps']:.1f}, latency {lat}, visual tokens kept {kept}"
            )
        print(f"results: {results.path}" + (f", plot: {figure}" if figure else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
