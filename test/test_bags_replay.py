"""specprune-replay: every message arrives once, in order, byte for byte, at --rate 1 and 5; windows,
remapping, /clock, Ctrl-C; JointState with empty efforts (Fast-CDR bytes from rclpy) replays correctly."""
from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from ros_env import ros_context, subprocess_env  # noqa: F401  (ros_context is a fixture)

from specprune_ros.bags.bagio import NS, Bag
from specprune_ros.bags.synth import (
    CAMERA_TOPICS,
    INSTRUCTION_TOPIC,
    JOINT_NAMES,
    JOINT_STATES_TOPIC,
    ROBOT_DESCRIPTION_TOPIC,
    EpisodeSpec,
    joint_state_at,
    write_episode_bag,
)

REPLAY = [str(Path(sys.executable).parent / "specprune-replay")]
LATCHED = (INSTRUCTION_TOPIC, ROBOT_DESCRIPTION_TOPIC)
SPEC = EpisodeSpec(seconds=1.0, fps=10.0, joint_rate=20.0, image_size=224)


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict[str, Path]:
    """One short episode in each storage format, joint states serialized by rclpy (empty effort arrays)."""
    root = tmp_path_factory.mktemp("replay_bags")
    return {
        storage: write_episode_bag(root / f"ep_{storage}", SPEC, storage=storage, joint_bytes="rclpy")
        for storage in ("sqlite3", "mcap")
    }


def bag_messages(path: Path, start_ns: int | None = None, stop_ns: int | None = None) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    with Bag(path) as bag:
        for conn, _, raw in bag.messages(start_ns=start_ns, stop_ns=stop_ns):
            out.setdefault(conn.topic, []).append(raw)
    return out


class Collector:
    """Raw subscriptions on the given topics in a node spinning on a background thread."""

    def __init__(self, context, topics: dict[str, str], name: str = "replay_collector") -> None:
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        from specprune_ros.bags.rosutil import message_class

        self.node = rclpy.create_node(name, context=context)
        self.received: dict[str, list[bytes]] = {t: [] for t in topics}
        self.lock = threading.Lock()
        self._subs = []
        for topic, msgtype in topics.items():
            qos = QoSProfile(
                depth=1000,
                reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.TRANSIENT_LOCAL if topic in LATCHED else DurabilityPolicy.VOLATILE,
            )
            self._subs.append(
                self.node.create_subscription(message_class(msgtype), topic, self._cb(topic), qos, raw=True)
            )
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self._stop = False
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _cb(self, topic):
        def cb(raw: bytes) -> None:
            with self.lock:
                self.received[topic].append(bytes(raw))

        return cb

    def _spin(self) -> None:
        while not self._stop:
            self.executor.spin_once(timeout_sec=0.05)

    def wait_for(self, counts: dict[str, int], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(len(self.received[t]) >= n for t, n in counts.items()):
                    return
            time.sleep(0.05)

    def close(self) -> None:
        self._stop = True
        self.thread.join(timeout=5)
        self.executor.remove_node(self.node)
        self.executor.shutdown()
        self.node.destroy_node()


def same_payload(got: list[bytes], sent: list[bytes]) -> bool:
    """Byte-for-byte equal CDR payloads, up to the 0-3 bytes DDS pads a payload with (to a multiple of 4)
    and the encapsulation options word that records that padding."""
    if len(got) != len(sent):
        return False
    for g, s in zip(got, sent):
        if g[:2] != s[:2] or g[4 : len(s)] != s[4:] or not 0 <= len(g) - len(s) < 4 or any(g[len(s) :]):
            return False
    return True


def topic_types(path: Path) -> dict[str, str]:
    with Bag(path) as bag:
        return {t: info.msgtype for t, info in bag.topics().items()}


def run_replay(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*REPLAY, *args, "--no-progress", "--json"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(("storage", "rate"), [("sqlite3", 1.0), ("mcap", 5.0)])
def test_every_message_arrives_once_in_order(ros_context, bags, storage, rate):
    path = bags[storage]
    expected = bag_messages(path)
    collector = Collector(ros_context, topic_types(path))
    try:
        proc = run_replay(str(path), f"--rate={rate}", "--wait-for-subscribers=15")
        assert proc.returncode == 0, proc.stderr
        collector.wait_for({t: len(v) for t, v in expected.items()})
    finally:
        collector.close()
    summary = json.loads(proc.stdout)
    assert summary["messages"] == sum(len(v) for v in expected.values())
    for topic, raws in expected.items():
        got = collector.received[topic]
        assert len(got) == len(raws), f"{topic}: received {len(got)} of {len(raws)}"
        assert same_payload(got, raws), f"{topic}: bytes or order differ"  # raw CDR, unchanged, in recorded order
    # the recorded timing is kept: sleeping to each message's due time makes playback last at least
    # (last - first message time) / rate
    with Bag(path) as bag:
        span = (bag.end_ns - bag.start_ns) / NS
    assert summary["wall_seconds"] >= span / rate - 1e-3


def test_joint_state_with_empty_effort_replays(ros_context, bags):
    """A driver's Fast-CDR JointState (no efforts) reaches subscribers and deserializes with all values."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import JointState

    path = bags["mcap"]
    n = len(bag_messages(path)[JOINT_STATES_TOPIC])
    collector = Collector(ros_context, {JOINT_STATES_TOPIC: "sensor_msgs/msg/JointState"}, "joint_collector")
    try:
        proc = run_replay(str(path), "--rate=5", f"--topics={JOINT_STATES_TOPIC}", "--wait-for-subscribers=15")
        assert proc.returncode == 0, proc.stderr
        collector.wait_for({JOINT_STATES_TOPIC: n})
    finally:
        collector.close()
    msgs = [deserialize_message(raw, JointState) for raw in collector.received[JOINT_STATES_TOPIC]]
    assert len(msgs) == n
    for msg in msgs:
        assert list(msg.name) == list(JOINT_NAMES)
        assert len(msg.effort) == 0
        t = (msg.header.stamp.sec * NS + msg.header.stamp.nanosec - 1_700_000_000 * NS) / NS
        pos, vel = joint_state_at(t, SPEC.seconds)
        np.testing.assert_allclose(msg.position, pos, rtol=0, atol=1e-12)
        np.testing.assert_allclose(msg.velocity, vel, rtol=0, atol=1e-12)


def test_window_remap_and_latched_topics(ros_context, bags):
    """--start/--duration select the bag's messages in that window; --remap renames; the instruction,
    recorded before the window, is still delivered (latched topics are re-sent at the start)."""
    path = bags["sqlite3"]
    with Bag(path) as bag:
        start_ns = bag.start_ns + int(0.3 * NS)
        stop_ns = start_ns + int(0.4 * NS)
    primary = CAMERA_TOPICS["primary"]
    window = bag_messages(path, start_ns, stop_ns)
    assert len(window[primary]) == 4  # 10 fps for 0.4 s
    collector = Collector(
        ros_context, {"/renamed/image": "sensor_msgs/msg/Image", INSTRUCTION_TOPIC: "std_msgs/msg/String"}, "win"
    )
    try:
        proc = run_replay(
            str(path), "--start=0.3", "--duration=0.4", "--rate=2",
            f"--topics={primary},{INSTRUCTION_TOPIC}", f"--remap={primary}:=/renamed/image",
            "--wait-for-subscribers=15",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        collector.wait_for({"/renamed/image": 4, INSTRUCTION_TOPIC: 1})
    finally:
        collector.close()
    assert same_payload(collector.received["/renamed/image"], window[primary])
    assert same_payload(collector.received[INSTRUCTION_TOPIC], bag_messages(path)[INSTRUCTION_TOPIC])
    summary = json.loads(proc.stdout)
    assert summary["topics"] == {"/renamed/image": 4, INSTRUCTION_TOPIC: 1}


def test_clock_follows_bag_time(ros_context, bags):
    from rclpy.qos import QoSProfile
    from rosgraph_msgs.msg import Clock

    path = bags["mcap"]
    with Bag(path) as bag:
        start, end = bag.start_ns, bag.end_ns
    node = rclpy.create_node("clock_listener", context=ros_context)
    stamps: list[int] = []
    node.create_subscription(Clock, "/clock", lambda m: stamps.append(m.clock.sec * NS + m.clock.nanosec), QoSProfile(depth=1000))
    from sensor_msgs.msg import JointState

    node.create_subscription(JointState, JOINT_STATES_TOPIC, lambda m: None, QoSProfile(depth=10))
    proc = subprocess.Popen(
        [*REPLAY, str(path), "--rate=2", "--clock=50", f"--topics={JOINT_STATES_TOPIC}", "--wait-for-subscribers=15",
         "--no-progress"],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        for _ in range(20):
            executor.spin_once(timeout_sec=0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        executor.shutdown()
        node.destroy_node()
    assert proc.returncode == 0, proc.stderr.read()
    assert len(stamps) >= 20  # one per joint state at least
    assert all(start <= s <= end for s in stamps)
    assert stamps == sorted(stamps)  # bag time never runs backwards within one pass


def test_ctrl_c_stops_cleanly(bags):
    proc = subprocess.Popen(
        [*REPLAY, str(bags["sqlite3"]), "--loop", "--rate=0.5"],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "replay" not in "".join(chunks):  # the progress bar is up
            time.sleep(0.1)
        assert "replay" in "".join(chunks), "".join(chunks)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(chunks)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted after" in err


def test_tool_arguments_are_not_ros_arguments(monkeypatch):
    """rclpy is initialised without the command line: `--remap OLD:=NEW` is applied once, by the player,
    not a second time as a global ROS remapping rule (which undid a swap of two topics)."""
    from std_msgs.msg import String

    from specprune_ros.bags import rosutil

    monkeypatch.setattr(sys, "argv", ["specprune-replay", "bag", "--remap", "/a:=/b"])
    with rosutil.ros_context("remap_check") as node:
        assert node.create_publisher(String, "/a", 1).topic_name == "/a"


def test_publisher_qos_follows_the_recording():
    """Recorded offered profiles decide reliability/durability; latched topics default to transient-local."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from specprune_ros.bags.rosutil import offered_to_bag_qos, rclpy_qos, subscription_qos
    from specprune_ros.bags.synth import recorded_qos

    tl = rclpy_qos([recorded_qos(reliable=True, transient_local=True)], depth=100, latched_default=False)
    assert (tl.durability, tl.reliability, tl.depth) == (DurabilityPolicy.TRANSIENT_LOCAL, ReliabilityPolicy.RELIABLE, 1)
    be = rclpy_qos([recorded_qos(reliable=False)], depth=100, latched_default=True)
    assert (be.durability, be.reliability, be.depth) == (DurabilityPolicy.VOLATILE, ReliabilityPolicy.BEST_EFFORT, 100)
    # nothing recorded (older bags): reliable; latched only for the latched topics
    assert rclpy_qos([], depth=5, latched_default=True).durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert rclpy_qos([], depth=5, latched_default=False).durability == DurabilityPolicy.VOLATILE
    # publishers that disagree: the publisher that serves every subscriber
    mixed = rclpy_qos([recorded_qos(True), recorded_qos(False)], depth=5, latched_default=False)
    assert mixed.reliability == ReliabilityPolicy.RELIABLE
    # recording: reliable / transient-local only when every publisher offers it
    rel_tl = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    be_vol = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)
    sub = subscription_qos([rel_tl], depth=10)
    assert (sub.reliability, sub.durability) == (ReliabilityPolicy.RELIABLE, DurabilityPolicy.TRANSIENT_LOCAL)
    sub = subscription_qos([rel_tl, be_vol], depth=10)
    assert (sub.reliability, sub.durability) == (ReliabilityPolicy.BEST_EFFORT, DurabilityPolicy.VOLATILE)
    stored = offered_to_bag_qos([rel_tl, be_vol])
    assert [(q.reliability.name, q.durability.name) for q in stored] == [
        ("RELIABLE", "TRANSIENT_LOCAL"), ("BEST_EFFORT", "VOLATILE")
    ]


class _Publisher:
    def __init__(self, qos) -> None:
        self.qos_profile = qos
        self.sent: list[bytes] = []

    def publish(self, raw: bytes) -> None:
        self.sent.append(raw)


class _Node:
    """Stands in for the rclpy node: records what the player publishes."""

    def create_publisher(self, cls, name, qos):
        return _Publisher(qos)


class _VirtualTime:
    """time.monotonic / time.sleep on a virtual clock that only sleeping advances."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_loop_refuses_a_window_without_messages(bags):
    from specprune_ros.bags import replay
    from specprune_ros.bags.bagio import BagError

    path = bags["mcap"]
    with Bag(path) as bag:
        window = replay.ReplayOptions(bag=path, start=0.905, duration=0.001, loop=True, progress=False)
        with pytest.raises(BagError, match=r"window \[0.905, 0.906\) s .* no messages .* nothing to loop"):
            replay.Player(_Node(), bag, window)
        later = replay.ReplayOptions(bag=path, start=0.5, topics=(INSTRUCTION_TOPIC,), loop=True, progress=False)
        with pytest.raises(BagError, match="nothing to loop"):
            replay.Player(_Node(), bag, later)
        replay.Player(_Node(), bag, dataclasses.replace(window, loop=False))  # one pass: the latched topics only


def test_a_loop_pass_lasts_its_window(bags, monkeypatch):
    """A loop over messages that share one time (here the instruction, recorded once) repeats with the
    window's period instead of re-publishing without pause."""
    from specprune_ros.bags import replay

    clock = _VirtualTime()
    monkeypatch.setattr(replay, "time", clock)
    path = bags["mcap"]
    with Bag(path) as bag:
        opts = replay.ReplayOptions(bag=path, topics=(INSTRUCTION_TOPIC,), loop=True, rate=2.0, progress=False)
        player = replay.Player(_Node(), bag, opts)
        player.play(None)
        assert clock.now == pytest.approx((bag.end_ns - bag.start_ns) / NS / 2.0)
        player.play(None)
        assert clock.now == pytest.approx(2 * (bag.end_ns - bag.start_ns) / NS / 2.0)
    assert len(player.topics[INSTRUCTION_TOPIC].publisher.sent) == 2
