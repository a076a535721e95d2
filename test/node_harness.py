"""In-process harness for policy-node tests: the node, a peer node that plays robot and cameras, an executor.

The peer publishes synthetic camera frames and joint states from a feeder thread at a set rate, stamped
with the current ROS time; knobs on :class:`Feeder` inject faults (bad encoding, wrong size, NaN joints,
missing joints, old stamps, frozen frames) while it runs, so a test can watch refusal and recovery.
"""
from __future__ import annotations

import itertools
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import rclpy
from ros_env import messages  # noqa: F401  (makes the generated messages importable)

PANDA_URDF = (Path(__file__).parent / "fixtures" / "panda.urdf").read_text()
ARM = [f"panda_joint{i}" for i in range(1, 8)]
FINGERS = ["panda_finger_joint1", "panda_finger_joint2"]
READY = [0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4]
NODE = "specprune_policy"
_instances = itertools.count()


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``cond`` until true; AssertionError naming ``what`` after ``timeout`` s (a hang guard, not a timing check)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Feeder(threading.Thread):
    """Publishes frames for every view and a joint state at ``rate`` Hz until stopped."""

    def __init__(self, harness: "Harness", rate: float = 30.0, size: int = 64) -> None:
        super().__init__(daemon=True)
        self.h = harness
        self.rate = rate
        self.size = size
        self.encoding = "rgb8"
        self.bad_step = False  # data shorter than height * step
        self.stamp_offset = 0.0  # seconds added to every stamp (negative: old data)
        self.camera_stamp_offset = 0.0  # seconds added to camera stamps only
        self.view_stamp_offset: dict[int, float] = {}  # camera index -> extra seconds
        self.bad_value = float("nan")  # value written into ``nan_joint``
        self.camera_on = True
        self.freeze = False
        self.nan_joint: str | None = None
        self.drop_joint: str | None = None
        self.joint_velocities: list[float] | None = None
        self.compressed_payload: bytes | None = None  # replaces the PNG of compressed cameras when set
        self.q = list(READY)
        self.count = 0
        self.published: list[float] = []  # stamps of primary frames
        self._halt = threading.Event()

    def frame(self, view_index: int) -> np.ndarray:
        return self.frame_at(view_index, 0 if self.freeze else self.count)

    def frame_at(self, view_index: int, k: int) -> np.ndarray:
        """The frame of camera ``view_index`` in publishing cycle ``k`` (deterministic)."""
        rng = np.random.default_rng(1000 * view_index + k)
        return rng.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)

    def run(self) -> None:
        from sensor_msgs.msg import Image, JointState

        period = 1.0 / self.rate
        while not self._halt.is_set():
            now = self.h.io.get_clock().now().nanoseconds * 1e-9 + self.stamp_offset
            stamp = _stamp(now)
            cam_stamp = _stamp(now + self.camera_stamp_offset)
            if self.camera_on:
                for i, pub in enumerate(self.h.cam_pubs):
                    rgb = self.frame(i)
                    if self.h.compressed[i]:  # lossless PNG, so the decoded frame equals ``rgb``
                        import cv2
                        from sensor_msgs.msg import CompressedImage

                        cmsg = CompressedImage()
                        cmsg.header.stamp = cam_stamp
                        cmsg.format = "rgb8; png compressed bgr8"
                        cmsg.data = self.compressed_payload or cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))[1].tobytes()
                        pub.publish(cmsg)
                        continue
                    msg = Image()
                    msg.header.stamp = cam_stamp if i not in self.view_stamp_offset else _stamp(
                        now + self.camera_stamp_offset + self.view_stamp_offset[i]
                    )
                    msg.height, msg.width = rgb.shape[:2]
                    msg.encoding = self.encoding
                    msg.step = rgb.shape[1] * 3
                    data = rgb.tobytes()
                    msg.data = data[:-5] if self.bad_step else data
                    pub.publish(msg)
                self.published.append(now + self.camera_stamp_offset)
            js = JointState()
            js.header.stamp = stamp
            names = ARM + FINGERS
            pos = list(self.q) + [0.04, 0.04]
            if self.nan_joint in names:
                pos[names.index(self.nan_joint)] = self.bad_value
            if self.drop_joint in names:
                i = names.index(self.drop_joint)
                names = names[:i] + names[i + 1 :]
                pos = pos[:i] + pos[i + 1 :]
            js.name = names
            js.position = pos
            if self.joint_velocities is not None:
                js.velocity = list(self.joint_velocities)[: len(names)]
            self.h.joint_pub.publish(js)
            self.count += 1
            self._halt.wait(period)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def _stamp(t: float):
    from builtin_interfaces.msg import Time

    ns = int(round(t * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


class Harness:
    """PolicyNode + a peer node, each spun by its own executor in a background thread."""

    def __init__(
        self,
        context,
        params: dict[str, Any],
        policy_factory=None,
        configure: bool = True,
        activate: bool = True,
        urdf: str | None = PANDA_URDF,
        instruction: str | None = "pick up the red block",
    ) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import TwistStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter import Parameter
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float64, String
        from trajectory_msgs.msg import JointTrajectory

        from specprune_ros.msg import ActionChunk, InferenceStats
        from specprune_ros.ros.policy_node import PolicyNode

        k = next(_instances)
        self.name = NODE if k == 0 else f"{NODE}_{k}"  # harnesses alive at once must not share topics
        ns = f"/test{k}"
        base = {
            "camera_views": ["primary", "wrist"],
            "camera_topics": [f"{ns}/primary/image", f"{ns}/wrist/image"],
            "robot_description_topic": f"{ns}/robot_description",
            "joint_states_topic": f"{ns}/joint_states",
            "instruction_topic": f"{ns}/instruction",
            "twist_topic": f"{ns}/servo/delta_twist_cmds",
            "joint_trajectory_topic": f"{ns}/arm_controller/joint_trajectory",
            "gripper_topic": f"{ns}/gripper/command",
            "diagnostics_period": 0.1,
            "frozen_timeout": 0.0,
            "warmup": False,  # tests count the policy's calls
            "gripper_scales": [1.0, -1.0],
        }
        base.update(params)
        self.params = base
        overrides = [Parameter(k, value=v) for k, v in base.items()]
        self.node = PolicyNode(self.name, context=context, parameter_overrides=overrides, policy_factory=policy_factory)
        self.io = rclpy.create_node(f"test_peer{k}", context=context)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        from sensor_msgs.msg import CompressedImage

        self.compressed = list(base.get("camera_compressed") or [False] * len(base["camera_topics"]))
        self.cam_pubs = [
            self.io.create_publisher(CompressedImage if c else Image, t, qos_profile_sensor_data)
            for t, c in zip(base["camera_topics"], self.compressed)
        ]
        self.joint_pub = self.io.create_publisher(JointState, base["joint_states_topic"], qos_profile_sensor_data)
        self.instruction_pub = self.io.create_publisher(String, base["instruction_topic"], latched)
        self.urdf_pub = self.io.create_publisher(String, base["robot_description_topic"], latched)
        self.chunks: list = []
        self.stats: list = []
        self.diags: list = []
        self.twists: list = []
        self.trajectories: list = []
        self.grippers: list = []
        self.debug_images: list = []
        self._lock = threading.Lock()
        sub = self.io.create_subscription
        sub(ActionChunk, f"/{self.name}/action_chunk", self._keep(self.chunks), 100)
        sub(InferenceStats, f"/{self.name}/inference_stats", self._keep(self.stats), 100)
        sub(DiagnosticArray, "/diagnostics", self._keep_diag, 100)
        sub(TwistStamped, base["twist_topic"], self._keep(self.twists), 100)
        sub(JointTrajectory, base["joint_trajectory_topic"], self._keep(self.trajectories), 100)
        sub(Float64, base["gripper_topic"], self._keep(self.grippers), 100)
        sub(Image, f"/{self.name}/debug_image", self._keep(self.debug_images), qos_profile_sensor_data)
        if urdf is not None:
            self.urdf_pub.publish(String(data=urdf))
        if instruction is not None:
            self.instruction_pub.publish(String(data=instruction))
        # One single-threaded executor per node, each on its own thread, as when they run as separate
        # processes. (A MultiThreadedExecutor busy-polls while a callback group is busy and starves the
        # feeder and the node of the GIL on a small machine.)
        self.executors = []
        self._spins = []
        for node in (self.node, self.io):
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(node)
            thread = threading.Thread(target=executor.spin, daemon=True)
            thread.start()
            self.executors.append(executor)
            self._spins.append(thread)
        self.feeder: Feeder | None = None
        if configure:
            self.configure_result = self.node.trigger_configure()
            if activate:
                self.node.trigger_activate()

    def _keep(self, store: list, limit: int | None = None):
        def cb(msg) -> None:
            with self._lock:
                store.append(msg)
                if limit is not None and len(store) > limit:
                    del store[0]

        return cb

    def _keep_diag(self, msg) -> None:
        if msg.status and msg.status[0].hardware_id == self.name:
            with self._lock:
                self.diags.append(msg)
                if len(self.diags) > 50:
                    del self.diags[0]

    def feed(self, rate: float = 30.0, size: int = 64) -> Feeder:
        self.feeder = Feeder(self, rate, size)
        self.feeder.start()
        return self.feeder

    def n_chunks(self) -> int:
        with self._lock:
            return len(self.chunks)

    def last_diag(self) -> tuple[int, str, dict[str, str]] | None:
        with self._lock:
            if not self.diags:
                return None
            status = self.diags[-1].status[0]
        return status.level[0], status.message, {kv.key: kv.value for kv in status.values}

    def wait_diag(self, cond: Callable[[int, str, dict[str, str]], bool], timeout: float = 30.0, what: str = "diagnostic"):
        """Wait for a /diagnostics status published after this call that satisfies ``cond``."""
        with self._lock:
            start = len(self.diags)
            self.diags.clear()

        def check() -> bool:
            with self._lock:
                items = list(self.diags)
            for d in items:
                s = d.status[0]
                if cond(s.level[0], s.message, {kv.key: kv.value for kv in s.values}):
                    return True
            return False

        del start
        wait_until(check, timeout, what)
        return self.last_diag()

    def wait_chunks(self, n: int, timeout: float = 30.0) -> None:
        wait_until(lambda: self.n_chunks() >= n, timeout, f"{n} action chunks (have {self.n_chunks()})")

    def close(self) -> None:
        if self.feeder is not None:
            self.feeder.stop()
        try:
            self.node.trigger_shutdown()
        except Exception:  # noqa: BLE001 - already shut down or never configured
            pass
        for executor in self.executors:
            executor.shutdown(timeout_sec=5)
        for thread in self._spins:
            thread.join(timeout=5)
        self.node.destroy_node()
        self.io.destroy_node()
