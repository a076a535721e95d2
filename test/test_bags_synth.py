"""Synthetic episode bags: ros2-bag-record layout, episode-like content, driver-style JointState bytes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_typestore

from specprune_ros.bags.bagio import Bag, BagError, deserialize
from specprune_ros.bags.synth import (
    CAMERA_TOPICS,
    INSTRUCTION_TOPIC,
    JOINT_NAMES,
    JOINT_STATES_TOPIC,
    DEFAULT_START_NS,
    READY_POSE,
    ROBOT_DESCRIPTION_TOPIC,
    EpisodeSpec,
    joint_state_at,
    panda_urdf,
    write_demo_bag,
    write_episode_bag,
)


@pytest.mark.parametrize(("storage", "distro", "version", "suffix"), [("sqlite3", "kilted", 9, ".db3"), ("mcap", "jazzy", 8, ".mcap")])
def test_layout_like_ros2_bag_record(tmp_path, storage, distro, version, suffix):
    spec = EpisodeSpec(seconds=1.0, fps=10, joint_rate=50, image_size=256)
    path = write_episode_bag(tmp_path / "ep", spec, storage=storage, distro=distro)
    assert sorted(p.name for p in path.iterdir()) == sorted(["metadata.yaml", f"ep_0{suffix}"])
    info = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["version"] == version
    assert info["storage_identifier"] == storage
    assert info["ros_distro"] == distro
    assert info["relative_file_paths"] == [f"ep_0{suffix}"]
    with Bag(path) as bag:
        topics = bag.topics()
        assert {t: i.count for t, i in topics.items()} == {
            ROBOT_DESCRIPTION_TOPIC: 1, INSTRUCTION_TOPIC: 1, JOINT_STATES_TOPIC: 50,
            CAMERA_TOPICS["primary"]: 10, CAMERA_TOPICS["wrist"]: 10,
        }  # fmt: skip
        # latched topics are offered transient-local, the rest volatile, all reliable
        for topic, i in topics.items():
            assert [q.durability.name for q in i.qos] == (
                ["TRANSIENT_LOCAL"] if topic in (ROBOT_DESCRIPTION_TOPIC, INSTRUCTION_TOPIC) else ["VOLATILE"]
            )
        stamps = [t for _, t, _ in bag.messages()]
        assert stamps == sorted(stamps)


def test_frames_move_like_an_episode(tmp_path):
    path = write_episode_bag(tmp_path / "ep", EpisodeSpec(seconds=2.0, fps=5, joint_rate=10, image_size=224))
    frames: dict[str, list[np.ndarray]] = {"primary": [], "wrist": []}
    view_of = {t: v for v, t in CAMERA_TOPICS.items()}
    with Bag(path) as bag:
        for conn, _, raw in bag.messages(bag.select(list(CAMERA_TOPICS.values()))):
            msg = bag.deserialize(raw, conn.msgtype)
            assert (msg.encoding, msg.height, msg.width, msg.step) == ("rgb8", 224, 224, 224 * 3)
            frames[view_of[conn.topic]].append(np.asarray(msg.data).reshape(224, 224, 3))
    for view, seq in frames.items():
        assert len(seq) == 10
        diffs = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(seq, seq[1:])]
        assert max(diffs) > 0.5, f"{view}: nothing moves"  # something moves between frames
        assert min(diffs) < max(diffs)  # ...but not uniformly: pauses (grasp) and motion
    assert not np.array_equal(frames["primary"][3], frames["wrist"][3])  # two different viewpoints
    # the red cube is visible in the first primary frame
    red = (frames["primary"][0][..., 0] > 180) & (frames["primary"][0][..., 1] < 80)
    assert red.sum() > 20


def test_joint_states_have_empty_effort(tmp_path):
    path = write_episode_bag(tmp_path / "ep", EpisodeSpec(seconds=0.5, joint_rate=20))
    with Bag(path) as bag:
        msgs = [bag.deserialize(raw, c.msgtype) for c, _, raw in bag.messages(bag.select([JOINT_STATES_TOPIC]))]
    assert len(msgs) == 10
    first = msgs[0]
    assert list(first.name) == list(JOINT_NAMES)
    assert len(first.position) == len(first.velocity) == 9
    assert len(first.effort) == 0
    np.testing.assert_allclose(first.position[:7], READY_POSE, atol=0.05)  # starts near the ready pose


def test_rclpy_joint_bytes_need_the_tolerant_deserializer(tmp_path):
    """Fast-CDR (rclpy / C++ drivers) pads after an empty trailing float64 array: rosbags' strict check
    rejects that message; Bag.deserialize reads every field."""
    path = write_episode_bag(tmp_path / "ep", EpisodeSpec(seconds=0.2, joint_rate=20), joint_bytes="rclpy")
    with Bag(path) as bag:
        raws = [raw for _, _, raw in bag.messages(bag.select([JOINT_STATES_TOPIC]))]
        strict = get_typestore(Stores.ROS2_KILTED)
        with pytest.raises(SerdeError, match="size mismatch"):
            strict.deserialize_cdr(raws[0], "sensor_msgs/msg/JointState")
        msg = bag.deserialize(raws[0], "sensor_msgs/msg/JointState")
    assert list(msg.name) == list(JOINT_NAMES) and len(msg.effort) == 0
    t = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9 - DEFAULT_START_NS / 1e9
    np.testing.assert_allclose(msg.position, joint_state_at(t, 0.2)[0], atol=1e-6)
    # real size mismatches are still refused
    with pytest.raises(BagError, match="unexpected bytes"):
        deserialize(strict, raws[0] + bytes(16), "sensor_msgs/msg/JointState")


def test_urdf_kinematics_match_franka_reference():
    """The bag's robot_description reproduces Franka's ready-pose positions (modified DH check values)."""
    from specprune_ros.core.kinematics import KinematicModel

    ready = dict(zip(JOINT_NAMES, [*READY_POSE, 0.04, 0.04]))
    flange = KinematicModel(panda_urdf(), "panda_link8").frame_pose(ready).position
    tcp = KinematicModel(panda_urdf(), "panda_hand_tcp").frame_pose(ready).position
    np.testing.assert_allclose(flange, [0.3069, 0.0, 0.5903], atol=1e-3)
    np.testing.assert_allclose(tcp, [0.3069, 0.0, 0.4869], atol=1e-3)


def test_demo_bag_and_spec_validation(tmp_path):
    path = write_demo_bag(tmp_path / "demo", seconds=0.5, storage="mcap")
    with Bag(path) as bag:
        assert bag.topics()[CAMERA_TOPICS["primary"]].count == 5
        assert math.isclose((bag.end_ns - bag.start_ns) / 1e9, 0.49, abs_tol=0.02)
    with pytest.raises(ValueError, match="seconds"):
        EpisodeSpec(seconds=0)
    with pytest.raises(ValueError, match="frozen_view"):
        EpisodeSpec(frozen_view="side")
    with pytest.raises(ValueError, match="dead_view"):
        EpisodeSpec(dead_view="side")
    with pytest.raises(FileExistsError):
        write_episode_bag(path)
