"""Policy node end to end over real rclpy: synthetic cameras + joint states + instruction -> ActionChunks."""
from __future__ import annotations

import numpy as np
import pytest
from node_harness import Harness, wait_until
from ros_env import ros_context  # noqa: F401  (fixture)

from specprune_ros.core.fake import FakePolicy


def test_fake_policy_end_to_end(ros_context):
    seen: list[FakePolicy] = []

    def factory(cfg, policy_cfg):
        seen.append(FakePolicy(views=tuple(cfg.camera_views), proprio_dim=8, chunk_len=8, dt=policy_cfg.control_dt))
        return seen[0]

    h = Harness(ros_context, {"execute_steps": 2, "control_dt": 0.05}, policy_factory=factory)
    try:
        h.feed(rate=30.0)
        h.wait_chunks(4)
        chunks = list(h.chunks)
        stats = list(h.stats)
        policy = seen[0]
        for c in chunks:
            assert (c.rows, c.cols) == (8, 7)
            assert len(c.actions) == 56
            assert list(c.action_names) == ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
            assert c.step_dt == pytest.approx(0.05)
            assert c.header.frame_id == "panda_link0"
            assert list(c.views) == ["primary", "wrist"]
            assert list(c.tokens_kept_per_view) == [256, 256] and c.tokens_kept == 512
            assert c.mode == "coarse" and c.preset == "fake"
        seqs = [c.sequence for c in chunks]
        assert seqs == list(range(len(seqs)))
        # each chunk carries the stamp of the observation it was computed from, and its actions
        for c in chunks:
            stamp = c.header.stamp.sec + c.header.stamp.nanosec * 1e-9
            obs = policy.seen[c.sequence]
            assert stamp == pytest.approx(obs.stamp, abs=2e-6)
            assert obs.stamp == pytest.approx(min(h.feeder.published, key=lambda t: abs(t - obs.stamp)), abs=1e-6)
            expected = policy_actions(policy, obs)
            np.testing.assert_allclose(np.array(c.actions).reshape(c.rows, c.cols), expected)
            assert obs.proprio.shape == (8,)
            np.testing.assert_allclose(obs.proprio[:3], [0.3069, 0.0, 0.4869], atol=5e-5)  # FK of the ready pose
            np.testing.assert_allclose(obs.proprio[6:], [0.04, -0.04])
            assert obs.instruction == "pick up the red block"
        # stats carry the same sequence and stamp
        by_seq = {s.sequence: s for s in stats}
        for c in chunks:
            if c.sequence in by_seq:
                assert by_seq[c.sequence].header.stamp == c.header.stamp
                assert list(by_seq[c.sequence].stage_names) == ["total"]
        # executed actions: after the first chunk, each query reports the 2 rows executed since the last
        assert policy.seen[0].executed_actions is None
        later = policy.seen[1]
        assert later.executed_actions.shape == (2, 7)
        first = np.array(chunks[0].actions).reshape(8, 7)
        np.testing.assert_allclose(later.executed_actions, first[:2])
        level, message, values = h.wait_diag(lambda lv, m, v: int(v.get("chunks_published", 0)) > 0, what="OK diagnostics")
        assert level == 0, message
        assert values["mode"] == "coarse" and values["tokens_kept"] == "512"
        assert float(values["camera_rate_hz.primary"]) > 0
        assert int(values["frames_received.primary"]) >= int(values["chunks_published"]) + int(values["frames_skipped"])
        assert values["state"] == "active"
    finally:
        h.close()


def policy_actions(policy: FakePolicy, obs) -> np.ndarray:
    """What FakePolicy returns for ``obs`` (recomputed with a fresh policy of the same shape)."""
    twin = FakePolicy(views=policy.views, proprio_dim=policy.proprio_dim, chunk_len=policy.chunk_len, dt=policy.dt)
    return twin.infer(obs).actions


def test_compressed_camera_and_ee_speed(ros_context):
    """A CompressedImage camera beside a raw one; EE speed by finite differences (no velocities) reaches the policy."""
    policies: list[FakePolicy] = []

    def factory(cfg, pcfg):
        policies.append(FakePolicy(views=tuple(cfg.camera_views), proprio_dim=8))
        return policies[-1]

    h = Harness(ros_context, {"execute_steps": 1, "camera_compressed": [False, True]}, policy_factory=factory)
    try:
        f = h.feed(rate=30.0)
        h.wait_chunks(3)
        obs = policies[0].seen[-1]
        k = min(range(len(f.published)), key=lambda i: abs(f.published[i] - obs.stamp))
        # both views of the observation are the frames published together (wrist through PNG, exact)
        np.testing.assert_array_equal(obs.images["primary"], f.frame_at(0, k))
        np.testing.assert_array_equal(obs.images["wrist"], f.frame_at(1, k))
        assert obs.ee_speed is not None and np.allclose(obs.ee_speed, 0.0, atol=1e-12)  # the arm holds still
        # the arm moves at a known joint velocity: the measured speed is the Jacobian's
        f.joint_velocities = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0]
        n = len(policies[0].seen)
        wait_until(lambda: len(policies[0].seen) > n + 2, what="more inferences")
        moving = policies[0].seen[-1].ee_speed
        assert moving[0] == pytest.approx(0.0, abs=1e-9) and moving[1] == pytest.approx(0.5)  # joint 7 spins the TCP about its axis
    finally:
        h.close()



def test_robot_description_from_file(ros_context):
    from pathlib import Path

    urdf = Path(__file__).parent / "fixtures" / "panda.urdf"
    h = Harness(ros_context, {"fake_policy": True, "execute_steps": 1, "robot_description_file": str(urdf)}, urdf=None)
    try:
        assert h.node.kinematics is not None and h.node.kinematics.ee_frame == "panda_hand_tcp"
        h.feed()
        h.wait_chunks(2)
    finally:
        h.close()
