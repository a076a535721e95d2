"""specprune-demo: the main job on an embedded default, end to end, on any machine.

1. Policy: the committed test-bed checkpoint (checkpoints/testbed) when present, else a generated tiny
   random checkpoint. One observation through the unpruned and the pruned policy: the chunk and timings.
2. Closed loop (test-bed checkpoint only): a few held-out episodes of the procedural task, baseline vs pruned.
3. ROS 2: a generated bag replayed into the running policy node; the chunks it publishes.
4. ROS 2 closed loop (test-bed checkpoint only): the task bridge and the policy node as two processes,
   cameras and joint states in, action chunks out, each episode's success reported. The node runs unpruned
   by default (``--ros-preset``): the test-bed policy solves the task unpruned and loses most of its
   successes pruned (stage 2 and docs/testbed.md show how much).
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..core.config import PolicyConfig, closest
from ..core.policy import build_policy
from ..core.presets import PRESETS
from ..core.tiny import make_tiny_checkpoint
from ..core.types import Observation
from ..testbed import TESTBED_CHECKPOINT
from .common import ArgumentParser, run

PROG = "specprune-demo"


def default_checkpoint(out: Path) -> tuple[Path, bool]:
    """(checkpoint, trained?): the committed test-bed policy if it is there, else a tiny random one."""
    if (TESTBED_CHECKPOINT / "config.json").is_file():
        return TESTBED_CHECKPOINT, True
    tiny = out / "tiny-checkpoint"
    if not (tiny / "config.json").is_file():
        make_tiny_checkpoint(tiny)
    return tiny, False


def sample_observation(seed: int = 0) -> Observation:
    from ..testbed.task import TabletopTask

    task = TabletopTask(seed=seed)
    return Observation(images=task.render(), proprio=task.proprio(), instruction=task.instruction)


def show_chunk(name: str, chunk) -> None:
    s = chunk.stats
    print(f"\n[{name}] {chunk.actions.shape[0]}x{chunk.actions.shape[1]} actions (dt {chunk.dt:.2f}s), mode {s.mode}, "
          f"visual tokens kept {sum(s.kept_per_view.values())}/512, tokens in last layer {s.tokens_per_layer[-1]}/{s.total_tokens}")
    for i, row in enumerate(chunk.actions[:3]):
        print(f"  step {i}: " + " ".join(f"{v:+.3f}" for v in row))
    print("  ...")
    print("  ms: " + ", ".join(f"{k} {v:.1f}" for k, v in s.timings_ms.items()))


def stage_policy(ckpt: Path, preset: str) -> None:
    print(f"== 1. policy on one observation ({ckpt})")
    obs = sample_observation()
    print(f"instruction: {obs.instruction!r}")
    policies = {name: build_policy(PolicyConfig(checkpoint=str(ckpt), preset=name)) for name in ("off", preset)}
    times: dict[str, list[float]] = {name: [] for name in policies}
    chunks = {}
    for rep in range(6):  # interleaved, first pair is warm-up
        for name, policy in (policies.items() if rep % 2 == 0 else reversed(policies.items())):
            policy.reset()
            t = time.perf_counter()
            chunks[name] = policy.infer(obs)
            if rep:
                times[name].append((time.perf_counter() - t) * 1e3)
    for name, chunk in chunks.items():
        show_chunk(name, chunk)
    off, pruned = float(np.median(times["off"])), float(np.median(times[preset]))
    print(f"\nmedian latency over 5 interleaved runs: off {off:.1f} ms, {preset} {pruned:.1f} ms -> {off / pruned:.2f}x "
          "(first query of an episode: no global set or frame difference yet; this model's size and this machine "
          "make the ratio noisy: see docs/benchmarks.md)")


def stage_closed_loop(ckpt: Path, preset: str, episodes: int) -> None:
    from ..testbed.evaluate import EvalConfig, evaluate, table

    print(f"\n== 2. closed loop on the test-bed task: {episodes} held-out episodes per preset")
    results = evaluate(EvalConfig(checkpoint=str(ckpt), variants=("off", preset), episodes=episodes, first_seed=10_000))
    print(table(results))


def stage_ros(ckpt: Path, preset: str, out: Path) -> None:
    from ..bags.demo import replay_into_node

    print("\n== 3. ROS 2: a generated bag replayed into the policy node")
    replay_into_node(ckpt, out, preset=preset)


def stage_ros_closed_loop(ckpt: Path, preset: str, episodes: int, out: Path) -> int:
    from ..rosenv import ros_child_env

    print(f"\n== 4. ROS 2 closed loop on the test-bed task: testbed_sim_node + policy_node ({preset}), {episodes} "
          "episodes in real time (20 Hz)", flush=True)
    cmd = [sys.executable, "-m", "specprune_ros.testbed.ros_loop", f"--checkpoint={ckpt}", f"--preset={preset}",
           f"--episodes={episodes}", f"--log-dir={out / 'ros_loop'}"]
    code = subprocess.run(cmd, env=ros_child_env()).returncode
    if code != 0:
        print(f"{PROG}: the ROS 2 closed loop failed; the nodes' logs are in {out / 'ros_loop'}", file=sys.stderr)
    return code


def main_args(argv: list[str]) -> int:
    p = ArgumentParser(prog=PROG, description="Run the main job on the embedded default checkpoint.")
    p.add_argument("--out", default="demo_out", help="working directory (default: demo_out)")
    p.add_argument("--preset", default="paper", help="pruning preset to show (default: paper)")
    p.add_argument("--episodes", type=int, default=10,
                   help="closed-loop test-bed episodes per preset (off and --preset) with the committed test-bed policy "
                   "(default: 10; 0 skips the stage)")
    p.add_argument("--ros-episodes", type=int, default=3,
                   help="episodes of the ROS 2 closed loop with the committed test-bed policy (default: 3; 0 skips it)")
    p.add_argument("--ros-preset", default="off",
                   help="preset of the policy node in the ROS 2 closed loop (default: off, the unpruned policy, which "
                   "solves the task; the test-bed policy loses most of its successes pruned, stage 2 shows it)")
    p.add_argument("--skip-ros", action="store_true", help="skip the ROS 2 stages")
    args = p.parse_args(argv)
    for flag, count in (("--episodes", args.episodes), ("--ros-episodes", args.ros_episodes)):
        if not 0 <= count <= 10_000:
            p.error(f"{flag}={count} must lie in [0, 10000] (0 skips the stage)")
    for flag, name in (("--preset", args.preset), ("--ros-preset", args.ros_preset)):
        if name not in PRESETS:
            p.error(f"{flag}={name!r} is not a preset{closest(name, list(PRESETS))}; choose from {', '.join(PRESETS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt, trained = default_checkpoint(out)
    stage_policy(ckpt, args.preset)
    if trained and args.episodes > 0:
        stage_closed_loop(ckpt, args.preset, args.episodes)
    if not args.skip_ros:
        stage_ros(ckpt, args.preset, out)
        if trained and args.ros_episodes > 0 and stage_ros_closed_loop(ckpt, args.ros_preset, args.ros_episodes, out):
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(main_args, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
