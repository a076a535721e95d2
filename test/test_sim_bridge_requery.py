"""libero_sim_node over ROS with a scripted simulator (no LIBERO): a chunk's requery_after cuts its execution."""
from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from ros_env import messages, ros_context  # noqa: F401  (ros_context is a fixture)
from test_sim_protocol import ScriptedSim, chunk

from specprune_ros.sim import protocol as P

WAIT_S = 30.0  # hang guard only


def _spin_until(executor, cond, what: str) -> None:
    end = time.monotonic() + WAIT_S
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        executor.spin_once(timeout_sec=0.05)


@contextlib.contextmanager
def scripted_bridge(ros_context):
    """(bridge, send, sim): a LiberoBridge over a ScriptedSim and ``send(actions, requery, requery_after,
    step_dt=0.0, expect_steps=True)`` that publishes one chunk for the pending observation and returns the steps it
    executed (``expect_steps=False``: waits until the bridge dropped it instead)."""
    from rclpy.parameter import Parameter

    from specprune_ros.sim.libero_node import LiberoBridge

    M = messages()
    sim = ScriptedSim()
    bridge = LiberoBridge(
        backend_factory=lambda cfg: sim,
        context=ros_context,
        namespace=f"/requery{id(sim)}",
        parameter_overrides=[Parameter("idle_tick_period", value=600.0)],
    )
    peer = rclpy.create_node("requery_peer", context=ros_context, namespace=bridge.get_namespace())
    pub = peer.create_publisher(M.ActionChunk, "action_chunk", 10)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(bridge)
    executor.add_node(peer)
    try:
        _spin_until(executor, lambda: bridge.pause_ns is not None and pub.get_subscription_count() > 0, "the first pause")

        def send(actions: np.ndarray, requery: bool, requery_after: int | None, step_dt: float = 0.0,
                 expect_steps: bool = True) -> int:
            before, dropped = bridge.episode.step, bridge.dropped_chunks
            msg = M.ActionChunk()
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(bridge.now_ns, 1_000_000_000)
            msg.rows, msg.cols = actions.shape
            msg.actions = actions.reshape(-1).tolist()
            msg.requery = requery
            msg.step_dt = step_dt
            if requery_after is not None:
                msg.requery_after = requery_after
            pub.publish(msg)
            if expect_steps:
                _spin_until(executor, lambda: bridge.episode.step > before and bridge.pause_ns is not None, "the next pause")
            else:
                _spin_until(executor, lambda: bridge.dropped_chunks > dropped, "the chunk to be dropped")
            return bridge.episode.step - before

        yield bridge, send, sim
    finally:
        bridge.stop()
        executor.shutdown(timeout_sec=5)
        peer.destroy_node()
        bridge.destroy_node()


def test_bridge_executes_rows_up_to_requery_after_then_pauses(ros_context):
    with scripted_bridge(ros_context) as (bridge, send, sim):
        first = chunk(8)
        assert send(first, True, 2) == 3  # rows 0..2, then a pause for the next query
        np.testing.assert_array_equal(np.stack(bridge.episode.executed), first[:3])
        assert bridge.requeries == 1
        assert send(chunk(8, 1.0), False, None) == 8  # no re-query: the whole chunk
        assert send(chunk(8, 2.0), True, 7) == 8  # a switch after the last row cuts nothing
        assert send(chunk(8, 3.0), True, None) == 8  # requery without a row (-1): the whole chunk
        assert bridge.requeries == 1
        np.testing.assert_array_equal(np.stack(sim.actions[P.WAIT_STEPS:]), np.stack(bridge.episode.executed))


def test_bridge_refuses_a_bad_chunk_whole(ros_context):
    with scripted_bridge(ros_context) as (bridge, send, sim):
        bad = chunk(8)
        bad[5, 0] = np.nan  # after the re-query cut: still nothing of it may run
        assert send(bad, True, 2, expect_steps=False) == 0
        for step_dt in (float("nan"), -0.05, 0.1):  # not finite, negative, another control rate
            assert send(chunk(8), False, None, step_dt=step_dt, expect_steps=False) == 0
        assert bridge.requeries == 0 and bridge.episode.executed == []
        level, message, values = bridge.health.snapshot()  # the last refusal: another control period
        assert level == 2 and "step_dt=0.1" in message and values["last_error"] == message
        assert values["refused.invalid_chunk"] == "1" and values["refused.step_dt"] == "3"
        assert send(chunk(8), True, 2, step_dt=P.CONTROL_DT) == 3
        assert bridge.requeries == 1 and bridge.dropped_chunks == 4
        level, message, values = bridge.health.snapshot()
        assert (level, message) == (0, "episode 0: executing action chunks") and values["chunks_accepted"] == "1"


def test_bridge_reports_refusals_on_diagnostics(ros_context):
    from diagnostic_msgs.msg import DiagnosticArray

    from specprune_ros.ros.diagnostics import diagnostic_name

    with scripted_bridge(ros_context) as (bridge, send, sim):
        got: list = []
        probe = rclpy.create_node("diagnostics_probe", context=ros_context)
        probe.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
        executor = SingleThreadedExecutor(context=ros_context)
        executor.add_node(probe)
        try:
            bad = chunk(8)
            bad[0, 3] = np.inf
            assert send(bad, False, None, expect_steps=False) == 0
            assert send(chunk(8), False, None) == 8  # recovered before anyone read /diagnostics
            name = f"{diagnostic_name(bridge)}: simulator"
            bridge.publish_diagnostics()  # (the bridge's 1 s timer may have published some already)
            bridge.publish_diagnostics()
            ours = lambda: [st for m in got for st in m.status if st.name == name]  # noqa: E731
            _spin_until(executor, lambda: len(ours()) >= 2 and ours()[-1].level == b"\x00", "/diagnostics")
            statuses = ours()
            errors = [i for i, st in enumerate(statuses) if st.level == b"\x02"]
            assert len(errors) == 1, "the refusal is reported once, then the current level"
            first, second = statuses[errors[0]], statuses[errors[0] + 1]
            assert "NaN or inf in row(s) [0]" in first.message  # "(since recovered: ...)" unless the 1 s timer ran
            assert second.level == b"\x00" and second.message == "episode 0: executing action chunks"
            values = {kv.key: kv.value for kv in second.values}
            assert values["refused.invalid_chunk"] == "1" and values["chunks_accepted"] == "1"
        finally:
            executor.shutdown(timeout_sec=5)
            probe.destroy_node()


def test_bridge_parameters_are_read_only(ros_context):
    """Read at start-up: a set at run time is refused with a reason, not reported done and ignored."""
    from rclpy.parameter import Parameter

    with scripted_bridge(ros_context) as (bridge, _send, _sim):
        (result,) = bridge.set_parameters([Parameter("idle_tick_period", value=1.0)])
        assert not result.successful and "read-only" in result.reason
        assert bridge.get_parameter("idle_tick_period").value == 600.0


def test_requery_rows_rule():
    from specprune_ros.core.controller import requery_rows

    assert requery_rows(True, 2, 8) == 3
    assert requery_rows(True, 0, 8) == 1
    assert requery_rows(True, 7, 8) is None  # after the last row: nothing to cut
    assert requery_rows(True, None, 8) is None
    assert requery_rows(False, 2, 8) is None
    assert requery_rows(True, -1, 8) is None
