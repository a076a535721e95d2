"""``specprune-record OUT``: record topics of a running ROS 2 graph into a rosbag2 bag (sqlite3 or mcap).

Subscriptions are raw (the CDR bytes go into the bag untouched) and created as soon as each topic appears
in the graph, with a QoS that matches its publishers (best-effort if any publisher is best-effort,
transient-local if all are, so a latched ``/robot_description`` is captured). The publishers' offered QoS
profiles are stored in metadata.yaml so ``specprune-replay`` can offer them again.

By default it records what the policy node reads and writes, so a session on the robot can be replayed
and compared later. Stops on Ctrl-C / SIGTERM or after ``--duration`` and always closes the bag properly
(metadata.yaml written). Exit status: 0 recorded, 1 no message on any topic (the empty bag is removed),
2 bad arguments or output path.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from ..cli.common import ArgumentParser
from ..ros.parameters import NODE_NAME as POLICY_NODE, NodeConfig
from .bagio import BagError, like_ros2_bag_record
from .rosutil import fail, message_class, normalize_type, offered_to_bag_qos, ros_context, split_topics, subscription_qos

PROG = "specprune-record"

def default_topics(node: str = POLICY_NODE) -> tuple[str, ...]:
    """The policy node's inputs and outputs, relative (they resolve under ``--namespace``; /diagnostics is
    global): what the node named ``node`` reads and writes with its default topic parameters."""
    c = NodeConfig()
    inputs = (*c.camera_topics, c.joint_states_topic, c.instruction_topic, c.robot_description_topic)
    return (*inputs, f"{node}/action_chunk", f"{node}/inference_stats", "/diagnostics")


DEFAULT_TOPICS = default_topics()


@dataclass(frozen=True)
class RecordOptions:
    """Where and what to record (see ``specprune-record --help``)."""

    out: Path
    topics: tuple[str, ...] = DEFAULT_TOPICS
    namespace: str = "/"  # of the recorder: relative topics resolve under it
    storage: str = "sqlite3"
    duration: float | None = None
    depth: int = 100
    discovery_period: float = 0.2
    progress: bool = True

    def __post_init__(self) -> None:
        if self.storage not in ("sqlite3", "mcap"):
            raise ValueError(f"--storage must be sqlite3 or mcap, got {self.storage!r}")
        if self.duration is not None and not (math.isfinite(self.duration) and self.duration > 0):
            raise ValueError(f"--duration must be > 0 seconds, got {self.duration}")
        if not self.topics:
            raise ValueError("no topics to record: pass --topics /a /b ...")
        if not 1 <= self.depth <= 1_000_000:
            raise ValueError(f"--qos-depth must lie in [1, 1000000], got {self.depth}")
        for topic in self.topics:
            _check_topic_name(topic)
        _check_namespace(self.namespace)
        if not self.discovery_period > 0:
            raise ValueError(f"discovery period must be > 0, got {self.discovery_period}")


def _check_name(option: str, value: str, kind: str, *validators) -> None:
    """ValueError (one line, naming ``option``) unless every rclpy name validator passes on ``value``."""
    from rclpy.exceptions import NameValidationException

    try:
        for validate in validators:
            validate(value)
    except NameValidationException as err:
        why = str(err).splitlines()[0].removeprefix(f"Invalid {kind}: ").rstrip(":")
        raise ValueError(f"{option}: {value!r} is not a valid {kind}: {why}") from None


def _check_topic_name(topic: str) -> None:
    """ValueError (one line) unless ``topic`` is a valid ROS 2 topic name (relative names as if at the root)."""
    from rclpy.validate_full_topic_name import validate_full_topic_name
    from rclpy.validate_topic_name import validate_topic_name

    validators = [validate_topic_name]
    if not topic.startswith("~"):
        validators.append(lambda t: validate_full_topic_name(t if t.startswith("/") else "/" + t))
    _check_name("--topics", topic, "topic name", *validators)


def _check_namespace(namespace: str) -> None:
    from rclpy.validate_namespace import validate_namespace

    _check_name("--namespace", namespace, "namespace", validate_namespace)


def _check_node_name(name: str) -> None:
    from rclpy.validate_node_name import validate_node_name

    _check_name("--node", name, "node name", validate_node_name)


def message_definition_text(msgtype: str) -> str:
    """The .msg text of ``msgtype`` from its installed share directory (or this source tree's msg/)."""
    pkg, _, name = normalize_type(msgtype).split("/")
    candidates: list[Path] = []
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            candidates.append(Path(get_package_share_directory(pkg)) / "msg" / f"{name}.msg")
        except (PackageNotFoundError, ValueError, LookupError):
            pass
    except ImportError:
        pass
    if pkg == "specprune_ros":
        candidates.append(Path(__file__).resolve().parents[2] / "msg" / f"{name}.msg")
    for path in candidates:
        if path.is_file():
            return path.read_text()
    raise BagError(
        f"no message definition found for {msgtype} (looked in {', '.join(str(c) for c in candidates) or 'nothing'}); "
        "source the workspace that installs it"
    )


class BagSink:
    """A rosbags writer that adds a connection the first time a topic is written."""

    def __init__(self, out: Path, storage: str) -> None:
        if out.exists():
            raise BagError(f"output {str(out)!r} exists already; choose a new directory (bags are never overwritten)")
        if not out.parent.is_dir():
            raise BagError(f"cannot create {str(out)!r}: directory {str(out.parent)!r} does not exist")
        self.out = out
        self.typestore = get_typestore(Stores.ROS2_KILTED)
        plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
        self.writer = Writer(out, version=9, storage_plugin=plugin)
        self.writer.open()
        self.connections: dict[str, object] = {}
        self.counts: Counter[str] = Counter()
        self.closed = False

    def _ensure_type(self, msgtype: str) -> None:
        if msgtype in self.typestore.fielddefs:
            return
        self.typestore.register(get_types_from_msg(message_definition_text(msgtype), msgtype))

    def add_topic(self, topic: str, msgtype: str, offered: list) -> None:
        msgtype = normalize_type(msgtype)
        self._ensure_type(msgtype)
        self.connections[topic] = self.writer.add_connection(
            topic, msgtype, typestore=self.typestore, offered_qos_profiles=offered_to_bag_qos(offered)
        )

    def write(self, topic: str, stamp_ns: int, raw: bytes) -> None:
        self.writer.write(self.connections[topic], stamp_ns, raw)
        self.counts[topic] += 1

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()
            like_ros2_bag_record(self.out, "kilted")


class Recorder:
    """Subscribes (raw) to ``topics`` as they appear in the graph of ``node`` and hands messages to ``sink``.

    ``sink`` needs ``add_topic(topic, msgtype, offered_qos_profiles)`` and ``write(topic, stamp_ns, raw)``.
    """

    def __init__(self, node, topics: tuple[str, ...], sink, *, depth: int = 100, progress=None) -> None:
        self.node = node
        self.wanted = [node.resolve_topic_name(t) if hasattr(node, "resolve_topic_name") else t for t in topics]
        self.sink = sink
        self.depth = depth
        self.progress = progress
        self.subscriptions: dict[str, object] = {}
        self.warned: set[str] = set()

    def discover(self) -> None:
        """Subscribe to every wanted topic that now has a publisher."""
        graph = dict(self.node.get_topic_names_and_types())
        for topic in self.wanted:
            if topic in self.subscriptions or topic not in graph:
                continue
            types = graph[topic]
            msgtype = types[0]
            if len(types) > 1 and topic not in self.warned:
                print(f"{PROG}: warning: {topic} has several types {types}; recording {msgtype}", file=sys.stderr)
            try:
                cls = message_class(msgtype)
            except (ImportError, AttributeError, ValueError):
                if topic not in self.warned:
                    print(f"{PROG}: warning: not recording {topic}: message type {msgtype} is not installed", file=sys.stderr)
                    self.warned.add(topic)
                continue
            offered = [info.qos_profile for info in self.node.get_publishers_info_by_topic(topic)]
            if not offered:
                continue  # the topic is known only through subscribers so far
            try:
                self.sink.add_topic(topic, msgtype, offered)
            except BagError as err:
                if topic not in self.warned:
                    print(f"{PROG}: warning: not recording {topic}: {err}", file=sys.stderr)
                    self.warned.add(topic)
                continue
            qos = subscription_qos(offered, self.depth)
            self.subscriptions[topic] = self.node.create_subscription(
                cls, topic, self._callback(topic), qos, raw=True
            )

    def _callback(self, topic: str):
        def on_message(raw: bytes) -> None:
            self.sink.write(topic, time.time_ns(), raw)
            if self.progress is not None:
                self.progress.update(1)

        return on_message


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description=textwrap.fill(
            "Record topics into a rosbag2 bag (sqlite3 or mcap) without `ros2 bag`. Default topics: the policy "
            "node's inputs (cameras, joint states, instruction, robot description) and outputs (action chunks, "
            "inference stats, diagnostics), as the node names them with its default topic parameters; relative "
            "names resolve under --namespace. Stop with Ctrl-C or --duration; the bag is always closed properly."
        ),
        epilog="Examples: specprune-record session1 --storage mcap --duration 60\n"
               "          specprune-record arm1_session --namespace=/arm1   # a node launched with namespace:=arm1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", type=Path, help="bag directory to create (must not exist)")
    p.add_argument(
        "--topics", nargs="+", default=None, metavar="TOPIC",
        help="topics to record (space or comma separated); relative ones resolve under --namespace; "
             "default: " + " ".join(DEFAULT_TOPICS),
    )  # fmt: skip
    p.add_argument("--namespace", default="/", metavar="NS",
                   help="namespace the relative topics resolve under, the policy node's (default /): "
                        "--namespace=/arm1 records /arm1/camera/image_raw, /arm1/specprune_policy/action_chunk, ...")
    p.add_argument("--node", default=None, metavar="NAME",
                   help=f"the policy node's name, for its outputs among the default topics (default {POLICY_NODE})")
    p.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3", help="storage format (default sqlite3)")
    p.add_argument("--duration", type=float, default=None, metavar="SEC", help="stop after SEC seconds")
    p.add_argument("--qos-depth", type=int, default=100, help="keep-last depth of the subscriptions (default 100)")
    p.add_argument("--no-progress", action="store_true", help="no message counter on stderr")
    p.add_argument("--json", action="store_true", help="print a JSON summary (messages per topic) on stdout")
    return p


def run(opts: RecordOptions, *, as_json: bool = False) -> int:
    try:
        sink = BagSink(opts.out, opts.storage)
    except (BagError, WriterError, OSError) as err:
        return fail(PROG, " ".join(str(err).split()))
    progress = None
    recorder = None
    interrupted = False
    started = time.monotonic()
    try:
        with ros_context("specprune_record", namespace=opts.namespace) as node:
            if opts.progress:
                from tqdm import tqdm

                progress = tqdm(unit="msg", file=sys.stderr, desc="record", dynamic_ncols=True)
            recorder = Recorder(node, opts.topics, sink, depth=opts.depth, progress=progress)
            import rclpy

            executor = rclpy.executors.SingleThreadedExecutor(context=node.context)
            executor.add_node(node)
            next_discovery = 0.0
            try:
                while opts.duration is None or time.monotonic() - started < opts.duration:
                    now = time.monotonic()
                    if now >= next_discovery:
                        recorder.discover()
                        next_discovery = now + opts.discovery_period
                    executor.spin_once(timeout_sec=0.05)
            except KeyboardInterrupt:
                interrupted = True
            finally:
                executor.remove_node(node)
                executor.shutdown()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if progress is not None:
            progress.close()
        sink.close()
    wanted = recorder.wanted if recorder is not None else list(opts.topics)  # resolved: joint_states -> /joint_states
    missing = [t for t in wanted if t not in sink.counts]
    summary = {
        "bag": str(opts.out),
        "storage": opts.storage,
        "seconds": round(time.monotonic() - started, 3),
        "interrupted": interrupted,
        "messages": sum(sink.counts.values()),
        "topics": dict(sink.counts),
        "not_seen": missing,
    }
    if not sink.counts:  # an empty bag is of no use (the bag tools refuse it): remove it, so OUT can be used again
        shutil.rmtree(opts.out, ignore_errors=True)
        summary["bag"] = None
    if as_json:
        print(json.dumps(summary, indent=2))
    if not sink.counts:
        return fail(
            PROG,
            f"no message on any of the topics {', '.join(wanted)} in {summary['seconds']:g} s; removed the empty bag "
            f"{str(opts.out)!r} (is anything publishing? check `ros2 topic list` and ROS_DOMAIN_ID)",
            code=1,
        )
    if not as_json:
        print(f"{PROG}: wrote {summary['messages']} messages on {len(sink.counts)} topics to {opts.out}", file=sys.stderr)
    if missing:
        print(f"{PROG}: no messages on: {', '.join(missing)}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        topics = split_topics(args.topics, "--topics")
        if args.node is not None:
            if topics:
                raise ValueError("--node names the policy node of the default topics; with --topics, name its "
                                 f"topics there (e.g. {args.node}/action_chunk)")
            _check_node_name(args.node)
        opts = RecordOptions(
            out=args.out,
            topics=topics or default_topics(args.node or POLICY_NODE),
            namespace=args.namespace,
            storage=args.storage,
            duration=args.duration,
            depth=args.qos_depth,
            progress=not args.no_progress,
        )
    except ValueError as err:
        return fail(PROG, str(err))
    try:
        return run(opts, as_json=args.json)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
