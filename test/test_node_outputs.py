"""Node outputs on a known chunk: adapters off by default, TwistStamped / JointTrajectory / gripper values
when on (clipped), and the debug image with pruned patches dimmed."""
from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from node_harness import ARM, PANDA_URDF, READY, Harness, wait_until
from ros_env import ros_context  # noqa: F401  (fixture)

from rclpy.lifecycle import TransitionCallbackReturn

from specprune_ros.core.images import dim_pruned_patches
from specprune_ros.core.kinematics import KinematicModel
from specprune_ros.core.types import MODE_FINE, ActionChunk, StepStats
from specprune_ros.ros.adapters import TwistLimits, joint_trajectory, rows_to_twists

CHUNK = np.array(
    [
        [0.02, 0.00, 0.00, 0.0, 0.0, 0.0, -1.0],
        [0.30, 0.40, 0.00, 0.0, 0.0, 0.6, -1.0],  # clipped: |lin| 0.5 -> 0.1 m/s, |ang| 0.6 -> 0.5 rad/s
        [0.00, 0.00, -0.05, 0.1, 0.0, 0.0, 1.0],
    ]
)
KEPT = {"primary": list(range(128)), "wrist": list(range(0, 256, 2))}  # top half / every other patch


class KnownPolicy:
    """Always returns CHUNK; reports top-half patches of the primary view as kept."""

    views = ("primary", "wrist")
    proprio_dim = 8
    action_dim = 7
    chunk_len = 3
    dt = 0.05

    def __init__(self) -> None:
        self.seen = []

    def infer(self, obs):
        obs.validate(self.views, self.proprio_dim)
        self.seen.append(obs)
        stats = StepStats(
            timings_ms={"total": 1.0},
            kept_per_view={v: len(p) for v, p in KEPT.items()},
            kept_patches=KEPT,
            total_tokens=600,
            mode=MODE_FINE,
            preset="paper",
        )
        return ActionChunk(actions=CHUNK.copy(), dt=self.dt, stamp=obs.stamp, stats=stats)

    def reset(self) -> None:
        pass


ADAPTERS_ON = {
    "dry_run": False,
    "twist_enabled": True,
    "joint_trajectory_enabled": True,
    "gripper_enabled": True,
    "twist_linear_scale": 1.0,
    "twist_angular_scale": 1.0,
    "max_linear_speed": 0.1,
    "max_angular_speed": 0.5,
    "max_joint_velocity": 0.0,
    "ik_damping": 0.001,
    "gripper_open_position": 0.04,
    "gripper_closed_position": 0.0,
    "debug_image": True,
    "center_crop": False,
}


def _vec(v) -> list[float]:
    return [v.x, v.y, v.z]


def test_adapters_on_known_chunk(ros_context):
    policy = KnownPolicy()
    h = Harness(ros_context, ADAPTERS_ON, policy_factory=lambda cfg, pcfg: policy)
    try:
        h.feed()
        h.wait_chunks(2)
        wait_until(lambda: len(h.twists) >= 8 and len(h.grippers) >= 3 and h.debug_images, what="adapter outputs")
        limits = TwistLimits(1.0, 1.0, 0.1, 0.5)
        expected = rows_to_twists(CHUNK, limits)  # (3, 6)
        twists = [np.array(_vec(t.twist.linear) + _vec(t.twist.angular)) for t in h.twists[:8]]
        # one twist per row at control rate; a zero twist only where no row was ready (next chunk not yet in)
        moving = []
        for k, tw in enumerate(twists):
            if not tw.any():
                assert k > 0 and np.allclose(twists[k - 1], expected[2]), "zero twist only between chunks"
            else:
                moving.append(tw)
        assert len(moving) >= 6
        for k, tw in enumerate(moving):
            np.testing.assert_allclose(tw, expected[k % 3], atol=1e-12)
        twists = moving
        np.testing.assert_allclose(np.linalg.norm(twists[1][:3]), 0.1)  # clipped to max_linear_speed
        np.testing.assert_allclose(twists[1][:3], [0.06, 0.08, 0.0])  # direction kept
        assert all(t.header.frame_id == "panda_link0" for t in h.twists)

        traj = h.trajectories[0]
        assert list(traj.joint_names) == ARM
        assert traj.header.stamp.sec == 0 and traj.header.stamp.nanosec == 0  # start now
        kin = KinematicModel(PANDA_URDF, "panda_hand_tcp", ARM)
        pos, vel, times = joint_trajectory(kin, np.array(READY), CHUNK, 0.05, limits, damping=0.001)
        assert len(traj.points) == 3
        for k, point in enumerate(traj.points):
            np.testing.assert_allclose(point.positions, pos[k], atol=1e-9)
            np.testing.assert_allclose(point.velocities, vel[k], atol=1e-9)
            assert point.time_from_start.sec + point.time_from_start.nanosec * 1e-9 == pytest.approx(times[k])
        moved = kin.frame_pose(pos[-1]).position - kin.frame_pose(np.array(READY)).position
        np.testing.assert_allclose(moved, expected[:, :3].sum(axis=0) * 0.05, atol=5e-4)
        chunk = h.chunks[0]
        assert list(chunk.joint_names) == ARM and chunk.mode == "fine"
        assert list(chunk.tokens_kept_per_view) == [128, 128] and chunk.tokens_total == 600

        # gripper: open (rows 0-1 are -1), close (row 2 is +1), open again at the next chunk; only changes are sent
        values = [g.data for g in h.grippers[:3]]
        assert values == [0.04, 0.0, 0.04]

        # debug image: the frame the policy saw with the bottom half (pruned patches) dimmed
        img = h.debug_images[0]
        assert img.encoding == "rgb8"
        stamp = img.header.stamp.sec + img.header.stamp.nanosec * 1e-9
        obs = min(policy.seen, key=lambda o: abs(o.stamp - stamp))
        assert obs.stamp == pytest.approx(stamp, abs=2e-6)
        got = np.frombuffer(bytes(img.data), np.uint8).reshape(img.height, img.width, 3)
        np.testing.assert_array_equal(got, dim_pruned_patches(obs.images["primary"], KEPT["primary"]))
        np.testing.assert_array_equal(got[:32], obs.images["primary"][:32])
        assert got[32:].mean() < 0.5 * obs.images["primary"][32:].mean()
    finally:
        h.close()


@pytest.mark.parametrize("params", [{}, {"twist_enabled": True, "joint_trajectory_enabled": True, "gripper_enabled": True}])
def test_no_actuating_output_by_default_or_in_dry_run(ros_context, params):
    """Defaults (adapters off, dry_run true) and dry_run with adapters on: no command publisher exists."""
    h = Harness(ros_context, {"fake_policy": True, "execute_steps": 1, **params})
    try:
        h.feed()
        h.wait_chunks(5)
        for topic in (h.params["twist_topic"], h.params["joint_trajectory_topic"], h.params["gripper_topic"]):
            assert h.io.count_publishers(topic) == 0, topic
        assert h.io.count_publishers(f"/{h.name}/debug_image") == 0
        assert not h.twists and not h.trajectories and not h.grippers
    finally:
        h.close()


def test_twist_zero_on_deactivate(ros_context):
    """Deactivating mid-chunk sends one zero twist, so MoveIt Servo stops."""
    policy = KnownPolicy()
    params = dict(ADAPTERS_ON, joint_trajectory_enabled=False, gripper_enabled=False)
    h = Harness(ros_context, params, policy_factory=lambda cfg, pcfg: policy)
    try:
        h.feed()
        wait_until(lambda: len(h.twists) >= 2, what="twists")
        h.node.trigger_deactivate()

        def zero(t) -> bool:
            return _vec(t.twist.linear) == [0.0, 0.0, 0.0] and _vec(t.twist.angular) == [0.0, 0.0, 0.0]

        wait_until(lambda: zero(h.twists[-1]), what="a zero twist after deactivate")
        n = len(h.twists)
        h.feeder.stop()
        h.feeder = None
        assert len(h.twists) == n  # nothing after the stop while inactive
    finally:
        h.close()


class GatedPolicy(KnownPolicy):
    """KnownPolicy whose inference waits until ``release`` is set (an inference kept in flight)."""

    def __init__(self) -> None:
        super().__init__()
        self.started, self.release = threading.Event(), threading.Event()

    def infer(self, obs):
        self.started.set()
        self.release.wait(30.0)
        return super().infer(obs)


def test_a_chunk_computed_before_deactivate_never_runs_after_activate(ros_context):
    """Deactivate while an inference is in flight, the inputs stop, activate again: that chunk must not move the
    arm (it answers an observation from before the pause)."""
    policy = GatedPolicy()
    params = dict(ADAPTERS_ON, joint_trajectory_enabled=False, gripper_enabled=False)
    h = Harness(ros_context, params, policy_factory=lambda cfg, pcfg: policy)
    try:
        h.feed()
        assert policy.started.wait(30.0)
        h.feeder.stop()
        h.feeder = None
        assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        policy.release.set()
        wait_until(lambda: not h.node._busy, what="the inference in flight to finish")
        assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        with h.node._lock:
            assert h.node._active is None  # nothing left to execute: the old chunk was dropped
        time.sleep(0.3)  # six control periods: time for the loop to have run an old chunk
        assert not [t for t in h.twists if any(_vec(t.twist.linear)) or any(_vec(t.twist.angular))]
    finally:
        policy.release.set()
        h.close()


def test_math_sanity():
    assert math.isclose(np.linalg.norm(rows_to_twists(CHUNK, TwistLimits())[1, 3:]), 0.5)


class RampPolicy(KnownPolicy):
    """8 rows whose x column identifies the row (x = 0.01 (i + 1)); optional delay per inference."""

    chunk_len = 8

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.query_rows: list[int | None] = []  # per query: the last row executed before it started

    def infer(self, obs):
        import time

        executed = obs.executed_actions
        self.query_rows.append(None if executed is None or len(executed) == 0 else round(executed[-1, 0] / 0.01) - 1)
        chunk = super().infer(obs)
        time.sleep(self.delay)
        actions = np.zeros((8, 7))
        actions[:, 0] = 0.01 * (np.arange(8) + 1)
        actions[:, 6] = -1.0
        chunk.actions = actions
        return chunk


@pytest.mark.parametrize("delay", [0.0, 0.12])
def test_prefetch_continues_where_the_arm_is(ros_context, delay):
    """prefetch_steps=3: the next query starts with at most 3 rows left (with exactly 3 when a new frame is
    there); the new chunk starts at the row matching the rows executed while it was computed, so the row
    index continues instead of jumping back to 0. Which row was the last before each query is read from
    the executed actions the policy receives, so the check does not depend on the machine's speed."""
    policy = RampPolicy(delay)
    params = dict(ADAPTERS_ON, joint_trajectory_enabled=False, gripper_enabled=False, debug_image=False, prefetch_steps=3)
    h = Harness(ros_context, params, policy_factory=lambda cfg, pcfg: policy)
    try:
        h.feed()
        wait_until(lambda: len(h.twists) >= 40, timeout=20, what="twists")
        rows = [round(t.twist.linear.x / 0.01) - 1 for t in h.twists if t.twist.linear.x > 0]
        segments = [[rows[0]]]
        for r in rows[1:]:
            if r <= segments[-1][-1]:
                segments.append([r])
            else:
                assert r == segments[-1][-1] + 1, f"rows skipped inside a chunk: {rows}"
                segments[-1].append(r)
        assert len(segments) >= 4
        assert policy.query_rows[0] is None  # the first query of the episode has executed nothing
        for prev, nxt, last_before in zip(segments, segments[1:], policy.query_rows[1:]):
            assert last_before is not None and last_before in prev, (prev, nxt, last_before)
            assert 8 - (last_before + 1) <= 3, f"query started with more than 3 rows left: {prev}, {last_before}"
            in_flight = prev[-1] - last_before  # rows of ``prev`` executed while the next chunk was computed
            assert nxt[0] == min(in_flight, 7), (prev, nxt, last_before)
        if delay:
            assert any(s[0] > 0 for s in segments[1:]), "a slow policy must make later chunks start past row 0"
    finally:
        h.close()



def test_qos_overrides_reach_the_inputs_and_outputs(ros_context):
    """`qos_overrides.<topic>.<entity>.<policy>` parameters (ROS 2's standard QoS overrides) apply."""
    from rclpy.qos import ReliabilityPolicy

    camera, joints, twist = "/qos_test/primary", "/qos_test/joint_states", "/qos_test/twist"
    params = dict(ADAPTERS_ON, joint_trajectory_enabled=False, gripper_enabled=False, fake_policy=True,
                  camera_topics=[camera, "/qos_test/wrist"], joint_states_topic=joints, twist_topic=twist)
    params.update({f"qos_overrides.{camera}.subscription.reliability": "reliable",
                   f"qos_overrides.{joints}.subscription.depth": 7, f"qos_overrides.{twist}.publisher.depth": 3})
    h = Harness(ros_context, params)
    try:
        for _ in range(2):  # configured again after a cleanup: the declared overrides still apply
            subs = {s.topic_name: s.qos_profile for s in h.node._subs}
            assert subs[camera].reliability == ReliabilityPolicy.RELIABLE  # sensor data QoS is best effort
            assert subs["/qos_test/wrist"].reliability == ReliabilityPolicy.BEST_EFFORT
            assert subs[joints].depth == 7 and h.node._pubs["twist"].qos_profile.depth == 3
            assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
            assert h.node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
            assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    finally:
        h.close()
