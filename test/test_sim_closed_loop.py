"""Closed loop over ROS 2: libero_sim_node (real LIBERO, .venv-sim) + policy_node (.venv) on simulated time.

Both run as separate processes, wired exactly as ``launch/sim.launch.py`` and ``specprune-libero-eval``
wire them (``specprune_ros.sim.launching``). This process only watches. Skips with the reason when the
simulator environment is missing.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ros_env import messages, ros_context, subprocess_env  # noqa: F401  (ros_context is a fixture)

from specprune_ros.rosenv import stop_process
from specprune_ros.sim import simenv
from specprune_ros.sim.launching import (
    LIBERO_PARAMS,
    REPO_ROOT,
    SimLaunchArgs,
    bridge_command,
    policy_command,
    write_policy_params,
)

REASON = simenv.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))
WAIT_S = 180.0  # hang guard on a loaded 2-core machine; nothing here asserts a duration


def _ns(stamp) -> int:
    return stamp.sec * 10**9 + stamp.nanosec


def _run_loop(tmp_path: Path, ros_context, args: SimLaunchArgs, chunks_wanted: int):
    """Start both processes, watch until the episode ends; return (chunks, executed rows, statuses, logs)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float64MultiArray

    M = messages()
    node = rclpy.create_node("sim_loop_watch", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    chunks, executed, statuses, queries = [], [], [], []
    node.create_subscription(M.ActionChunk, "/specprune_policy/action_chunk", chunks.append, 50)
    node.create_subscription(Float64MultiArray, "/libero_sim_node/executed_action", lambda m: executed.append(list(m.data)), 500)
    node.create_subscription(M.EpisodeStatus, "/episode_status", statuses.append, latched)
    node.create_subscription(Image, "/agentview/image_raw", lambda m: queries.append(_ns(m.header.stamp)), 50)

    params = write_policy_params(tmp_path / "policy_params.yaml", args)
    logs = {"bridge": tmp_path / "bridge.log", "policy": tmp_path / "policy.log"}
    procs = []
    try:
        with open(logs["bridge"], "w") as out:
            procs.append(subprocess.Popen(bridge_command(args), env=simenv.sim_env(), stdout=out, stderr=subprocess.STDOUT))
        with open(logs["policy"], "w") as out:
            procs.append(
                subprocess.Popen(
                    policy_command(params, python=sys.executable),
                    env=subprocess_env(OMP_NUM_THREADS="1"),  # this process's ROS domain
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=REPO_ROOT,
                )
            )
        end = time.monotonic() + WAIT_S
        while not (statuses and statuses[-1].status in ("success", "timeout", "failure")):
            if time.monotonic() > end or any(p.poll() is not None for p in procs):
                text = "\n".join(f"--- {k}\n{v.read_text()[-2500:]}" for k, v in logs.items())
                pytest.fail(f"the closed loop did not finish an episode (chunks: {len(chunks)}):\n{text}")
            executor.spin_once(timeout_sec=0.1)
        end = time.monotonic() + 30
        while len(executed) < statuses[-1].step and time.monotonic() < end:  # other topic, may trail
            executor.spin_once(timeout_sec=0.1)
    finally:
        stop_process(*procs, sig=signal.SIGTERM, timeout=30)
        node.destroy_node()
    return chunks, executed, statuses, queries, logs


def _check_executed_rows_are_chunk_rows(chunks, executed, statuses, queries) -> int:
    """Each executed block equals the rows of one published chunk computed from a pending observation: all
    its rows, or rows 0..requery_after when the chunk asks for an early re-query."""
    by_stamp: dict[int, np.ndarray] = {}
    for c in chunks:
        by_stamp[_ns(c.header.stamp)] = np.asarray(c.actions).reshape(c.rows, c.cols)
    executed = np.asarray(executed)
    final = statuses[-1]
    assert final.status == "timeout" and executed.shape == (final.step, 7)
    used, i = 0, 0
    for c in chunks:
        rows = np.asarray(c.actions).reshape(c.rows, c.cols)
        if c.requery_after >= 0:
            rows = rows[: c.requery_after + 1]
        n = min(len(rows), final.step - i)
        if i < final.step and np.array_equal(executed[i : i + n], rows[:n]):
            assert _ns(c.header.stamp) in set(queries), "an executed chunk must answer a published observation"
            i += n
            used += 1
    assert i == final.step, f"executed rows {i}..{final.step} match no published chunk"
    return used


def test_fake_policy_closed_loop_runs_chunks(tmp_path, ros_context):
    args = SimLaunchArgs(fake_policy=True, max_steps=24)  # 3 chunks of 8
    chunks, executed, statuses, queries, _ = _run_loop(tmp_path, ros_context, args, 3)
    used = _check_executed_rows_are_chunk_rows(chunks, executed, statuses, queries)
    assert used == 3
    assert statuses[-1].step == 24 and statuses[-1].task == "libero_spatial/0"
    assert {c.cols for c in chunks} == {7} and all(c.preset == "fake" for c in chunks)


def test_tiny_checkpoint_closed_loop(tmp_path, ros_context, tiny_checkpoint):
    """The real policy path: flip + center crop, proprio by FK on the bridge's URDF, un-normalization."""
    args = SimLaunchArgs(checkpoint=str(tiny_checkpoint), unnorm_key="tiny_sim", preset="paper", max_steps=16)
    chunks, executed, statuses, queries, logs = _run_loop(tmp_path, ros_context, args, 2)
    used = _check_executed_rows_are_chunk_rows(chunks, executed, statuses, queries)
    cut = [c for c in chunks if c.requery_after >= 0]  # early re-queries (coarse -> fine inside a chunk)
    assert used == 2 if not cut else used > 2, (used, [c.requery_after for c in chunks])
    assert all(c.tokens_total > 0 and 0 < c.tokens_kept <= 512 for c in chunks)
    assert all(list(c.views) == ["primary", "wrist"] for c in chunks)
    # the LIBERO gripper mapping of config/libero.yaml: the gripper column is exactly +-1
    if (REPO_ROOT / LIBERO_PARAMS).is_file():
        assert set(np.asarray(executed)[:, 6].tolist()) <= {-1.0, 1.0}
