"""``libero_sim_node``: one LIBERO task, offscreen, behind ROS 2 topics, under the OFT protocol.

Runs in the simulator environment (``make sim-setup``; see docs/simulation.md)::

    VENV=.venv-sim tools/ros_env.sh .venv-sim/bin/python -m specprune_ros.sim.libero_node \\
        --ros-args -p suite:=libero_spatial -p task_id:=0 -p init_state:=0

Publishes (names relative, so a namespace or remapping applies):
    ``agentview/image_raw``, ``wrist/image_raw`` (sensor_msgs/Image, rgb8, as rendered: upside down),
    ``joint_states`` (7 arm + 2 finger joints, MuJoCo names), ``ee_pose`` (geometry_msgs/PoseStamped,
    ``world`` frame, LIBERO's robot0_eef_pos / robot0_eef_quat), ``instruction`` and
    ``robot_description`` (std_msgs/String, reliable + transient local), ``episode_status``
    (specprune_ros/EpisodeStatus), ``~/executed_action`` (std_msgs/Float64MultiArray, every executed row)
    ``/clock`` (rosgraph_msgs/Clock: simulated time, 0.05 s per control step) and ``/diagnostics`` once a
    wall-clock second (diagnostic_msgs/DiagnosticArray, status ``libero_sim_node: simulator``: ERROR after a
    refused chunk or a simulator failure, with counts of refused and dropped chunks).
Subscribes: ``action_chunk`` (specprune_ros/ActionChunk). Service: ``~/reset`` (std_srvs/Trigger): start
the next episode on the next initial state (a running episode first gets a last ``episode_status`` of
``aborted``). A chunk with ``requery_after >= 0`` (and ``requery``) has only
rows ``0..requery_after`` executed before the next pause, as the direct path's ``run_episode`` does.

Simulated time (``/clock``, 0.05 s per control step) moves with the simulator, so a slow policy costs
wall-clock time but never task time. The OFT protocol queries the policy only when the action queue is
empty: after each reset (and its 10 wait steps) and after each executed chunk the simulator pauses on a
*pending observation* and executes only a chunk computed from it (``header.stamp`` between the pause's
first stamp and now); chunks computed from any earlier observation are dropped. Every step publishes
joint states, pose and executed action before the clock tick of that step, and the pending observation's
images also come before its clock tick, so a policy node whose control timer runs on simulated time sees
the complete observation when that tick fires. If no chunk arrives for ``idle_tick_period`` wall
seconds (the policy started late, refused an input, or is still computing), the clock advances one
tick without a simulator step and the unchanged observation is re-sent at the new time, so the
policy's timer keeps running and its inputs stay fresh; ``EpisodeStatus.step`` counts policy steps only (not
these idle ticks, nor the wait steps at the start of an episode).
"""
from __future__ import annotations

import queue
import sys
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, MultiArrayDimension, String
from std_srvs.srv import Trigger

from ..core.controller import requery_rows, step_dt_problem
from ..ros.conversions import ns_to_stamp, stamp_to_ns
from ..ros.diagnostics import INVALID_CHUNK, NO_EPISODE, STALE_CHUNK, STEP_DT, BridgeHealth, to_diagnostic_array
from ..ros.parameters import declare_typed
from .protocol import (
    ACTION_DIM,
    ARM_JOINTS,
    CAMERA_TOPICS,
    GRIPPER_JOINTS,
    CONTROL_DT,
    Episode,
    ProtocolConfig,
    ProtocolError,
    STATUS_ABORTED,
    STATUS_FAILURE,
    SimBackend,
    SimFrame,
    check_chunk,
)

NODE_NAME = "libero_sim_node"
_NS_PER_STEP = int(round(CONTROL_DT * 1e9))


def _msgs():
    try:
        from specprune_ros.msg import ActionChunk, EpisodeStatus
    except ImportError as exc:
        raise SystemExit(
            f"{NODE_NAME}: the generated messages are not importable ({exc}); run `make setup` and start the "
            "node through `VENV=.venv-sim tools/ros_env.sh` (see docs/simulation.md)"
        ) from exc
    return ActionChunk, EpisodeStatus


@dataclass(frozen=True)
class BridgeConfig:
    """The node's parameters (``--ros-args -p name:=value``)."""

    suite: str = "libero_spatial"
    task_id: int = 0
    init_state: int = 0
    seed: int = 7
    max_steps: int = 0
    wait_steps: int = 10
    open_loop_steps: int = 0
    resolution: int = 256
    autostart: bool = True
    auto_reset: bool = False
    publish_every_step: bool = False
    idle_tick_period: float = 1.0
    start_time: float = 1.0
    world_frame: str = "world"

    def __post_init__(self) -> None:
        if self.init_state < 0:
            raise ProtocolError(f"init_state={self.init_state} must be >= 0")
        if not 0 < self.idle_tick_period <= 3600:
            raise ProtocolError(f"idle_tick_period={self.idle_tick_period} must lie in (0, 3600] seconds")
        if not 0 <= self.start_time <= 1e9:  # builtin_interfaces/Time counts seconds in an int32
            raise ProtocolError(f"start_time={self.start_time} must lie in [0, 1e9] seconds")
        self.protocol  # validates suite, max_steps, wait_steps, open_loop_steps

    @property
    def protocol(self) -> ProtocolConfig:
        return ProtocolConfig(
            suite=self.suite, max_steps=self.max_steps, wait_steps=self.wait_steps, open_loop_steps=self.open_loop_steps
        )


PARAM_DOC = {
    "suite": "LIBERO suite: libero_spatial, libero_object, libero_goal, libero_10, libero_90",
    "task_id": "task index in the suite (0-based)",
    "init_state": "official initial state of the first episode (0..49); ~/reset moves to the next",
    "seed": "simulator seed (OFT evaluation: 7)",
    "max_steps": "policy steps before a timeout; 0 = the suite's OFT limit (220/280/300/520/400)",
    "wait_steps": "no-op steps [0,0,0,0,0,0,-1] after each reset (OFT: 10)",
    "open_loop_steps": "rows of each chunk to execute; 0 = all rows",
    "resolution": "camera image side in pixels (OFT: 256)",
    "autostart": "start the first episode as soon as the simulator is ready",
    "auto_reset": "start the next episode (next initial state) as soon as one ends",
    "publish_every_step": "publish camera images after every simulator step (for viewing), not only when a chunk is due",
    "idle_tick_period": "wall seconds without a usable chunk after which the clock ticks once (no simulator step) "
    "and the pending observation is re-sent at the new time",
    "start_time": "simulated time (s) of the first observation",
    "world_frame": "frame_id of ee_pose (the URDF root link)",
}


def make_backend(config: BridgeConfig) -> SimBackend:
    """The LIBERO simulator for ``config`` (imports LIBERO: the simulator environment only)."""
    from .libero_env import LiberoSim, TaskSpec

    return LiberoSim(TaskSpec(config.suite, config.task_id, config.seed, config.resolution, render=True))


class LiberoBridge(Node):
    """The bridge node. ``backend_factory`` builds the simulator in the worker thread (tests may inject one)."""

    def __init__(self, backend_factory: Callable[[BridgeConfig], SimBackend] = make_backend, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        ActionChunk, EpisodeStatus = _msgs()
        self._EpisodeStatus = EpisodeStatus
        defaults = BridgeConfig()
        values = {}

        for name, doc in PARAM_DOC.items():
            values[name] = declare_typed(self, name, getattr(defaults, name), doc)  # ValueError: wrong type, NaN
        self.config = BridgeConfig(**values)  # ProtocolError names a bad value
        self._backend_factory = backend_factory

        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._pub_images = {k: self.create_publisher(Image, t, 2) for k, t in CAMERA_TOPICS.items()}
        self._pub_joints = self.create_publisher(JointState, "joint_states", 10)
        self._pub_pose = self.create_publisher(PoseStamped, "ee_pose", 10)
        self._pub_instruction = self.create_publisher(String, "instruction", latched)
        self._pub_description = self.create_publisher(String, "robot_description", latched)
        self._pub_status = self.create_publisher(EpisodeStatus, "episode_status", latched)
        self._pub_executed = self.create_publisher(Float64MultiArray, "~/executed_action", 50)
        self._pub_clock = self.create_publisher(Clock, "/clock", 10)
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.health = BridgeHealth()
        self._diagnostics_timer = self.create_timer(1.0, self.publish_diagnostics)
        self.create_subscription(ActionChunk, "action_chunk", self._on_chunk, 10)
        self.create_service(Trigger, "~/reset", self._on_reset)

        self.sim: SimBackend | None = None
        self.episode: Episode | None = None
        self.episode_index = -1
        self.next_init_state = self.config.init_state
        self.instruction = ""
        self.task = f"{self.config.suite}/{self.config.task_id}"
        self.now_ns = int(round(self.config.start_time * 1e9))
        self.pause_ns: int | None = None  # first stamp of the pending observation; None while not waiting
        self._rows_left = 0  # simulator steps left before the next pause (decides when images go out)
        self.episode_chunks = 0  # chunks executed in the current episode
        self.requeries = 0  # chunks cut short by their requery_after
        self.failure = ""
        self.ready = threading.Event()
        self._cmds: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="libero_sim", daemon=True)
        self._worker.start()

    # ---------------------------------------------------------------- ROS callbacks (executor thread)

    def _on_chunk(self, msg) -> None:
        self._cmds.put(("chunk", msg))

    def _on_reset(self, _request, response):
        done = threading.Event()
        holder: dict = {}
        self._cmds.put(("reset", (done, holder)))
        if not done.wait(120.0):
            response.success, response.message = False, "the simulator did not finish the reset within 120 s"
        else:
            response.success, response.message = holder.get("ok", False), holder.get("message", "")
        return response

    def publish_diagnostics(self) -> None:
        self._pub_diagnostics.publish(
            to_diagnostic_array(self.health, self, "simulator"))

    def stop(self) -> None:
        """Stop the worker thread and close the simulator."""
        self._cmds.put(("stop", None))
        self._worker.join(timeout=30.0)

    # ---------------------------------------------------------------- worker thread: owns the simulator

    def _run(self) -> None:
        try:
            self.sim = self._backend_factory(self.config)
        except Exception as exc:  # e.g. LIBERO not installed, bad task id, no GL backend
            self._fail(f"the simulator could not start: {type(exc).__name__}: {exc}")
            self.ready.set()
            return
        self.instruction = str(getattr(self.sim, "instruction", ""))
        self._publish_clock()
        self._pub_instruction.publish(String(data=self.instruction))
        urdf_fn = getattr(self.sim, "robot_urdf", None)
        if urdf_fn is not None:
            try:
                self._pub_description.publish(String(data=urdf_fn()))
            except Exception as exc:
                self.get_logger().warning(f"no robot_description: {type(exc).__name__}: {exc}")
        self.episode = Episode(self.sim, self.config.protocol)
        self._publish_status()
        self.health.episode_update(0, "waiting")  # the simulator is up
        self.ready.set()
        if self.config.autostart:
            self._start_episode()
        try:
            while True:
                try:
                    kind, arg = self._cmds.get(timeout=self.config.idle_tick_period)
                except queue.Empty:
                    try:
                        if self.episode.running and self.pause_ns is not None:
                            self.now_ns += _NS_PER_STEP  # idle tick: time passes, the simulator does not step
                            self._publish_observation(self.episode.frame, images=True)
                            self._publish_status()
                        else:
                            self._publish_clock()  # same time again, for late subscribers
                    except Exception as exc:  # never let the worker die silently
                        self._fail(f"idle tick failed: {type(exc).__name__}: {exc}")
                    continue
                if kind == "stop":
                    break
                if kind == "reset":
                    done, holder = arg
                    try:
                        ok = self._start_episode()
                        holder["ok"] = ok
                        holder["message"] = (
                            f"episode {self.episode_index}: {self.task} initial state {self.episode.init_state}"
                            if ok
                            else self.failure
                        )
                    except Exception as exc:
                        holder["ok"], holder["message"] = False, f"{type(exc).__name__}: {exc}"
                        self._fail(f"reset failed: {holder['message']}")
                    finally:
                        done.set()
                elif kind == "chunk":
                    try:
                        self._execute(arg)
                    except Exception as exc:  # never let the worker die silently: end the episode visibly
                        self.episode.status = STATUS_FAILURE
                        self._fail(f"episode {self.episode_index}: {type(exc).__name__}: {exc}")
        finally:
            close = getattr(self.sim, "close", None)
            if close is not None:
                close()

    def _fail(self, message: str) -> None:
        self.failure = message
        self.health.failure(message)
        self.get_logger().error(message)
        self._publish_status(status="failure")

    def _start_episode(self) -> bool:
        n_states = int(getattr(self.sim, "num_init_states", 0) or 0)
        init_state = self.next_init_state % n_states if n_states else self.next_init_state
        self.next_init_state = init_state + 1
        if self.episode is not None and self.episode.running:  # replaced before it ended: its last status
            self._publish_status(status=STATUS_ABORTED)
            self.health.episode_update(self.episode_index, STATUS_ABORTED)
            self.get_logger().info(f"episode {self.episode_index} aborted by a reset after {self.episode.step} steps")
        self.episode_index += 1
        self.episode_chunks = 0
        self.pause_ns = None
        self._publish_status(status="waiting")
        self._rows_left = self.config.wait_steps
        try:
            frame = self.episode.start(init_state, on_step=self._after_step)
        except Exception as exc:
            self._fail(f"episode {self.episode_index} could not start: {type(exc).__name__}: {exc}")
            return False
        if self.config.wait_steps == 0:  # no step published the first observation
            self._publish_observation(frame, images=True)
        self.get_logger().info(
            f"episode {self.episode_index}: {self.task} initial state {init_state}: {self.instruction!r}"
        )
        self.pause_ns = self.now_ns
        self._publish_status()
        self.health.episode_update(self.episode_index, self.episode.status, started=True)
        return True

    @property
    def dropped_chunks(self) -> int:
        """Chunks refused or dropped, none of their rows executed (as /diagnostics counts them)."""
        return self.health.chunks_not_run()

    def _refuse(self, reason: str, message: str) -> None:
        self.health.chunk_refused(reason, message)
        self.get_logger().error(message)

    def _execute(self, msg) -> None:
        ep = self.episode
        if ep is None or not ep.running or self.pause_ns is None:
            self.health.chunk_dropped(NO_EPISODE)
            self.get_logger().debug("action chunk dropped: no episode is running")
            return
        stamp = stamp_to_ns(msg.header.stamp)
        if not self.pause_ns <= stamp <= self.now_ns:
            self.health.chunk_dropped(STALE_CHUNK)
            self.get_logger().debug(
                f"action chunk for t={stamp * 1e-9:.3f} s dropped: it must answer the observation of "
                f"t={self.pause_ns * 1e-9:.3f} s or later"
            )
            return
        if msg.cols != ACTION_DIM or msg.rows < 1 or len(msg.actions) != msg.rows * msg.cols:
            return self._refuse(INVALID_CHUNK, f"action chunk {msg.sequence} rejected: rows={msg.rows} cols={msg.cols} "
                                               f"with {len(msg.actions)} values; LIBERO needs cols={ACTION_DIM} and "
                                               "rows*cols values")
        why = step_dt_problem(float(msg.step_dt), CONTROL_DT)
        if why:
            return self._refuse(STEP_DT, f"action chunk {msg.sequence} rejected: {why}")
        try:  # the whole chunk, before an early re-query cuts it: a chunk with a NaN anywhere is not executed at all
            actions = check_chunk(np.asarray(msg.actions, dtype=np.float64).reshape(msg.rows, msg.cols))  # (T, A)
        except ProtocolError as exc:
            return self._refuse(INVALID_CHUNK, f"action chunk {msg.sequence} rejected: {exc}")
        requery_after = int(getattr(msg, "requery_after", -1))
        cut = requery_rows(bool(msg.requery), requery_after if requery_after >= 0 else None, msg.rows)
        if cut is not None:  # early re-query: rows 0..requery_after, then pause for the next chunk
            actions = actions[:cut]
        rows = min(len(actions), self.config.open_loop_steps or len(actions), ep.config.step_limit - ep.step)
        pause, self.pause_ns, self._rows_left = self.pause_ns, None, rows
        try:
            ep.execute(actions, on_step=self._after_step)
        except ProtocolError as exc:  # nothing was executed
            self.pause_ns = pause
            return self._refuse(INVALID_CHUNK, f"action chunk {msg.sequence} rejected: {exc}")
        except Exception as exc:
            self._fail(f"episode {self.episode_index}: the simulator failed: {type(exc).__name__}: {exc}")
            return
        self.episode_chunks += 1
        self.requeries += cut is not None
        self.health.chunk_accepted()
        self._publish_status()
        if ep.running:
            self.pause_ns = self.now_ns
            return
        self.health.episode_update(self.episode_index, ep.status)
        self.get_logger().info(f"episode {self.episode_index} ended: {ep.status} after {ep.step} steps")
        if self.config.auto_reset:
            self._start_episode()

    def _after_step(self, frame: SimFrame) -> None:
        """Called by the episode after every simulator step: advance the clock, publish the state."""
        self.now_ns += _NS_PER_STEP
        self._rows_left -= 1
        ep = self.episode
        if ep is not None and ep.status != "waiting" and ep.executed:  # a policy step, not a wait step
            row = ep.executed[-1]  # (A,)
            msg = Float64MultiArray()
            msg.layout.dim = [MultiArrayDimension(label="action", size=int(row.shape[0]), stride=int(row.shape[0]))]
            msg.data = [float(v) for v in row]
            self._pub_executed.publish(msg)
        pending = self._rows_left <= 0 or (ep is not None and ep.done)  # the next query sees this frame
        self._publish_observation(frame, images=pending or self.config.publish_every_step)

    # ---------------------------------------------------------------- publishing

    def _publish_clock(self) -> None:
        self._pub_clock.publish(Clock(clock=ns_to_stamp(self.now_ns)))

    def _publish_observation(self, frame: SimFrame, images: bool) -> None:
        """Joint states, pose and (optionally) images at the current time, then the clock tick."""
        stamp = ns_to_stamp(self.now_ns)
        js = JointState()
        js.header.stamp = stamp
        js.name = list(ARM_JOINTS + GRIPPER_JOINTS)
        js.position = [float(v) for v in np.concatenate([frame.joint_pos, frame.gripper_qpos])]
        gq = frame.gripper_qvel if frame.gripper_qvel is not None else np.zeros(2)
        js.velocity = [float(v) for v in np.concatenate([frame.joint_vel, gq])]
        self._pub_joints.publish(js)
        pose = PoseStamped()
        pose.header.stamp = stamp
        pose.header.frame_id = self.config.world_frame
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in frame.eef_pos)
        q = pose.pose.orientation
        q.x, q.y, q.z, q.w = (float(v) for v in frame.eef_quat)
        self._pub_pose.publish(pose)
        if images:
            for key, pub in self._pub_images.items():
                img = frame.images.get(key)
                if img is None:
                    continue
                msg = Image()
                msg.header.stamp = stamp
                msg.header.frame_id = key
                msg.height, msg.width = int(img.shape[0]), int(img.shape[1])
                msg.encoding = "rgb8"
                msg.step = int(img.shape[1]) * 3
                msg.data = np.ascontiguousarray(img, dtype=np.uint8).tobytes()
                pub.publish(msg)
        self._publish_clock()  # last: a timer on simulated time fires with this observation complete

    def _publish_status(self, status: str | None = None) -> None:
        ep = self.episode
        msg = self._EpisodeStatus()
        msg.header.stamp = ns_to_stamp(self.now_ns)
        msg.task = self.task
        msg.instruction = self.instruction
        msg.episode = max(self.episode_index, 0)
        msg.step = ep.step if ep is not None else 0
        msg.max_steps = self.config.protocol.step_limit
        msg.status = status or (ep.status if ep is not None else "waiting")
        msg.success = bool(ep is not None and ep.success)
        msg.chunks = self.episode_chunks
        self._pub_status.publish(msg)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv if argv is None else argv
    if any(a in ("-h", "--help") for a in args[1:]) and "--ros-args" not in args:
        print(__doc__)
        print("Parameters (--ros-args -p name:=value):")
        for name, doc in PARAM_DOC.items():
            print(f"  {name:<20} {doc} (default: {getattr(BridgeConfig(), name)!r})")
        return 0
    from rclpy.exceptions import InvalidTopicNameException, ParameterException

    rclpy.init(args=args)
    node = None
    try:
        node = LiberoBridge()
        while not node.ready.is_set():  # the simulator starts in the worker thread (seconds)
            rclpy.spin_once(node, timeout_sec=0.1)
        if node.sim is None:  # it could not start: the reason was logged; exit instead of idling
            print(f"{NODE_NAME}: {node.failure}", file=sys.stderr)
            return 2
        rclpy.spin(node)
    except (ProtocolError, ParameterException, InvalidTopicNameException, ValueError) as exc:  # parameters: one line, no traceback
        print(f"{NODE_NAME}: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
