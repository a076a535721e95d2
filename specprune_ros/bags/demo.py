"""The ROS 2 stage of ``specprune-demo``: a generated episode bag replayed into the running policy node.

1. :func:`~specprune_ros.bags.synth.write_demo_bag` writes a short two-camera Panda episode;
2. the policy node starts on the checkpoint (simulated time, so the bag's stamps are judged on the bag's
   clock), ``specprune-record`` records what it publishes, ``specprune-replay --clock`` plays the bag;
3. the chunks the node published are printed (stamp of the frame each came from, mode, tokens kept,
   latency), with the node's own frame accounting from /diagnostics;
4. ``specprune-eval`` runs the unpruned baseline and the preset on the same bag offline and prints the
   speed-up and the action deviation; its report lands in ``<out>/bag_report/index.html``.

The child processes get the environment of ``tools/ros_env.sh`` (rclpy + the generated messages; see
:func:`specprune_ros.rosenv.ros_child_env`) and a ROS domain of their own unless ``ROS_DOMAIN_ID`` is set. This process itself never imports rclpy.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..rosenv import ros_child_env, stop_process
from .bagio import NS, Bag
from .synth import CAMERA_TOPICS, write_demo_bag

NODE = "specprune_policy"
CHUNKS = f"/{NODE}/action_chunk"
STATS = f"/{NODE}/inference_stats"


def _sec(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def run_session(
    checkpoint: Path | None,
    bag: Path,
    record_to: Path,
    *,
    preset: str = "paper",
    rate: float = 1.0,
    extra_params: tuple[str, ...] = (),
    startup_timeout: float = 180.0,
) -> dict:
    """Node (checkpoint, or the fake policy when None) + recorder + replay of ``bag``; returns what was recorded.

    Returns ``{"chunks": [...], "stats": [...], "diagnostics": {...}, "node_log": str}`` where chunks are
    deserialized ActionChunk messages (rosbags objects).
    """
    bindir = Path(sys.executable).parent
    env = ros_child_env()
    params = ["-p", "use_sim_time:=true", "-p", f"preset:={preset}", "-p", "diagnostics_period:=0.5"]
    params += ["-p", f"checkpoint:={checkpoint}"] if checkpoint is not None else ["-p", "fake_policy:=true"]
    for p in extra_params:
        params += ["-p", p]
    if record_to.exists():
        shutil.rmtree(record_to)
    node = subprocess.Popen(
        [str(bindir / "policy_node"), "--ros-args", *params],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    recorder = subprocess.Popen(
        [str(bindir / "specprune-record"), str(record_to), "--topics", CHUNKS, STATS, "/diagnostics", "--no-progress"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # the node subscribes once its model is loaded; the replay waits for that, then gives the recorder a
        # moment to subscribe to the node's outputs
        replay = subprocess.run(
            [str(bindir / "specprune-replay"), str(bag), "--clock", f"--rate={rate}",
             f"--wait-for-subscribers={startup_timeout}", "--delay=1.5", "--no-progress"],
            env=env, capture_output=True, text=True, timeout=startup_timeout + 120,
        )  # fmt: skip
        time.sleep(1.5)  # /clock stopped with the replay; the last inference finishes and is recorded
    finally:
        stop_process(recorder)
        stop_process(node)
    node_log = node.stdout.read() if node.stdout else ""
    if replay.returncode != 0:
        raise RuntimeError(f"replay failed: {replay.stderr.strip()}")
    if "no subscriber yet" in replay.stderr:
        raise RuntimeError(f"the policy node did not come up in {startup_timeout:.0f} s; its log:\n{node_log}")
    out: dict = {"chunks": [], "stats": [], "diagnostics": {}, "node_log": node_log}
    with Bag(record_to) as rec:
        topics = rec.topics()
        for key, topic in (("chunks", CHUNKS), ("stats", STATS)):
            if topic in topics:
                out[key] = [rec.deserialize(raw, c.msgtype) for c, _, raw in rec.messages(rec.select([topic]))]
        if "/diagnostics" in topics:
            for c, _, raw in rec.messages(rec.select(["/diagnostics"])):
                msg = rec.deserialize(raw, c.msgtype)
                for status in msg.status:
                    out["diagnostics"] = {kv.key: kv.value for kv in status.values}  # the last one wins
    return out


def replay_into_node(checkpoint: Path, out: Path, *, preset: str = "paper", seconds: float = 3.0) -> dict:
    """The demo stage: generate a bag, replay it into the node on ``checkpoint``, print chunks and speed-up."""
    out = Path(out)
    bag = out / "demo_bag"
    if bag.exists():
        shutil.rmtree(bag)
    write_demo_bag(bag, seconds=seconds, storage="mcap")
    with Bag(bag) as b:
        start = b.start_ns / NS
        frames = b.topics()[CAMERA_TOPICS["primary"]].count
    print(f"bag: {bag} ({seconds:.1f} s, two 224x224 cameras at 10 fps, Panda joint states, instruction, URDF)")
    print(f"starting the policy node on {checkpoint} (preset {preset}, simulated time) and replaying the bag ...")
    session = run_session(checkpoint, bag, out / "demo_session", preset=preset)
    chunks = session["chunks"]
    print(f"\nreceived {len(chunks)} ActionChunk messages on {CHUNKS}:")
    print("  seq  frame stamp  mode    visual tokens kept  latency   first action row")
    for c in chunks:
        row = list(c.actions[: c.cols])
        print(
            f"  {c.sequence:3d}  {(_sec(c.header) - start):+8.3f} s  {c.mode:6s}  {c.tokens_kept:4d} / {256 * len(c.views):4d}"
            f"         {c.inference_latency * 1e3:6.1f} ms  " + " ".join(f"{v:+.3f}" for v in row[:4]) + " ..."
        )
    diag = session["diagnostics"]
    if diag:
        print(f"  node's last /diagnostics: {diag.get('chunks_published')} chunks published, {diag.get('frames_skipped')} "
              f"of {frames} primary frames skipped (they arrived while a chunk was executing), "
              f"{diag.get('refused_total')} queries refused")  # fmt: skip
    if not chunks:
        print("  (none: see the node's log below)\n" + session["node_log"][-3000:])
    from .evaluate import evaluate_bag

    print(f"\nspecprune-eval on the same bag (baseline off vs {preset}, same observations) ...")
    summary = evaluate_bag(bag, out / "bag_report", checkpoint=checkpoint, presets=(preset,))
    s = summary["presets"][preset]
    base = summary["baseline"]["latency_ms"]["total"]["median"]
    if s["steps"]:
        print(
            f"  {summary['counts']['observations']} observations: median latency off {base:.1f} ms, {preset} "
            f"{s['latency_ms']['total']['median']:.1f} ms -> speed-up {s['speedup_vs_baseline']:.2f}x; visual tokens kept "
            f"{s['tokens']['kept_visual_median']:.0f}/512; mean |action - baseline| {s['action_deviation']['mean_abs']:.4f}"
        )
    print(f"  report: {out / 'bag_report' / 'index.html'}")
    return {"session": session, "summary": summary}
