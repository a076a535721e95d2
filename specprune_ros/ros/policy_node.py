"""``policy_node``: the lifecycle node that runs a (pruned) OpenVLA-OFT policy on a ROS 2 robot.

Thin by design: messages in -> :class:`~specprune_ros.core.sync.Synchronizer` -> ``policy.infer`` on a
worker thread -> messages out. Every rule and every number lives in the core or in the adapter functions.

Lifecycle: configure = validate parameters, load the model, create publishers and subscriptions;
activate = start the control loop; deactivate = stop it; cleanup = free the model. With ``autostart``
(default) ``main`` configures and activates at start-up. See docs/ros-node.md.
"""
from __future__ import annotations

import copy
import gc
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import rclpy
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions

from specprune_ros.core.controller import requery_rows
from specprune_ros.core.images import ImageDecodeError, dim_pruned_patches
from specprune_ros.core.kinematics import KinematicModel, KinematicsError
from specprune_ros.core.proprio import ProprioBuilder, ProprioConfig
from specprune_ros.core.sync import NO_ROBOT_DESCRIPTION, Synchronizer, SyncInputError
from specprune_ros.core.types import ActionChunk, InputError, Policy

from . import conversions as conv
from .adapters import GripperMap, TwistLimits, joint_trajectory, rows_to_twists
from .diagnostics import CONFIGURE_FAILED, NodeHealth, to_diagnostic_array
from .parameters import (
    NODE_NAME, NodeConfig, ParamSpec, check_update, check_value, configs_from_values, parameter_specs, unknown_parameters,
)

#: reliable + transient local, depth 1: latched topics (instruction, robot_description)
LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)

PolicyFactory = Callable[[NodeConfig, Any], Policy]


@dataclass
class _ActiveChunk:
    """The chunk being executed: rows ``[0, limit)`` are stepped through at ``dt``."""

    actions: np.ndarray  # (T, A)
    next_row: int
    limit: int


def _declare(node: LifecycleNode, spec: ParamSpec) -> None:
    from rcl_interfaces.msg import ParameterDescriptor

    desc = ParameterDescriptor(description=spec.doc, dynamic_typing=True)
    default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
    if isinstance(default, list) and not default:
        default = None  # an empty list has no ROS type; unset means "the field default"
    node.declare_parameter(spec.name, default, desc)


def _free_accelerator_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class PolicyNode(LifecycleNode):
    """Lifecycle node ``specprune_policy``.

    Args:
        node_name: ROS node name.
        policy_factory: ``(NodeConfig, PolicyConfig) -> Policy``; default: FakePolicy when
            ``fake_policy`` is true, else ``build_policy``. Tests inject their own policy here.
        **kwargs: passed to ``rclpy.lifecycle.LifecycleNode`` (parameter_overrides, namespace, ...).
    """

    def __init__(self, node_name: str = NODE_NAME, policy_factory: PolicyFactory | None = None, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._specs = parameter_specs()
        self._names = {s.name for s in self._specs}
        for spec in self._specs:
            _declare(self, spec)
        self._policy_factory = policy_factory
        self._lock = threading.RLock()
        self.health = NodeHealth()
        self.cfg: NodeConfig | None = None
        self.policy_config = None
        self.policy: Policy | None = None
        self.sync: Synchronizer | None = None
        self.kinematics: KinematicModel | None = None
        self._proprio_cfg: ProprioConfig | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._busy = False
        self._active: _ActiveChunk | None = None
        self._executed: list[np.ndarray] = []
        self._rows_in_flight = 0  # rows executed since the inference in flight started
        self._sequence = 0
        self._last_used_seq = 0
        self._reset_pending = False
        self._epoch = 0  # a chunk computed before a reset or a deactivate is never executed
        self._episode_seen: int | None = None  # last EpisodeStatus.episode received
        self._last_gripper: float | None = None
        self._stopped = True
        self._urdf_error = ""
        self._subs: list = []
        self._pubs: dict[str, Any] = {}
        self._control_timer = None
        self._dt = 0.05
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        period = self.get_parameter("diagnostics_period").value
        ok = isinstance(period, (int, float)) and not isinstance(period, bool) and 0 < period < float("inf")
        period = float(period) if ok else 1.0  # a bad value is reported by configure
        from diagnostic_msgs.msg import DiagnosticArray

        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        from std_srvs.srv import Trigger

        self._reset_srv = self.create_service(Trigger, "~/reset", self._on_reset_service)
        self._diag_timer = self.create_timer(period, self.publish_diagnostics)
        self.health.set_state("unconfigured", "not configured yet")

    # ================================================================================ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except Exception as exc:  # noqa: BLE001 - every failure must become a FAILURE transition with its reason
            expected = isinstance(exc, (ValueError, OSError, ImportError))  # config, files, messages
            message = f"{CONFIGURE_FAILED}: {exc}" if expected else f"{CONFIGURE_FAILED}: {type(exc).__name__}: {exc}"
            self.get_logger().error(message)
            if not expected:
                import traceback

                self.get_logger().debug(traceback.format_exc())
            self.health.error(message)
            self._teardown()
            return TransitionCallbackReturn.FAILURE
        self.health.set_state("inactive", "configured; activate to start", level=1)
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        values = {s.name: self.get_parameter(s.name).value for s in self._specs}
        cfg, policy_kw = configs_from_values(values)
        from specprune_ros.core.config import PolicyConfig

        policy_cfg = PolicyConfig(**policy_kw, views=tuple(cfg.camera_views))
        overrides = getattr(self, "_parameter_overrides", {}) or {}
        unknown = unknown_parameters(list(overrides))
        self.health = NodeHealth(tuple(cfg.camera_views))
        self.health.unknown_parameters = unknown
        if self._diag_timer.timer_period_ns != round(cfg.diagnostics_period * 1e9):
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(cfg.diagnostics_period, self.publish_diagnostics)
        if unknown:
            self.get_logger().warning(f"unknown parameters ignored (typo?): {unknown}")
        proprio_cfg = cfg.proprio_config()

        policy = self._make_policy(cfg, policy_cfg, proprio_cfg)
        if tuple(policy.views) != tuple(cfg.camera_views):
            raise ValueError(f"camera_views {list(cfg.camera_views)} do not match the policy's views {list(policy.views)}")
        want = proprio_cfg.dim or None
        if policy.proprio_dim != want:
            raise ValueError(
                f"the policy takes a proprio vector of size {policy.proprio_dim} but proprio_sources "
                f"{list(proprio_cfg.sources)} make {proprio_cfg.dim} values ({proprio_cfg.layout()})"
            )
        if cfg.warmup:
            self._warm_up(policy, cfg, proprio_cfg)
        kin = None
        if cfg.ee_frame and cfg.robot_description_file:
            with open(cfg.robot_description_file, encoding="utf-8") as f:
                kin = KinematicModel(f.read(), cfg.ee_frame, tuple(cfg.arm_joints))

        with self._lock:
            self.cfg, self.policy_config, self.policy = cfg, policy_cfg, policy
            self._proprio_cfg = proprio_cfg
            self.kinematics = kin
            self._dt = float(getattr(policy, "dt", None) or policy_cfg.control_dt)
            self.sync = Synchronizer(cfg.sync_config(), ProprioBuilder(proprio_cfg, kin))
            self.sync.set_instruction(cfg.instruction)
            self._sequence = 0
            self._last_used_seq = 0
            self._active = None
            self._executed = []
            self._busy = False
            self._last_gripper = None
            self._episode_seen = None
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="specprune_infer")
        self._create_interfaces(cfg)
        self.get_logger().info(
            f"configured: views {list(cfg.camera_views)} on {list(cfg.camera_topics)}, proprio {proprio_cfg.layout()}, "
            f"dt {self._dt} s, dry_run {cfg.dry_run}, policy {type(policy).__name__}"
        )

    def _warm_up(self, policy: Policy, cfg: NodeConfig, proprio_cfg: ProprioConfig) -> None:
        """:func:`~specprune_ros.core.types.warm_up`, timed in the log."""
        from specprune_ros.core.types import warm_up

        t0 = time.perf_counter()
        warm_up(policy, cfg.camera_views, proprio_cfg.dim)
        self.get_logger().info(f"warm-up inference: {time.perf_counter() - t0:.3f} s")

    def _make_policy(self, cfg: NodeConfig, policy_cfg, proprio_cfg: ProprioConfig) -> Policy:
        if self._policy_factory is not None:
            return self._policy_factory(cfg, policy_cfg)
        if cfg.fake_policy:
            from specprune_ros.core.fake import FakePolicy

            return FakePolicy(
                views=tuple(cfg.camera_views),
                proprio_dim=proprio_cfg.dim or None,
                action_dim=cfg.fake_action_dim,
                chunk_len=cfg.fake_chunk_len,
                dt=policy_cfg.control_dt,
                delay_s=cfg.fake_delay,
            )
        if not policy_cfg.checkpoint:
            raise ValueError("parameter checkpoint is empty: give the checkpoint directory (or set fake_policy: true)")
        from specprune_ros.core.policy import build_policy

        self.get_logger().info(f"loading checkpoint {policy_cfg.checkpoint} on {policy_cfg.device} ...")
        t0 = time.perf_counter()
        policy = build_policy(policy_cfg)
        self.get_logger().info(f"model loaded in {time.perf_counter() - t0:.1f} s")
        return policy

    def _create_interfaces(self, cfg: NodeConfig) -> None:
        from sensor_msgs.msg import CompressedImage, Image, JointState
        from std_msgs.msg import String

        try:
            from specprune_ros.msg import ActionChunk as ActionChunkMsg
            from specprune_ros.msg import InferenceStats
        except ImportError as exc:
            raise ImportError(
                f"generated messages specprune_ros.msg are not importable ({exc}); build them with `make setup` "
                "and run in that environment (`source tools/ros_env.sh`)"
            ) from exc
        # the sensor inputs and every output but /diagnostics take `qos_overrides.<topic>.<entity>.<policy>` parameters
        overridable = {"qos_overriding_options": QoSOverridingOptions.with_default_policies()}
        for view, topic, compressed in zip(cfg.camera_views, cfg.camera_topics, cfg.compressed):
            msg_type = CompressedImage if compressed else Image
            self._subs.append(
                self.create_subscription(
                    msg_type, topic, lambda msg, v=view, c=compressed: self._on_image(v, msg, c),
                    copy.copy(qos_profile_sensor_data), **overridable,  # an override changes the profile it is given
                )
            )
        self._subs.append(self.create_subscription(JointState, cfg.joint_states_topic, self._on_joint_state,
                                                   copy.copy(qos_profile_sensor_data), **overridable))
        self._subs.append(self.create_subscription(String, cfg.instruction_topic, self._on_instruction, LATCHED_QOS))
        if cfg.ee_frame and not cfg.robot_description_file:
            self._subs.append(
                self.create_subscription(String, cfg.robot_description_topic, self._on_robot_description, LATCHED_QOS)
            )
        if cfg.episode_status_topic:
            from specprune_ros.msg import EpisodeStatus

            self._subs.append(
                self.create_subscription(EpisodeStatus, cfg.episode_status_topic, self._on_episode_status, LATCHED_QOS)
            )
        pubs = self._pubs
        pubs["chunk"] = self.create_lifecycle_publisher(ActionChunkMsg, "~/action_chunk", 10, **overridable)
        pubs["stats"] = self.create_lifecycle_publisher(InferenceStats, "~/inference_stats", 10, **overridable)
        if cfg.debug_image:
            pubs["debug"] = self.create_lifecycle_publisher(Image, "~/debug_image", copy.copy(qos_profile_sensor_data),
                                                            **overridable)
        if not cfg.dry_run:  # dry run: no actuating publisher exists at all
            from geometry_msgs.msg import TwistStamped
            from trajectory_msgs.msg import JointTrajectory

            if cfg.twist_enabled:
                pubs["twist"] = self.create_lifecycle_publisher(TwistStamped, cfg.twist_topic, 10, **overridable)
            if cfg.joint_trajectory_enabled:
                pubs["trajectory"] = self.create_lifecycle_publisher(JointTrajectory, cfg.joint_trajectory_topic, 10,
                                                                     **overridable)
            if cfg.gripper_enabled:
                pubs["gripper"] = self.create_lifecycle_publisher(conv.gripper_msg_class(cfg.gripper_msg_type), cfg.gripper_topic,
                                                                  10, **overridable)
        elif cfg.twist_enabled or cfg.joint_trajectory_enabled or cfg.gripper_enabled:
            self.get_logger().info("dry_run is true: adapters are enabled but publish nothing; set dry_run:=false to command the robot")

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._control_timer = self.create_timer(self._dt, self._control_tick)
        self._stopped = True
        self.health.set_state("active", "active: waiting for inputs")
        self.get_logger().info(f"active: control loop at {1.0 / self._dt:.1f} Hz")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._control_timer is not None:
            self.destroy_timer(self._control_timer)
            self._control_timer = None
        self._publish_stop()
        with self._lock:
            self._epoch += 1  # a chunk still being computed is never executed after the next activate
            self._active = None
            self._executed = []
            self._rows_in_flight = 0
        self.health.set_state("inactive", "deactivated", level=1)
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self.health.set_state("unconfigured", "cleaned up", level=1)
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self.health.set_state("finalized", "shut down", level=1)
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self.health.set_state("unconfigured", "a transition failed: torn down; configure again", level=2)
        return TransitionCallbackReturn.SUCCESS

    def _teardown(self) -> None:
        """Stop the loop, wait for an inference in flight, destroy interfaces, free the model."""
        if self._control_timer is not None:
            self.destroy_timer(self._control_timer)
            self._control_timer = None
        self._publish_stop()  # shutdown straight from active: still stop the arm
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        with self._lock:
            self.policy = None
            self.sync = None
            self.kinematics = None
            self._active = None
            self._busy = False
        gc.collect()
        _free_accelerator_memory()

    # ================================================================================ inputs
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_image(self, view: str, msg, compressed: bool) -> None:
        stamp = conv.stamp_to_sec(msg.header.stamp)
        try:
            rgb = conv.compressed_to_rgb(msg) if compressed else conv.image_to_rgb(msg)
        except Exception as exc:  # noqa: BLE001 - ImageDecodeError or any decoder failure: a bad frame, not a dead node
            if not isinstance(exc, ImageDecodeError):
                exc = ImageDecodeError(f"could not decode the frame: {type(exc).__name__}: {exc}")
            with self._lock:
                if self.sync is not None:
                    self.sync.add_image_error(view, stamp, str(exc))
            self.health.bad_frame()
            self.get_logger().warning(f"camera view {view!r}: {exc}", throttle_duration_sec=2.0)
            return
        try:
            with self._lock:
                if self.sync is None:
                    return
                self.sync.add_image(view, stamp, rgb)
                busy = self._busy
        except SyncInputError as exc:  # a frame stamp that is not a time
            self.health.refusal(exc.reason, str(exc))
            self.get_logger().warning(str(exc), throttle_duration_sec=2.0)
            return
        self.health.frame(view, busy)

    def _on_joint_state(self, msg) -> None:
        stamp = conv.stamp_to_sec(msg.header.stamp)
        velocities = list(msg.velocity) if len(msg.velocity) else None
        try:
            with self._lock:
                if self.sync is None:
                    return
                self.sync.add_joint_state(stamp, list(msg.name), list(msg.position), velocities)
        except SyncInputError as exc:
            self.health.refusal(exc.reason, str(exc))
            self.get_logger().warning(str(exc), throttle_duration_sec=2.0)
            return
        self.health.joint_state()

    def _set_instruction(self, text: str) -> None:
        with self._lock:
            if self.sync is None:
                return
            if text.strip() != self.sync.instruction:
                self.sync.set_instruction(text)
                self._reset_pending = True  # a new task is a new episode for the pruning controller
                self.get_logger().info(f"instruction: {text.strip()!r}")

    def _on_instruction(self, msg) -> None:
        self._set_instruction(msg.data)

    def _check_parameters(self, params):
        """Refuse a value that cannot be its parameter's (``ros2 param set`` then says why): a wrong type, NaN, a
        deletion, or a value configure would refuse (:func:`check_update`); a conflict with another parameter's
        value is left to configure."""
        from rcl_interfaces.msg import SetParametersResult
        from rclpy.parameter import Parameter

        names = self._names
        reasons = [f"parameter {p.name} cannot be deleted" for p in params
                   if p.name in names and p.type_ == Parameter.Type.NOT_SET]
        reasons += [r for p in params if (r := check_value(p.name, p.value)) is not None]
        if not reasons:
            current = {n: self.get_parameter(n).value for n in names}
            why = check_update(current, {p.name: p.value for p in params if p.name in names})
            reasons += [why] if why else []
        return SetParametersResult(successful=not reasons, reason="; ".join(reasons))

    def _on_parameters_set(self, params) -> None:
        for p in params:
            if p.name == "instruction" and isinstance(p.value, str):
                self._set_instruction(p.value)
            elif self.policy is not None and p.name in self._names:
                self.get_logger().info(f"parameter {p.name} changed: it applies at the next configure (cleanup, then "
                                       "configure)")

    def _on_robot_description(self, msg) -> None:
        cfg = self.cfg
        if cfg is None or not cfg.ee_frame:
            return
        try:
            kin = KinematicModel(msg.data, cfg.ee_frame, tuple(cfg.arm_joints))
        except KinematicsError as exc:
            message = f"robot_description unusable: {exc}"
            self._urdf_error = str(exc)
            self.health.refusal("bad_robot_description", message)
            self.get_logger().error(message)
            return
        with self._lock:
            self._urdf_error = ""
            self.kinematics = kin
            if self.sync is not None:
                self.sync.set_proprio(ProprioBuilder(self._proprio_cfg, kin))
        self.get_logger().info(f"robot_description received: {len(kin.joint_names)} joints, EE frame {cfg.ee_frame!r}")

    # ================================================================================ episodes
    def reset_episode(self, reason: str) -> bool:
        """Start a new episode: forget the chunk being executed and the executed rows, and reset the policy.

        ``policy.reset()`` runs on the inference thread, after an inference in flight and before the next one;
        a chunk still in flight was computed in the old episode and is dropped. False when not configured.
        """
        with self._lock:
            if self.policy is None or self._pool is None:
                return False
            self._epoch += 1
            self._active = None
            self._executed = []
            self._rows_in_flight = 0
            self._reset_pending = False  # the queued reset below covers a pending instruction change
            self._last_gripper = None
            pool, policy = self._pool, self.policy
        self._publish_stop()
        try:
            pool.submit(self._reset_policy, policy)
        except RuntimeError:  # the node is being cleaned up: the policy is freed anyway
            return False
        self.get_logger().info(f"episode reset ({reason})")
        return True

    def _reset_policy(self, policy: Policy) -> None:
        try:
            policy.reset()
        except Exception as exc:  # noqa: BLE001 - reported, never raised on the worker thread
            message = f"policy reset failed: {type(exc).__name__}: {exc}"
            self.health.failure(message)
            self.get_logger().error(message)

    def _on_reset_service(self, _request, response):
        ok = self.reset_episode("~/reset")
        response.success = ok
        response.message = (
            "episode reset: chunk and executed rows cleared; the policy resets before its next inference"
            if ok
            else "not configured: nothing to reset (configure the node first)"
        )
        return response

    def _on_episode_status(self, msg) -> None:
        episode = int(msg.episode)
        with self._lock:
            previous, self._episode_seen = self._episode_seen, episode
        if previous is not None and episode != previous:
            self.reset_episode(f"episode {previous} -> {episode} on {self.cfg.episode_status_topic if self.cfg else '?'}")

    # ================================================================================ control loop
    def _control_tick(self) -> None:
        """At control rate: step the active chunk one row (adapters), start an inference when due."""
        row = None
        with self._lock:
            active = self._active
            if active is not None and active.next_row < active.limit:
                row = active.actions[active.next_row]
                active.next_row += 1
                self._executed.append(row)
                if self._busy:
                    self._rows_in_flight += 1
            prefetch = self.cfg.prefetch_steps if self.cfg is not None else 0
            due = active is None or active.limit - active.next_row <= prefetch
            start = due and not self._busy and self.policy is not None
        if row is not None:
            self._emit_row(row)
        elif due:
            self._publish_stop()
        if start:
            self._start_inference()

    def _start_inference(self) -> None:
        now = self._now()
        with self._lock:
            if self._busy or self.sync is None or self._pool is None:
                return
            executed = np.stack(self._executed) if self._executed else None  # (N, A)
            try:
                result = self.sync.sync(now, executed)
            except InputError as exc:
                reason = getattr(exc, "reason", "input")
                message = str(exc)
                if reason == NO_ROBOT_DESCRIPTION and self._urdf_error:
                    message += f"; the robot_description received was unusable: {self._urdf_error}"
                self.health.refusal(reason, message)
                self.get_logger().warning(f"not acting: {message}", throttle_duration_sec=2.0)
                return
            except Exception as exc:  # noqa: BLE001 - a bug in assembling inputs must not stop the node
                message = f"could not assemble the observation: {type(exc).__name__}: {exc}"
                self.health.error(message)
                self.get_logger().error(f"not acting: {message}", throttle_duration_sec=2.0)
                return
            ref = self.sync.config.reference
            seq = result.frame_seqs[ref]
            if seq == self._last_used_seq:
                return  # no new frame since the last query: wait for one rather than act on the same view twice
            self.health.skipped(seq - self._last_used_seq - 1)
            self._last_used_seq = seq
            self._executed = []
            self._rows_in_flight = 0
            self._busy = True
            reset, self._reset_pending = self._reset_pending, False
            pool, epoch = self._pool, self._epoch
        pool.submit(self._infer, result, reset, epoch)

    def _infer(self, result, reset: bool, epoch: int = 0) -> None:
        """Worker thread: one inference; errors are reported, never raised."""
        try:
            policy = self.policy
            if policy is None:
                return
            if reset:
                policy.reset()
            t0 = time.perf_counter()
            chunk = policy.infer(result.observation)
            latency = time.perf_counter() - t0
            actions = np.asarray(chunk.actions, dtype=np.float64)
            if actions.ndim != 2 or actions.shape[0] == 0 or not np.all(np.isfinite(actions)):
                raise RuntimeError(f"policy returned unusable actions (shape {actions.shape}, finite {np.isfinite(actions).all()})")
            self._publish_chunk(chunk, actions, latency, result, epoch)
        except InputError as exc:
            self.health.refusal("policy_input", str(exc))
            self.get_logger().warning(f"policy refused the observation: {exc}", throttle_duration_sec=2.0)
        except Exception as exc:  # noqa: BLE001 - an inference error must never take the node down
            message = f"inference failed: {type(exc).__name__}: {exc}"
            self.health.failure(message)
            self.get_logger().error(message, throttle_duration_sec=2.0)
        finally:
            with self._lock:
                self._busy = False

    def _publish_chunk(self, chunk: ActionChunk, actions: np.ndarray, latency: float, result, epoch: int) -> None:
        cfg = self.cfg
        with self._lock:
            if epoch != self._epoch:  # computed before an episode reset or a deactivate
                self.get_logger().info("chunk computed before the last reset or deactivate dropped")
                return
            seq = self._sequence
            self._sequence += 1
            rows = actions.shape[0]
            limit = min(cfg.execute_steps or rows, rows)
            cut = requery_rows(bool(chunk.stats.requery), chunk.stats.requery_after, rows) if cfg.honor_requery else None
            if cut is not None:  # early re-query: rows 0..requery_after run (and count as executed), then query
                limit = min(limit, cut)
            # rows executed while this chunk was computed stand for its first rows in time: skip as many
            # (always keeping one), so the new plan continues where the arm is rather than restarting
            start = min(self._rows_in_flight, limit - 1)
            self._active = _ActiveChunk(actions, start, limit)
            kin = self.kinematics
            start_positions = self.sync.latest_positions() if self.sync is not None else {}
        joint_names = tuple(cfg.arm_joints) if cfg.joint_trajectory_enabled else ()
        self._pubs["chunk"].publish(
            conv.action_chunk_msg(
                chunk, seq, latency, cfg.camera_views, cfg.action_names, cfg.base_frame, joint_names, cfg.honor_requery
            )
        )
        self._pubs["stats"].publish(conv.inference_stats_msg(chunk, seq, cfg.base_frame))
        stats = chunk.stats
        kept = sum(int(stats.kept_per_view.get(v, 0)) for v in cfg.camera_views)
        self.health.chunk(latency, stats.mode, stats.preset, kept, int(stats.total_tokens), result.ee_speed_source)
        if "trajectory" in self._pubs:
            self._publish_trajectory(kin, start_positions, actions[start:limit])  # the rows that will run
        if "debug" in self._pubs:
            self._publish_debug(chunk, result)

    def _twist_limits(self) -> TwistLimits:
        cfg = self.cfg
        return TwistLimits(cfg.twist_linear_scale, cfg.twist_angular_scale, cfg.max_linear_speed, cfg.max_angular_speed)

    def _publish_trajectory(self, kin: KinematicModel | None, positions: dict, actions: np.ndarray) -> None:
        """JointTrajectory through differential IK of ``actions`` (T, A) from the latest joint positions."""
        cfg = self.cfg
        if kin is None:
            self.health.refusal("no_robot_description", "joint trajectory adapter: no robot_description yet; trajectory not sent")
            return
        try:
            start = kin.arm_positions(positions)
            pos, vel, times = joint_trajectory(
                kin, start, actions, self._dt, self._twist_limits(), cfg.ik_damping, cfg.max_joint_velocity
            )
        except (KinematicsError, ValueError) as exc:
            self.health.refusal("trajectory", f"joint trajectory adapter: {exc}")
            self.get_logger().warning(f"joint trajectory not sent: {exc}", throttle_duration_sec=2.0)
            return
        self._pubs["trajectory"].publish(conv.joint_trajectory_msg(kin.arm_joints, pos, vel, times))

    def _publish_debug(self, chunk: ActionChunk, result) -> None:
        cfg, pcfg = self.cfg, self.policy_config
        view = cfg.debug_image_view or cfg.camera_views[0]
        rgb = result.observation.images[view]
        kept = chunk.stats.kept_patches.get(view)
        if kept is not None:
            rgb = dim_pruned_patches(rgb, kept, crop_scale=pcfg.crop_scale if pcfg.center_crop else 1.0, flip=pcfg.flip)
        self._pubs["debug"].publish(conv.rgb_to_image(rgb, conv.sec_to_stamp(chunk.stamp), view))

    def _emit_row(self, row: np.ndarray) -> None:
        """Send one action row to the enabled adapters (nothing in dry run: no publishers exist)."""
        cfg = self.cfg
        if cfg is None:
            return
        stamp = self.get_clock().now().to_msg()
        if "twist" in self._pubs:
            try:
                twist = rows_to_twists(row[None, :], self._twist_limits())[0]
                self._pubs["twist"].publish(conv.twist_msg(twist, stamp, cfg.base_frame))
                self._stopped = False
            except ValueError as exc:
                self.health.failure(f"twist adapter: {exc}")
        if "gripper" in self._pubs and cfg.gripper_index >= row.shape[0]:
            self.health.error(f"gripper adapter: gripper_index {cfg.gripper_index} but the policy's action rows "
                              f"have {row.shape[0]} columns; the gripper is not commanded")
        elif "gripper" in self._pubs:
            gmap = GripperMap(cfg.gripper_close_above, cfg.gripper_open_position, cfg.gripper_closed_position)
            try:
                command = gmap.command(float(row[cfg.gripper_index]))
            except ValueError as exc:
                self.health.failure(f"gripper adapter: {exc}")
                return
            if command != self._last_gripper:
                self._pubs["gripper"].publish(conv.gripper_msg(command, cfg.gripper_msg_type))
                self._last_gripper = command

    def _publish_stop(self) -> None:
        """One zero twist when the chunk runs out, so Servo stops instead of coasting on the last command."""
        if "twist" in self._pubs and not self._stopped and self.cfg is not None:
            self._pubs["twist"].publish(conv.twist_msg(np.zeros(6), self.get_clock().now().to_msg(), self.cfg.base_frame))
            self._stopped = True

    # ================================================================================ diagnostics
    def publish_diagnostics(self) -> None:
        self._diag_pub.publish(to_diagnostic_array(self.health, self))


USAGE = """usage: policy_node [--help] [--ros-args --params-file FILE -p NAME:=VALUE ...]

Runs a (token-pruned) OpenVLA-OFT policy on a ROS 2 robot as the lifecycle node `specprune_policy`.
Subscribes to the cameras, joint_states, the instruction and robot_description (relative names by default); publishes
~/action_chunk, ~/inference_stats, /diagnostics and, when dry_run is false, the enabled controller
commands. Service ~/reset (std_srvs/Trigger) starts a new episode (policy state and chunk cleared); so does
a new episode number on episode_status_topic when set. Parameters (a params file with a `specprune_policy: ros__parameters:` section, see
config/policy.yaml and docs/ros-node.md):
"""


def _print_help() -> None:
    print(USAGE)
    for spec in parameter_specs():
        default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        print(f"  {spec.name} ({spec.kind}, default {default!r})\n      {spec.doc}")


def main(args: list[str] | None = None) -> None:
    """Entry point: ``ros2 run specprune_ros policy_node --ros-args --params-file config/policy.yaml``."""
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    argv = sys.argv[1:] if args is None else list(args)
    own = argv[: argv.index("--ros-args")] if "--ros-args" in argv else argv
    if "-h" in own or "--help" in own:
        _print_help()
        return

    try:
        with rclpy.init(args=args):
            node = PolicyNode()
            if node.get_parameter("autostart").value:
                if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                    node.trigger_activate()
                else:
                    node.get_logger().error("configure failed (see above); fix the parameters and configure again")
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass


if __name__ == "__main__":
    main()
