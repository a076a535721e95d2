"""``testbed_sim_node``: the test-bed task behind ROS 2 topics, in real time.

    tools/ros_env.sh .venv/bin/testbed_sim_node --ros-args -p seed:=0 -p episodes:=10

Publishes (relative names, so a namespace or remapping applies):
    ``primary/image_raw``, ``wrist/image_raw`` (sensor_msgs/Image, rgb8, 224x224, sensor-data QoS),
    ``joint_states`` (sensor_msgs/JointState: gantry_x/y/z, gripper_yaw, finger_left/right; positions and
    velocities), ``instruction`` and ``robot_description`` (std_msgs/String, reliable + transient local; the
    gantry URDF whose ``tcp`` frame is the tool point) and ``episode_status`` (specprune_ros/EpisodeStatus,
    transient local), and ``/diagnostics`` once a second (diagnostic_msgs/DiagnosticArray, status
    ``testbed_sim_node: simulator``: ERROR after a refused chunk, WARN after stale chunks in a row or unknown
    parameters, with counts of refused and dropped chunks).
Subscribes: ``action_chunk_topic`` (specprune_ros/ActionChunk, default ``/specprune_policy/action_chunk``,
the policy node's output). Service: ``~/reset`` (std_srvs/Trigger): start the next episode now (a running
episode first gets a last ``episode_status`` of ``aborted``; refused once all ``episodes`` have started). The
parameters are read-only: read at start-up.

Time is the node's clock (wall time, or /clock with ``use_sim_time``). A timer at ``control_rate`` executes
one row of the newest chunk per tick (a new chunk replaces the rows left of the previous one) and then
publishes the joint states and, every ``camera_every`` ticks, both camera images with the same stamp. When no
row is left the gantry holds still and the episode's step counter does not advance (a slow policy costs
wall time, not task steps). Episodes end on success or after ``max_steps`` executed rows; with
``auto_reset`` the next seed starts ``reset_delay`` seconds later, until ``episodes`` have run (0 = forever).

The ROS-free part (:class:`TestbedRunner`) holds all the logic and is tested without ROS.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, fields

import numpy as np

from ..core.controller import step_dt_problem
from ..ros.diagnostics import INVALID_CHUNK, NO_EPISODE, STALE_CHUNK, STEP_DT
from .task import GANTRY_URDF, JOINT_NAMES, TabletopTask, TaskConfig

NODE_NAME = "testbed_sim_node"
CAMERA_TOPICS = {"primary": "primary/image_raw", "wrist": "wrist/image_raw"}
ACTION_DIM = 7


@dataclass(frozen=True)
class BridgeConfig:
    """The node's parameters (``--ros-args -p name:=value``); see :data:`PARAM_DOC`."""

    seed: int = 0
    episodes: int = 0
    max_steps: int = 240
    control_rate: float = 20.0
    camera_every: int = 1
    auto_reset: bool = True
    reset_delay: float = 1.0
    action_chunk_topic: str = "/specprune_policy/action_chunk"
    frame_id: str = "world"

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")
        if self.episodes < 0:
            raise ValueError(f"episodes={self.episodes} must be >= 0 (0 = run forever)")
        if self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps} must be >= 1")
        if not 0 < self.control_rate <= 200:
            raise ValueError(f"control_rate={self.control_rate} must lie in (0, 200] Hz (the task was trained at 20)")
        if self.camera_every < 1:
            raise ValueError(f"camera_every={self.camera_every} must be >= 1 tick")
        if not 0 <= self.reset_delay <= 3600:
            raise ValueError(f"reset_delay={self.reset_delay} must lie in [0, 3600] seconds")
        if not self.action_chunk_topic:
            raise ValueError("action_chunk_topic is empty: name the policy node's ActionChunk topic")


PARAM_DOC = {
    "seed": "task seed of the first episode; episode k uses seed + k",
    "episodes": "episodes to run, 0 = keep going",
    "max_steps": "executed control steps before an episode times out",
    "control_rate": "Hz: action rows executed (and joint states published) per second; the policy was trained at 20",
    "camera_every": "publish the camera images every this many control ticks",
    "auto_reset": "start the next episode reset_delay seconds after one ends",
    "reset_delay": "seconds between the end of an episode and the next one",
    "action_chunk_topic": "specprune_ros/ActionChunk topic to execute",
    "frame_id": "frame_id of the joint states (the URDF root link is `world`)",
}


def policy_control_dt(control_rate: float) -> float:
    """The policy node's control period for a bridge executing rows at ``control_rate`` Hz: ``1 / control_rate``;
    ValueError outside [0.1, 200] Hz (the node's ``control_dt`` lies in [0.001, 10] s)."""
    if not 0.1 <= control_rate <= 200:
        raise ValueError(f"control_rate={control_rate} must lie in [0.1, 200] Hz: the policy node runs its control "
                         "loop at the bridge's rate (control_dt = 1 / control_rate, at most 10 s)")
    return 1.0 / control_rate


def policy_node_parameters(checkpoint: str, preset: str = "paper", device: str = "cpu", fake_policy: bool = False,
                           control_rate: float = BridgeConfig.control_rate) -> dict:
    """Parameters of ``policy_node`` (``specprune_policy``) for the test bed: topics, gantry kinematics, proprio.

    The proprio is LIBERO's layout from the joint states through the gantry URDF (``tcp`` frame): EE position,
    EE axis-angle, finger positions scaled (1, -1), exactly the task's ``proprio()``. The node only publishes
    chunks (``dry_run``); the bridge executes them. The bridge's ``episode_status`` resets the policy's pruning
    state and the node's chunk at each new episode. The bridge executes whole chunks (it ignores
    ``ActionChunk.requery_after``), so the node does too (``honor_requery`` false): otherwise its executed-row
    bookkeeping would disagree with what the bridge ran. The node's control period (``control_dt``) is the
    bridge's (``1 / control_rate``), so that it queries again when the bridge has executed the chunk's rows.
    The frozen-camera check is off (``frozen_timeout`` 0), as for LIBERO: a simulator renders identical frames
    while the gantry waits for its first chunk, and a node that took longer than the check's 2 s to receive the
    instruction and URDF would refuse those frames forever, the gantry waiting for a chunk that never comes.
    ``launch/testbed.launch.py`` and :mod:`~specprune_ros.testbed.ros_loop` start the node with these.
    """
    return {
        "checkpoint": checkpoint,
        "preset": preset,
        "device": device,
        "dtype": "float32",
        "fake_policy": fake_policy,
        "autostart": True,
        "camera_views": ["primary", "wrist"],
        "camera_topics": ["/" + CAMERA_TOPICS["primary"], "/" + CAMERA_TOPICS["wrist"]],
        "joint_states_topic": "/joint_states",
        "instruction_topic": "/instruction",
        "robot_description_topic": "/robot_description",
        "episode_status_topic": "/episode_status",
        "honor_requery": False,
        "ee_frame": "tcp",
        "arm_joints": list(JOINT_NAMES[:4]),
        "proprio_sources": ["libero"],
        "gripper_joints": list(JOINT_NAMES[4:]),
        "gripper_scales": [1.0, -1.0],
        "base_frame": "world",
        "control_dt": policy_control_dt(control_rate),
        "frozen_timeout": 0.0,
        "dry_run": True,
    }


class TestbedRunner:
    """Episode bookkeeping and chunk execution, without ROS.

    ``on_chunk`` accepts a (rows, 7) action array (replacing any rows left); ``tick`` executes one row and
    returns True if it did. ``status`` is waiting / running / success / timeout (a bridge reports a running
    episode that a reset replaces as aborted).
    """

    __test__ = False  # not a pytest class

    def __init__(self, config: BridgeConfig = BridgeConfig()) -> None:
        self.config = config
        self.episode = -1
        self.task: TabletopTask | None = None
        self.rows: list[np.ndarray] = []
        self.executed = 0
        self.chunks = 0  # chunks accepted in the current episode
        self.moved = False  # the last tick executed a row

    @property
    def status(self) -> str:
        if self.task is None:
            return "waiting"
        if self.task.success:
            return "success"
        if self.task.done:
            return "timeout"
        return "running"

    @property
    def more_episodes(self) -> bool:
        return self.config.episodes == 0 or self.episode + 1 < self.config.episodes

    def start_episode(self) -> TabletopTask:
        self.episode += 1
        self.task = TabletopTask(self.config.seed + self.episode, TaskConfig(max_steps=self.config.max_steps))
        self.rows = []
        self.chunks = 0
        self.moved = False
        return self.task

    def on_chunk(self, actions: np.ndarray) -> tuple[str, str] | None:
        """Queue a chunk; returns None, or ``(reason, message)`` why it was refused (nothing changes then):
        ``invalid_chunk`` or ``no_episode`` (ros.diagnostics)."""
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] != ACTION_DIM:
            return INVALID_CHUNK, (f"action chunk of shape {a.shape} refused: the test bed needs "
                                   f"(rows >= 1, {ACTION_DIM})")
        if not np.all(np.isfinite(a)):
            return INVALID_CHUNK, "action chunk with NaN or inf refused"
        if self.status != "running":
            return NO_EPISODE, f"action chunk dropped: no episode is running ({self.status})"
        self.rows = list(a)
        self.chunks += 1
        return None

    def tick(self) -> bool:
        self.moved = False
        if self.status != "running" or not self.rows:
            return False
        self.task.step(self.rows.pop(0))
        self.executed += 1
        self.moved = True
        if self.task.done:
            self.rows = []
        return True

    def joint_velocities(self) -> np.ndarray:
        """Joint velocities over the last tick (m/s, rad/s), shape (6,): the last row's motion over the tick
        period ``1 / control_rate`` (not the task's step of ``control_dt``), zero when the tick executed none."""
        if self.task is None or not self.moved:
            return np.zeros(len(JOINT_NAMES))
        return self.task.joint_velocities() * (self.task.config.control_dt * self.config.control_rate)


def make_node(config_overrides: dict | None = None, **node_kwargs):
    """Create the bridge node (rclpy must be initialized). ``config_overrides`` set parameters in tests."""
    from rclpy.node import Node

    from specprune_ros.ros.conversions import stamp_to_ns
    from specprune_ros.ros.diagnostics import BridgeHealth, to_diagnostic_array
    from specprune_ros.ros.parameters import declare_typed, name_hints, unknown_parameters
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    try:
        from specprune_ros.msg import ActionChunk, EpisodeStatus
    except ImportError as exc:
        raise SystemExit(
            f"{NODE_NAME}: the generated messages are not importable ({exc}); run `make setup` and start the node "
            "through tools/ros_env.sh (docs/development.md)"
        ) from exc

    if config_overrides:
        from rclpy.parameter import Parameter

        params = [Parameter(k, value=v) for k, v in config_overrides.items()]
        node_kwargs.setdefault("parameter_overrides", params)

    class TestbedBridge(Node):
        def __init__(self) -> None:
            super().__init__(NODE_NAME, **node_kwargs)
            defaults = BridgeConfig()
            values = {}
            for f in fields(BridgeConfig):  # ValueError: wrong type, NaN or inf
                values[f.name] = declare_typed(self, f.name, getattr(defaults, f.name), PARAM_DOC[f.name])
            self.config = BridgeConfig(**values)
            unknown = unknown_parameters(self._parameter_overrides, values)
            self.runner = TestbedRunner(self.config)
            latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self._pub_images = {v: self.create_publisher(Image, t, qos_profile_sensor_data) for v, t in CAMERA_TOPICS.items()}
            self._pub_joints = self.create_publisher(JointState, "joint_states", 10)
            self._pub_instruction = self.create_publisher(String, "instruction", latched)
            self._pub_description = self.create_publisher(String, "robot_description", latched)
            # several statuses can follow each other within a tick or two (an episode's end, the next one's
            # start): a history of 10 keeps the end of an episode from being overwritten before delivery
            status_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                                    durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self._pub_status = self.create_publisher(EpisodeStatus, "episode_status", status_qos)
            self._EpisodeStatus = EpisodeStatus
            self.health = BridgeHealth()
            if unknown:
                self.health.unknown_parameters = sorted(unknown)
                self.get_logger().warning(f"unknown parameters ignored: {name_hints(unknown, values)}")
            self._pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self.create_subscription(ActionChunk, self.config.action_chunk_topic, self._on_chunk, 10)
            self.create_service(Trigger, "~/reset", self._on_reset)
            self._pub_description.publish(String(data=GANTRY_URDF))
            self._ticks = 0
            self._reset_timer = None
            self._start()
            self._timer = self.create_timer(1.0 / self.config.control_rate, self._tick)
            self._diagnostics_timer = self.create_timer(1.0, self.publish_diagnostics)

        # -- episodes
        def _start(self) -> None:
            if self.runner.status == "running":  # replaced before it ended: its last status
                self._publish_status(status="aborted")
                self.health.episode_update(self.runner.episode, "aborted")
                self.get_logger().info(f"episode {self.runner.episode} aborted by a reset after "
                                       f"{self.runner.task.state.step} steps")
            task = self.runner.start_episode()
            self._episode_start_ns = self.get_clock().now().nanoseconds  # the first observation's stamp
            self._pub_instruction.publish(String(data=task.instruction))
            self.get_logger().info(f"episode {self.runner.episode} (seed {task.seed}): {task.instruction!r}")
            self.health.episode_update(self.runner.episode, self.runner.status, started=True)
            self._publish_state(images=True)
            self._publish_status()

        def _on_reset(self, _request, response):
            if not self.runner.more_episodes:
                response.success = False
                response.message = (f"refused: all {self.config.episodes} episodes have run or are running "
                                    f"(episodes:={self.config.episodes}); restart the node for more")
                return response
            self._cancel_reset_timer()
            self._start()
            response.success = True
            response.message = f"episode {self.runner.episode}: seed {self.runner.task.seed}"
            return response

        def _cancel_reset_timer(self) -> None:
            if self._reset_timer is not None:
                self._reset_timer.cancel()
                self.destroy_timer(self._reset_timer)
                self._reset_timer = None

        def _scheduled_reset(self) -> None:
            self._cancel_reset_timer()
            self._start()

        # -- control loop
        @property
        def dropped_chunks(self) -> int:
            """Chunks refused or dropped, none of their rows executed (as /diagnostics counts them)."""
            return self.health.chunks_not_run()

        def _refuse(self, reason: str, message: str) -> None:
            self.health.chunk_refused(reason, message)
            self.get_logger().error(message, throttle_duration_sec=2.0)

        def _on_chunk(self, msg) -> None:
            actions = np.asarray(msg.actions, dtype=np.float64)
            if msg.rows * msg.cols != actions.size:
                return self._refuse(INVALID_CHUNK, f"action chunk {msg.sequence}: rows*cols={msg.rows * msg.cols} "
                                                   f"but {actions.size} values; refused")
            why = step_dt_problem(float(msg.step_dt))  # a row is one task step, whatever the wall-clock pace
            if why is not None:
                return self._refuse(STEP_DT, f"action chunk {msg.sequence}: {why}; refused")
            stamp_ns = stamp_to_ns(msg.header.stamp)
            now_ns = self.get_clock().now().nanoseconds
            if stamp_ns > now_ns + 10_000:  # answers an observation not yet published
                return self._refuse(INVALID_CHUNK, f"action chunk {msg.sequence}: stamped in the future "
                                                   f"({(stamp_ns - now_ns) * 1e-9:.3f} s after the bridge's now); "
                                                   "refused: do the policy's and the bridge's clocks disagree "
                                                   "(use_sim_time on one node only)?")
            # computed from an observation of an earlier episode (10 us of slack: stamps pass through float seconds)
            if stamp_ns < self._episode_start_ns - 10_000:
                self.health.chunk_dropped(STALE_CHUNK)
                self.get_logger().info(f"action chunk {msg.sequence} dropped: its observation predates episode "
                                       f"{self.runner.episode}", throttle_duration_sec=2.0)
                return
            refusal = self.runner.on_chunk(actions.reshape(msg.rows, msg.cols))
            if refusal is None:
                self.health.chunk_accepted()
            elif refusal[0] == NO_EPISODE:
                self.health.chunk_dropped(NO_EPISODE)
                self.get_logger().info(refusal[1], throttle_duration_sec=2.0)
            else:
                self.health.chunk_refused(*refusal)
                self.get_logger().error(refusal[1], throttle_duration_sec=2.0)

        def _tick(self) -> None:
            was_running = self.runner.status == "running"
            stepped = self.runner.tick()
            self._ticks += 1
            self._publish_state(images=self._ticks % self.config.camera_every == 0)
            if stepped or was_running != (self.runner.status == "running"):
                self._publish_status()
                if was_running != (self.runner.status == "running"):
                    self.health.episode_update(self.runner.episode, self.runner.status)
            if was_running and self.runner.status != "running":
                t = self.runner.task
                self.get_logger().info(f"episode {self.runner.episode} ended: {self.runner.status} after {t.state.step} steps")
                if self.config.auto_reset and self.runner.more_episodes and self._reset_timer is None:
                    self._reset_timer = self.create_timer(max(self.config.reset_delay, 1e-3), self._scheduled_reset)

        # -- publishing
        def publish_diagnostics(self) -> None:
            self._pub_diagnostics.publish(
                to_diagnostic_array(self.health, self, "simulator"))

        def _publish_state(self, images: bool) -> None:
            task = self.runner.task
            stamp = self.get_clock().now().to_msg()
            js = JointState()
            js.header.stamp = stamp
            js.header.frame_id = self.config.frame_id
            js.name = list(JOINT_NAMES)
            js.position = [float(v) for v in task.joint_positions()]
            js.velocity = [float(v) for v in self.runner.joint_velocities()]
            self._pub_joints.publish(js)
            if images:
                for view, img in task.render().items():
                    msg = Image()
                    msg.header.stamp = stamp
                    msg.header.frame_id = f"{view}_camera"
                    msg.height, msg.width = int(img.shape[0]), int(img.shape[1])
                    msg.encoding = "rgb8"
                    msg.step = int(img.shape[1]) * 3
                    msg.data = img.tobytes()
                    self._pub_images[view].publish(msg)

        def _publish_status(self, status: str | None = None) -> None:
            r = self.runner
            msg = self._EpisodeStatus()
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.task = f"testbed/seed{r.task.seed}" if r.task is not None else "testbed"
            msg.instruction = r.task.instruction if r.task is not None else ""
            msg.episode = max(r.episode, 0)
            msg.step = r.task.state.step if r.task is not None else 0
            msg.max_steps = self.config.max_steps
            msg.status = status or r.status
            msg.success = r.status == "success"
            msg.chunks = r.chunks
            self._pub_status.publish(msg)

    return TestbedBridge()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv if argv is None else argv
    if any(a in ("-h", "--help") for a in args[1:]) and "--ros-args" not in args:
        print(__doc__)
        print("Parameters (--ros-args -p name:=value):")
        for name, doc in PARAM_DOC.items():
            print(f"  {name:<20} {doc} (default: {getattr(BridgeConfig(), name)!r})")
        return 0
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args)
    node = None
    from rclpy.exceptions import InvalidTopicNameException, ParameterException

    try:
        node = make_node()
        rclpy.spin(node)
    except (ValueError, ParameterException, InvalidTopicNameException) as exc:  # one line, no traceback
        print(f"{NODE_NAME}: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # a callback or the wait set failing because a signal (SIGTERM) shut the context down
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
