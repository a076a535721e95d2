"""Synthetic episode bags: small rosbag2 bags laid out the way ``ros2 bag record`` writes them.

An episode is a table-top pick-and-place seen by two cameras: ``primary`` (third person) and ``wrist`` (a
close-up that follows the gripper). A red cube is approached, grasped, carried into a blue bowl and released,
so consecutive frames differ the way real ones do (a moving gripper, an object that moves only part of the
time). Beside the cameras the bag holds:

* ``/joint_states``: ``sensor_msgs/JointState`` of a Franka Panda, ``panda_joint1..7`` plus
  ``panda_finger_joint1/2``, with positions, velocities and an EMPTY effort array, as arm drivers publish;
* ``/instruction``: ``std_msgs/String``, once, offered transient-local;
* ``/robot_description``: ``std_msgs/String`` holding a Panda URDF, once, offered transient-local.

The result is a directory with ``metadata.yaml`` and one storage file (``<name>_0.db3`` or
``<name>_0.mcap``). Everything is deterministic for a given seed, except that ``joint_bytes="rclpy"``
serializes joint states with Fast-CDR whose alignment padding bytes are not specified.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from .bagio import like_ros2_bag_record

NS = 1_000_000_000

#: Topics of a synthetic bag: the policy node's default inputs (``camera_topics`` etc. in NodeConfig).
CAMERA_TOPICS: dict[str, str] = {
    "primary": "/camera/image_raw",
    "wrist": "/wrist_camera/image_raw",
}
JOINT_STATES_TOPIC = "/joint_states"
INSTRUCTION_TOPIC = "/instruction"
ROBOT_DESCRIPTION_TOPIC = "/robot_description"

ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("panda_finger_joint1", "panda_finger_joint2")
JOINT_NAMES = ARM_JOINTS + FINGER_JOINTS
#: Franka "ready" pose (rad).
READY_POSE = (0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4)

DEFAULT_INSTRUCTION = "put the red cube in the blue bowl"
#: Start of every synthetic bag (2023-11-14 22:13:20 UTC), so bags are byte-for-byte reproducible.
DEFAULT_START_NS = 1_700_000_000 * NS
#: Sensor-to-recorder delay added to each header stamp to get the bag (receive) time.
TRANSPORT_DELAY_NS = 3_000_000

_DISTRO_VERSION = {"jazzy": (Stores.ROS2_JAZZY, 8), "kilted": (Stores.ROS2_KILTED, 9)}


@dataclass(frozen=True)
class EpisodeSpec:
    """What a synthetic episode bag contains.

    Attributes:
        seconds: episode length (bag duration), > 0.
        fps: camera frame rate (both cameras, same stamps), Hz.
        joint_rate: joint-state rate, Hz.
        image_size: square frame side in pixels (e.g. 224 or 256), >= 32.
        views: camera view name -> topic.
        instruction: the task text published on the instruction topic.
        seed: seeds the table texture and the small jitter of the motion.
        image_encoding: ``"rgb8"`` (sensor_msgs/Image) or ``"jpeg"`` (sensor_msgs/CompressedImage).
        dead_view: a view whose camera stops publishing after ``dead_after`` seconds (a dead driver), to
            test staleness handling; None = every camera runs for the whole episode.
        dead_after: see ``dead_view``.
        frozen_view: a view whose camera keeps publishing, with new stamps, the frame it had at
            ``frozen_after`` seconds (a hung driver republishing its last image); None = no frozen camera.
        frozen_after: see ``frozen_view``.
        later_instructions: ``(seconds, text)`` pairs published on the instruction topic later in the
            episode (a new task for the policy).
    """

    seconds: float = 2.0
    fps: float = 10.0
    joint_rate: float = 50.0
    image_size: int = 224
    views: dict[str, str] = field(default_factory=lambda: dict(CAMERA_TOPICS))
    instruction: str = DEFAULT_INSTRUCTION
    seed: int = 0
    image_encoding: Literal["rgb8", "jpeg"] = "rgb8"
    dead_view: str | None = None
    dead_after: float = 0.0
    frozen_view: str | None = None
    frozen_after: float = 0.0
    later_instructions: tuple[tuple[float, str], ...] = ()

    def __post_init__(self) -> None:
        if not (self.seconds > 0 and math.isfinite(self.seconds)):
            raise ValueError(f"seconds must be a positive number, got {self.seconds!r}")
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps!r}")
        if not self.joint_rate > 0:
            raise ValueError(f"joint_rate must be > 0, got {self.joint_rate!r}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32 pixels, got {self.image_size!r}")
        if not self.views:
            raise ValueError("views must name at least one camera view -> topic")
        for t, text in self.later_instructions:
            if not (0 < t <= self.seconds) or not text.strip():
                raise ValueError(f"later_instructions needs (time in (0, {self.seconds}], non-empty text), got {(t, text)!r}")
        if self.image_encoding not in ("rgb8", "jpeg"):
            raise ValueError(f"image_encoding must be 'rgb8' or 'jpeg', got {self.image_encoding!r}")
        for name in ("dead_view", "frozen_view"):
            view = getattr(self, name)
            if view is not None and view not in self.views:
                raise ValueError(f"{name} {view!r} is not one of the views {sorted(self.views)}")


# ---------------------------------------------------------------------------------------------------------
# Scene
# ---------------------------------------------------------------------------------------------------------
def _lerp(a: np.ndarray, b: np.ndarray, s: float) -> np.ndarray:
    s = min(max(s, 0.0), 1.0)
    s = s * s * (3 - 2 * s)  # smoothstep: starts and stops gently like a real arm
    return a + (b - a) * s


@dataclass(frozen=True)
class SceneState:
    """Where things are at one instant, in normalized table coordinates (0..1, x right, y down)."""

    gripper: np.ndarray  # (2,)
    cube: np.ndarray  # (2,)
    opening: float  # 1 open .. 0 closed
    height: float  # 1 high above the table .. 0 at the table


BOWL = np.array([0.72, 0.62])


def scene_at(progress: float) -> SceneState:
    """Scene at ``progress`` in [0, 1] of the episode: reach, grasp, carry to the bowl, release, retreat."""
    home = np.array([0.50, 0.25])
    cube0 = np.array([0.28, 0.62])
    p = float(progress)
    if p < 0.35:  # reach above the cube and descend
        g = _lerp(home, cube0, p / 0.35)
        return SceneState(g, cube0.copy(), 1.0, 1.0 - 0.8 * min(p / 0.35, 1.0))
    if p < 0.45:  # close the gripper
        return SceneState(cube0.copy(), cube0.copy(), 1.0 - (p - 0.35) / 0.10, 0.2)
    if p < 0.85:  # carry
        g = _lerp(cube0, BOWL, (p - 0.45) / 0.40)
        lift = 0.2 + 0.6 * math.sin(math.pi * min(max((p - 0.45) / 0.40, 0.0), 1.0))
        return SceneState(g, g.copy(), 0.0, lift)
    # release and retreat
    opening = min((p - 0.85) / 0.05, 1.0)
    g = _lerp(BOWL, home, (p - 0.90) / 0.10) if p > 0.90 else BOWL.copy()
    return SceneState(g, BOWL.copy(), opening, 0.2 + 0.8 * min(max((p - 0.90) / 0.10, 0.0), 1.0))


def _table(size: int, seed: int) -> np.ndarray:
    """Static background: a wooden table under a wall, with a little fixed texture. (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, size)[:, None, None]  # (H, 1, 1)
    wood = np.array([150.0, 110.0, 70.0]) * (0.85 + 0.15 * y)  # (H, 1, 3)
    img = np.broadcast_to(wood, (size, size, 3)).copy()
    img[: size // 5] = np.array([200.0, 200.0, 190.0])  # wall
    img += rng.normal(0.0, 6.0, size=(size, size, 1))  # grain, same for all channels
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw(canvas: np.ndarray, state: SceneState, scale: float) -> None:
    """Draw bowl, cube and gripper onto ``canvas`` (H, W, 3) in place; ``scale`` = pixels per table unit."""
    import cv2

    def px(pt: np.ndarray) -> tuple[int, int]:
        return int(round(pt[0] * scale)), int(round(pt[1] * scale))

    cv2.circle(canvas, px(BOWL), int(0.09 * scale), (40, 70, 200), -1)
    cv2.circle(canvas, px(BOWL), int(0.06 * scale), (25, 45, 150), -1)
    # gripper shadow on the table, then the cube, then the gripper (palm + two fingers) above both;
    # the higher the gripper, the larger it looks (closer to the camera)
    gx, gy = px(state.gripper)
    size = 1.0 + 0.5 * state.height
    cv2.circle(canvas, (gx + int(0.02 * scale), gy + int(0.03 * scale)), int(0.03 * scale), (90, 70, 45), -1)
    half = int(0.035 * scale)
    cx, cy = px(state.cube)
    cv2.rectangle(canvas, (cx - half, cy - half), (cx + half, cy + half), (210, 30, 30), -1)
    palm_w, palm_h = int(0.05 * scale * size), int(0.025 * scale * size)
    top = gy - int(0.07 * scale * size)
    cv2.rectangle(canvas, (gx - palm_w, top), (gx + palm_w, top + palm_h), (70, 70, 75), -1)
    spread = int((0.015 + 0.03 * state.opening) * scale * size)
    finger_w = max(int(0.012 * scale * size), 1)
    for sign in (-1, 1):
        fx = gx + sign * spread
        cv2.rectangle(canvas, (fx - finger_w, top + palm_h), (fx + finger_w, gy), (120, 120, 130), -1)


def render_views(progress: float, size: int, table: np.ndarray) -> dict[str, np.ndarray]:
    """Render ``primary`` (whole table) and ``wrist`` (2x close-up around the gripper) at ``progress``.

    ``table`` is a (2*size, 2*size, 3) background; returns view -> (size, size, 3) uint8 RGB.
    """
    import cv2

    state = scene_at(progress)
    big = table.copy()  # (2S, 2S, 3): draw at twice the resolution, then downsample the primary view
    _draw(big, state, scale=2 * size)
    primary = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)
    # wrist: a size x size window of the 2x image, centered a little ahead of the fingers
    cx = int(np.clip(state.gripper[0] * 2 * size, size // 2, 2 * size - size // 2))
    cy = int(np.clip(state.gripper[1] * 2 * size + size * 0.1, size // 2, 2 * size - size // 2))
    wrist = np.ascontiguousarray(big[cy - size // 2 : cy - size // 2 + size, cx - size // 2 : cx - size // 2 + size])
    return {"primary": primary, "wrist": wrist}


def joint_state_at(t: float, seconds: float) -> tuple[list[float], list[float]]:
    """Positions and velocities (9 values each: 7 arm joints, 2 fingers) at time ``t`` of the episode."""
    p = t / seconds
    amp = np.array([0.35, 0.25, 0.20, 0.30, 0.25, 0.30, 0.40])
    freq = np.array([0.5, 0.7, 0.6, 0.5, 0.9, 0.8, 1.0]) / seconds
    phase = np.arange(7) * 0.7
    w = 2 * math.pi * freq
    q = np.array(READY_POSE) + amp * np.sin(w * t + phase) - amp * np.sin(phase)  # starts at READY_POSE
    dq = amp * w * np.cos(w * t + phase)
    opening = scene_at(p).opening
    finger = 0.04 * opening
    # finger velocity from a finite difference of the scripted opening
    dt = 1e-3 * seconds
    dfinger = (0.04 * scene_at(min(p + 1e-3, 1.0)).opening - finger) / dt
    return [*q.tolist(), finger, finger], [*dq.tolist(), dfinger, dfinger]


# ---------------------------------------------------------------------------------------------------------
# URDF
# ---------------------------------------------------------------------------------------------------------
# Franka Panda, modified DH (Craig) from Franka's documentation: a_{i-1}, d_i, alpha_{i-1}.
_PANDA_DH = (
    (0.0, 0.333, 0.0),
    (0.0, 0.0, -math.pi / 2),
    (0.0, 0.316, math.pi / 2),
    (0.0825, 0.0, math.pi / 2),
    (-0.0825, 0.384, -math.pi / 2),
    (0.0, 0.0, math.pi / 2),
    (0.088, 0.0, math.pi / 2),
)
_PANDA_LIMITS = (
    (-2.8973, 2.8973), (-1.7628, 1.7628), (-2.8973, 2.8973), (-3.0718, -0.0698),
    (-2.8973, 2.8973), (-0.0175, 3.7525), (-2.8973, 2.8973),
)  # fmt: skip
FLANGE_D = 0.107
HAND_TCP_D = 0.1034


def panda_urdf() -> str:
    """A kinematic Franka Panda URDF (links, joints, limits; unit-mass inertials, no meshes).

    Joint ``i`` of the modified-DH chain is placed at RotX(alpha) * TransX(a) * TransZ(d) from its parent and
    turns about its own z axis, so the ready pose puts the flange at (0.3069, 0, 0.5903) m.
    """

    def inertial() -> str:
        return (
            '<inertial><mass value="1.0"/><origin xyz="0 0 0"/>'
            '<inertia ixx="0.01" ixy="0" ixz="0" iyy="0.01" iyz="0" izz="0.01"/></inertial>'
        )

    links = ['<link name="panda_link0">' + inertial() + "</link>"]
    joints = []
    for i, ((a, d, alpha), (lo, hi)) in enumerate(zip(_PANDA_DH, _PANDA_LIMITS, strict=True), start=1):
        xyz = (a, -math.sin(alpha) * d, math.cos(alpha) * d)
        links.append(f'<link name="panda_link{i}">' + inertial() + "</link>")
        joints.append(
            f'<joint name="panda_joint{i}" type="revolute">'
            f'<parent link="panda_link{i - 1}"/><child link="panda_link{i}"/>'
            f'<origin xyz="{xyz[0]:.6f} {xyz[1]:.6f} {xyz[2]:.6f}" rpy="{alpha:.6f} 0 0"/>'
            f'<axis xyz="0 0 1"/><limit lower="{lo}" upper="{hi}" effort="87" velocity="2.175"/></joint>'
        )
    links += [
        '<link name="panda_link8"/>',
        '<link name="panda_hand">' + inertial() + "</link>",
        '<link name="panda_hand_tcp"/>',
        '<link name="panda_leftfinger">' + inertial() + "</link>",
        '<link name="panda_rightfinger">' + inertial() + "</link>",
    ]
    joints += [
        '<joint name="panda_joint8" type="fixed"><parent link="panda_link7"/><child link="panda_link8"/>'
        f'<origin xyz="0 0 {FLANGE_D}" rpy="0 0 0"/></joint>',
        '<joint name="panda_hand_joint" type="fixed"><parent link="panda_link8"/><child link="panda_hand"/>'
        f'<origin xyz="0 0 0" rpy="0 0 {-math.pi / 4:.6f}"/></joint>',
        '<joint name="panda_hand_tcp_joint" type="fixed"><parent link="panda_hand"/>'
        f'<child link="panda_hand_tcp"/><origin xyz="0 0 {HAND_TCP_D}" rpy="0 0 0"/></joint>',
        '<joint name="panda_finger_joint1" type="prismatic"><parent link="panda_hand"/>'
        '<child link="panda_leftfinger"/><origin xyz="0 0 0.0584" rpy="0 0 0"/><axis xyz="0 1 0"/>'
        '<limit lower="0.0" upper="0.04" effort="100" velocity="0.2"/></joint>',
        '<joint name="panda_finger_joint2" type="prismatic"><parent link="panda_hand"/>'
        '<child link="panda_rightfinger"/><origin xyz="0 0 0.0584" rpy="0 0 0"/><axis xyz="0 -1 0"/>'
        '<limit lower="0.0" upper="0.04" effort="100" velocity="0.2"/></joint>',
    ]
    return '<?xml version="1.0"?>\n<robot name="panda">\n' + "\n".join(links + joints) + "\n</robot>\n"


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------
_INF = QosTime(9223372036, 854775807)  # rosbag2's encoding of an infinite duration


def recorded_qos(reliable: bool = True, transient_local: bool = False) -> Qos:
    """An offered QoS profile as ``ros2 bag record`` stores it (history unknown, depth 0)."""
    return Qos(
        QosHistory.UNKNOWN,
        0,
        QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
        QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        _INF,
        _INF,
        QosLiveliness.AUTOMATIC,
        _INF,
        False,
    )


def _header(ts, stamp_ns: int, frame_id: str):
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    return Header(stamp=Time(sec=stamp_ns // NS, nanosec=stamp_ns % NS), frame_id=frame_id)


def _joint_bytes_rclpy(stamp_ns: int, pos: list[float], vel: list[float]) -> bytes:
    """JointState serialized by rclpy (Fast-CDR), exactly as a C++ or Python driver puts it on the wire."""
    from builtin_interfaces.msg import Time
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState

    msg = JointState()
    msg.header.stamp = Time(sec=stamp_ns // NS, nanosec=stamp_ns % NS)
    msg.header.frame_id = ""
    msg.name = list(JOINT_NAMES)
    msg.position = pos
    msg.velocity = vel
    msg.effort = []
    return bytes(serialize_message(msg))


def write_episode_bag(
    path: str | Path,
    spec: EpisodeSpec | None = None,
    *,
    storage: Literal["sqlite3", "mcap"] = "sqlite3",
    distro: Literal["jazzy", "kilted"] = "kilted",
    joint_bytes: Literal["rosbags", "rclpy"] = "rosbags",
    start_ns: int = DEFAULT_START_NS,
) -> Path:
    """Write one synthetic episode bag to the new directory ``path`` and return it.

    Args:
        path: bag directory to create (must not exist).
        spec: what to put in the bag (defaults: 2 s, 10 fps, 224x224, 50 Hz joint states).
        storage: ``"sqlite3"`` (``<name>_0.db3``) or ``"mcap"`` (``<name>_0.mcap``).
        distro: metadata layout and message definitions of ``"kilted"`` (bag version 9) or ``"jazzy"`` (8).
        joint_bytes: serialize joint states with rosbags (exact size) or with rclpy/Fast-CDR (what real
            drivers produce: padding after the empty effort array; needs rclpy).
        start_ns: bag start time, ns since the epoch.
    """
    spec = spec or EpisodeSpec()
    path = Path(path)
    if storage not in ("sqlite3", "mcap"):
        raise ValueError(f"storage must be 'sqlite3' or 'mcap', got {storage!r}")
    if distro not in _DISTRO_VERSION:
        raise ValueError(f"distro must be one of {sorted(_DISTRO_VERSION)}, got {distro!r}")
    if joint_bytes not in ("rosbags", "rclpy"):
        raise ValueError(f"joint_bytes must be 'rosbags' or 'rclpy', got {joint_bytes!r}")
    if path.exists():
        raise FileExistsError(f"{path} exists already; pass a new directory for the bag")
    store, version = _DISTRO_VERSION[distro]
    ts = get_typestore(store)
    String = ts.types["std_msgs/msg/String"]
    Image = ts.types["sensor_msgs/msg/Image"]
    CompressedImage = ts.types["sensor_msgs/msg/CompressedImage"]
    JointState = ts.types["sensor_msgs/msg/JointState"]
    image_type = "sensor_msgs/msg/Image" if spec.image_encoding == "rgb8" else "sensor_msgs/msg/CompressedImage"

    # (bag_time_ns, topic, raw) for every message; sorted by time before writing, as a recorder would see them
    out: list[tuple[int, str, bytes]] = []
    out.append((start_ns, ROBOT_DESCRIPTION_TOPIC, ts.serialize_cdr(String(data=panda_urdf()), "std_msgs/msg/String")))
    out.append((start_ns + 1_000_000, INSTRUCTION_TOPIC, ts.serialize_cdr(String(data=spec.instruction), "std_msgs/msg/String")))

    for t, text in spec.later_instructions:
        out.append((start_ns + int(round(t * NS)), INSTRUCTION_TOPIC, ts.serialize_cdr(String(data=text), "std_msgs/msg/String")))

    size = spec.image_size
    table = _table(2 * size, spec.seed)
    n_frames = max(int(math.floor(spec.seconds * spec.fps)), 1)
    for k in range(n_frames):
        t = 0.02 + k / spec.fps  # first frame 20 ms after start
        if t > spec.seconds:
            break
        stamp = start_ns + int(round(t * NS))
        frames = render_views(t / spec.seconds, size, table)
        if spec.frozen_view is not None and t > spec.frozen_after:
            stuck = render_views(spec.frozen_after / spec.seconds, size, table)
            frames[spec.frozen_view] = stuck.get(spec.frozen_view, stuck["primary"])
        for view, topic in spec.views.items():
            if spec.dead_view == view and t > spec.dead_after:
                continue
            rgb = frames.get(view, frames["primary"])
            header = _header(ts, stamp, f"{view}_camera_optical_frame")
            if spec.image_encoding == "rgb8":
                msg = Image(
                    header=header, height=size, width=size, encoding="rgb8", is_bigendian=0, step=size * 3,
                    data=np.ascontiguousarray(rgb).reshape(-1),
                )  # fmt: skip
            else:
                import cv2

                ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])  # expects BGR
                assert ok
                msg = CompressedImage(header=header, format="rgb8; jpeg compressed bgr8", data=buf.reshape(-1))
            out.append((stamp + TRANSPORT_DELAY_NS, topic, ts.serialize_cdr(msg, image_type)))

    n_joint = max(int(math.floor(spec.seconds * spec.joint_rate)), 1)
    for k in range(n_joint):
        t = 0.01 + k / spec.joint_rate
        if t > spec.seconds:
            break
        stamp = start_ns + int(round(t * NS))
        pos, vel = joint_state_at(t, spec.seconds)
        if joint_bytes == "rclpy":
            raw = _joint_bytes_rclpy(stamp, pos, vel)
        else:
            msg = JointState(
                header=_header(ts, stamp, ""), name=list(JOINT_NAMES),
                position=np.array(pos, dtype=np.float64), velocity=np.array(vel, dtype=np.float64),
                effort=np.zeros(0, dtype=np.float64),
            )  # fmt: skip
            raw = ts.serialize_cdr(msg, "sensor_msgs/msg/JointState")
        out.append((stamp + TRANSPORT_DELAY_NS // 3, JOINT_STATES_TOPIC, raw))

    out.sort(key=lambda item: item[0])
    plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
    types = {
        ROBOT_DESCRIPTION_TOPIC: ("std_msgs/msg/String", recorded_qos(True, True)),
        INSTRUCTION_TOPIC: ("std_msgs/msg/String", recorded_qos(True, True)),
        JOINT_STATES_TOPIC: ("sensor_msgs/msg/JointState", recorded_qos(True, False)),
        **{topic: (image_type, recorded_qos(True, False)) for topic in spec.views.values()},
    }
    writer = Writer(path, version=version, storage_plugin=plugin)
    writer.open()
    try:
        conns = {
            topic: writer.add_connection(topic, msgtype, typestore=ts, offered_qos_profiles=[qos])
            for topic, (msgtype, qos) in types.items()
        }
        for stamp, topic, raw in out:
            writer.write(conns[topic], stamp, raw)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    like_ros2_bag_record(path, distro)
    return path


def write_demo_bag(
    path: str | Path,
    seconds: float = 3.0,
    storage: Literal["sqlite3", "mcap"] = "mcap",
    *,
    fps: float = 10.0,
    image_size: int = 224,
    instruction: str = DEFAULT_INSTRUCTION,
    seed: int = 0,
) -> Path:
    """The demo's episode bag: ``seconds`` of two 224x224 cameras, Panda joint states and an instruction.

    Joint states are serialized by rclpy when it is importable (the bytes a real driver would record),
    else by rosbags. Returns the bag directory.
    """
    try:
        import rclpy.serialization  # noqa: F401

        joint_bytes: Literal["rosbags", "rclpy"] = "rclpy"
    except ImportError:
        joint_bytes = "rosbags"
    spec = EpisodeSpec(seconds=seconds, fps=fps, image_size=image_size, instruction=instruction, seed=seed)
    return write_episode_bag(path, spec, storage=storage, joint_bytes=joint_bytes)
