"""libero_sim_node end to end: the real LIBERO simulator in .venv-sim, driven over ROS 2 from this process.

One bridge process serves the whole module (creating the simulator takes seconds); the tests run in
order through one short episode (max_steps=12): observation, a stale chunk, a valid chunk, the step
limit, then the reset service. Waits are for events (with a generous cap), never timing assertions. Skips with the reason when the simulator environment is missing.
"""
from __future__ import annotations

import signal
import subprocess
import time

import numpy as np
import pytest

from ros_env import messages  # noqa: F401  (sets up the generated messages and a private ROS domain)

from specprune_ros.rosenv import stop_process
from specprune_ros.sim import simenv
from specprune_ros.sim.launching import SimLaunchArgs, bridge_command

REASON = simenv.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))

MAX_STEPS = 12
WAIT_S = 120.0  # generous upper bound for a loaded 2-core machine; tests wait for events, never assert times


class Client:
    """A test node that records everything the bridge publishes."""

    def __init__(self, context) -> None:
        import rclpy
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from geometry_msgs.msg import PoseStamped
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float64MultiArray, String
        from std_srvs.srv import Trigger

        M = messages()
        self.M = M
        self.node = rclpy.create_node("sim_bridge_test", context=context)
        from rclpy.executors import SingleThreadedExecutor

        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.images: dict[str, list] = {"agentview": [], "wrist": []}
        self.joints: list = []
        self.poses: list = []
        self.status: list = []
        self.executed: list[list[float]] = []
        self.clock: list[int] = []
        self.strings: dict[str, str] = {}
        n = self.node
        n.create_subscription(Image, "agentview/image_raw", lambda m: self.images["agentview"].append(m), 10)
        n.create_subscription(Image, "wrist/image_raw", lambda m: self.images["wrist"].append(m), 10)
        n.create_subscription(JointState, "joint_states", self.joints.append, 50)
        n.create_subscription(PoseStamped, "ee_pose", self.poses.append, 50)
        # every status, not the last one only: a reset publishes the replaced episode's 'aborted', then 'waiting'
        statuses = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        n.create_subscription(M.EpisodeStatus, "episode_status", self.status.append, statuses)
        n.create_subscription(Float64MultiArray, "libero_sim_node/executed_action", lambda m: self.executed.append(list(m.data)), 100)
        n.create_subscription(Clock, "/clock", lambda m: self.clock.append(m.clock.sec * 10**9 + m.clock.nanosec), 50)
        n.create_subscription(String, "instruction", lambda m: self.strings.__setitem__("instruction", m.data), latched)
        n.create_subscription(String, "robot_description", lambda m: self.strings.__setitem__("urdf", m.data), latched)
        self.chunks = n.create_publisher(M.ActionChunk, "/specprune_policy/action_chunk", 10)
        self.reset = n.create_client(Trigger, "libero_sim_node/reset")

    def spin_until(self, predicate, what: str, timeout: float = WAIT_S) -> None:
        end = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > end:
                pytest.fail(f"timed out waiting for {what}")
            self.executor.spin_once(timeout_sec=0.1)

    def chunk(self, stamp, actions: np.ndarray):
        msg = self.M.ActionChunk()
        msg.header.stamp = stamp
        msg.rows, msg.cols = actions.shape
        msg.actions = actions.reshape(-1).tolist()
        return msg

    def latest_query(self):
        """(stamp, episode status) of the newest camera frame."""
        return self.images["agentview"][-1].header.stamp


def _ns(stamp) -> int:
    return stamp.sec * 10**9 + stamp.nanosec


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    import rclpy
    from rclpy.context import Context

    from ros_env import ensure

    ensure()
    # no idle ticks during these tests (they would shift the stamps the tests compare); the closed-loop
    # test exercises them
    cmd = bridge_command(SimLaunchArgs(fake_policy=True, max_steps=MAX_STEPS), extra={"idle_tick_period": 600.0})
    log = tmp_path_factory.mktemp("bridge") / "bridge.log"
    context = Context()
    rclpy.init(context=context)
    client = Client(context)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=simenv.sim_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        yield client, proc, log
    finally:
        client.node.destroy_node()
        rclpy.shutdown(context=context)
        stop_process(proc, sig=signal.SIGTERM, timeout=30)


def test_publishes_cameras_joints_pose_and_task(bridge):
    client, proc, log = bridge
    client.spin_until(
        lambda: client.images["agentview"] and client.images["wrist"] or proc.poll() is not None, "both cameras"
    )
    assert proc.poll() is None, f"the bridge exited:\n{log.read_text()[-3000:]}"
    a, w = client.images["agentview"][0], client.images["wrist"][0]
    for img in (a, w):
        assert (img.width, img.height, img.encoding, img.step) == (256, 256, "rgb8", 768)
        assert len(img.data) == 256 * 256 * 3
    assert _ns(a.header.stamp) == _ns(w.header.stamp)
    frame = np.frombuffer(bytes(a.data), dtype=np.uint8).reshape(256, 256, 3)
    assert frame.std() > 5  # a rendered scene, not a blank image
    # the first query comes after the 10 wait steps: 1.0 s start + 10 x 0.05 s of simulated time
    assert _ns(a.header.stamp) == 1_500_000_000
    client.spin_until(lambda: client.joints and client.poses and client.clock, "joint states, pose and clock")
    js = client.joints[-1]
    assert list(js.name) == [f"robot0_joint{i}" for i in range(1, 8)] + ["gripper0_finger_joint1", "gripper0_finger_joint2"]
    assert len(js.position) == 9 and np.all(np.isfinite(js.position))
    assert client.poses[-1].header.frame_id == "world"
    client.spin_until(lambda: "instruction" in client.strings and "urdf" in client.strings, "instruction and URDF")
    assert client.strings["instruction"].startswith("pick up the black bowl")
    client.spin_until(lambda: client.status and client.status[-1].status == "running", "status running")
    st = client.status[-1]
    assert (st.task, st.episode, st.step, st.max_steps) == ("libero_spatial/0", 0, 0, MAX_STEPS)


def test_robot_description_matches_reported_ee_pose(bridge):
    """FK of the published URDF at the published joint positions gives the published EE pose."""
    pin = pytest.importorskip("pinocchio")
    client, _, _ = bridge
    stamp = _ns(client.latest_query())
    js = next(m for m in reversed(client.joints) if _ns(m.header.stamp) == stamp)
    pose = next(m for m in reversed(client.poses) if _ns(m.header.stamp) == stamp)
    model = pin.buildModelFromXML(client.strings["urdf"])
    data = model.createData()
    q = np.zeros(model.nq)
    for name, value in zip(js.name, js.position):
        q[model.joints[model.getJointId(name)].idx_q] = value
    pin.framesForwardKinematics(model, data, q)
    tip = data.oMf[model.getFrameId("libero_eef")]
    p = pose.pose.position
    o = pose.pose.orientation
    # the observation sensors sample within the last control step: sub-millimetre agreement, not bit-exact
    np.testing.assert_allclose(tip.translation, [p.x, p.y, p.z], atol=2e-3)
    quat = np.asarray(pin.Quaternion(tip.rotation).coeffs())  # (x, y, z, w)
    assert abs(float(np.dot(quat, [o.x, o.y, o.z, o.w]))) > 0.999


def test_node_proprio_matches_the_training_proprio_on_libero_states(bridge):
    """The policy node's proprio (FK through the published URDF, config/libero.yaml's layout) equals
    ``SimFrame.proprio()`` of MuJoCo's own EE pose: the training convention, axis-angle included."""
    from specprune_ros.core.kinematics import KinematicModel
    from specprune_ros.core.proprio import ProprioBuilder
    from specprune_ros.ros.parameters import check_params_file
    from specprune_ros.sim.launching import LIBERO_PARAMS, REPO_ROOT
    from specprune_ros.sim.protocol import libero_proprio

    client, _, _ = bridge
    client.spin_until(lambda: "urdf" in client.strings and client.status and client.status[-1].status == "running", "running")
    cfg, _ = check_params_file(REPO_ROOT / LIBERO_PARAMS)
    builder = ProprioBuilder(cfg.proprio_config(), KinematicModel(client.strings["urdf"], cfg.ee_frame, tuple(cfg.arm_joints)))
    poses = {_ns(m.header.stamp): m for m in client.poses}
    pairs = [(js, poses[_ns(js.header.stamp)]) for js in client.joints if _ns(js.header.stamp) in poses]
    assert pairs, "no joint state with a pose of the same stamp"
    # initial state 0 of libero_spatial task 0 has MuJoCo's w < 0 (angle > pi): where the conventions differ
    assert any(pose.pose.orientation.w < 0 for _, pose in pairs)
    for js, pose in pairs:
        o, p = pose.pose.orientation, pose.pose.position
        names = list(js.name)
        fingers = [js.position[names.index(j)] for j in cfg.gripper_joints]
        want = libero_proprio([p.x, p.y, p.z], [o.x, o.y, o.z, o.w], fingers)
        got = builder.vector(dict(zip(names, js.position)))
        # measured within 1e-3 (the sensors sample within the step); a flipped axis is off by about 6 rad
        np.testing.assert_allclose(got, want, atol=2e-3)


def test_executes_only_chunks_for_the_pending_observation_in_order(bridge):
    client, _, _ = bridge
    query = client.latest_query()
    stale = client.chunk(type(query)(sec=query.sec - 1, nanosec=query.nanosec), np.full((8, 7), 0.5))
    rows = (np.arange(8 * 7, dtype=np.float64).reshape(8, 7) - 28.0) / 300.0  # (8, 7), small deltas
    rows[:, 6] = [-1, -1, 1, 1, -1, 1, -1, 1]
    images_before = len(client.images["agentview"])
    client.chunks.publish(stale)  # computed from another observation: must be dropped
    client.chunks.publish(client.chunk(query, rows))
    client.spin_until(lambda: len(client.executed) >= 8, "8 executed actions")
    np.testing.assert_array_equal(np.asarray(client.executed[:8]), rows)
    # the next observation is 8 control steps later in simulated time, and the clock followed the steps
    client.spin_until(lambda: len(client.images["agentview"]) > images_before, "the next observation")
    nxt = _ns(client.latest_query())
    assert nxt == _ns(query) + 8 * 50_000_000
    client.spin_until(lambda: client.clock and client.clock[-1] == nxt, "the clock at the new observation")
    assert all(b >= a for a, b in zip(client.clock, client.clock[1:]))
    client.spin_until(lambda: client.status[-1].step == 8, "status step 8")
    assert client.status[-1].status == "running"
    assert client.status[-1].chunks == 1  # the stale chunk was not counted
    assert len(client.executed) == 8  # the stale chunk executed nothing


def test_episode_ends_at_max_steps(bridge):
    client, _, _ = bridge
    query = client.latest_query()
    client.chunks.publish(client.chunk(query, np.zeros((8, 7))))
    client.spin_until(lambda: client.status[-1].status != "running", "the end of the episode")
    st = client.status[-1]
    assert (st.status, st.step, st.success) == ("timeout", MAX_STEPS, False)  # only 4 of the 8 rows fitted
    assert st.chunks == 2  # the episode's chunks: the previous test's valid one and this one
    client.spin_until(lambda: len(client.executed) >= MAX_STEPS, "the last executed actions")  # other topic
    np.testing.assert_array_equal(np.asarray(client.executed[8:]), np.zeros((MAX_STEPS - 8, 7)))


def test_reset_starts_the_next_initial_state(bridge):
    client, _, _ = bridge
    assert client.reset.wait_for_service(timeout_sec=30.0)
    before = len(client.images["agentview"])
    future = client.reset.call_async(client.reset.srv_type.Request())
    client.spin_until(future.done, "the reset response")
    res = future.result()
    assert res.success, res.message
    assert "episode 1" in res.message and "initial state 1" in res.message
    client.spin_until(lambda: len(client.images["agentview"]) > before, "the first observation of episode 1")
    client.spin_until(lambda: client.status[-1].status == "running", "episode 1 running")
    assert (client.status[-1].episode, client.status[-1].step) == (1, 0)


def test_a_reset_mid_episode_ends_the_running_episode_as_aborted(bridge):
    client, _, _ = bridge
    assert client.status[-1].status == "running" and client.status[-1].episode == 1
    seen = len(client.status)
    future = client.reset.call_async(client.reset.srv_type.Request())
    client.spin_until(future.done, "the reset response")
    assert future.result().success, future.result().message
    client.spin_until(lambda: client.status[-1].episode == 2 and client.status[-1].status == "running", "episode 2 running")
    after = [(m.episode, m.status) for m in client.status[seen:]]
    assert after[0] == (1, "aborted") and (2, "waiting") in after, after


@pytest.mark.parametrize(
    "params,message",
    [
        ({"suite": "libero_spatail"}, "did you mean 'libero_spatial'"),
        ({"task_id": 12}, "task_id=12 is out of range: libero_spatial has tasks 0..9"),
    ],
)
def test_bad_parameters_exit_with_the_reason(params, message):
    args = SimLaunchArgs(fake_policy=True)
    cmd = bridge_command(args, extra=params)
    out = subprocess.run(cmd, env=simenv.sim_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr and "Traceback" not in out.stderr
