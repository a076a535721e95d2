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

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_SCRIPT = REPO_ROOT / "tools" / "ros_env.sh"
SETUP_HINT = "run `make sim-setup` (it builds .venv-sim/ with LIBERO; see docs/simulation.md)"
#: variables that tools/ros_env.sh computes; recomputed for the simulator venv, never inherited
_ROS_ENV_VARS = ("PYTHONPATH", "LD_LIBRARY_PATH", "AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH", "VIRTUAL_ENV")


def sim_venv() -> Path:
    return Path(os.environ.get("SPECPRUNE_SIM_VENV", REPO_ROOT / ".venv-sim")).resolve()


def sim_python() -> Path:
    return sim_venv() / "bin" / "python"


def sim_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """Environment for a process of the simulator venv, keeping ``base``'s ROS_DOMAIN_ID and discovery range."""
    env = dict(os.environ if base is None else base)
    for key in _ROS_ENV_VARS:
        env.pop(key, None)
    env.pop("SPECPRUNE_ROS_ISOLATE", None)  # keep the caller's domain: the nodes must see each other
    env["VENV"] = str(sim_venv())
    if "ROS_DOMAIN_ID" not in env:
        env["ROS_DOMAIN_ID"] = str(os.getpid() % 101 + 1)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    out = subprocess.run(
        ["bash", str(ENV_SCRIPT), "--print"], env=env, check=True, capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key] = value
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
