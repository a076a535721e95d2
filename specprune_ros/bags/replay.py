"""``specprune-replay BAG``: play a rosbag2 bag into a ROS 2 graph with its recorded timing.

Reads sqlite3 and mcap bags (Humble, Jazzy, Kilted layouts) with ``rosbags`` and publishes each message's
raw CDR bytes unchanged on a publisher of the recorded type, so what the subscribers receive is exactly
what was recorded. Publishers use the QoS the recorded publishers offered (from metadata.yaml);
``/robot_description`` and the instruction topic default to transient-local (latched) when the bag does
not say.

Exit status: 0 done, 2 bad bag or arguments (one-line error), 130 interrupted (Ctrl-C / SIGTERM).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..cli.common import ArgumentParser
from .bagio import NS, Bag, BagError
from .rosutil import fail, resolve_classes, rclpy_qos, ros_context, split_topics, unknown_types_error

PROG = "specprune-replay"
#: Topics published transient-local when their recorded QoS is unknown.
DEFAULT_LATCHED = ("/robot_description", "/instruction")
#: Slowest playback speed factor (a second of bag time in 100 s).
MIN_RATE = 0.01


@dataclass(frozen=True)
class ReplayOptions:
    """What to play and how (see ``specprune-replay --help`` for each field)."""

    bag: Path
    rate: float = 1.0
    start: float = 0.0
    duration: float | None = None
    topics: tuple[str, ...] = ()
    remap: dict[str, str] = field(default_factory=dict)
    loop: bool = False
    clock_hz: float | None = None
    latched: tuple[str, ...] = DEFAULT_LATCHED
    depth: int = 100
    wait_for_subscribers: float = 0.0
    delay: float = 0.0
    skip_unknown: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate >= MIN_RATE):
            raise ValueError(f"--rate must be a number >= {MIN_RATE}, got {self.rate}")
        if not (math.isfinite(self.start) and self.start >= 0):
            raise ValueError(f"--start must be >= 0 seconds, got {self.start}")
        if self.duration is not None and not (math.isfinite(self.duration) and self.duration > 0):
            raise ValueError(f"--duration must be > 0 seconds, got {self.duration}")
        if self.clock_hz is not None and not (math.isfinite(self.clock_hz) and self.clock_hz > 0):
            raise ValueError(f"--clock rate must be > 0 Hz, got {self.clock_hz}")
        if not 1 <= self.depth <= 1_000_000:
            raise ValueError(f"--qos-depth must lie in [1, 1000000], got {self.depth}")
        for name, value in (("--wait-for-subscribers", self.wait_for_subscribers), ("--delay", self.delay)):
            if not (math.isfinite(value) and 0 <= value <= 86400):
                raise ValueError(f"{name} must lie in [0, 86400] seconds, got {value}")
        for old, new in self.remap.items():
            if not old or not new:
                raise ValueError(f"--remap needs OLD:=NEW with both names, got {old!r}:={new!r}")


def parse_remap(items: list[str] | None) -> dict[str, str]:
    """``["/a:=/b", ...]`` -> ``{"/a": "/b"}``; a malformed item raises ValueError naming it."""
    out: dict[str, str] = {}
    for item in items or []:
        old, sep, new = item.partition(":=")
        if not sep or not old.strip() or not new.strip():
            raise ValueError(f"--remap expects OLD:=NEW (e.g. /camera/image:=/cam0/image), got {item!r}")
        out[old.strip()] = new.strip()
    return out


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description=(
            "Publish a rosbag2 bag (sqlite3 or mcap) on its topics with the recorded timing, as raw CDR bytes "
            "(no re-serialization). Needs no `ros2 bag`."
        ),
        epilog=(
            "Examples:\n"
            "  specprune-replay episode/ --rate 0.5 --clock\n"
            "  specprune-replay episode/ --topics /camera/image_raw,/joint_states "
            "--remap /camera/image_raw:=/cam0/image_raw\n"
            "Exit status: 0 done, 2 bad bag/arguments, 130 interrupted."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bag", type=Path, help="bag directory (with metadata.yaml) or a .db3/.mcap file")
    p.add_argument(
        "--rate", type=float, default=1.0, help=f"playback speed factor, >= {MIN_RATE} (2 = twice as fast; default 1)"
    )
    p.add_argument("--start", type=float, default=0.0, metavar="SEC", help="skip the first SEC seconds of the bag")
    p.add_argument("--duration", type=float, default=None, metavar="SEC", help="play only SEC seconds of bag time")
    p.add_argument(
        "--topics", nargs="+", default=None, metavar="TOPIC",
        help="play only these topics (space or comma separated; default all)",
    )  # fmt: skip
    p.add_argument(
        "--remap", action="append", default=None, metavar="OLD:=NEW",
        help="publish topic OLD as NEW (repeatable)",
    )  # fmt: skip
    p.add_argument("--loop", action="store_true", help="start over at the end until interrupted")
    p.add_argument(
        "--clock", nargs="?", type=float, const=40.0, default=None, metavar="HZ",
        help="publish the bag time on /clock (rosgraph_msgs/Clock) at HZ (default 40) and before every "
        "message, for nodes with use_sim_time:=true",
    )  # fmt: skip
    p.add_argument(
        "--latched", nargs="+", default=list(DEFAULT_LATCHED), metavar="TOPIC",
        help="topics published transient-local when the bag records no QoS for them "
        f"(default: {' '.join(DEFAULT_LATCHED)})",
    )  # fmt: skip
    p.add_argument("--qos-depth", type=int, default=100, help="keep-last depth of the publishers (default 100)")
    p.add_argument(
        "--wait-for-subscribers", type=float, default=0.0, metavar="SEC",
        help="before playing, wait up to SEC seconds until every topic has a subscriber (then play anyway)",
    )  # fmt: skip
    p.add_argument("--delay", type=float, default=0.0, metavar="SEC", help="sleep SEC seconds before playing")
    p.add_argument("--skip-unknown", action="store_true", help="leave out topics whose message type is not installed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print a JSON summary (messages per topic) on stdout")
    return p


@dataclass
class _Topic:
    name: str  # published name (after remapping)
    msgtype: str
    publisher: object


class Player:
    """Plays one bag into the graph of ``node``; :meth:`play` does one pass over the selected window."""

    def __init__(self, node, bag: Bag, opts: ReplayOptions) -> None:
        self.node = node
        self.bag = bag
        self.opts = opts
        infos = bag.topics()
        self.connections = bag.select(opts.topics)
        selected = sorted({c.topic for c in self.connections}, key=list(infos).index)
        bad_remap = [old for old in opts.remap if old not in selected]
        if bad_remap:
            raise BagError(f"--remap of topic(s) not being played: {', '.join(bad_remap)}; played: {', '.join(selected)}")
        types_to_topics: dict[str, list[str]] = {}
        for topic in selected:
            types_to_topics.setdefault(infos[topic].msgtype, []).append(topic)
        classes, unknown = resolve_classes(types_to_topics)
        if unknown:
            err = unknown_types_error(
                unknown, types_to_topics,
                "Install/source the package that defines them, or leave their topics out "
                "(--topics ... or --skip-unknown).",
            )  # fmt: skip
            if not opts.skip_unknown:
                raise err
            print(f"{PROG}: warning: skipping {err}", file=sys.stderr)
            dropped = {t for typ in unknown for t in types_to_topics[typ]}
            selected = [t for t in selected if t not in dropped]
            self.connections = [c for c in self.connections if c.topic not in dropped]
            if not selected:
                raise BagError("no topic left to play after skipping unknown types")
        self.topics: dict[str, _Topic] = {}
        for topic in selected:
            info = infos[topic]
            name = opts.remap.get(topic, topic)
            qos = rclpy_qos(info.qos, depth=opts.depth, latched_default=topic in opts.latched or name in opts.latched)
            try:
                pub = node.create_publisher(classes[info.msgtype], name, qos)
            except Exception as err:  # invalid remapped name etc.
                raise BagError(f"cannot publish {topic!r} as {name!r}: {' '.join(str(err).split())}") from None
            self.topics[topic] = _Topic(name, info.msgtype, pub)
        self.clock_pub = None
        if opts.clock_hz is not None:
            from rclpy.qos import QoSProfile, ReliabilityPolicy
            from rosgraph_msgs.msg import Clock

            self._clock_cls = Clock
            self.clock_pub = node.create_publisher(Clock, "/clock", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        length = (bag.end_ns - bag.start_ns) / NS
        if opts.start > length:  # compared in seconds: a huge --start must not overflow the ns arithmetic
            raise BagError(f"--start {opts.start} s is past the end of the bag ({length:.3f} s long)")
        self.start_ns = bag.start_ns + int(round(opts.start * NS))
        window = None if opts.duration is None else min(opts.duration, length - opts.start + 1.0)  # past the end = to it
        self.stop_ns = None if window is None else self.start_ns + int(round(window * NS))
        if opts.loop:
            in_window = self.bag.messages(self.connections, self.start_ns, self.stop_ns)
            empty = next(in_window, None) is None
            in_window.close()
            if empty:
                span = f"[{opts.start:g} s, end]" if window is None else f"[{opts.start:g}, {opts.start + window:g}) s"
                raise BagError(
                    f"--loop: the window {span} of the bag holds no messages on the topics played; nothing to loop"
                )
        self.counts: Counter[str] = Counter()
        self.total = sum(infos[t].count for t in selected) if opts.start == 0 and opts.duration is None else None

    # -- helpers ---------------------------------------------------------------------------------
    def _publish_clock(self, bag_ns: int) -> None:
        from builtin_interfaces.msg import Time

        msg = self._clock_cls()
        msg.clock = Time(sec=bag_ns // NS, nanosec=bag_ns % NS)
        self.clock_pub.publish(msg)

    def wait_for_subscribers(self, timeout: float) -> list[str]:
        """Wait until every publisher (and /clock) has a subscriber or ``timeout`` passes; returns topics still
        without one."""
        deadline = time.monotonic() + timeout
        while True:
            pubs = [(t.name, t.publisher) for t in self.topics.values()]
            if self.clock_pub is not None:
                pubs.append(("/clock", self.clock_pub))
            lonely = [name for name, pub in pubs if pub.get_subscription_count() == 0]
            if not lonely or time.monotonic() >= deadline:
                return lonely
            time.sleep(0.02)

    def _latched_before_start(self) -> None:
        """With --start, publish the last message before the start of each transient-local topic first, so
        subscribers still get the robot description and the instruction."""
        if self.start_ns <= self.bag.start_ns:
            return
        latched = [
            c for c in self.connections
            if c.topic in self.topics and self.topics[c.topic].publisher.qos_profile.durability.name == "TRANSIENT_LOCAL"
        ]  # fmt: skip
        if not latched:
            return
        last: dict[str, bytes] = {}
        for conn, _, raw in self.bag.messages(latched, stop_ns=self.start_ns):
            last[conn.topic] = raw
        for topic, raw in last.items():
            self.topics[topic].publisher.publish(raw)
            self.counts[topic] += 1

    # -- playback --------------------------------------------------------------------------------
    def _sleep_until(self, bag_ns: int, wall0: float) -> None:
        """Sleep until bag time ``bag_ns`` is due ((bag_ns - start) / rate after ``wall0``), publishing /clock
        meanwhile when asked."""
        rate = self.opts.rate
        clock_period = 1.0 / self.opts.clock_hz if self.opts.clock_hz else None
        due = wall0 + (bag_ns - self.start_ns) / NS / rate
        while True:
            now = time.monotonic()
            if now >= due:
                return
            if clock_period is not None:
                self._publish_clock(self.start_ns + int((now - wall0) * rate * NS))
                time.sleep(min(clock_period, due - now))
            else:
                time.sleep(min(0.1, due - now))

    def play(self, progress) -> None:
        """One pass over the window, sleeping so message k goes out at (t_k - t_start) / rate after start.

        With --loop a pass lasts until the end of the window, so the loop repeats with the window's period
        even when the messages played (e.g. one latched topic) span less time."""
        self._latched_before_start()
        wall0 = time.monotonic()
        for conn, stamp, raw in self.bag.messages(self.connections, self.start_ns, self.stop_ns):
            topic = self.topics.get(conn.topic)
            if topic is None:
                continue
            self._sleep_until(stamp, wall0)
            if self.clock_pub is not None:
                self._publish_clock(stamp)
            topic.publisher.publish(raw)
            self.counts[conn.topic] += 1
            if progress is not None:
                progress.update(1)
        if self.opts.loop:
            self._sleep_until(self.bag.end_ns if self.stop_ns is None else min(self.stop_ns, self.bag.end_ns), wall0)

    def flush(self, timeout: float = 2.0) -> None:
        """Give reliable subscribers up to ``timeout`` seconds to acknowledge the last messages."""
        from rclpy.duration import Duration

        deadline = time.monotonic() + timeout
        for t in self.topics.values():
            left = max(deadline - time.monotonic(), 0.0)
            try:
                t.publisher.wait_for_all_acked(Duration(seconds=left))
            except Exception:  # best-effort publishers have nothing to wait for
                pass


def run(opts: ReplayOptions, *, as_json: bool = False) -> int:
    """Play as ``opts`` says; returns the exit status."""
    try:
        bag = Bag(opts.bag)
    except BagError as err:
        return fail(PROG, str(err))
    with bag:
        progress = None
        player = None
        try:
            with ros_context("specprune_replay") as node:
                try:
                    player = Player(node, bag, opts)
                except BagError as err:
                    return fail(PROG, str(err))
                if opts.wait_for_subscribers > 0:
                    lonely = player.wait_for_subscribers(opts.wait_for_subscribers)
                    if lonely:
                        print(f"{PROG}: no subscriber yet on {', '.join(lonely)}; playing anyway", file=sys.stderr)
                    else:
                        time.sleep(0.2)  # let the subscribers' side of discovery settle too
                if opts.delay > 0:
                    time.sleep(opts.delay)
                if opts.progress:
                    from tqdm import tqdm

                    progress = tqdm(total=player.total, unit="msg", file=sys.stderr, desc="replay", dynamic_ncols=True)
                passes = 0
                played_from = time.monotonic()
                while True:
                    try:
                        player.play(progress)
                    except BagError as err:
                        return fail(PROG, str(err))
                    passes += 1
                    if not opts.loop:
                        break
                    if progress is not None:
                        progress.reset()
                played_for = time.monotonic() - played_from
                player.flush()
        except KeyboardInterrupt:
            if progress is not None:
                progress.close()
            sent = sum(player.counts.values()) if player else 0
            print(f"{PROG}: interrupted after {sent} messages", file=sys.stderr)
            return 130
        finally:
            if progress is not None:
                progress.close()
    summary = {
        "bag": str(bag.path),
        "passes": passes,
        "rate": opts.rate,
        "wall_seconds": round(played_for, 6),
        "messages": sum(player.counts.values()),
        "topics": {player.topics[t].name: n for t, n in player.counts.items()},
    }
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{PROG}: published {summary['messages']} messages on {len(summary['topics'])} topics", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        opts = ReplayOptions(
            bag=args.bag,
            rate=args.rate,
            start=args.start,
            duration=args.duration,
            topics=split_topics(args.topics, "--topics"),
            remap=parse_remap(args.remap),
            loop=args.loop,
            clock_hz=args.clock,
            latched=split_topics(args.latched),
            depth=args.qos_depth,
            wait_for_subscribers=args.wait_for_subscribers,
            delay=args.delay,
            skip_unknown=args.skip_unknown,
            progress=not args.no_progress,
        )
    except ValueError as err:
        return fail(PROG, str(err))
    try:
        return run(opts, as_json=args.json)
    except KeyboardInterrupt:  # Ctrl-C while opening the bag or starting ROS
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
