"""``specprune-eval BAG``: offline evaluation of pruning presets on a recorded episode, without a ROS graph.

The bag is read with ``rosbags``; camera frames, joint states, the instruction and the robot description go
through :class:`specprune_ros.core.sync.Synchronizer` configured from the policy node's parameters
(``--params``, else the node's defaults), so observations are built by exactly the node's alignment and
staleness rules. The node's query schedule is replayed on the bag's clock:

* a control tick every ``dt`` seconds (the policy's control period); messages are fed in as their bag
  (receive) time passes;
* when no chunk is being executed, the tick asks the synchronizer for an observation at ``now`` = tick
  time; a refusal (stale, skew, no data, ...) is counted under its reason and retried next tick; an
  observation on the reference frame of the last query is not used (the node waits for a new frame, also
  after the policy refused that frame), so every frame is used at most once;
* a new instruction on the instruction topic resets every policy before its next inference (a new
  episode for the pruning controller), as the node does;
* every policy first runs one untimed inference on mid-grey frames and is reset (the node's warm-up), so
  first-call costs are in no timing;
* an accepted observation is given to the baseline (preset ``off``) and to every preset, one after the
  other (the SAME observation for all of them), the first one rotating from observation to observation so
  no run always pays for meeting a new observation first; the chunk's first ``execute_steps`` rows (0 = all)
  are then "executed" for ``rows * dt`` seconds of bag time, and fed back to each policy as its own
  ``executed_actions`` at the next query, as the node does. Inference time does not move the bag clock,
  so every preset sees the same observations whatever its speed.

Writes ``summary.json``, PNG plots and ``index.html`` to ``--out`` (see :mod:`specprune_ros.bags.report`).
Exit status: 0 done, 2 bad input or no observation could be built (one-line error; the report is still
written in the second case), 130 interrupted.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cli.common import ArgumentParser
from ..core.images import ImageDecodeError, decode_compressed, decode_raw
from ..core.kinematics import KinematicModel
from ..core.proprio import ProprioBuilder, ProprioConfig
from ..core.sync import SyncConfig, Synchronizer, SyncInputError
from ..core.types import ActionChunk, InputError, Observation, warm_up
from .bagio import NS, Bag, BagError

PROG = "specprune-eval"
BASELINE = "off"
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def _absolute(topic: str, node_name: str) -> str:
    """A node-relative topic name as the node (in the root namespace) resolves it."""
    if topic.startswith("~/"):
        return f"/{node_name}/{topic[2:]}"
    return topic if topic.startswith("/") else "/" + topic


@dataclass(frozen=True)
class EvalInputs:
    """Which bag topics feed the synchronizer, and how it is configured (derived from node parameters)."""

    camera_topics: dict[str, str]  # view -> topic, in policy view order
    joint_states_topic: str
    instruction_topic: str
    robot_description_topic: str
    instruction: str  # fixed instruction (parameter); the instruction topic overrides it when present
    sync: SyncConfig
    proprio: ProprioConfig
    ee_frame: str
    arm_joints: tuple[str, ...]
    execute_steps: int
    robot_description_file: str


@dataclass
class RunRecord:
    """What one policy (baseline or preset) did at each query."""

    name: str
    preset: str
    policy: Any
    chunks: list[np.ndarray] = field(default_factory=list)  # each (T, A)
    stats: list[dict] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)
    refused: Counter = field(default_factory=Counter)
    refusal_examples: dict[str, str] = field(default_factory=dict)  # reason -> message of its first refusal
    executed: np.ndarray | None = None  # rows of the last chunk to report as executed at the next query


def inputs_from_node_config(node_cfg, camera_topics: dict[str, str] | None = None) -> EvalInputs:
    """The node's input wiring and synchronizer settings, from the functions the node's configure step uses."""
    from ..ros.parameters import NODE_NAME

    views = tuple(node_cfg.camera_views)
    topics = dict(zip(views, (_absolute(t, NODE_NAME) for t in node_cfg.camera_topics), strict=True))
    if camera_topics:
        unknown = [v for v in camera_topics if v not in views]
        if unknown:
            raise ValueError(f"--camera-topics names view(s) {unknown} that are not camera_views {list(views)}")
        topics.update({v: _absolute(t, NODE_NAME) for v, t in camera_topics.items()})
    # the node's own derivation (NodeConfig.proprio_config / sync_config): one source of truth
    proprio = node_cfg.proprio_config()
    sync = node_cfg.sync_config()
    return EvalInputs(
        camera_topics=topics,
        joint_states_topic=_absolute(node_cfg.joint_states_topic, NODE_NAME),
        instruction_topic=_absolute(node_cfg.instruction_topic, NODE_NAME),
        robot_description_topic=_absolute(node_cfg.robot_description_topic, NODE_NAME),
        instruction=node_cfg.instruction,
        sync=sync,
        proprio=proprio,
        ee_frame=node_cfg.ee_frame,
        arm_joints=tuple(node_cfg.arm_joints),
        execute_steps=node_cfg.execute_steps,
        robot_description_file=node_cfg.robot_description_file,
    )


def _stamp(header) -> float:
    return int(header.stamp.sec) + int(header.stamp.nanosec) * 1e-9


class BagFeeder:
    """Feeds one bag's messages into a Synchronizer in bag-time order, the way the node's callbacks do."""

    def __init__(self, bag: Bag, inputs: EvalInputs, sync: Synchronizer, instruction_override: str | None) -> None:
        self.bag = bag
        self.inputs = inputs
        self.sync = sync
        self.instruction_override = instruction_override
        topics = bag.topics()
        self.views_of: dict[str, list[str]] = {}  # topic -> views: the node subscribes once per view
        for v, t in inputs.camera_topics.items():
            self.views_of.setdefault(t, []).append(v)
        missing = [f"{v}={t}" for v, t in inputs.camera_topics.items() if t not in topics]
        if missing:
            images = [t for t, i in topics.items() if i.msgtype in IMAGE_TYPES]
            raise BagError(
                f"camera topic(s) {', '.join(missing)} not in the bag; its image topics: {', '.join(images) or 'none'} "
                "(map views with --camera-topics view=/topic)"
            )
        for t in inputs.camera_topics.values():
            if topics[t].msgtype not in IMAGE_TYPES:
                raise BagError(f"camera topic {t} carries {topics[t].msgtype}, not sensor_msgs/Image or CompressedImage")
        for t, want in ((inputs.joint_states_topic, "sensor_msgs/msg/JointState"),
                        (inputs.instruction_topic, "std_msgs/msg/String"),
                        (inputs.robot_description_topic, "std_msgs/msg/String")):
            if t in topics and topics[t].msgtype != want and t not in self.views_of:
                raise BagError(f"topic {t} carries {topics[t].msgtype}, not {want}; check the topic parameters")
        wanted = list(inputs.camera_topics.values())
        if inputs.sync.require_joint_states:
            if inputs.joint_states_topic not in topics:
                raise BagError(
                    f"joint state topic {inputs.joint_states_topic} not in the bag (the proprio layout "
                    f"{list(inputs.proprio.sources)} needs joint states); set joint_states_topic in --params"
                )
            wanted.append(inputs.joint_states_topic)
        has_instruction_topic = inputs.instruction_topic in topics
        if has_instruction_topic and instruction_override is None:
            wanted.append(inputs.instruction_topic)
        elif not (instruction_override or inputs.instruction):
            raise BagError(
                f"no instruction: the bag has no {inputs.instruction_topic} topic; pass --instruction TEXT"
            )
        self.needs_urdf = inputs.proprio.needs_kinematics or bool(inputs.ee_frame)
        if self.needs_urdf and not inputs.robot_description_file:
            if inputs.robot_description_topic in topics:
                wanted.append(inputs.robot_description_topic)
            elif inputs.proprio.needs_kinematics:
                raise BagError(
                    f"the proprio layout {list(inputs.proprio.sources)} needs the URDF but the bag has no "
                    f"{inputs.robot_description_topic} topic; pass --urdf FILE"
                )
        self.connections = bag.select(wanted)
        self.counts: Counter[str] = Counter()  # messages fed per topic
        self.frames: Counter[str] = Counter()  # frames per view
        self.errors: Counter[str] = Counter()  # bad_frame / bad_joint_state / bad_robot_description
        self.error_examples: dict[str, str] = {}  # reason -> message of its first input error
        self.kinematics_error: str | None = None
        self.new_task = False
        self._iter = bag.messages(self.connections)
        self._pending: tuple | None = None
        self.exhausted = False

    def set_kinematics(self, urdf: str) -> None:
        inputs = self.inputs
        if not inputs.ee_frame:
            return
        try:
            kin = KinematicModel(urdf, inputs.ee_frame, inputs.arm_joints)
        except Exception as err:  # KinematicsError and URDF parse errors
            self.kinematics_error = " ".join(str(err).split())
            self._input_error("bad_robot_description", self.kinematics_error)
            return
        self.sync.set_proprio(ProprioBuilder(inputs.proprio, kin))

    def _input_error(self, reason: str, message: str) -> None:
        self.errors[reason] += 1
        self.error_examples.setdefault(reason, message)

    def _feed(self, conn, raw: bytes) -> None:
        topic = conn.topic
        self.counts[topic] += 1
        msg = self.bag.deserialize(raw, conn.msgtype)
        if topic in self.views_of:
            views = self.views_of[topic]
            self.frames.update(views)
            stamp = _stamp(msg.header)
            try:
                if conn.msgtype.endswith("CompressedImage"):
                    rgb = decode_compressed(msg.format, msg.data)
                else:
                    rgb = decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data)
            except ImageDecodeError as err:
                for view in views:
                    self._input_error("bad_frame", f"camera view {view!r}: {err}")
                    self.sync.add_image_error(view, stamp, str(err))
                return
            for view in views:
                try:
                    self.sync.add_image(view, stamp, rgb)
                except SyncInputError as err:
                    self._input_error(err.reason, str(err))
        elif topic == self.inputs.joint_states_topic:
            velocities = list(msg.velocity) if len(msg.velocity) else None
            try:
                self.sync.add_joint_state(_stamp(msg.header), list(msg.name), list(msg.position), velocities)
            except SyncInputError as err:
                self._input_error(err.reason, str(err))
        elif topic == self.inputs.instruction_topic:
            if msg.data.strip() != self.sync.instruction:
                self.sync.set_instruction(msg.data)
                self.new_task = True  # the node resets the policy before its next inference
        elif topic == self.inputs.robot_description_topic:
            self.set_kinematics(msg.data)

    def advance(self, until_ns: int) -> None:
        """Feed every message received at or before ``until_ns`` (bag time)."""
        while True:
            if self._pending is None:
                try:
                    self._pending = next(self._iter)
                except StopIteration:
                    self.exhausted = True
                    return
            conn, stamp, raw = self._pending
            if stamp > until_ns:
                return
            self._pending = None
            self._feed(conn, raw)


def _build_policies(args, inputs: EvalInputs, node_cfg, policy_kw: dict, presets: list[str]) -> list[RunRecord]:
    """Baseline (``off``) first, then one policy per preset; real policies share one loaded model."""
    from ..core.presets import split_weighting, weighting_flags

    views = tuple(inputs.sync.views)
    proprio_dim = inputs.proprio.dim or None
    if args.fake_policy:
        from ..core.config import PolicyConfig
        from ..core.fake import FakePolicy

        PolicyConfig(**policy_kw, views=views)  # the values the node would refuse (control_dt, preset, ...)

        def fake() -> FakePolicy:  # as the node builds it with fake_policy:=true (fake_delay is not simulated)
            return FakePolicy(
                views=views, proprio_dim=proprio_dim, action_dim=node_cfg.fake_action_dim,
                chunk_len=node_cfg.fake_chunk_len, dt=policy_kw.get("control_dt", 0.05),
            )  # fmt: skip

        return [RunRecord("baseline", BASELINE, fake())] + [
            RunRecord(p, split_weighting(p)[0], fake()) for p in presets]
    from ..core.config import PolicyConfig
    from ..core.policy import OFTPolicy, build_policy

    kw = dict(policy_kw)
    kw["checkpoint"] = str(args.checkpoint)
    kw["views"] = views
    kw["preset"] = BASELINE
    base_cfg = PolicyConfig(**kw)
    base = build_policy(base_cfg)
    if base.proprio_dim != proprio_dim:
        raise ValueError(
            f"the checkpoint takes a proprio vector of size {base.proprio_dim} but proprio_sources "
            f"{list(inputs.proprio.sources)} make {inputs.proprio.dim} values ({inputs.proprio.layout()}); "
            "set proprio_sources in --params"
        )
    runs = [RunRecord("baseline", BASELINE, base)]
    for p in presets:
        preset, suffix = split_weighting(p)  # a suffix turns its option on; without one, --params decides
        cfg = dataclasses.replace(base_cfg, preset=preset, **(weighting_flags(suffix) if suffix else {}))
        runs.append(RunRecord(p, preset, OFTPolicy(cfg, base.checkpoint, base.model)))
    return runs


def _warm_up(runs: list[RunRecord], inputs: EvalInputs) -> None:
    """The node's warm-up (:func:`~specprune_ros.core.types.warm_up`) for every run: first-call costs stay out
    of the timings."""
    for run in runs:
        try:
            warm_up(run.policy, inputs.sync.views, inputs.proprio.dim)
        except FloatingPointError:  # NaN/inf actions: counted on the bag's observations, where they matter
            pass


def _infer(run: RunRecord, obs: Observation) -> ActionChunk | None:
    obs = dataclasses.replace(obs, executed_actions=run.executed)
    t0 = time.perf_counter()
    try:
        chunk = run.policy.infer(obs)
    except InputError as err:
        reason = getattr(err, "reason", "policy_input")
        run.refused[reason] += 1
        run.refusal_examples.setdefault(reason, " ".join(str(err).split()))
        return None
    except FloatingPointError as err:  # the model produced NaN/inf actions: counted, nothing executed, as the node does
        run.refused["non_finite_actions"] += 1
        run.refusal_examples.setdefault("non_finite_actions", " ".join(str(err).split()))
        return None
    wall = (time.perf_counter() - t0) * 1e3
    actions = np.asarray(chunk.actions, dtype=np.float64)  # (T, A)
    run.chunks.append(actions)
    stats = chunk.stats.to_dict()
    stats["stamp"] = chunk.stamp
    stats.pop("kept_patches", None)  # large; the report does not need them
    run.stats.append(stats)
    run.wall_ms.append(wall)
    return chunk


def evaluate(bag: Bag, inputs: EvalInputs, runs: list[RunRecord], *, dt: float, instruction: str | None,
             max_steps: int | None = None, progress: bool = True, premise=None) -> dict:  # fmt: skip
    """Replay the node's schedule over ``bag`` and run every policy of ``runs`` on each observation.

    ``premise``: a :class:`~specprune_ros.core.premise.PremiseMeter` that also measures each observation with the
    baseline policy (an extra unpruned pass, not timed), or None."""
    sync = Synchronizer(inputs.sync, ProprioBuilder(inputs.proprio, None))
    sync.set_instruction(instruction if instruction is not None else inputs.instruction)
    feeder = BagFeeder(bag, inputs, sync, instruction)
    if inputs.robot_description_file:
        feeder.set_kinematics(Path(inputs.robot_description_file).read_text(encoding="utf-8"))
    reference = inputs.sync.reference
    tick_ns = int(round(dt * NS))
    now_ns = bag.start_ns
    busy_until_ns = now_ns  # bag time when the current chunk's executed rows are done
    refusals: Counter[str] = Counter()
    refusal_examples: dict[str, str] = {}
    obs_log: list[dict] = []
    last_seq = 0
    unused_frames = 0
    resets = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=round((bag.end_ns - bag.start_ns) / NS, 2), unit="s", file=sys.stderr, desc="eval",
                   dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} s bag time [{elapsed}<{remaining}]")  # fmt: skip
    try:
        while True:
            feeder.advance(now_ns)
            if feeder.exhausted and now_ns > bag.end_ns:
                break
            if now_ns >= busy_until_ns:
                try:
                    result = sync.sync(now_ns / NS, None)
                except InputError as err:
                    reason = getattr(err, "reason", "input")
                    refusals[reason] += 1
                    refusal_examples.setdefault(reason, str(err))
                    result = None
                # as the node: never two queries on one reference frame; without a new one, wait for it
                if result is not None and result.frame_seqs[reference] != last_seq:
                    seq = result.frame_seqs[reference]
                    unused_frames += seq - last_seq - 1
                    last_seq = seq
                    obs = result.observation
                    if feeder.new_task:  # a new instruction is a new episode for the pruning controller
                        feeder.new_task = False
                        resets += 1
                        for run in runs:
                            run.policy.reset()
                    chunks: list[ActionChunk | None] = [None] * len(runs)  # same observation for all, in runs' order
                    first = len(obs_log) % len(runs)  # who starts rotates: no run always meets the observation cold
                    for i in [*range(first, len(runs)), *range(first)]:
                        chunks[i] = _infer(runs[i], obs)
                    if premise is not None and chunks[0] is not None:
                        premise.add(runs[0].policy, obs)
                    rows = next((c.actions.shape[0] for c in chunks if c is not None), 1)
                    limit = min(inputs.execute_steps or rows, rows)
                    for run, chunk in zip(runs, chunks):
                        run.executed = None if chunk is None else np.asarray(chunk.actions)[:limit]
                    obs_log.append({
                        "t": (now_ns - bag.start_ns) / NS,  # query time, seconds since the bag start
                        "stamp": obs.stamp,
                        "image_stamps": result.image_stamps,
                        "joint_stamp": result.joints.stamp if result.joints is not None else None,
                        "age": result.age,
                        "skew": result.skew,
                        "frame_seq": seq,
                    })  # fmt: skip
                    busy_until_ns = now_ns + limit * tick_ns
                    if max_steps is not None and len(obs_log) >= max_steps:
                        break
            now_ns += tick_ns
            if bar is not None:
                bar.n = min(round((now_ns - bag.start_ns) / NS, 2), bar.total)
                bar.refresh()
    finally:
        if bar is not None:
            bar.close()
    return {
        "observations": obs_log,
        "refusals": dict(refusals),
        "refusal_examples": refusal_examples,
        "messages_fed": dict(feeder.counts),
        "frames": dict(feeder.frames),
        "input_errors": dict(feeder.errors),
        "input_error_examples": feeder.error_examples,
        "kinematics_error": feeder.kinematics_error,
        "unused_reference_frames": unused_frames + max(feeder.frames.get(reference, 0) - last_seq, 0),
        "reference_view": reference,
        "policy_resets": resets,
        "execute_steps": inputs.execute_steps,
        "dt": dt,
    }


# --------------------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------------------
def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else None


def _latency(run: RunRecord) -> dict[str, dict[str, float | None]]:
    stages: dict[str, list[float]] = {}
    for s in run.stats:
        for stage, ms in s["timings_ms"].items():
            stages.setdefault(stage, []).append(float(ms))
    stages["wall"] = list(run.wall_ms)
    return {k: {"median": _pct(v, 50), "p90": _pct(v, 90), "mean": float(np.mean(v)) if v else None} for k, v in stages.items()}


def _total_ms(run: RunRecord) -> list[float]:
    return [float(s["timings_ms"].get("total", w)) for s, w in zip(run.stats, run.wall_ms)]


def summarize_run(run: RunRecord, baseline: RunRecord | None, obs_times: list[float]) -> dict:
    kept = [int(sum(s["kept_per_view"].values())) for s in run.stats]
    views = sorted({v for s in run.stats for v in s["kept_per_view"]})
    out: dict[str, Any] = {
        "preset": run.preset,
        "steps": len(run.chunks),
        "refused": dict(run.refused),
        "refusal_examples": dict(run.refusal_examples),
        "latency_ms": _latency(run),
        "tokens": {
            "total_median": _pct([s["total_tokens"] for s in run.stats], 50),
            "kept_visual_median": _pct(kept, 50),
            "kept_visual_mean": float(np.mean(kept)) if kept else None,
            "kept_per_view_median": {v: _pct([s["kept_per_view"].get(v, 0) for s in run.stats], 50) for v in views},
        },
        "modes": dict(Counter(s["mode"] for s in run.stats)),
        "requeries": int(sum(bool(s["requery"]) for s in run.stats)),
        "timeline": [
            {"t": t, "stamp": s["stamp"], "mode": s["mode"], "total_ms": tot, "kept_visual": k, "requery": bool(s["requery"])}
            for t, s, tot, k in zip(obs_times, run.stats, _total_ms(run), kept)
        ],
    }
    if baseline is not None:
        base_total, total = _pct(_total_ms(baseline), 50), _pct(_total_ms(run), 50)
        out["speedup_vs_baseline"] = (base_total / total) if base_total and total else None
        out["speedup_basis"] = {"baseline_median_total_ms": base_total, "median_total_ms": total}
        out["action_deviation"] = deviation(baseline.chunks, run.chunks)
        base_kept = _pct([int(sum(s["kept_per_view"].values())) for s in baseline.stats], 50)
        out["tokens"]["kept_fraction_vs_baseline"] = (out["tokens"]["kept_visual_median"] / base_kept) if base_kept else None
    return out


def deviation(base: list[np.ndarray], other: list[np.ndarray]) -> dict | None:
    """|pruned - baseline| over all chunk rows of the observations both answered: per action dimension and
    overall (mean and max), RMSE, and the mean over first rows only (the action executed at once)."""
    n = min(len(base), len(other))
    if n == 0 or len(base) != len(other):
        return None if n == 0 else {"error": f"baseline answered {len(base)} observations, this run {len(other)}"}
    b = np.stack(base[:n])  # (N, T, A)
    o = np.stack(other[:n])  # (N, T, A)
    if b.shape != o.shape:
        return {"error": f"chunk shapes differ: baseline {b.shape[1:]}, this run {o.shape[1:]}"}
    diff = np.abs(o - b)  # (N, T, A)
    return {
        "per_dim_mean_abs": diff.mean(axis=(0, 1)).tolist(),
        "per_dim_max_abs": diff.max(axis=(0, 1)).tolist(),
        "mean_abs": float(diff.mean()),
        "max_abs": float(diff.max()),
        "rmse": float(np.sqrt((diff**2).mean())),
        "first_row_mean_abs": float(diff[:, 0, :].mean()),
    }


def summarize(bag: Bag, inputs: EvalInputs, runs: list[RunRecord], trace: dict, meta: dict) -> dict:
    obs_times = [o["t"] for o in trace["observations"]]
    base = runs[0]
    topics = bag.topics()
    return {
        "bag": {
            "path": str(bag.path),
            "distro": bag.distro,
            "duration_s": (bag.end_ns - bag.start_ns) / NS,
            "messages": {t: i.count for t, i in topics.items()},
            "types": {t: ", ".join((i.msgtype, *i.other_types)) for t, i in topics.items()},
        },
        "inputs": {
            "camera_topics": inputs.camera_topics,
            "joint_states_topic": inputs.joint_states_topic,
            "instruction_topic": inputs.instruction_topic,
            "robot_description_topic": inputs.robot_description_topic,
            "sync": dataclasses.asdict(inputs.sync),
            "proprio_layout": inputs.proprio.layout(),
        },
        **meta,
        "schedule": {k: trace[k] for k in ("dt", "execute_steps", "reference_view")},
        "counts": {
            "messages_fed": trace["messages_fed"],
            "frames": trace["frames"],
            "observations": len(trace["observations"]),
            "refusals": trace["refusals"],
            "unused_reference_frames": trace["unused_reference_frames"],
            "policy_resets": trace["policy_resets"],
            "input_errors": trace["input_errors"],
        },
        "refusal_examples": trace["refusal_examples"],
        "input_error_examples": trace["input_error_examples"],
        "kinematics_error": trace["kinematics_error"],
        "observations": trace["observations"],
        "baseline": summarize_run(base, None, obs_times),
        "presets": {run.name: summarize_run(run, base, obs_times) for run in runs[1:]},
        "actions": {run.name: [c.tolist() for c in run.chunks] for run in runs},
    }


# --------------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------------
def _parse_views(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        for part in item.split(","):
            if not part.strip():
                continue
            view, sep, topic = part.partition("=")
            if not sep or not view.strip() or not topic.strip():
                raise ValueError(f"--camera-topics expects VIEW=/topic (e.g. primary=/camera/image_raw), got {part!r}")
            out[view.strip()] = topic.strip()
    return out


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description=(
            "Evaluate pruning presets offline on a recorded bag: builds observations with the policy node's "
            "alignment/staleness rules, runs the unpruned baseline ('off') and each preset on the same "
            "observations, and writes summary.json, PNG plots and index.html."
        ),
        epilog=(
            "Example: specprune-eval episode/ --checkpoint ckpt/ --presets paper,aggressive --out report/\n"
            "Presets: off (unpruned, a second instance: a determinism check), paper, conservative, aggressive, "
            "static-only, fine-focus."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bag", type=Path, help="bag directory (with metadata.yaml) or a .db3/.mcap file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="OpenVLA-OFT checkpoint directory (released layout)")
    src.add_argument("--fake-policy", action="store_true", help="use the deterministic fake policy (plumbing checks)")
    p.add_argument("--presets", default="paper", help="comma-separated presets to compare with the baseline; a name "
                   "followed by +proportional or +merge turns that option on for that run, e.g. paper,paper+merge "
                   "(default paper)")
    p.add_argument("--out", type=Path, required=True, help="report directory (created; files inside are replaced)")
    p.add_argument("--params", type=Path, default=None, help="the policy node's params YAML (topics, proprio, sync limits)")
    p.add_argument(
        "--camera-topics", nargs="+", default=None, metavar="VIEW=TOPIC",
        help="camera topic per view, overriding --params (e.g. primary=/camera/image_raw wrist=/wrist/image_raw)",
    )  # fmt: skip
    p.add_argument("--instruction", default=None, help="use this instruction instead of the bag's instruction topic")
    p.add_argument("--urdf", type=Path, default=None, help="URDF file instead of the bag's robot_description")
    p.add_argument(
        "-p", "--param", action="append", default=None, metavar="NAME:=VALUE",
        help="set one node/policy parameter over --params, as `ros2 run ... -p` does (YAML value), e.g. "
        "-p device:=cuda -p dtype:=bfloat16 -p execute_steps:=2 -p unnorm_key:=libero_spatial_no_noops",
    )  # fmt: skip
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many observations")
    p.add_argument("--premise", action="store_true",
                   help="also check the method's premise on these observations: of the top-20 visual tokens by "
                   "task-word attention in decoder layers 0-1, how many are among the last layer's (the paper: "
                   "85-95%%; chance 8%%); needs --checkpoint")
    p.add_argument("--no-plots", action="store_true", help="write summary.json and index.html without PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print summary.json (without per-step data) on stdout")
    return p


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _parse_params(items: list[str] | None) -> dict[str, Any]:
    """``["device:=cuda", "execute_steps=2"]`` -> ``{"device": "cuda", "execute_steps": 2}`` (YAML values)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition(":=")
        if not sep:
            name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"-p expects NAME:=VALUE (e.g. -p device:=cuda), got {item!r}")
        try:
            out[name.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            raise ValueError(f"-p {name.strip()}: value {value!r} is not valid YAML") from None
    return out


def _check_file(option: str, path: Path) -> None:
    if not path.exists():
        raise ValueError(f"{option} {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"{option} {str(path)!r} is not a file")


def _read_params_file(path: Path) -> dict[str, Any]:
    """``--params``: the node's parameters from a params YAML; ValueError naming the file if it cannot be read."""
    import yaml

    from ..ros.parameters import read_params_file

    _check_file("--params", path)
    try:
        return read_params_file(path)
    except UnicodeDecodeError:
        raise ValueError(f"--params {str(path)!r} is not a text file (expected a params YAML)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or err
        raise ValueError(f"--params {str(path)!r} is not valid YAML: {problem}{where}") from None


def _check_urdf(option: str, path: str, node_cfg) -> None:
    """What the node's configure step does with ``robot_description_file``: read the URDF and build the
    kinematics for ``ee_frame``; ValueError naming the file if that fails."""
    _check_file(option, Path(path))
    try:
        urdf = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{option} {path!r} is not a text file (expected a URDF)") from None
    if node_cfg.ee_frame:
        try:
            KinematicModel(urdf, node_cfg.ee_frame, tuple(node_cfg.arm_joints))
        except Exception as err:  # KinematicsError and URDF parse errors
            raise ValueError(f"{option} {path!r}: {' '.join(str(err).split())}") from None


def _node_config(args) -> tuple[Any, dict]:
    from ..ros.parameters import NodeConfig, configs_from_values

    values: dict[str, Any] = {}
    if args.params is not None:
        values.update(_read_params_file(args.params))
    values.update(_parse_params(args.param))
    node_cfg, policy_kw = configs_from_values(values)  # the node's own checks: unknown names, types, ranges
    if args.urdf is not None:
        node_cfg = dataclasses.replace(node_cfg, robot_description_file=str(args.urdf))
    if node_cfg.robot_description_file:
        option = "--urdf" if args.urdf is not None else "robot_description_file"
        _check_urdf(option, node_cfg.robot_description_file, node_cfg)
    assert isinstance(node_cfg, NodeConfig)
    return node_cfg, policy_kw


def _brief(summary: dict) -> dict:
    """summary.json without the per-step lists (for --json on stdout)."""
    out = {k: v for k, v in summary.items() if k not in ("observations", "actions")}
    out["baseline"] = {k: v for k, v in summary["baseline"].items() if k != "timeline"}
    out["presets"] = {n: {k: v for k, v in s.items() if k != "timeline"} for n, s in summary["presets"].items()}
    return out


class EvalError(Exception):
    """A user error (bad argument, bag, checkpoint); ``str(err)`` is one line."""


def run_evaluation(args: argparse.Namespace) -> tuple[dict, dict[str, Path]]:
    """Evaluate as the parsed command line says; returns (summary, report files). Raises :class:`EvalError`."""
    from ..core.presets import preset_list

    try:
        presets = preset_list(args.presets)
        if args.max_steps is not None and args.max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
        if args.premise and args.fake_policy:
            raise ValueError("--premise needs --checkpoint: the fake policy has no attention to measure")
        if args.instruction is not None and not args.instruction.strip():
            raise ValueError("--instruction must not be empty (leave it out to use the bag's instruction topic)")
        node_cfg, policy_kw = _node_config(args)
        inputs = inputs_from_node_config(node_cfg, _parse_views(args.camera_topics))
    except (ValueError, OSError) as err:
        raise EvalError(" ".join(str(err).split())) from None
    if args.out.exists() and not args.out.is_dir():
        raise EvalError(f"--out {str(args.out)!r} exists and is not a directory")
    try:
        with Bag(args.bag) as bag:
            try:
                runs = _build_policies(args, inputs, node_cfg, policy_kw, presets)
                _warm_up(runs, inputs)
            except (ValueError, OSError, InputError) as err:
                raise EvalError(f"cannot build the policy: {' '.join(str(err).split())}") from None
            dt = float(getattr(runs[0].policy, "dt", None) or policy_kw.get("control_dt") or 0.05)
            started = time.perf_counter()
            meter = None
            if args.premise:
                from ..core.premise import PremiseMeter

                meter = PremiseMeter()
            trace = evaluate(bag, inputs, runs, dt=dt, instruction=args.instruction, max_steps=args.max_steps,
                             progress=not args.no_progress, premise=meter)  # fmt: skip
            meta = {
                "policy": "fake" if args.fake_policy else str(args.checkpoint),
                "presets_requested": presets,
                "baseline_preset": BASELINE,
                "eval_seconds": round(time.perf_counter() - started, 3),
            }
            summary = summarize(bag, inputs, runs, trace, meta)
            if meter is not None:
                summary["premise"] = meter.result() if meter.frames else None
    except BagError as err:
        raise EvalError(str(err)) from None
    from .report import write_report

    try:
        files = write_report(summary, args.out, plots=not args.no_plots)
    except OSError as err:
        raise EvalError(f"cannot write the report to {str(args.out)!r}: {err}") from None
    if not summary["counts"]["observations"]:
        raise EvalError(_no_observation(summary, files["summary"]))
    if not summary["baseline"]["steps"]:
        raise EvalError(
            f"the policy answered none of the {summary['counts']['observations']} observations from "
            f"{summary['bag']['path']!r}: {_refused_all(summary['baseline'])}; counts in {files['summary']}"
        )
    return summary, files


def _refused_all(run: dict) -> str:
    """Why a run answered no observation: its most frequent refusal with its message."""
    reason, n = Counter(run["refused"]).most_common(1)[0]
    return f"refused most often as {reason!r} ({n} observations: {run['refusal_examples'][reason]})"


def _rejected_inputs(summary: dict) -> str:
    """Input messages the synchronizer could not use, per reason with its first message ('' when none)."""
    examples = summary["input_error_examples"]
    return ", ".join(f"{n} {reason} ({examples[reason]})" for reason, n in summary["counts"]["input_errors"].items())


def _no_observation(summary: dict, report: Path) -> str:
    """Why no observation could be built: the most frequent refusal with its message, and the input messages
    that could not be used."""
    refusals = Counter(summary["counts"]["refusals"])  # every tick asked for an observation and was refused
    reason, n = refusals.most_common(1)[0]
    why = (f"all {refusals.total()} control ticks were refused, most often as {reason!r} ({n} ticks: "
           f"{summary['refusal_examples'][reason]})")  # fmt: skip
    rejected = _rejected_inputs(summary)
    if rejected:
        why += f"; inputs rejected: {rejected}"
    return f"no observation could be built from {summary['bag']['path']!r}: {why}; counts in {report}"


def evaluate_bag(
    bag: str | Path,
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    fake_policy: bool = False,
    presets: tuple[str, ...] = ("paper",),
    params: str | Path | None = None,
    camera_topics: dict[str, str] | None = None,
    instruction: str | None = None,
    max_steps: int | None = None,
    plots: bool = True,
    progress: bool = False,
    premise: bool = False,
) -> dict:
    """Python entry point of ``specprune-eval`` (e.g. for the demo): returns the summary dict, writes the report.

    Raises :class:`EvalError` with a one-line message for bad input, and when no observation could be built.
    """
    if (checkpoint is None) == (not fake_policy):
        raise EvalError("give exactly one of checkpoint=... or fake_policy=True")
    argv = [str(bag), f"--out={out}", f"--presets={','.join(presets)}"]
    argv += ["--fake-policy"] if fake_policy else [f"--checkpoint={checkpoint}"]
    if params is not None:
        argv.append(f"--params={params}")
    if camera_topics:
        argv += ["--camera-topics", *(f"{v}={t}" for v, t in camera_topics.items())]
    if instruction is not None:
        argv.append(f"--instruction={instruction}")
    if max_steps is not None:
        argv.append(f"--max-steps={max_steps}")
    if not plots:
        argv.append("--no-plots")
    if premise:
        argv.append("--premise")
    if not progress:
        argv.append("--no-progress")
    summary, _ = run_evaluation(build_parser().parse_args(argv))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary, files = run_evaluation(args)
    except EvalError as err:
        return _fail(str(err))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    for warning in _warnings(summary):
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(_brief(summary), indent=2, default=float))
    else:
        print(text_summary(summary), file=sys.stderr)
        print(f"{PROG}: report: {files['index']}", file=sys.stderr)
    return 0


def _warnings(summary: dict) -> list[str]:
    """Inputs the evaluation could not use and runs that answered no observation, one line each."""
    out = []
    rejected = _rejected_inputs(summary)
    if rejected:
        out.append(f"inputs rejected: {rejected}")
    for name, s in summary["presets"].items():
        if not s["steps"]:
            out.append(f"{name} answered no observation: {_refused_all(s)}")
    return out


def text_summary(summary: dict) -> str:
    """A few lines for the terminal."""
    c = summary["counts"]
    lines = [
        f"{c['observations']} observations from {summary['bag']['path']} "
        f"(refused ticks: {c['refusals'] or 'none'}, unused {summary['schedule']['reference_view']} frames: "
        f"{c['unused_reference_frames']})"
    ]
    b = summary["baseline"]["latency_ms"].get("total", {})
    if b.get("median") is not None:
        lines.append(f"  baseline (off): median {b['median']:.1f} ms, p90 {b['p90']:.1f} ms")
    for name, s in summary["presets"].items():
        lat = s["latency_ms"].get("total", {})
        dev = s.get("action_deviation") or {}
        if lat.get("median") is None:
            lines.append(f"  {name}: no steps")
            continue
        speed = s.get("speedup_vs_baseline")
        lines.append(
            f"  {name}: median {lat['median']:.1f} ms, speed-up {speed:.2f}x, kept visual tokens "
            f"{s['tokens']['kept_visual_median']:.0f}, mean |action - baseline| {dev.get('mean_abs', float('nan')):.4g}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
