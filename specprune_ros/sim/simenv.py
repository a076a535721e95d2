"""Where the simulator environment is and how to start a process in it.

LIBERO (robosuite 1.4, MuJoCo 3, opencv-python 4) cannot share the policy's virtual environment, so it
lives in ``.venv-sim/`` (``make sim-setup``). A process there gets the ROS 2 environment of
``tools/ros_env.sh`` computed for that venv (rclpy from its wheels, the generated specprune_ros messages
from the colcon install tree, the repository sources on PYTHONPATH). Nodes in the two venvs talk over DDS.

``SPECPRUNE_SIM_VENV`` overrides the venv location.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..rosenv import REPO_ROOT, ros_child_env

SETUP_HINT = "run `make sim-setup` (it builds .venv-sim/ with LIBERO; see docs/simulation.md)"


def sim_venv() -> Path:
    return Path(os.environ.get("SPECPRUNE_SIM_VENV", REPO_ROOT / ".venv-sim")).resolve()


def sim_python() -> Path:
    return sim_venv() / "bin" / "python"


def sim_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """Environment for a process of the simulator venv, keeping ``base``'s ROS_DOMAIN_ID and discovery range.

    :func:`~specprune_ros.rosenv.ros_child_env` computed for :func:`sim_venv` (the caller's Python and
    library paths belong to another venv and are recomputed), with ``OMP_NUM_THREADS`` defaulting to 1.
    """
    env = ros_child_env(base, venv=sim_venv())
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def unavailable_reason() -> str | None:
    """Why the simulator environment cannot be used here, or None when it can (LIBERO and rclpy import)."""
    py = sim_python()
    if not py.exists():
        return f"the simulator environment {sim_venv()} does not exist; {SETUP_HINT}"
    probe = "import libero.libero, robosuite, mujoco, rclpy, std_srvs.srv; from specprune_ros.msg import ActionChunk"
    try:
        res = subprocess.run(
            [str(py), "-c", probe], env=sim_env(), capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the simulator environment {sim_venv()} does not run ({exc}); {SETUP_HINT}"
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["?"])[-1]
        return f"the simulator environment {sim_venv()} is incomplete ({last}); {SETUP_HINT}"
    return None
