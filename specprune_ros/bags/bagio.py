"""Reading rosbag2 bags with ``rosbags``: one place for opening, selecting topics, QoS and deserializing.

Every failure a user can cause (a path that is not a bag, a corrupt or truncated storage file, a topic that
is not in the bag) becomes a :class:`BagError` whose one-line message names the path or topic and says what
to do. The command-line tools print that line and exit non-zero instead of showing a traceback.

No ROS imports here: the offline evaluator uses this module without a ROS installation.
"""
from __future__ import annotations

import sqlite3
import struct
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from rosbags.interfaces import Connection, ConnectionExtRosbag2, Qos, QosDurability, QosReliability
from rosbags.rosbag2 import Reader, ReaderError
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

#: rosbags type store used for each ``ros_distro`` a bag's metadata may name; anything else -> Kilted.
DISTRO_STORES = {
    "humble": Stores.ROS2_HUMBLE,
    "iron": Stores.ROS2_IRON,
    "jazzy": Stores.ROS2_JAZZY,
    "kilted": Stores.ROS2_KILTED,
}
DEFAULT_STORE = Stores.ROS2_KILTED

#: Bytes a serializer may leave after the last field (alignment of empty trailing sequences, see
#: :func:`deserialize`). Anything longer than this is a real size mismatch.
MAX_TRAILING_PADDING = 8

NS = 1_000_000_000


class BagError(Exception):
    """A bag that cannot be used as asked. ``str(err)`` is one line meant for the user."""


@dataclass(frozen=True)
class TopicInfo:
    """One topic of a bag: its type, message count and the QoS profiles its publishers offered."""

    topic: str
    msgtype: str
    count: int
    qos: tuple[Qos, ...]
    other_types: tuple[str, ...] = ()  # further types the topic was recorded with (it cannot be read then)


def resolve_bag_path(path: str | Path) -> Path:
    """Return the path rosbags should open: the bag directory, or a bare ``.db3``/``.mcap`` file.

    A storage file inside a bag directory resolves to the directory, so its metadata (QoS) is used.
    """
    p = Path(path)
    if not p.exists():
        raise BagError(f"bag not found: {str(p)!r} does not exist (pass the directory `ros2 bag record` wrote)")
    if p.is_file():
        if (p.parent / "metadata.yaml").is_file() and p.suffix in (".db3", ".mcap"):
            return p.parent
        if p.suffix not in (".db3", ".mcap"):
            raise BagError(
                f"not a rosbag2 bag: {str(p)!r} is a file without a .db3 or .mcap suffix "
                "(pass the bag directory that holds metadata.yaml)"
            )
        return p
    if not (p / "metadata.yaml").is_file():
        storage = sorted([*p.glob("*.db3"), *p.glob("*.mcap")])
        if len(storage) == 1:
            return storage[0]
        raise BagError(
            f"not a rosbag2 bag: directory {str(p)!r} has no metadata.yaml"
            + (f" and {len(storage)} storage files" if storage else " and no .db3/.mcap file")
        )
    return p


def _oneline(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


class Bag:
    """An open rosbag2 bag (use as a context manager).

    Attributes:
        path: what was opened (bag directory or storage file).
        distro: ``ros_distro`` from the metadata (``None`` when absent).
        start_ns, end_ns: first and last message time (ns since the epoch); ``end_ns`` is inclusive.
    """

    def __init__(self, path: str | Path) -> None:
        try:
            self.path = resolve_bag_path(path)
        except OSError as err:  # e.g. a directory this user may not list
            raise BagError(f"cannot read bag {str(path)!r}: {_oneline(err)}") from None
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except BagError:
            raise
        except (ReaderError, sqlite3.Error, OSError, ValueError, KeyError, struct.error, EOFError) as err:
            raise BagError(f"cannot read bag {str(self.path)!r}: {_oneline(err)} (corrupt or truncated?)") from None
        except Exception as err:  # the mcap parser raises its own exception types
            raise BagError(f"cannot read bag {str(self.path)!r}: {type(err).__name__}: {_oneline(err)}") from None
        self.distro: str | None = self._reader.ros_distro
        self._typestore: Typestore | None = None
        # The sqlite3 plugin opens lazily: touch the database now so a corrupt file fails here.
        if self._reader.message_count == 0 and not self._reader.connections:
            raise BagError(f"bag {str(self.path)!r} has no topics")
        if self._reader.message_count == 0:
            topics = sorted({c.topic for c in self._reader.connections})
            raise BagError(f"bag {str(self.path)!r} has no messages (topics {topics} were recorded empty)")

    # -- context manager -------------------------------------------------------------------------
    def __enter__(self) -> Bag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._reader.close()
        except Exception:  # closing a broken bag must not hide the original error
            pass

    # -- metadata --------------------------------------------------------------------------------
    @property
    def start_ns(self) -> int:
        return self._reader.start_time

    @property
    def end_ns(self) -> int:
        return self._reader.end_time - 1

    @property
    def message_count(self) -> int:
        return self._reader.message_count

    @property
    def connections(self) -> list[Connection]:
        return list(self._reader.connections)

    def topics(self) -> dict[str, TopicInfo]:
        """topic -> :class:`TopicInfo`, in the bag's order."""
        out: dict[str, TopicInfo] = {}
        for conn in self._reader.connections:
            qos = tuple(conn.ext.offered_qos_profiles) if isinstance(conn.ext, ConnectionExtRosbag2) else ()
            prev = out.get(conn.topic)
            if prev is None:
                out[conn.topic] = TopicInfo(conn.topic, conn.msgtype, conn.msgcount, qos)
            else:
                other = prev.other_types
                if conn.msgtype != prev.msgtype and conn.msgtype not in other:
                    other += (conn.msgtype,)
                out[conn.topic] = TopicInfo(conn.topic, prev.msgtype, prev.count + conn.msgcount, prev.qos + qos, other)
        return out

    def select(self, topics: Sequence[str] | None) -> list[Connection]:
        """Connections of ``topics`` (all when None/empty); a topic not in the bag, or recorded with two types,
        -> :class:`BagError`."""
        known = self.topics()
        missing = [t for t in topics or () if t not in known]
        if missing:
            raise BagError(
                f"topic(s) {', '.join(missing)} not in bag {str(self.path)!r}; it has: {', '.join(known) or 'none'}"
            )
        wanted = set(topics or known)
        mixed = [info for t, info in known.items() if t in wanted and info.other_types]
        if mixed:
            info = mixed[0]
            raise BagError(
                f"topic {info.topic!r} is recorded with two types ({info.msgtype}, {info.other_types[0]}); "
                "leave it out or split the bag"
            )
        return [c for c in self._reader.connections if c.topic in wanted]

    # -- messages --------------------------------------------------------------------------------
    def messages(
        self,
        connections: Iterable[Connection] | None = None,
        start_ns: int | None = None,
        stop_ns: int | None = None,
    ) -> Iterator[tuple[Connection, int, bytes]]:
        """Yield ``(connection, timestamp_ns, raw_cdr)`` in time order; storage errors -> :class:`BagError`.

        ``stop_ns`` is exclusive.
        """
        conns = list(connections) if connections is not None else self.connections
        yielded: Counter[str] = Counter()
        try:
            for conn, stamp, raw in self._reader.messages(conns, start=start_ns, stop=stop_ns):
                yielded[conn.topic] += 1
                yield conn, stamp, bytes(raw)
            if start_ns is None and stop_ns is None:
                expected: Counter[str] = Counter()
                for c in conns:
                    expected[c.topic] += c.msgcount
                empty = sorted(t for t, n in expected.items() if n > 0 and yielded[t] == 0)
                if empty:
                    raise BagError(
                        f"bag {str(self.path)!r}: metadata.yaml lists messages on {', '.join(empty)} but the storage "
                        "file yields none; metadata.yaml and the storage file disagree (edited, or copied from "
                        "another recording?)"
                    )
        except BagError:
            raise
        except (ReaderError, sqlite3.Error, OSError, ValueError, KeyError, struct.error, EOFError) as err:
            raise BagError(f"bag {str(self.path)!r} is corrupt or truncated: {_oneline(err)}") from None
        except Exception as err:  # the mcap parser raises its own exception types
            raise BagError(
                f"bag {str(self.path)!r} is corrupt or truncated: {type(err).__name__}: {_oneline(err)}"
            ) from None

    # -- deserialization -------------------------------------------------------------------------
    @property
    def typestore(self) -> Typestore:
        """A type store for this bag's distro, plus any type whose definition the bag carries."""
        if self._typestore is None:
            store = get_typestore(DISTRO_STORES.get((self.distro or "").lower(), DEFAULT_STORE))
            for conn in self._reader.connections:
                if conn.msgtype in store.fielddefs or not conn.msgdef.data:
                    continue
                try:
                    store.register(_types_from_definition(conn.msgtype, conn.msgdef.data))
                except Exception as err:
                    raise BagError(
                        f"cannot parse the definition of {conn.msgtype} stored in {str(self.path)!r}: {_oneline(err)}"
                    ) from None
            self._typestore = store
        return self._typestore

    def deserialize(self, raw: bytes, msgtype: str) -> object:
        """Deserialize one message of this bag (tolerates the padding described in :func:`deserialize`)."""
        return deserialize(self.typestore, raw, msgtype)


def _types_from_definition(msgtype: str, text: str) -> dict:
    """Types of a rosbag2 ``message_definition``: the main .msg/.idl text plus its ``MSG:`` sections."""
    sep = "=" * 80 + "\n"
    if text.startswith(sep + "IDL: "):
        types: dict = {}
        for part in text.split(sep)[1:]:
            if part.startswith("IDL: "):
                types.update(get_types_from_idl(part.split("\n", 1)[1]))
        return types
    parts = text.split(sep)
    types = dict(get_types_from_msg(parts[0], msgtype))
    for part in parts[1:]:
        header, _, body = part.partition("\n")
        name = header.removeprefix("MSG: ").strip()
        if "/msg/" not in name and "/" in name:
            pkg, _, base = name.partition("/")
            name = f"{pkg}/msg/{base}"
        types.update(get_types_from_msg(body, name))
    return types


def deserialize(typestore: Typestore, raw: bytes | memoryview, msgtype: str) -> object:
    """Deserialize CDR bytes with ``typestore``, accepting the padding Fast-CDR leaves after empty sequences.

    Messages serialized by Fast-CDR (every C++ driver, and rclpy's ``serialize_message``) whose LAST fields
    are empty float64 sequences -- e.g. a ``sensor_msgs/JointState`` with no efforts, as most arm drivers
    publish -- carry up to 7 bytes of alignment padding after the final length word. ``rosbags``' strict
    check rejects them as a "size mismatch"; the fields themselves decode correctly, so this function
    decodes them and accepts at most :data:`MAX_TRAILING_PADDING` surplus bytes.
    """
    try:
        return typestore.deserialize_cdr(raw, msgtype)
    except KeyError:
        raise BagError(f"no definition for message type {msgtype} in the bag or the type store") from None
    except SerdeError as err:
        if "size mismatch" not in str(err):
            raise BagError(f"cannot deserialize a {msgtype} message: {_oneline(err)}") from None
    little_endian = bool(raw[1])
    msgdef = typestore.get_msgdef(msgtype)
    func = msgdef.deserialize_cdr_le if little_endian else msgdef.deserialize_cdr_be
    message, pos = func(memoryview(raw)[4:], 0, msgdef.cls, typestore)
    surplus = len(raw) - 4 - pos
    if surplus > MAX_TRAILING_PADDING:
        raise BagError(f"cannot deserialize a {msgtype} message: {surplus} unexpected bytes after its last field")
    return message


def qos_summary(qos: Sequence[Qos]) -> tuple[str | None, str | None]:
    """(reliability, durability) all offered profiles agree on, as ``"reliable"``/``"best_effort"`` and
    ``"transient_local"``/``"volatile"``; None where they disagree or nothing was recorded."""
    rel = {q.reliability for q in qos if q.reliability in (QosReliability.RELIABLE, QosReliability.BEST_EFFORT)}
    dur = {q.durability for q in qos if q.durability in (QosDurability.TRANSIENT_LOCAL, QosDurability.VOLATILE)}
    reliability = next(iter(rel)).name.lower() if len(rel) == 1 else None
    durability = next(iter(dur)).name.lower() if len(dur) == 1 else None
    return reliability, durability


def stamp_ns(header: object) -> int:
    """``std_msgs/Header`` stamp (rosbags object) in nanoseconds."""
    stamp = header.stamp  # type: ignore[attr-defined]
    return int(stamp.sec) * NS + int(stamp.nanosec)


def like_ros2_bag_record(path: Path, distro: str) -> None:
    """Rename the storage file to ``<name>_0.<ext>`` and set ``ros_distro`` as ``ros2 bag record`` does."""
    meta_path = path / "metadata.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    info = meta["rosbag2_bagfile_information"]
    old = info["relative_file_paths"][0]
    new = f"{path.name}_0{Path(old).suffix}"
    (path / old).rename(path / new)
    info["relative_file_paths"] = [new]
    for f in info.get("files", []):
        f["path"] = new
    info["ros_distro"] = distro
    meta_path.write_text(yaml.safe_dump(meta, sort_keys=False))
