"""A procedural tabletop pick-and-place task, rendered with OpenCV, deterministic per seed.

World frame: metres, x to the right, y away from the viewer, z up; the table top is z = 0 and spans
``[-TABLE_HALF, TABLE_HALF]`` in x and y. A Cartesian gantry (three prismatic joints, a yaw joint and two
prismatic fingers, see :data:`GANTRY_URDF`) carries a parallel gripper whose tool point is the fingertip
centre. Objects (cubes, balls, triangles; three sizes, the smallest about one ViT patch wide in the
third-person view) and two coloured plates lie on the table; the instruction names one object by colour and
shape and one plate by colour: ``"put the red cube on the blue plate"``. Every object in a scene has a colour
of its own and any of them can be the named one, so the image alone does not tell which object is meant: the
policy must read the instruction and look at the right object.

Actions are LIBERO-like 7-D delta end-effector commands ``(dx, dy, dz, droll, dpitch, dyaw, gripper)``:
translation in units of ``TaskConfig.pos_step`` metres per control step (clipped to [-1, 1]), yaw in units
of ``TaskConfig.yaw_step`` radians (roll and pitch are accepted and ignored: a gantry cannot tilt), gripper
-1 opens and +1 closes. A grasp needs the fingertips centred on the object within a size-dependent tolerance
(about a centimetre) and low enough; a release above the named plate is a success. Moving there is the
coarse phase; aligning, grasping and placing is the fine phase.

Two 224x224 RGB cameras like LIBERO: ``"primary"`` (a fixed oblique third-person view of the whole table) and
``"wrist"`` (looking down from the gripper, moving and zooming with it, fingers visible).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

#: view names, in the order the policy takes them
VIEWS = ("primary", "wrist")
#: half side of the square table top, metres
TABLE_HALF = 0.25
#: finger opening (each finger's distance from the centre) when fully open, metres
FINGER_OPEN = 0.04
#: finger travel per control step, metres
FINGER_SPEED = 0.008
#: plate radius and height, metres
PLATE_RADIUS = 0.05
PLATE_HEIGHT = 0.006
#: gantry travel limits for the tool point (x, y, z), metres
EE_LOW = np.array([-0.27, -0.27, 0.0])
EE_HIGH = np.array([0.27, 0.27, 0.22])
#: wrist camera height above the fingertips, metres, and its focal length in pixels (224 px image)
WRIST_CAM_OFFSET = 0.10
WRIST_FOCAL = 200.0

OBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 35),
    "green": (40, 170, 60),
    "yellow": (235, 205, 30),
    "purple": (130, 60, 180),
    "cyan": (40, 190, 210),
}
PLATE_COLORS: dict[str, tuple[int, int, int]] = {
    "blue": (40, 70, 200),
    "white": (240, 240, 235),
    "black": (35, 35, 40),
}
SHAPES = ("cube", "ball", "triangle")
#: object footprint radii, metres (small, medium, large)
SIZES = (0.014, 0.019, 0.025)
TEMPLATES = (
    "put the {obj} on the {plate} plate",
    "place the {obj} on the {plate} plate",
    "pick up the {obj} and put it on the {plate} plate",
)

JOINT_NAMES = ("gantry_x", "gantry_y", "gantry_z", "gripper_yaw", "finger_left", "finger_right")

#: URDF of the gantry. With all joints at zero the tool point ``tcp`` is at the world origin (table centre,
#: table height) pointing down; the x/y/z joint values are the tool point's coordinates.
GANTRY_URDF = """<?xml version="1.0"?>
<robot name="testbed_gantry">
  <link name="world"/>
  <link name="carriage_x"><inertial><mass value="1.0"/><inertia ixx="0.01" iyy="0.01" izz="0.01" ixy="0" ixz="0" iyz="0"/></inertial></link>
  <link name="carriage_y"><inertial><mass value="1.0"/><inertia ixx="0.01" iyy="0.01" izz="0.01" ixy="0" ixz="0" iyz="0"/></inertial></link>
  <link name="carriage_z"><inertial><mass value="0.5"/><inertia ixx="0.01" iyy="0.01" izz="0.01" ixy="0" ixz="0" iyz="0"/></inertial></link>
  <link name="hand"><inertial><mass value="0.3"/><inertia ixx="0.001" iyy="0.001" izz="0.001" ixy="0" ixz="0" iyz="0"/></inertial></link>
  <link name="finger_left_link"><inertial><mass value="0.05"/><inertia ixx="0.0001" iyy="0.0001" izz="0.0001" ixy="0" ixz="0" iyz="0"/></inertial></link>
  <link name="finger_right_link"><inertial><mass value="0.05"/><inertia ixx="0.0001" iyy="0.0001" izz="0.0001" ixy="0" ixz="0" iyz="0"/></inertial></link>
  <link name="tcp"/>
  <joint name="gantry_x" type="prismatic">
    <parent link="world"/><child link="carriage_x"/><origin xyz="0 0 0" rpy="0 0 0"/><axis xyz="1 0 0"/>
    <limit lower="-0.27" upper="0.27" effort="100" velocity="0.5"/>
  </joint>
  <joint name="gantry_y" type="prismatic">
    <parent link="carriage_x"/><child link="carriage_y"/><origin xyz="0 0 0" rpy="0 0 0"/><axis xyz="0 1 0"/>
    <limit lower="-0.27" upper="0.27" effort="100" velocity="0.5"/>
  </joint>
  <joint name="gantry_z" type="prismatic">
    <parent link="carriage_y"/><child link="carriage_z"/><origin xyz="0 0 0" rpy="0 0 0"/><axis xyz="0 0 1"/>
    <limit lower="0.0" upper="0.22" effort="100" velocity="0.5"/>
  </joint>
  <joint name="gripper_yaw" type="revolute">
    <parent link="carriage_z"/><child link="hand"/><origin xyz="0 0 0" rpy="0 0 0"/><axis xyz="0 0 1"/>
    <limit lower="-3.14159" upper="3.14159" effort="10" velocity="2.0"/>
  </joint>
  <joint name="tcp_joint" type="fixed">
    <parent link="hand"/><child link="tcp"/><origin xyz="0 0 0" rpy="3.14159265358979 0 0"/>
  </joint>
  <joint name="finger_left" type="prismatic">
    <parent link="hand"/><child link="finger_left_link"/><origin xyz="0 0 0" rpy="0 0 0"/><axis xyz="1 0 0"/>
    <limit lower="0.0" upper="0.04" effort="20" velocity="0.2"/>
  </joint>
  <joint name="finger_right" type="prismatic">
    <parent link="hand"/><child link="finger_right_link"/><origin xyz="0 0 0" rpy="0 0 0"/><axis xyz="-1 0 0"/>
    <limit lower="0.0" upper="0.04" effort="20" velocity="0.2"/>
  </joint>
</robot>
"""


@dataclass(frozen=True)
class TaskConfig:
    """Task parameters.

    Attributes:
        image_size: side of both square RGB camera images, pixels.
        n_distractors: graspable non-target objects on the table.
        max_steps: control steps before an episode counts as failed.
        control_dt: seconds per control step (20 Hz like LIBERO).
        pos_step: metres moved per control step by a translation action of 1.0.
        yaw_step: radians turned per control step by a yaw action of 1.0.
    """

    image_size: int = 224
    n_distractors: int = 3
    max_steps: int = 240
    control_dt: float = 0.05
    pos_step: float = 0.01
    yaw_step: float = 0.05

    def __post_init__(self) -> None:
        if not 64 <= self.image_size <= 512:
            raise ValueError(f"image_size={self.image_size} must be within 64..512 pixels")
        if not 0 <= self.n_distractors < len(OBJECT_COLORS):
            raise ValueError(f"n_distractors={self.n_distractors} must be within 0..{len(OBJECT_COLORS) - 1} "
                             "(every object has a colour of its own)")
        if self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps} must be >= 1")
        if not 0 < self.control_dt <= 1:
            raise ValueError(f"control_dt={self.control_dt} must be in (0, 1] seconds")
        if not 0 < self.pos_step <= 0.05:
            raise ValueError(f"pos_step={self.pos_step} must be in (0, 0.05] metres")
        if not 0 < self.yaw_step <= 0.5:
            raise ValueError(f"yaw_step={self.yaw_step} must be in (0, 0.5] radians")


@dataclass(frozen=True)
class SceneObject:
    """A graspable object: colour and shape name it, ``radius`` (m) is half its footprint width."""

    color: str
    shape: str
    radius: float

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def height(self) -> float:
        return 2 * self.radius if self.shape != "triangle" else 1.4 * self.radius

    @property
    def grasp_tolerance(self) -> float:
        """Largest horizontal fingertip-to-centre distance (m) at which closing the gripper grasps."""
        return 0.4 * self.radius + 0.004


@dataclass(frozen=True)
class Scene:
    """What a seed fixes: objects, plates, initial poses, instruction, table tint and clutter."""

    seed: int
    objects: tuple[SceneObject, ...]
    object_xy: np.ndarray  # (N_obj, 2) initial positions
    plate_colors: tuple[str, ...]
    plate_xy: np.ndarray  # (N_plate, 2)
    target: int  # index into objects
    goal_plate: int  # index into plate_colors
    instruction: str
    ee_start: np.ndarray  # (3,) initial tool point
    table_rgb: tuple[int, int, int]
    clutter: tuple[tuple[float, float, float, float, float, tuple[int, int, int]], ...]  # (x, y, w, h, angle, rgb)


@dataclass
class TaskState:
    """The mutable simulation state; ``snapshot()`` packs it into a small float vector."""

    ee: np.ndarray  # (3,) tool point
    yaw: float
    finger: float  # each finger's opening, 0..FINGER_OPEN
    held: int  # index of the held object or -1
    object_pos: np.ndarray  # (N_obj, 3) object bottom-centre positions
    ee_vel: np.ndarray = field(default_factory=lambda: np.zeros(3))
    yaw_vel: float = 0.0
    finger_vel: float = 0.0
    step: int = 0
    success: bool = False


def _make_scene(seed: int, config: TaskConfig) -> Scene:
    rng = np.random.default_rng(seed)
    colors = list(OBJECT_COLORS)
    # every object has a colour of its own; shapes and sizes are drawn independently (they may repeat)
    picks = rng.choice(len(colors), size=1 + config.n_distractors, replace=False)
    objects = [SceneObject(colors[c], SHAPES[rng.integers(len(SHAPES))], float(SIZES[rng.integers(len(SIZES))]))
               for c in picks]
    target_idx = int(rng.integers(len(objects)))

    plate_names = list(PLATE_COLORS)
    plate_pick = rng.choice(len(plate_names), size=2, replace=False)
    plate_colors = tuple(plate_names[i] for i in plate_pick)
    goal_plate = int(rng.integers(2))

    # placement by rejection: plates first, then objects, with clearances
    placed: list[tuple[np.ndarray, float]] = []

    def sample(radius: float, margin: float) -> np.ndarray:
        lim = TABLE_HALF - radius - 0.02
        for _ in range(1000):
            p = rng.uniform(-lim, lim, size=2)
            if all(np.linalg.norm(p - q) > radius + r + margin for q, r in placed):
                placed.append((p, radius))
                return p
        raise RuntimeError(f"scene seed {seed}: could not place an object without overlap")

    plate_xy = np.stack([sample(PLATE_RADIUS, 0.04) for _ in range(2)])
    object_xy = np.stack([sample(o.radius, 0.035) for o in objects])
    ee_start = np.array([rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08), rng.uniform(0.13, 0.17)])
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    instruction = template.format(obj=objects[target_idx].name, plate=plate_colors[goal_plate])
    base = np.array([196, 160, 120]) + rng.integers(-12, 13, size=3)
    table_rgb = tuple(int(c) for c in base)
    clutter = []
    for _ in range(int(rng.integers(1, 4))):
        x, y = rng.uniform(-0.2, 0.2, size=2)
        w, h = rng.uniform(0.02, 0.06, size=2)
        shade = base + rng.integers(-30, 31, size=3)
        clutter.append((float(x), float(y), float(w), float(h), float(rng.uniform(0, 180)),
                        tuple(int(c) for c in np.clip(shade, 0, 255))))
    return Scene(seed, tuple(objects), object_xy, plate_colors, plate_xy, target_idx, goal_plate, instruction,
                 ee_start, table_rgb, tuple(clutter))


def _polygon(shape: str, radius: float, n_circle: int = 14) -> np.ndarray:
    """Footprint outline of a shape centred at the origin, shape (K, 2), metres."""
    if shape == "cube":
        r = radius
        return np.array([[-r, -r], [r, -r], [r, r], [-r, r]])
    if shape == "triangle":
        ang = np.deg2rad([90, 210, 330])
        return radius * 1.15 * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    ang = np.linspace(0, 2 * np.pi, n_circle, endpoint=False)
    return radius * np.stack([np.cos(ang), np.sin(ang)], axis=1)


def _shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c * factor))) for c in rgb)


class _Camera:
    """Projection of world points to pixel coordinates (float), vectorised over (..., 3)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def project(self, pts: np.ndarray) -> np.ndarray:  # (..., 3) -> (..., 2)
        raise NotImplementedError

    def depth(self, pts: np.ndarray) -> np.ndarray:  # larger = farther, for painter's order
        raise NotImplementedError


class _PrimaryCamera(_Camera):
    """Fixed oblique orthographic view of the whole table (tilted 35 degrees)."""

    TILT = math.radians(35.0)

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.scale = size / 0.62
        self.v0 = size * 0.60

    def project(self, pts: np.ndarray) -> np.ndarray:
        u = self.size / 2 + self.scale * pts[..., 0]
        v = self.v0 - self.scale * (pts[..., 1] * math.cos(self.TILT) + pts[..., 2] * math.sin(self.TILT))
        return np.stack([u, v], axis=-1)

    def depth(self, pts: np.ndarray) -> np.ndarray:
        return pts[..., 1] * math.sin(self.TILT) - pts[..., 2] * math.cos(self.TILT)


class _WristCamera(_Camera):
    """Pinhole camera above the fingertips looking straight down, turning with the gripper's yaw."""

    def __init__(self, size: int, ee: np.ndarray, yaw: float) -> None:
        super().__init__(size)
        self.eye = np.array([ee[0], ee[1], ee[2] + WRIST_CAM_OFFSET])
        self.c, self.s = math.cos(yaw), math.sin(yaw)
        self.focal = WRIST_FOCAL * size / 224.0

    def project(self, pts: np.ndarray) -> np.ndarray:
        d = np.maximum(self.eye[2] - pts[..., 2], 1e-3)
        dx = pts[..., 0] - self.eye[0]
        dy = pts[..., 1] - self.eye[1]
        rx = self.c * dx + self.s * dy
        ry = -self.s * dx + self.c * dy
        u = self.size / 2 + self.focal * rx / d
        v = self.size / 2 - self.focal * ry / d
        return np.stack([u, v], axis=-1)

    def depth(self, pts: np.ndarray) -> np.ndarray:
        return self.eye[2] - pts[..., 2]


_SUB = 4  # fixed-point sub-pixel bits for cv2 drawing (anti-aliased edges)


def _fill(img: np.ndarray, pix: np.ndarray, rgb: tuple[int, int, int]) -> None:
    pts = np.round(pix * (1 << _SUB)).astype(np.int32)
    cv2.fillPoly(img, [pts], rgb, lineType=cv2.LINE_AA, shift=_SUB)


def _draw_prism(img: np.ndarray, cam: _Camera, outline: np.ndarray, z0: float, z1: float,
                rgb: tuple[int, int, int]) -> None:
    """Draw an extruded footprint ``outline`` (K, 2) world xy between heights z0 and z1."""
    k = len(outline)
    bottom = cam.project(np.concatenate([outline, np.full((k, 1), z0)], axis=1))
    top = cam.project(np.concatenate([outline, np.full((k, 1), z1)], axis=1))
    hull = cv2.convexHull(np.concatenate([bottom, top]).astype(np.float32)).reshape(-1, 2)
    _fill(img, hull, _shade(rgb, 0.62))
    _fill(img, top, rgb)


class TabletopTask:
    """One episode of the task. ``reset()`` restores the seed's initial state; ``step(action)`` advances it.

    Example::

        task = TabletopTask(seed=3)
        frames = task.render()            # {"primary": (224,224,3) uint8, "wrist": ...}
        task.step(np.array([1, 0, 0, 0, 0, 0, -1.0]))
        task.proprio()                    # (8,) eef pos, axis-angle, finger positions
    """

    def __init__(self, seed: int, config: TaskConfig = TaskConfig()) -> None:
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed={seed!r} must be a non-negative integer")
        self.config = config
        self.seed = int(seed)
        self.scene = _make_scene(self.seed, config)
        self.state = self._initial_state()
        self._outlines = [_polygon(o.shape, o.radius) for o in self.scene.objects]
        self._plate_outline = _polygon("ball", PLATE_RADIUS, n_circle=24)

    # ----------------------------------------------------------------- state
    def _initial_state(self) -> TaskState:
        n = len(self.scene.objects)
        pos = np.zeros((n, 3))
        pos[:, :2] = self.scene.object_xy
        return TaskState(ee=self.scene.ee_start.copy(), yaw=0.0, finger=FINGER_OPEN, held=-1, object_pos=pos)

    def reset(self) -> None:
        self.state = self._initial_state()

    @property
    def instruction(self) -> str:
        return self.scene.instruction

    @property
    def done(self) -> bool:
        return self.state.success or self.state.step >= self.config.max_steps

    @property
    def success(self) -> bool:
        return self.state.success

    def snapshot(self) -> np.ndarray:
        """Everything that changes during an episode as one float vector (restorable with ``restore``).

        Layout: ee (3), yaw, finger, held, step, success, ee_vel (3), yaw_vel, finger_vel, object_pos (N*3).
        """
        s = self.state
        return np.concatenate([
            s.ee, [s.yaw, s.finger, float(s.held), float(s.step), float(s.success)], s.ee_vel,
            [s.yaw_vel, s.finger_vel], s.object_pos.reshape(-1),
        ]).astype(np.float64)

    def restore(self, snap: np.ndarray) -> None:
        n = len(self.scene.objects)
        snap = np.asarray(snap, dtype=np.float64)
        if snap.shape != (13 + 3 * n,):
            raise ValueError(f"snapshot must have shape ({13 + 3 * n},) for seed {self.seed}, got {snap.shape}")
        self.state = TaskState(
            ee=snap[0:3].copy(), yaw=float(snap[3]), finger=float(snap[4]), held=int(round(snap[5])),
            step=int(round(snap[6])), success=bool(snap[7] > 0.5), ee_vel=snap[8:11].copy(),
            yaw_vel=float(snap[11]), finger_vel=float(snap[12]), object_pos=snap[13:].reshape(n, 3).copy(),
        )

    # ------------------------------------------------------------- robot views
    def joint_positions(self) -> np.ndarray:
        """Joint positions in :data:`JOINT_NAMES` order, shape (6,)."""
        s = self.state
        return np.array([s.ee[0], s.ee[1], s.ee[2], s.yaw, s.finger, s.finger])

    def joint_velocities(self) -> np.ndarray:
        """Joint velocities (m/s, rad/s) of the last step in :data:`JOINT_NAMES` order, shape (6,)."""
        s = self.state
        return np.array([*s.ee_vel, s.yaw_vel, s.finger_vel, s.finger_vel])

    def ee_axis_angle(self) -> np.ndarray:
        """Tool orientation (pointing down, turned by yaw) as an axis-angle vector, shape (3,).

        The tool frame is Rz(yaw) * Rx(pi); its quaternion is (w, x, y, z) = (0, cos(yaw/2), sin(yaw/2), 0),
        i.e. a rotation by pi about (cos(yaw/2), sin(yaw/2), 0).
        """
        h = 0.5 * self.state.yaw
        return math.pi * np.array([math.cos(h), math.sin(h), 0.0])

    def proprio(self) -> np.ndarray:
        """LIBERO-style 8-D proprio: eef position (3), eef axis-angle (3), finger positions (+f, -f)."""
        s = self.state
        return np.concatenate([s.ee, self.ee_axis_angle(), [s.finger, -s.finger]]).astype(np.float64)

    # ------------------------------------------------------------------ physics
    def step(self, action: np.ndarray) -> bool:
        """Apply one 7-D action; returns ``done``. Raises ValueError for a malformed action."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (7,):
            raise ValueError(f"action must have shape (7,) = (dx, dy, dz, droll, dpitch, dyaw, gripper), "
                             f"got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains NaN or inf: {a.tolist()}")
        if self.done:
            raise RuntimeError("episode is over (success or max_steps): call reset() before stepping again")
        cfg, s = self.config, self.state
        dt = cfg.control_dt
        old_ee, old_yaw, old_finger = s.ee.copy(), s.yaw, s.finger
        s.ee = np.clip(s.ee + np.clip(a[0:3], -1, 1) * cfg.pos_step, EE_LOW, EE_HIGH)
        s.yaw = float(np.clip(s.yaw + np.clip(a[5], -1, 1) * cfg.yaw_step, -math.pi, math.pi))
        if a[6] > 0:  # close
            new_f = max(0.0, s.finger - FINGER_SPEED)
            if s.held < 0:
                cand = self._graspable(s.finger)
                if cand >= 0 and new_f <= self.scene.objects[cand].radius:
                    s.held = cand
                    new_f = self.scene.objects[cand].radius
            else:
                new_f = max(new_f, self.scene.objects[s.held].radius)
            s.finger = new_f
        else:  # open
            s.finger = min(FINGER_OPEN, s.finger + FINGER_SPEED)
            if s.held >= 0 and s.finger > self.scene.objects[s.held].radius + 0.004:
                self._release()
        if s.held >= 0:
            obj = self.scene.objects[s.held]
            s.object_pos[s.held] = [s.ee[0], s.ee[1], max(0.0, s.ee[2] - 0.5 * obj.height)]
        s.ee_vel = (s.ee - old_ee) / dt
        s.yaw_vel = (s.yaw - old_yaw) / dt
        s.finger_vel = (s.finger - old_finger) / dt
        s.step += 1
        return self.done

    def _graspable(self, finger: float) -> int:
        """Index of the object the fingers would close on from here, or -1."""
        s = self.state
        best, best_d = -1, np.inf
        for i, obj in enumerate(self.scene.objects):
            p = s.object_pos[i]
            d = float(np.linalg.norm(s.ee[:2] - p[:2]))
            low_enough = p[2] - 0.002 <= s.ee[2] <= p[2] + 0.75 * obj.height
            if d <= obj.grasp_tolerance and low_enough and finger >= obj.radius and d < best_d:
                best, best_d = i, d
        return best

    def _release(self) -> None:
        s = self.state
        i = s.held
        s.held = -1
        xy = s.object_pos[i, :2]
        on_plate = [k for k in range(len(self.scene.plate_xy))
                    if np.linalg.norm(xy - self.scene.plate_xy[k]) <= PLATE_RADIUS]
        s.object_pos[i, 2] = PLATE_HEIGHT if on_plate else 0.0
        if i == self.scene.target and self.scene.goal_plate in on_plate:
            s.success = self._check_success()

    def _check_success(self) -> bool:
        """The target object rests (not held) with its centre within the named plate, minus a margin."""
        s = self.state
        i = self.scene.target
        if s.held == i:
            return False
        d = float(np.linalg.norm(s.object_pos[i, :2] - self.scene.plate_xy[self.scene.goal_plate]))
        return d <= PLATE_RADIUS - 0.3 * self.scene.objects[i].radius and s.object_pos[i, 2] <= PLATE_HEIGHT + 1e-6

    # ---------------------------------------------------------------- rendering
    def render(self) -> dict[str, np.ndarray]:
        """Both camera images, ``{"primary": (S,S,3) uint8 RGB, "wrist": (S,S,3) uint8 RGB}``."""
        size = self.config.image_size
        return {
            "primary": self._render(_PrimaryCamera(size), wrist=False),
            "wrist": self._render(_WristCamera(size, self.state.ee, self.state.yaw), wrist=True),
        }

    def _camera(self, view: str) -> _Camera:
        size = self.config.image_size
        if view == "primary":
            return _PrimaryCamera(size)
        if view == "wrist":
            return _WristCamera(size, self.state.ee, self.state.yaw)
        raise ValueError(f"unknown view {view!r}; views are {VIEWS}")

    def outlines(self, view: str) -> dict[str, list[np.ndarray]]:
        """Pixel outlines (K, 2) (u right, v down) in ``view`` of every object's top face and every plate.

        ``{"objects": [...], "plates": [...]}`` in scene order; used to label image patches for training
        (which patches show what the instruction names, and which show the others).
        """
        cam = self._camera(view)
        sc, s = self.scene, self.state
        objects = []
        for i, obj in enumerate(sc.objects):
            top = np.concatenate([self._outlines[i] + s.object_pos[i, :2],
                                  np.full((len(self._outlines[i]), 1), s.object_pos[i, 2] + obj.height)], axis=1)
            objects.append(cam.project(top))
        plates = [cam.project(np.concatenate([self._plate_outline + xy, np.full((len(self._plate_outline), 1), PLATE_HEIGHT)],
                                             axis=1)) for xy in sc.plate_xy]
        return {"objects": objects, "plates": plates}

    def _render(self, cam: _Camera, wrist: bool) -> np.ndarray:
        size = self.config.image_size
        sc, s = self.scene, self.state
        img = np.empty((size, size, 3), np.uint8)
        img[:] = (70, 72, 78)  # floor
        h = TABLE_HALF
        table = np.array([[-h, -h, 0], [h, -h, 0], [h, h, 0], [-h, h, 0]], dtype=np.float64)
        if not wrist:  # table front edge
            _draw_prism(img, cam, table[:, :2], -0.03, 0.0, sc.table_rgb)
        else:
            _fill(img, cam.project(table), sc.table_rgb)
        for x, y, w, hh, ang, rgb in sc.clutter:
            c, si = math.cos(math.radians(ang)), math.sin(math.radians(ang))
            corners = np.array([[-w, -hh], [w, -hh], [w, hh], [-w, hh]]) / 2 @ np.array([[c, si], [-si, c]])
            pts = np.concatenate([corners + [x, y], np.zeros((4, 1))], axis=1)
            _fill(img, cam.project(pts), rgb)
        for k, col in enumerate(sc.plate_colors):
            outline = self._plate_outline + sc.plate_xy[k]
            rgb = PLATE_COLORS[col]
            _draw_prism(img, cam, outline, 0.0, PLATE_HEIGHT, _shade(rgb, 0.8))
            _fill(img, cam.project(np.concatenate([0.8 * self._plate_outline + sc.plate_xy[k],
                                                   np.full((len(outline), 1), PLATE_HEIGHT)], axis=1)), rgb)
        if not wrist:  # gripper shadow on the table
            sh = cam.project(np.array([[s.ee[0], s.ee[1], 0.0]]))[0]
            r = cam.scale * 0.02
            cv2.ellipse(img, (int(sh[0]), int(sh[1])), (int(r * 1.3), max(1, int(r * 0.7))), 0, 0, 360,
                        _shade(sc.table_rgb, 0.6), -1, cv2.LINE_AA)
        # objects, farthest first
        order = sorted(range(len(sc.objects)), key=lambda i: -float(cam.depth(s.object_pos[i] + [0, 0, 0.5 * sc.objects[i].height])))
        for i in order:
            obj = sc.objects[i]
            p = s.object_pos[i]
            if wrist and cam.depth(p + [0, 0, obj.height]) < 0.02:
                continue  # inside the hand: the camera cannot see it
            _draw_prism(img, cam, self._outlines[i] + p[:2], p[2], p[2] + obj.height, OBJECT_COLORS[obj.color])
        if wrist:
            self._draw_fingers_wrist(img)
        else:
            self._draw_gripper_primary(img, cam)
        return img

    def _draw_gripper_primary(self, img: np.ndarray, cam: _PrimaryCamera) -> None:
        s = self.state
        x, y, z = s.ee
        c, si = math.cos(s.yaw), math.sin(s.yaw)
        gray, dark = (150, 150, 158), (60, 60, 66)
        rod = cam.project(np.array([[x, y, z + 0.035], [x, y, 0.45]]))
        cv2.line(img, tuple(int(v) for v in rod[0]), tuple(int(v) for v in rod[1]), dark, 4, cv2.LINE_AA)
        palm = np.array([[-0.045, -0.01], [0.045, -0.01], [0.045, 0.01], [-0.045, 0.01]]) @ np.array([[c, si], [-si, c]])
        _draw_prism(img, cam, palm + [x, y], z + 0.025, z + 0.035, gray)
        for sign in (-1.0, 1.0):
            off = sign * (s.finger + 0.004)
            f = np.array([[off - 0.004, -0.008], [off + 0.004, -0.008], [off + 0.004, 0.008], [off - 0.004, 0.008]])
            f = f @ np.array([[c, si], [-si, c]])
            _draw_prism(img, cam, f + [x, y], z, z + 0.025, dark)

    def _draw_fingers_wrist(self, img: np.ndarray) -> None:
        size = self.config.image_size
        scale = size / 224.0
        f_px = WRIST_FOCAL * scale * (self.state.finger + 0.004) / WRIST_CAM_OFFSET
        half_w = 7 * scale
        for sign in (-1.0, 1.0):
            u = size / 2 + sign * f_px
            pts = np.array([[u - half_w, size * 0.62], [u + half_w, size * 0.62], [u + 1.6 * half_w, size],
                            [u - 1.6 * half_w, size]])
            _fill(img, pts, (85, 85, 92))
