"""The test bed's whole ROS 2 path, closed loop, without ``ros2 launch``.

Starts the two nodes of ``launch/testbed.launch.py`` as child processes: the task bridge ``testbed_sim_node``
(cameras, joint states, instruction, URDF in; action chunks executed in real time) and the policy node (the
checkpoint, pruned with a preset, with the launch file's parameters). The bridge's defaults here differ from
the launch file's in ``seed`` (10000, not 0), ``episodes`` (3, not 0 = endless) and ``reset_delay`` (0.5 s,
not 1.0). It then watches
``/episode_status`` until the episodes are over and reports each one: success, steps, the chunks the policy
node published for it, their latency and visual tokens kept.

    tools/ros_env.sh .venv/bin/python -m specprune_ros.testbed.ros_loop --episodes=3 --preset=paper

Needs rclpy and the generated messages (``tools/ros_env.sh``, or a sourced ROS 2 installation with the
package built). ``specprune-demo`` runs it as its closed-loop ROS stage.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..cli.common import ArgumentParser
from ..rosenv import stop_process
from ..sim.launching import ros_param_args, write_params_file
from . import TESTBED_CHECKPOINT
from .ros_bridge import NODE_NAME as BRIDGE_NODE_NAME
from .ros_bridge import policy_control_dt, policy_node_parameters

POLICY_NODE_NAME = "specprune_policy"
CHUNK_TOPIC = f"/{POLICY_NODE_NAME}/action_chunk"
ENDED = ("success", "timeout", "aborted")  # aborted: another client reset the bridge mid-episode


class LoopError(RuntimeError):
    """The loop could not run: a node exited, or an episode did not end in time."""


def bridge_command(seed: int, episodes: int, max_steps: int, control_rate: float = 20.0) -> list[str]:
    params = {"seed": seed, "episodes": episodes, "max_steps": max_steps, "control_rate": float(control_rate),
              "reset_delay": 0.5, "action_chunk_topic": CHUNK_TOPIC}
    return [sys.executable, "-m", "specprune_ros.testbed.ros_bridge", "--ros-args", "-r", f"__node:={BRIDGE_NODE_NAME}",
            *ros_param_args(params)]


def policy_command(params_file: Path) -> list[str]:
    return [sys.executable, "-m", "specprune_ros.ros.policy_node", "--ros-args", "-r", f"__node:={POLICY_NODE_NAME}",
            "--params-file", str(params_file)]


def episode_deadline(max_steps: int, control_rate: float = 20.0) -> float:
    """Seconds to wait for one episode's end: ``max_steps`` rows at ``control_rate``, four times over (the
    gantry holds still while the policy infers), plus 60 s."""
    return 60.0 + 4.0 * max_steps / control_rate


def run_loop(checkpoint: str, preset: str = "paper", seed: int = 10_000, episodes: int = 3, max_steps: int = 240,
             log_dir: Path | None = None, episode_timeout: float | None = None, startup_timeout: float = 180.0,
             progress=None, fake_policy: bool = False, control_rate: float = 20.0) -> list[dict]:
    """Run ``episodes`` closed-loop episodes over ROS 2; one record per episode (seeds ``seed``, ``seed + 1``, ...).

    ``fake_policy``: the policy node runs its deterministic fake policy instead of the checkpoint (wiring checks).
    ``control_rate``: Hz of the bridge's rows, and the policy node's control period (1 / control_rate).
    ``episode_timeout``: seconds to wait for each episode's end (None: :func:`episode_deadline`); the first
    episode gets ``startup_timeout`` more (the policy node loads and warms up meanwhile).
    """
    if episode_timeout is None:
        episode_timeout = episode_deadline(max_steps, control_rate)
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from specprune_ros.msg import ActionChunk, EpisodeStatus
    from specprune_ros.ros.diagnostics import ConfigureFailureWatch

    log_dir = Path(log_dir if log_dir is not None else tempfile.mkdtemp(prefix="testbed_ros_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    params = write_params_file(log_dir / "policy.yaml", policy_node_parameters(checkpoint, preset, fake_policy=fake_policy,
                                                                      control_rate=control_rate),
                               POLICY_NODE_NAME)
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("specprune_testbed_loop", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    statuses: list = []
    chunks: list = []  # (episode running when the chunk arrived, chunk)

    def on_chunk(msg) -> None:
        if statuses and statuses[-1].status == "running":
            chunks.append((statuses[-1].episode, msg))

    status_qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(EpisodeStatus, "/episode_status", statuses.append, status_qos)
    node.create_subscription(ActionChunk, CHUNK_TOPIC, on_chunk, 50)
    policy_watch = ConfigureFailureWatch(node, POLICY_NODE_NAME)  # alive but unconfigured (a bad checkpoint)
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}

    def start(name: str, cmd: list[str]) -> None:
        log = log_dir / f"{name.replace(' ', '_')}.log"
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        with open(log, "w") as fh:
            procs[name] = (subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT), log)

    def spin_until(predicate, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not predicate():
            if policy_watch.error is not None:
                raise LoopError(f"the policy node could not start: {policy_watch.error} (logs in {log_dir})")
            for name, (proc, log) in procs.items():
                if proc.poll() is not None:
                    raise LoopError(f"the {name} exited with code {proc.returncode}; its log ({log}) ends with:\n"
                                    f"{log.read_text()[-2000:]}")
            if time.monotonic() > end:
                raise LoopError(f"{what} did not happen within {timeout:.0f} s (logs in {log_dir})")
            executor.spin_once(timeout_sec=0.05)

    records = []
    try:
        # the bridge first: its episode waits for chunks, and this node hears the episode's every status only
        # once discovery has matched it with the bridge (a late joiner may miss a short episode's end)
        start("task bridge", bridge_command(seed, episodes, max_steps, control_rate))
        spin_until(lambda: bool(statuses), startup_timeout, "the task bridge's first episode status")
        start("policy node", policy_command(params))
        for k in range(episodes):
            def ended(k=k) -> bool:
                return any((s.episode == k and s.status in ENDED) or s.episode > k for s in statuses)

            # the first episode also waits for the policy node to load its checkpoint and warm up
            spin_until(ended, episode_timeout + (startup_timeout if k == 0 else 0), f"the end of episode {k}")
            final = next((s for s in statuses if s.episode == k and s.status in ENDED), None)
            if final is None:
                raise LoopError(f"episode {k} was followed by the next one, but its end was not received")
            mine = [c for episode, c in chunks if episode == k]  # those this process received: latency, tokens
            records.append({
                "seed": seed + k, "instruction": final.instruction, "status": final.status, "success": bool(final.success),
                "steps": int(final.step), "chunks": int(final.chunks),  # executed, as the bridge counted them
                "latency_ms": 1e3 * sum(c.inference_latency for c in mine) / len(mine) if mine else None,
                "tokens_kept": sum(c.tokens_kept for c in mine) / len(mine) if mine else None,
            })
            if progress is not None:
                progress(records[-1])
    finally:
        for proc, _ in procs.values():
            stop_process(proc, sig=signal.SIGINT, timeout=20)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    return records


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="python -m specprune_ros.testbed.ros_loop",
        description="Closed loop over ROS 2 on the test-bed task: testbed_sim_node + policy_node as child processes "
        "(the nodes of launch/testbed.launch.py), episodes watched on /episode_status. Needs the ROS environment "
        "(tools/ros_env.sh).")
    p.add_argument("--checkpoint", default=str(TESTBED_CHECKPOINT), help="policy checkpoint (default: the committed test-bed one)")
    p.add_argument("--preset", default="paper", help="pruning preset of the policy node (default paper; off = unpruned)")
    p.add_argument("--seed", type=int, default=10_000, help="task seed of the first episode (default 10000)")
    p.add_argument("--episodes", type=int, default=3, help="episodes to run (default 3)")
    p.add_argument("--max-steps", type=int, default=240, help="control steps before an episode times out (default 240)")
    p.add_argument("--control-rate", type=float, default=20.0,
                   help="Hz of the bridge's action rows; the policy node's control period follows (default 20)")
    p.add_argument("--episode-timeout", type=float, default=None,
                   help="seconds to wait for each episode's end (default: 60 + 4 * max_steps / control rate; the "
                   "first episode gets 180 s more while the policy node loads)")
    p.add_argument("--fake-policy", action="store_true",
                   help="the policy node runs its deterministic fake policy instead of the checkpoint (wiring check)")
    p.add_argument("--log-dir", default=None, help="where the nodes' logs go (default: a temporary directory)")
    p.add_argument("--json", action="store_true", help="print the episode records as JSON")
    args = p.parse_args(argv)
    if not (1 <= args.episodes <= 10_000 and 0 <= args.seed and args.seed + args.episodes <= 1_000_000
            and 1 <= args.max_steps <= 100_000):
        print("error: --episodes must lie in [1, 10000], --max-steps in [1, 100000] and --seed in [0, 1000000 - "
              "episodes] (the training demonstrations' task seeds start at 1000000)", file=sys.stderr)
        return 2
    try:
        policy_control_dt(args.control_rate)
    except ValueError as err:
        print(f"error: --control-rate: {err}", file=sys.stderr)
        return 2
    if args.episode_timeout is not None and not args.episode_timeout > 0:
        print(f"error: --episode-timeout={args.episode_timeout} must be > 0 seconds", file=sys.stderr)
        return 2
    from specprune_ros.core.config import closest
    from specprune_ros.core.presets import PRESETS

    if args.preset not in PRESETS:  # the node would refuse it and the loop wait for statuses that never come
        print(f"error: --preset={args.preset!r} is not a preset{closest(args.preset, list(PRESETS))}; choose from "
              f"{', '.join(PRESETS)}", file=sys.stderr)
        return 2
    if not args.fake_policy and not (Path(args.checkpoint) / "config.json").is_file():
        print(f"error: --checkpoint={args.checkpoint} has no config.json", file=sys.stderr)
        return 2

    def show(rec: dict) -> None:
        if not args.json:
            lat = "-" if rec["latency_ms"] is None else f"{rec['latency_ms']:.0f} ms"
            kept = "-" if rec["tokens_kept"] is None else f"{rec['tokens_kept']:.0f}/512"
            print(f"  seed {rec['seed']}: {rec['status']:7s} after {rec['steps']:3d} steps, {rec['chunks']} chunks, "
                  f"latency {lat}, visual tokens kept {kept}  ({rec['instruction']})", flush=True)

    try:
        records = run_loop(args.checkpoint, args.preset, args.seed, args.episodes, args.max_steps,
                           Path(args.log_dir) if args.log_dir else None, episode_timeout=args.episode_timeout,
                           progress=show, fake_policy=args.fake_policy, control_rate=args.control_rate)
    except LoopError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # an unusable --log-dir
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:  # rclpy or the generated messages: not in the ROS environment
        print(f"error: {err}; run it in the ROS environment (tools/ros_env.sh, docs/development.md)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(records, indent=1))
    else:
        print(f"  {sum(r['success'] for r in records)}/{len(records)} episodes succeeded ({args.preset})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
