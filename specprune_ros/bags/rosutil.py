"""rclpy helpers shared by ``specprune-replay`` and ``specprune-record``: message classes from type names,
QoS conversion between rosbag2 metadata and rclpy, and a quiet Ctrl-C.

Imports rclpy lazily (inside functions), so importing this module is cheap and ROS-free.
"""
from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Iterable, Sequence
from contextlib import contextmanager

from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

from .bagio import BagError, qos_summary

#: rosbag2's encoding of an infinite duration.
INFINITE = QosTime(9223372036, 854775807)


def normalize_type(msgtype: str) -> str:
    """``pkg/Name`` or ``pkg/msg/Name`` -> ``pkg/msg/Name``."""
    parts = msgtype.strip().split("/")
    if len(parts) == 2:
        return f"{parts[0]}/msg/{parts[1]}"
    return msgtype.strip()


def message_class(msgtype: str) -> type:
    """The rclpy message class of ``pkg/msg/Name``; ImportError/AttributeError name the missing piece."""
    parts = normalize_type(msgtype).split("/")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"malformed message type name {msgtype!r}; expected pkg/msg/Name")
    pkg, kind, name = parts
    module = importlib.import_module(f"{pkg}.{kind}")
    return getattr(module, name)


def resolve_classes(types_to_topics: dict[str, list[str]]) -> tuple[dict[str, type], dict[str, str]]:
    """Import every message type; returns (type -> class, type -> why it could not be imported)."""
    classes: dict[str, type] = {}
    unknown: dict[str, str] = {}
    for msgtype in types_to_topics:
        try:
            classes[msgtype] = message_class(msgtype)
        except ModuleNotFoundError as err:
            unknown[msgtype] = f"Python package {err.name!r} not found"
            if msgtype.startswith("specprune_ros/"):
                unknown[msgtype] += "; build the messages with `make setup` and `source tools/ros_env.sh`"
        except AttributeError:
            unknown[msgtype] = f"{normalize_type(msgtype).rsplit('/', 1)[0]} has no {msgtype.rsplit('/', 1)[-1]}"
        except (ImportError, ValueError) as err:
            unknown[msgtype] = " ".join(str(err).split())
    return classes, unknown


def unknown_types_error(unknown: dict[str, str], types_to_topics: dict[str, list[str]], hint: str) -> BagError:
    """One-line error naming every unknown type, why, and the topics that carry it."""
    parts = [f"{t} ({why}; topics: {', '.join(types_to_topics[t])})" for t, why in sorted(unknown.items())]
    return BagError(f"unknown message type(s): {'; '.join(parts)}. {hint}")


def rclpy_qos(
    recorded: Sequence[Qos],
    *,
    depth: int,
    latched_default: bool,
):
    """An rclpy QoSProfile for publishing a topic recorded with ``recorded`` offered profiles.

    Reliability and durability follow the recorded profiles when they all agree. Otherwise: reliable (a
    reliable publisher serves reliable and best-effort subscribers), and transient-local only when
    ``latched_default`` (e.g. ``/robot_description``), else volatile. Transient-local publishers keep the
    last message only, like a latch; others keep ``depth`` messages.
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliability, durability = qos_summary(recorded)
    transient = durability == "transient_local" or (durability is None and latched_default)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1 if transient else depth,
        reliability=ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort" else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient else DurabilityPolicy.VOLATILE,
    )


def offered_to_bag_qos(profiles: Iterable[object]) -> list[Qos]:
    """rclpy QoSProfiles (from ``get_publishers_info_by_topic``) -> rosbag2 metadata profiles."""
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    out: list[Qos] = []
    for p in profiles:
        rel = {
            ReliabilityPolicy.RELIABLE: QosReliability.RELIABLE,
            ReliabilityPolicy.BEST_EFFORT: QosReliability.BEST_EFFORT,
        }.get(p.reliability, QosReliability.UNKNOWN)
        dur = {
            DurabilityPolicy.TRANSIENT_LOCAL: QosDurability.TRANSIENT_LOCAL,
            DurabilityPolicy.VOLATILE: QosDurability.VOLATILE,
        }.get(p.durability, QosDurability.UNKNOWN)
        out.append(
            Qos(QosHistory.UNKNOWN, 0, rel, dur, INFINITE, INFINITE, QosLiveliness.AUTOMATIC, INFINITE, False)
        )
    return out


def subscription_qos(offered: Sequence[object], depth: int):
    """QoS that receives from every publisher offering ``offered``: reliable only if all of them are
    reliable, transient-local only if all of them are (so a latched message is fetched)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    offered = list(offered)
    all_reliable = bool(offered) and all(p.reliability == ReliabilityPolicy.RELIABLE for p in offered)
    all_transient = bool(offered) and all(p.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in offered)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE if all_reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if all_transient else DurabilityPolicy.VOLATILE,
    )


@contextmanager
def ros_context(node_name: str, namespace: str = "/"):
    """rclpy init + one node, with Python's own SIGINT handling (KeyboardInterrupt) and SIGTERM treated
    like Ctrl-C; shuts everything down on exit. The command line is not given to rclpy: the tools' own
    arguments (``--remap OLD:=NEW``) would otherwise also apply as global ROS remapping rules."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    previous_term = signal.getsignal(signal.SIGTERM)

    def _term(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    context = rclpy.context.Context()
    rclpy.init(args=[], context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    try:
        node = rclpy.create_node(node_name, context=context, namespace=namespace)
        yield node
    finally:
        try:
            if node is not None:
                node.destroy_node()
        finally:
            if context.ok():
                context.try_shutdown()
            signal.signal(signal.SIGTERM, previous_term)


def fail(prog: str, message: str, code: int = 2) -> int:
    """Print ``prog: error: message`` to stderr (one line) and return ``code``."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def split_topics(items: Sequence[str] | None, option: str | None = None) -> tuple[str, ...]:
    """Topic arguments given space and/or comma separated (``--topics /a,/b /c``) -> ``("/a", "/b", "/c")``;
    blanks are dropped. With ``option``, a list that was given but names no topic (``--topics=``,
    ``--topics=,``) raises ValueError naming ``option``."""
    topics = tuple(t.strip() for item in items or () for t in item.split(",") if t.strip())
    if option is not None and items is not None and not topics:
        raise ValueError(f"{option} names no topic (got {' '.join(items)!r}); give e.g. {option} /joint_states")
    return topics
