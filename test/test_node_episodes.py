"""Episodes and early re-queries in the policy node: ~/reset, episode_status_topic, requery_after."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import rclpy
from node_harness import Harness, wait_until
from ros_env import messages, ros_context  # noqa: F401  (ros_context is a fixture)

from specprune_ros.core.fake import FakePolicy
from specprune_ros.core.types import StepStats


class EventPolicy(FakePolicy):
    """FakePolicy that logs ``("reset",)`` and ``("infer", executed rows or None)`` in call order."""

    def __init__(self, requery_after: int | None = None, **kw) -> None:
        super().__init__(**kw)
        self.events: list[tuple] = []
        self.requery_after = requery_after
        self._elock = threading.Lock()

    def infer(self, obs):
        chunk = super().infer(obs)
        executed = None if obs.executed_actions is None else np.asarray(obs.executed_actions).copy()
        with self._elock:
            self.events.append(("infer", executed, chunk.actions.copy()))
        if self.requery_after is not None:
            chunk.stats.requery, chunk.stats.requery_after = True, self.requery_after
        return chunk

    def reset(self) -> None:
        super().reset()
        with self._elock:
            self.events.append(("reset",))

    def snapshot(self) -> list[tuple]:
        with self._elock:
            return list(self.events)

    def infers(self) -> int:
        return sum(e[0] == "infer" for e in self.snapshot())


def _after_last_reset(policy: EventPolicy) -> list[tuple]:
    events = policy.snapshot()
    last = max(i for i, e in enumerate(events) if e[0] == "reset")
    return events[last + 1 :]


def _call_reset(h: Harness):
    from std_srvs.srv import Trigger

    client = h.io.create_client(Trigger, f"/{h.name}/reset")
    assert client.wait_for_service(timeout_sec=10.0), "~/reset service not offered"
    future = client.call_async(Trigger.Request())
    wait_until(future.done, 10.0, "~/reset response")
    return future.result()


def test_reset_service_resets_the_policy_and_the_chunk_state(ros_context):
    policy = EventPolicy()
    h = Harness(ros_context, {}, policy_factory=lambda cfg, pcfg: policy)
    try:
        h.feed()
        wait_until(lambda: policy.infers() >= 3, 20.0, "3 inferences")
        # normal operation feeds the executed rows of the previous chunk back
        assert any(e[0] == "infer" and e[1] is not None for e in policy.snapshot())
        resets_before = policy.resets
        response = _call_reset(h)
        assert response.success, response.message
        wait_until(lambda: policy.resets == resets_before + 1, 10.0, "policy.reset() after ~/reset")
        wait_until(lambda: any(e[0] == "infer" for e in _after_last_reset(policy)), 20.0, "an inference after the reset")
        first = next(e for e in _after_last_reset(policy) if e[0] == "infer")
        assert first[1] is None, "the first query of the new episode must not see rows of the old one"
    finally:
        h.close()


def test_reset_service_without_configure_says_so(ros_context):
    h = Harness(ros_context, {}, policy_factory=lambda cfg, pcfg: EventPolicy(), configure=False)
    try:
        response = _call_reset(h)
        assert not response.success and "configure" in response.message
    finally:
        h.close()


def test_new_episode_number_on_episode_status_resets(ros_context):
    M = messages()
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    topic = f"/episode_status_{os.getpid()}"
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    policy = EventPolicy()
    h = Harness(ros_context, {"episode_status_topic": topic}, policy_factory=lambda cfg, pcfg: policy)
    pub = h.io.create_publisher(M.EpisodeStatus, topic, latched)
    try:
        h.feed()
        pub.publish(M.EpisodeStatus(episode=4, status="running"))
        wait_until(lambda: h.node._episode_seen == 4, 10.0, "the first episode number")
        wait_until(lambda: policy.infers() >= 2, 20.0, "2 inferences")
        resets = policy.resets  # the first number seen is a baseline, not a reset
        pub.publish(M.EpisodeStatus(episode=4, status="success"))  # same episode: nothing happens
        pub.publish(M.EpisodeStatus(episode=5, status="waiting"))
        wait_until(lambda: h.node._episode_seen == 5, 10.0, "the next episode number")
        wait_until(lambda: policy.resets == resets + 1, 10.0, "one policy.reset() for episode 5")
        wait_until(lambda: any(e[0] == "infer" for e in _after_last_reset(policy)), 20.0, "an inference after the reset")
        assert next(e for e in _after_last_reset(policy) if e[0] == "infer")[1] is None
        assert policy.resets == resets + 1
    finally:
        h.close()


@pytest.mark.parametrize("honor", [True, False])
def test_requery_after_cuts_execution_and_is_published(ros_context, honor):
    """A chunk asking for a re-query after row 2: the node executes (and reports as executed) rows 0..2 and
    publishes requery_after 2; with honor_requery false it runs all 8 rows and publishes -1."""
    policy = EventPolicy(requery_after=2, chunk_len=8)
    h = Harness(ros_context, {"honor_requery": honor}, policy_factory=lambda cfg, pcfg: policy)
    try:
        h.feed()
        wait_until(lambda: policy.infers() >= 3 and h.n_chunks() >= 2, 20.0, "3 inferences")
        assert {m.requery_after for m in list(h.chunks)} == ({2} if honor else {-1})
        assert all(m.requery for m in list(h.chunks))
        infers = [e for e in policy.snapshot() if e[0] == "infer"]
        for prev, nxt in zip(infers, infers[1:]):
            want = prev[2][:3] if honor else prev[2]
            assert nxt[1] is not None
            np.testing.assert_array_equal(nxt[1], want)
    finally:
        h.close()


def test_action_chunk_message_round_trip_keeps_requery_after():
    from rclpy.serialization import deserialize_message, serialize_message

    from specprune_ros.core.types import ActionChunk
    from specprune_ros.ros.conversions import action_chunk_msg

    M = messages()
    assert M.ActionChunk().requery_after == -1  # unset = none
    names = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")

    def msg(requery: bool, after, honor: bool = True):
        chunk = ActionChunk(np.zeros((8, 7)), 0.05, 1.0, StepStats(requery=requery, requery_after=after))
        out = action_chunk_msg(chunk, 0, 0.1, ("primary",), names, "world", honor_requery=honor)
        return deserialize_message(serialize_message(out), M.ActionChunk)

    back = msg(True, 2)
    assert back.requery and back.requery_after == 2 and back.rows == 8
    assert msg(True, 7).requery_after == -1  # a switch after the last row cuts nothing
    assert msg(False, None).requery_after == -1
    assert msg(True, 2, honor=False).requery_after == -1 and msg(True, 2, honor=False).requery
