"""ROS message <-> core type conversions. Message classes are imported inside functions, so this module
imports without a ROS environment; the numerics live in :mod:`specprune_ros.core`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from specprune_ros.core.controller import requery_rows
from specprune_ros.core.images import decode_compressed, decode_raw, encode_raw_rgb8
from specprune_ros.core.types import ActionChunk


def stamp_to_sec(stamp) -> float:
    """``builtin_interfaces/Time`` -> float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def stamp_to_ns(stamp) -> int:
    """``builtin_interfaces/Time`` -> integer nanoseconds (exact, unlike float seconds)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int):
    """Integer nanoseconds -> ``builtin_interfaces/Time``."""
    from builtin_interfaces.msg import Time

    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def sec_to_stamp(t: float):
    """float seconds -> ``builtin_interfaces/Time`` (rounded to the nearest nanosecond)."""
    return ns_to_stamp(int(round(t * 1e9)))


def image_to_rgb(msg) -> np.ndarray:
    """``sensor_msgs/Image`` -> RGB uint8 (H, W, 3); ImageDecodeError names what is wrong."""
    return decode_raw(msg.encoding, int(msg.height), int(msg.width), int(msg.step), bytes(msg.data))


def compressed_to_rgb(msg) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` -> RGB uint8 (H, W, 3)."""
    return decode_compressed(msg.format, bytes(msg.data))


def rgb_to_image(rgb: np.ndarray, stamp, frame_id: str = ""):
    """RGB uint8 (H, W, 3) -> ``sensor_msgs/Image`` (rgb8)."""
    from sensor_msgs.msg import Image

    h, w, step, data = encode_raw_rgb8(rgb)
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width, msg.step = h, w, step
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.data = data
    return msg


def action_chunk_msg(
    chunk: ActionChunk,
    sequence: int,
    latency_s: float,
    views: Sequence[str],
    action_names: Sequence[str],
    frame_id: str,
    joint_names: Sequence[str] = (),
    honor_requery: bool = True,
):
    """Core :class:`ActionChunk` -> ``specprune_ros/ActionChunk`` (header stamp = observation stamp).

    ``requery_after`` is the last row to execute before an early re-query (:func:`requery_rows`), -1 when the
    chunk runs as usual or ``honor_requery`` is false (``requery`` still reports the controller's wish).
    """
    from specprune_ros.msg import ActionChunk as ActionChunkMsg

    actions = np.asarray(chunk.actions, dtype=np.float64)  # (T, A)
    rows, cols = actions.shape
    stats = chunk.stats
    msg = ActionChunkMsg()
    msg.header.stamp = sec_to_stamp(chunk.stamp)
    msg.header.frame_id = frame_id
    msg.sequence = int(sequence)
    msg.step_dt = float(chunk.dt)
    msg.rows, msg.cols = int(rows), int(cols)
    msg.actions = actions.reshape(-1).tolist()  # row-major
    msg.action_names = list(action_names)[:cols] if len(action_names) >= cols else [f"a{i}" for i in range(cols)]
    msg.joint_names = list(joint_names)
    msg.mode = stats.mode
    msg.tokens_total = int(stats.total_tokens)
    msg.views = list(views)
    kept = [int(stats.kept_per_view.get(v, 0)) for v in views]
    msg.tokens_kept_per_view = kept
    msg.tokens_kept = int(sum(kept))
    msg.inference_latency = float(latency_s)
    msg.requery = bool(stats.requery)
    cut = requery_rows(bool(stats.requery), stats.requery_after, rows) if honor_requery else None
    msg.requery_after = -1 if cut is None else cut - 1
    msg.preset = stats.preset
    return msg


def inference_stats_msg(chunk: ActionChunk, sequence: int, frame_id: str):
    """The chunk's :class:`StepStats` -> ``specprune_ros/InferenceStats``."""
    from specprune_ros.msg import InferenceStats

    stats = chunk.stats
    msg = InferenceStats()
    msg.header.stamp = sec_to_stamp(chunk.stamp)
    msg.header.frame_id = frame_id
    msg.sequence = int(sequence)
    msg.tokens_per_layer = [int(x) for x in stats.tokens_per_layer]
    msg.visual_tokens_per_layer = [int(x) for x in stats.visual_tokens_per_layer]
    msg.stage_names = list(stats.timings_ms)
    msg.stage_ms = [float(v) for v in stats.timings_ms.values()]
    msg.lookback = -1 if stats.lookback is None else int(stats.lookback)
    msg.mode = stats.mode
    msg.preset = stats.preset
    return msg


def twist_msg(twist: np.ndarray, stamp, frame_id: str):
    """(6,) twist -> ``geometry_msgs/TwistStamped``."""
    from geometry_msgs.msg import TwistStamped

    t = np.asarray(twist, dtype=np.float64)
    msg = TwistStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(x) for x in t[:3])
    msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = (float(x) for x in t[3:6])
    return msg


def joint_trajectory_msg(joint_names: Sequence[str], positions: np.ndarray, velocities: np.ndarray, times: np.ndarray):
    """Trajectory (T, N) -> ``trajectory_msgs/JointTrajectory`` with header.stamp = 0 (start now)."""
    from builtin_interfaces.msg import Duration
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    msg = JointTrajectory()
    msg.joint_names = list(joint_names)
    for q, qd, t in zip(positions, velocities, times):
        ns = int(round(float(t) * 1e9))
        point = JointTrajectoryPoint()
        point.positions = [float(x) for x in q]
        point.velocities = [float(x) for x in qd]
        point.time_from_start = Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
        msg.points.append(point)
    return msg


def gripper_msg(value: float, msg_type: str):
    """Gripper command: ``std_msgs/Float64`` or ``std_msgs/Float64MultiArray`` (one element)."""
    if msg_type == "float64":
        from std_msgs.msg import Float64

        return Float64(data=float(value))
    from std_msgs.msg import Float64MultiArray

    return Float64MultiArray(data=[float(value)])


def gripper_msg_class(msg_type: str) -> type:
    if msg_type == "float64":
        from std_msgs.msg import Float64

        return Float64
    from std_msgs.msg import Float64MultiArray

    return Float64MultiArray
