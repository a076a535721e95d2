"""specprune-record: raw messages into a valid bag, QoS matched and stored, latched topics fetched, clean
stop on Ctrl-C and on --duration."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rclpy
import yaml
from ros_env import ros_context, subprocess_env  # noqa: F401  (ros_context is a fixture)

from specprune_ros.bags.bagio import Bag

BIN = Path(sys.executable).parent


def _record_until_ctrl_c(ros_context, node, pub, args: list[str], publish) -> tuple[int, str, str]:
    """Run ``specprune-record ARGS --no-progress --json`` while ``node`` spins; once the recorder subscribed to
    ``pub``, call ``publish()``, wait until every message is acknowledged, stop it with Ctrl-C: (code, out, err)."""
    from rclpy.duration import Duration
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    proc = subprocess.Popen([str(BIN / "specprune-record"), *args, "--no-progress", "--json"],
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        assert pub.get_subscription_count() > 0, "the recorder never subscribed"
        publish()
        assert pub.wait_for_all_acked(Duration(seconds=30))
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        executor.shutdown()
        node.destroy_node()
    return proc.returncode, stdout, stderr


def test_record_until_ctrl_c(ros_context, tmp_path):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String

    node = rclpy.create_node("record_source", context=ros_context)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    text_pub = node.create_publisher(String, "/rec_test/instruction", latched)
    joint_pub = node.create_publisher(JointState, "/rec_test/joints", QoSProfile(depth=100))
    text_pub.publish(String(data="stack the cups"))  # before the recorder exists: fetched through durability
    out = tmp_path / "rec"

    def publish() -> None:
        for k in range(25):
            msg = JointState(name=["a", "b"], position=[0.1 * k, -0.1 * k], velocity=[1.0, 2.0])  # effort empty
            msg.header.stamp.sec = 100 + k
            joint_pub.publish(msg)

    code, stdout, stderr = _record_until_ctrl_c(
        ros_context, node, joint_pub, [str(out), "--storage=mcap", "--topics", "/rec_test/instruction,/rec_test/joints"],
        publish)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    summary = json.loads(stdout)
    assert summary["interrupted"] is True
    assert summary["topics"] == {"/rec_test/instruction": 1, "/rec_test/joints": 25}
    meta = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["storage_identifier"] == "mcap" and meta["message_count"] == 26
    assert meta["relative_file_paths"] == ["rec_0.mcap"] and meta["ros_distro"] == "kilted"  # as ros2 bag record
    assert sorted(p.name for p in out.iterdir()) == ["metadata.yaml", "rec_0.mcap"]
    with Bag(out) as bag:
        topics = bag.topics()
        assert topics["/rec_test/joints"].msgtype == "sensor_msgs/msg/JointState"
        # the publishers' offered QoS is stored for replay
        assert [q.durability.name for q in topics["/rec_test/instruction"].qos] == ["TRANSIENT_LOCAL"]
        assert [q.durability.name for q in topics["/rec_test/joints"].qos] == ["VOLATILE"]
        got = [raw for _, _, raw in bag.messages(bag.select(["/rec_test/joints"]))]
        (instruction,) = [bag.deserialize(r, "std_msgs/msg/String") for _, _, r in bag.messages(bag.select(["/rec_test/instruction"]))]
        decoded = [bag.deserialize(r, "sensor_msgs/msg/JointState") for r in got]
    assert instruction.data == "stack the cups"
    assert [m.header.stamp.sec for m in decoded] == list(range(100, 125))  # all, once, in order
    assert [m.position.tolist() for m in decoded] == [[0.1 * k, -0.1 * k] for k in range(25)]
    assert all(len(m.effort) == 0 and m.velocity.tolist() == [1.0, 2.0] for m in decoded)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_nothing_recorded_is_an_error(tmp_path, storage):
    """No message on any topic: exit 1 with one line saying so, and no empty bag left behind."""
    out = tmp_path / "quiet"
    proc = subprocess.run(
        [str(BIN / "specprune-record"), str(out), f"--storage={storage}", "--topics=/nobody/publishes/this",
         "--duration=0.5", "--no-progress", "--json"],
        env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert "no message on any of the topics /nobody/publishes/this" in line and "removed the empty bag" in line
    summary = json.loads(proc.stdout)
    assert summary["messages"] == 0 and summary["not_seen"] == ["/nobody/publishes/this"] and summary["bag"] is None
    assert not out.exists()


def test_relative_topic_names_are_reported_resolved(ros_context, tmp_path):
    from rclpy.qos import QoSProfile
    from std_msgs.msg import String

    node = rclpy.create_node("record_relative_source", context=ros_context)
    pub = node.create_publisher(String, "/rec_rel/text", QoSProfile(depth=100))
    code, stdout, stderr = _record_until_ctrl_c(
        ros_context, node, pub, [str(tmp_path / "rel"), "--topics", "rec_rel/text,rec_rel/silent"],
        lambda: [pub.publish(String(data=f"m{k}")) for k in range(3)])
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["topics"] == {"/rec_rel/text": 3}
    assert summary["not_seen"] == ["/rec_rel/silent"]  # the resolved name, and only the topic without messages
    assert "no messages on: /rec_rel/silent\n" in stderr and "rec_rel/text" not in stderr


def test_namespace_resolves_the_default_topics(ros_context, tmp_path):
    """A policy node launched with namespace:=arm1 reads and writes under /arm1: --namespace=/arm1 records
    those topics, and the same topics of the root namespace are not recorded."""
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import JointState

    node = rclpy.create_node("record_ns_source", context=ros_context)
    arm = node.create_publisher(JointState, "/rec_ns_arm/joint_states", QoSProfile(depth=100))
    root = node.create_publisher(JointState, "/joint_states", QoSProfile(depth=100))

    def publish() -> None:
        for k in range(4):
            arm.publish(JointState(name=["a"], position=[float(k)]))
            root.publish(JointState(name=["b"], position=[float(k)]))

    code, stdout, stderr = _record_until_ctrl_c(
        ros_context, node, arm, [str(tmp_path / "ns"), "--namespace=/rec_ns_arm", "--node=policy_a"], publish)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["topics"].get("/rec_ns_arm/joint_states") == 4 and "/joint_states" not in summary["topics"]
    assert {"/rec_ns_arm/camera/image_raw", "/rec_ns_arm/policy_a/action_chunk"} <= set(summary["not_seen"])
