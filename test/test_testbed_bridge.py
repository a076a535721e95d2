"""testbed_sim_node: the ROS-free runner, and the node over real rclpy driven closed loop by the expert."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from ros_env import messages, ros_context, subprocess_env  # noqa: F401  (ros_context is a fixture)

from specprune_ros.testbed import TESTBED_CHECKPOINT
from specprune_ros.testbed.expert import expert_action
from specprune_ros.testbed.ros_bridge import BridgeConfig, TestbedRunner
from specprune_ros.testbed.task import GANTRY_URDF, JOINT_NAMES, TabletopTask


def run_group(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run`` in a session of its own: on a timeout the whole group goes (the loop's bridge and
    policy node too), so that no orphaned node publishes into the tests that follow."""
    import signal

    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def expert_chunk(task: TabletopTask, rows: int = 8) -> np.ndarray:
    """The expert's next ``rows`` actions, planned on a copy of ``task`` (the task itself is not changed)."""
    sim = TabletopTask(task.seed, task.config)
    sim.restore(task.snapshot())
    out = []
    for _ in range(rows):
        if sim.done:
            break
        a = expert_action(sim)
        sim.step(a)
        out.append(a)
    return np.array(out)


def test_runner_executes_rows_and_replaces_chunks():
    r = TestbedRunner(BridgeConfig(seed=3, max_steps=50))
    assert r.status == "waiting"
    assert r.on_chunk(np.zeros((2, 7)))[0] == "no_episode"  # no episode yet
    r.start_episode()
    assert r.status == "running" and r.task.seed == 3
    assert not r.tick()  # nothing queued: the gantry holds and no step is counted
    assert r.task.state.step == 0
    assert r.on_chunk(np.tile([1.0, 0, 0, 0, 0, 0, -1], (4, 1))) is None
    start = r.task.state.ee.copy()
    assert r.tick() and r.tick()
    np.testing.assert_allclose(r.task.state.ee[0] - start[0], 0.02)
    r.on_chunk(np.tile([0, 1.0, 0, 0, 0, 0, -1], (3, 1)))  # replaces the 2 rows left
    for _ in range(5):
        r.tick()
    assert r.task.state.step == 5
    np.testing.assert_allclose(r.task.state.ee[:2] - start[:2], [0.02, 0.03])
    assert r.chunks == 2  # accepted in this episode; a new episode starts counting again
    r.start_episode()
    assert r.chunks == 0


def test_runner_refuses_bad_chunks_with_reasons():
    r = TestbedRunner()
    r.start_episode()
    assert "shape" in r.on_chunk(np.zeros((3, 6)))[1]
    assert "shape" in r.on_chunk(np.zeros((0, 7)))[1]
    assert r.on_chunk(np.full((2, 7), np.nan)) == ("invalid_chunk", "action chunk with NaN or inf refused")
    assert not r.rows and r.chunks == 0  # nothing queued


def test_runner_solves_episodes_with_expert_chunks_and_counts_episodes():
    r = TestbedRunner(BridgeConfig(seed=10, episodes=2))
    for _ in range(2):
        r.start_episode()
        while r.status == "running":
            r.on_chunk(expert_chunk(r.task))
            while r.tick():
                pass
        assert r.status == "success"
    assert not r.more_episodes


def test_runner_times_out():
    r = TestbedRunner(BridgeConfig(max_steps=5))
    r.start_episode()
    r.on_chunk(np.zeros((8, 7)))
    while r.tick():
        pass
    assert r.status == "timeout" and r.task.state.step == 5 and not r.rows


def test_runner_joint_velocities_are_per_tick_and_zero_while_holding():
    for rate, speed in ((20.0, 0.2), (5.0, 0.05)):  # pos_step 0.01 m per row, one row per tick
        r = TestbedRunner(BridgeConfig(control_rate=rate))
        r.start_episode()
        np.testing.assert_array_equal(r.joint_velocities(), np.zeros(len(JOINT_NAMES)))
        r.on_chunk(np.tile([1.0, 0, 0, 0, 0, 0, -1], (1, 1)))
        assert r.tick()
        np.testing.assert_allclose(r.joint_velocities()[:3], [speed, 0, 0])
        assert not r.tick()  # no row left: the gantry holds still
        np.testing.assert_array_equal(r.joint_velocities(), np.zeros(len(JOINT_NAMES)))


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="control_rate"):
        BridgeConfig(control_rate=0)
    with pytest.raises(ValueError, match="episodes"):
        BridgeConfig(episodes=-1)
    with pytest.raises(ValueError, match=r"reset_delay=inf must lie in \[0, 3600\]"):
        BridgeConfig(reset_delay=float("inf"))


def test_node_parameters_are_typed(ros_context):
    from specprune_ros.testbed.ros_bridge import make_node

    node = make_node({"control_rate": 25, "action_chunk_topic": f"/typed_{os.getpid()}"}, context=ros_context)
    try:  # an integer where a float is expected is taken
        assert node.config.control_rate == 25.0 and isinstance(node.config.control_rate, float)
    finally:
        node.destroy_node()
    for bad, message in [({"control_rate": "fast"}, "control_rate='fast': expected float"),
                         ({"reset_delay": float("nan")}, "reset_delay=nan: must be finite"),
                         ({"episodes": 1.5}, "episodes=1.5: expected int")]:
        with pytest.raises(ValueError, match=message):
            make_node(bad, context=ros_context)


def _chunk(msg, stamp_ns: int, rows: int = 2):
    chunk = msg.ActionChunk()
    chunk.header.stamp.sec, chunk.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    chunk.rows, chunk.cols = rows, 7
    chunk.actions = [0.0] * (rows * 7)
    return chunk


def test_node_refuses_future_chunks_parameter_sets_extra_resets_and_names_unknown_parameters(ros_context):
    from rclpy.parameter import Parameter
    from std_srvs.srv import Trigger

    from specprune_ros.ros.diagnostics import ERROR, OK, WARN
    from specprune_ros.testbed.ros_bridge import make_node

    msg = messages()
    node = make_node({"episodes": 1, "episode": 3, "action_chunk_topic": f"/checks_{os.getpid()}"},
                     context=ros_context)
    try:
        level, message, values = node.health.snapshot()  # a typo of `episodes`: ignored, and said so
        assert (level, values["unknown_parameters"]) == (WARN, "episode") and "unknown parameters" in message
        now = node.get_clock().now().nanoseconds
        for _ in range(3):  # stamps before the episode (another clock): dropped, then a WARN that says why
            node._on_chunk(_chunk(msg, 0))
        level, message, values = node.health.snapshot()
        assert level == WARN and "predate" in message and "clocks disagree" in message
        assert values["dropped.stale_chunk"] == "3" and not node.runner.rows
        node._on_chunk(_chunk(msg, now))
        assert node.runner.chunks == 1 and len(node.runner.rows) == 2
        assert "predate" not in node.health.snapshot()[1]
        node._on_chunk(_chunk(msg, now + 10**9, rows=3))  # a second ahead of the bridge's clock: refused
        level, message, values = node.health.snapshot()
        assert level == ERROR and "stamped in the future" in message and values["refused.invalid_chunk"] == "1"
        assert node.runner.chunks == 1 and len(node.runner.rows) == 2  # the queued rows are unchanged
        result = node.set_parameters([Parameter("seed", value=5)])[0]
        assert not result.successful and "read-only" in result.reason and node.config.seed == 0
        assert node.get_parameter("seed").value == 0
        response = node._on_reset(Trigger.Request(), Trigger.Response())  # the one episode is running
        assert not response.success and "all 1 episodes" in response.message and node.runner.episode == 0
    finally:
        node.destroy_node()
    node = make_node({"episodes": 2, "action_chunk_topic": f"/checks_{os.getpid()}"}, context=ros_context)
    try:
        assert node.health.snapshot()[2]["unknown_parameters"] == ""
        sent = []  # what /episode_status receives
        publish = node._pub_status.publish
        node._pub_status.publish = lambda m: (sent.append((m.episode, m.status, m.step)), publish(m))
        node._on_chunk(_chunk(msg, node.get_clock().now().nanoseconds))
        node._tick()
        assert node.runner.task.state.step == 1
        sent.clear()
        assert node._on_reset(Trigger.Request(), Trigger.Response()).success and node.runner.episode == 1
        # the replaced episode ends visibly (its last status), then the next one starts
        assert sent == [(0, "aborted", 1), (1, "running", 0)]
        assert not node._on_reset(Trigger.Request(), Trigger.Response()).success and node.runner.episode == 1
        assert node.health.snapshot()[0] == OK
    finally:
        node.destroy_node()


def test_sigterm_stops_the_node_cleanly():
    """What ros2 launch, docker and systemd send: exit 0, no traceback, at a high control rate (a callback is
    likely running when the context shuts down; several runs make the race likely)."""
    import signal

    cmd = [sys.executable, "-m", "specprune_ros.testbed.ros_bridge", "--ros-args", "-p", "control_rate:=200.0",
           "-p", f"action_chunk_topic:=/sigterm_{os.getpid()}"]
    for _ in range(4):
        proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in proc.stdout:  # running: the first episode has started
            lines.append(line)
            if "episode 0 (seed 0)" in line:
                break
        proc.send_signal(signal.SIGTERM)
        out = "".join(lines) + proc.communicate(timeout=60)[0]
        assert proc.returncode == 0 and "Traceback" not in out, out


# ------------------------------------------------------------------------------------------- over rclpy
def _errors(diagnostics: list) -> list:
    """The ERROR statuses among received DiagnosticArray messages."""
    return [st for m in diagnostics for st in m.status if st.level == b"\x02"]


def test_node_closed_loop_over_ros(ros_context):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    from specprune_ros.testbed.ros_bridge import make_node

    msg = messages()
    topic = f"/testbed_chunks_{os.getpid()}"
    bridge = make_node({"seed": 21, "episodes": 1, "control_rate": 200.0, "action_chunk_topic": topic,
                        "camera_every": 5}, context=ros_context)
    probe = rclpy.create_node("testbed_probe", context=ros_context)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    got: dict = {"images": {}, "joints": None, "status": [], "instruction": None, "urdf": None, "diagnostics": []}
    probe.create_subscription(String, "/instruction", lambda m: got.__setitem__("instruction", m.data), latched)
    probe.create_subscription(String, "/robot_description", lambda m: got.__setitem__("urdf", m.data), latched)
    probe.create_subscription(msg.EpisodeStatus, "/episode_status", lambda m: got["status"].append(m), latched)
    probe.create_subscription(JointState, "/joint_states", lambda m: got.__setitem__("joints", m), 10)
    for view in ("primary", "wrist"):
        probe.create_subscription(Image, f"/{view}/image_raw",
                                  lambda m, v=view: got["images"].__setitem__(v, m), qos_profile_sensor_data)
    from diagnostic_msgs.msg import DiagnosticArray

    probe.create_subscription(DiagnosticArray, "/diagnostics", lambda m: got["diagnostics"].append(m), 10)
    pub = probe.create_publisher(msg.ActionChunk, topic, 10)
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(bridge)
    ex.add_node(probe)
    task = bridge.runner.task
    sent = 0
    deadline = time.monotonic() + 60.0
    try:
        while time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.01)
            if got["status"] and got["status"][-1].status in ("success", "timeout"):
                break
            if got["joints"] is not None and not bridge.runner.rows and bridge.runner.status == "running":
                rows = expert_chunk(task)
                chunk = msg.ActionChunk()
                chunk.sequence = sent
                chunk.rows, chunk.cols = rows.shape
                chunk.actions = rows.reshape(-1).tolist()
                if sent == 0:  # first a chunk from an observation older than the episode: dropped
                    pub.publish(chunk)
                    t_wait = time.monotonic() + 5.0
                    while bridge.dropped_chunks == 0 and time.monotonic() < t_wait:
                        ex.spin_once(timeout_sec=0.01)
                    assert bridge.dropped_chunks == 1 and not bridge.runner.rows
                chunk.header.stamp = got["joints"].header.stamp  # the observation it answers
                if sent == 0:  # then one with a NaN: refused, and /diagnostics says so
                    good = list(chunk.actions)
                    chunk.actions = [float("nan")] + good[1:]
                    pub.publish(chunk)
                    t_wait = time.monotonic() + 5.0
                    while bridge.dropped_chunks == 1 and time.monotonic() < t_wait:
                        ex.spin_once(timeout_sec=0.01)
                    assert bridge.dropped_chunks == 2 and not bridge.runner.rows
                    bridge.publish_diagnostics()
                    t_wait = time.monotonic() + 5.0
                    while not _errors(got["diagnostics"]) and time.monotonic() < t_wait:
                        ex.spin_once(timeout_sec=0.01)
                    chunk.actions = good
                pub.publish(chunk)
                sent += 1
                # wait until the bridge has it, so that the next chunk is planned from the right state
                t_wait = time.monotonic() + 5.0
                while not bridge.runner.rows and bridge.runner.status == "running" and time.monotonic() < t_wait:
                    ex.spin_once(timeout_sec=0.01)
        for _ in range(20):
            ex.spin_once(timeout_sec=0.01)
    finally:
        ex.shutdown()
        probe.destroy_node()
        bridge.destroy_node()
    assert got["instruction"] == task.instruction
    assert got["urdf"] == GANTRY_URDF
    assert got["status"] and got["status"][-1].status == "success" and got["status"][-1].success
    assert got["status"][-1].instruction == task.instruction
    js = got["joints"]
    assert list(js.name) == list(JOINT_NAMES) and len(js.velocity) == len(JOINT_NAMES)
    np.testing.assert_allclose(js.position, task.joint_positions())
    for view in ("primary", "wrist"):
        img = got["images"][view]
        assert (img.encoding, img.height, img.width, img.step) == ("rgb8", 224, 224, 224 * 3)
    assert 1 < sent < 40
    errors = _errors(got["diagnostics"])
    assert errors, "no ERROR on /diagnostics after the NaN chunk"
    status = errors[0]
    values = {kv.key: kv.value for kv in status.values}
    assert status.name == "testbed_sim_node: simulator" and status.level == b"\x02"
    assert "NaN" in status.message and values["refused.invalid_chunk"] == "1" and values["dropped.stale_chunk"] == "1"
    level, message, values = bridge.health.snapshot()  # the chunks after it ran: OK again
    assert (level, message) == (0, "episode 0: success") and values["chunks_accepted"] == str(sent)


def test_ros_loop_runs_both_nodes_and_reports_each_episode(tmp_path):
    """The whole ROS path as child processes: bridge + policy node (fake policy), episodes watched to their end."""
    cmd = [sys.executable, "-m", "specprune_ros.testbed.ros_loop", "--fake-policy", "--episodes=2", "--seed=21",
           "--max-steps=16", "--control-rate=40", "--json", f"--log-dir={tmp_path}"]
    out = run_group(cmd, timeout=240)
    assert out.returncode == 0, out.stderr + "".join(p.read_text()[-2000:] for p in tmp_path.glob("*.log"))
    records = json.loads(out.stdout)
    assert [r["seed"] for r in records] == [21, 22]
    for r in records:
        assert r["instruction"] == TabletopTask(r["seed"]).instruction
        assert r["status"] == "timeout" and not r["success"] and r["steps"] == 16
        assert r["chunks"] >= 2  # 16 rows need at least two 8-row chunks (counted by the bridge)
    assert '"control_dt": 0.025' in (tmp_path / "policy.yaml").read_text()  # the bridge's period, 1 / 40 Hz
    assert {p.name for p in tmp_path.glob("*.log")} == {"task_bridge.log", "policy_node.log"}


def test_ros_loop_refuses_a_missing_checkpoint(tmp_path):
    cmd = [sys.executable, "-m", "specprune_ros.testbed.ros_loop", f"--checkpoint={tmp_path / 'nope'}"]
    out = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "config.json" in out.stderr
    # an unknown preset is refused at once (the node would refuse it and the loop wait for statuses)
    cmd = [sys.executable, "-m", "specprune_ros.testbed.ros_loop", "--fake-policy", "--preset=papr"]
    out = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "did you mean 'paper'" in out.stderr


def test_ros_loop_stops_when_the_policy_node_cannot_load_its_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(TESTBED_CHECKPOINT, ckpt)
    (ckpt / "model.safetensors").write_bytes((TESTBED_CHECKPOINT / "model.safetensors").read_bytes()[:1000])
    cmd = [sys.executable, "-m", "specprune_ros.testbed.ros_loop", f"--checkpoint={ckpt}", "--episodes=1",
           f"--log-dir={tmp_path / 'logs'}"]
    # the node stays up, unconfigured, and says why on /diagnostics: the loop stops there instead of waiting
    out = run_group(cmd, timeout=240)
    assert out.returncode == 1 and "the policy node could not start: configure failed" in out.stderr, out.stderr
    assert "model.safetensors" in out.stderr
