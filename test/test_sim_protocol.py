"""The OFT LIBERO protocol (specprune_ros.sim.protocol) over a scripted simulator: no LIBERO, no ROS."""
from __future__ import annotations

import math

import numpy as np
import pytest

from specprune_ros.core.fake import FakePolicy
from specprune_ros.sim import protocol as P


class ScriptedSim:
    """Records every action; reports the task done at policy step ``done_at`` (1-based), if given."""

    def __init__(self, done_at: int | None = None, fail_at: int | None = None, size: int = 32) -> None:
        self.done_at = done_at
        self.fail_at = fail_at
        self.actions: list[np.ndarray] = []
        self.resets: list[int] = []
        self.size = size

    def _frame(self) -> P.SimFrame:
        n = len(self.actions)
        img = np.full((self.size, self.size, 3), n % 256, dtype=np.uint8)
        return P.SimFrame(
            images={"agentview": img, "wrist": 255 - img},
            eef_pos=np.array([0.1 * n, 0.0, 1.0]),
            eef_quat=np.array([0.0, 0.0, 0.0, 1.0]),
            gripper_qpos=np.array([0.04, -0.04]),
            joint_pos=np.zeros(7),
            joint_vel=np.zeros(7),
        )

    def reset(self, init_state: int) -> P.SimFrame:
        self.resets.append(init_state)
        self.actions = []
        return self._frame()

    def step(self, action):
        self.actions.append(np.asarray(action, dtype=np.float64).copy())
        policy_steps = len(self.actions) - P.WAIT_STEPS
        if self.fail_at is not None and policy_steps == self.fail_at:
            raise RuntimeError("simulation became unstable")
        return self._frame(), self.done_at is not None and policy_steps >= self.done_at


def chunk(rows: int, offset: float = 0.0) -> np.ndarray:
    return offset + np.arange(rows * 7, dtype=np.float64).reshape(rows, 7) / 100.0  # (rows, 7)


def test_suite_constants_follow_oft():
    assert P.SUITE_MAX_STEPS["libero_spatial"] == 220
    assert P.SUITE_MAX_STEPS["libero_object"] == 280
    assert P.SUITE_MAX_STEPS["libero_goal"] == 300
    assert P.SUITE_MAX_STEPS["libero_10"] == 520
    assert P.unnorm_key_for("libero_goal") == "libero_goal_no_noops"
    assert P.ProtocolConfig("libero_object").step_limit == 280
    assert P.ProtocolConfig("libero_object", max_steps=5).step_limit == 5


def test_unknown_suite_names_the_closest():
    with pytest.raises(P.ProtocolError, match="did you mean 'libero_spatial'"):
        P.ProtocolConfig("libero_spatail")
    with pytest.raises(P.ProtocolError, match="max_steps=-1"):
        P.ProtocolConfig(max_steps=-1)


def test_wait_steps_are_dummy_actions_and_not_counted():
    sim = ScriptedSim()
    ep = P.Episode(sim, P.ProtocolConfig())
    ep.start(3)
    assert sim.resets == [3]
    assert len(sim.actions) == 10
    for a in sim.actions:
        np.testing.assert_array_equal(a, [0, 0, 0, 0, 0, 0, -1])
    assert ep.step == 0 and ep.sim_steps == 10 and ep.status == P.STATUS_RUNNING


def test_done_during_wait_steps_is_ignored():
    sim = ScriptedSim(done_at=-5)  # "done" already during the wait steps
    ep = P.Episode(sim, P.ProtocolConfig())
    ep.start(0)
    assert ep.status == P.STATUS_RUNNING


def test_executed_actions_equal_chunk_rows_in_order():
    sim = ScriptedSim()
    ep = P.Episode(sim, P.ProtocolConfig())
    ep.start(0)
    a, b = chunk(8), chunk(8, offset=1.0)
    assert ep.execute(a) == 8
    assert ep.execute(b) == 8
    executed = np.stack(sim.actions[P.WAIT_STEPS:])
    np.testing.assert_array_equal(executed, np.concatenate([a, b]))
    np.testing.assert_array_equal(np.stack(ep.executed), executed)
    assert ep.step == 16


def test_open_loop_steps_limits_rows_per_chunk():
    sim = ScriptedSim()
    ep = P.Episode(sim, P.ProtocolConfig(open_loop_steps=3))
    ep.start(0)
    assert ep.execute(chunk(8)) == 3
    np.testing.assert_array_equal(np.stack(sim.actions[P.WAIT_STEPS:]), chunk(8)[:3])


def test_timeout_after_step_limit_mid_chunk():
    sim = ScriptedSim()
    ep = P.Episode(sim, P.ProtocolConfig(max_steps=12))
    ep.start(0)
    assert ep.execute(chunk(8)) == 8 and ep.running
    assert ep.execute(chunk(8)) == 4  # only 4 of the second chunk fit in 12 steps
    assert ep.status == P.STATUS_TIMEOUT and ep.step == 12
    assert len(sim.actions) == P.WAIT_STEPS + 12
    with pytest.raises(P.ProtocolError, match="no episode is running"):
        ep.execute(chunk(8))


def test_suite_step_limit_applies_by_default():
    sim = ScriptedSim()
    ep = P.Episode(sim, P.ProtocolConfig("libero_spatial"))
    ep.start(0)
    while ep.running:
        ep.execute(chunk(8))
    assert ep.status == P.STATUS_TIMEOUT and ep.step == 220
    assert len(sim.actions) == 230  # 220 policy steps + 10 wait steps


def test_success_ends_the_episode_at_that_step():
    sim = ScriptedSim(done_at=5)
    ep = P.Episode(sim, P.ProtocolConfig())
    ep.start(0)
    assert ep.execute(chunk(8)) == 5
    assert ep.success and ep.status == P.STATUS_SUCCESS and ep.step == 5


def test_bad_chunks_execute_nothing():
    sim = ScriptedSim()
    ep = P.Episode(sim, P.ProtocolConfig())
    ep.start(0)
    bad = chunk(8)
    bad[3, 2] = math.nan
    with pytest.raises(P.ProtocolError, match=r"row\(s\) \[3\]"):
        ep.execute(bad)
    with pytest.raises(P.ProtocolError, match=r"shape \(8, 6\)"):
        ep.execute(np.zeros((8, 6)))
    with pytest.raises(P.ProtocolError, match="shape"):
        ep.execute(np.zeros((0, 7)))
    assert len(sim.actions) == P.WAIT_STEPS and ep.running


def test_simulator_failure_ends_episode_as_failure():
    sim = ScriptedSim(fail_at=3)
    ep = P.Episode(sim, P.ProtocolConfig())
    ep.start(0)
    with pytest.raises(RuntimeError):
        ep.execute(chunk(8))
    assert ep.status == P.STATUS_FAILURE and "unstable" in ep.error


def test_quat_to_axis_angle():
    np.testing.assert_allclose(P.quat_to_axis_angle(np.array([0, 0, 0, 1.0])), np.zeros(3))
    half = math.pi / 4  # 90 degrees about z
    q = np.array([0, 0, math.sin(half), math.cos(half)])
    np.testing.assert_allclose(P.quat_to_axis_angle(q), [0, 0, math.pi / 2], atol=1e-12)
    q = np.array([math.sin(1.2), 0, 0, math.cos(1.2)])  # 2.4 rad about x
    np.testing.assert_allclose(P.quat_to_axis_angle(q), [2.4, 0, 0], atol=1e-12)
    with pytest.raises(ValueError, match="quaternion"):
        P.quat_to_axis_angle(np.array([0, 0, 1.0]))


def test_proprio_layout():
    p = P.libero_proprio([1, 2, 3], [0, 0, math.sin(0.5), math.cos(0.5)], [0.04, -0.03])
    np.testing.assert_allclose(p, [1, 2, 3, 0, 0, 1.0, 0.04, -0.03], atol=1e-12)


def test_run_episode_closed_loop_with_fake_policy():
    sim = ScriptedSim(done_at=20)
    policy = FakePolicy(chunk_len=8)
    res = P.run_episode(sim, policy, P.ProtocolConfig(), "put the bowl on the plate", task_id=0, init_state=2)
    assert res.success and res.status == P.STATUS_SUCCESS
    assert res.steps == 20 and res.chunks == 3 and policy.calls == 3 and policy.resets == 1
    # the policy saw the frames as rendered (no flip here), the proprio layout and simulated stamps
    first, second = policy.seen[0], policy.seen[1]
    assert first.stamp == pytest.approx(10 * P.CONTROL_DT)
    assert second.stamp == pytest.approx(18 * P.CONTROL_DT)
    np.testing.assert_array_equal(first.images["wrist"], 255 - first.images["primary"])
    assert first.proprio.shape == (8,) and first.executed_actions is None
    assert second.executed_actions.shape == (8, 7)
    np.testing.assert_array_equal(second.executed_actions, np.stack(sim.actions[10:18]))


def test_run_episode_reports_policy_errors_as_failure():
    sim = ScriptedSim()
    res = P.run_episode(sim, FakePolicy(fail_on=(1,)), P.ProtocolConfig(), "x", 0, 0)
    assert res.status == P.STATUS_FAILURE and "call 1" in res.error and res.steps == 8


class RequeryPolicy(FakePolicy):
    """Asks for an early query after row 2 of its first chunk (as the coarse-to-fine controller does)."""

    def infer(self, obs):
        chunk = super().infer(obs)
        if self.calls == 1:
            chunk.stats.requery, chunk.stats.requery_after = True, 2
        return chunk


def test_run_episode_honors_requery_after():
    sim = ScriptedSim()
    policy = RequeryPolicy(chunk_len=8)
    res = P.run_episode(sim, policy, P.ProtocolConfig(max_steps=11), "x", 0, 0)
    assert res.requeries == 1 and res.chunks == 2 and res.steps == 11
    assert policy.seen[1].executed_actions.shape == (3, 7)  # rows 0..2 of the first chunk
    assert policy.seen[1].stamp == pytest.approx((10 + 3) * P.CONTROL_DT)
    plain = P.run_episode(ScriptedSim(), RequeryPolicy(chunk_len=8), P.ProtocolConfig(max_steps=11), "x", 0, 0,
                          honor_requery=False)
    assert plain.requeries == 0 and plain.chunks == 2
