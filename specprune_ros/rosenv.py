"""Child processes of ROS programs: their environment and how to stop them. Pure Python, no rclpy.

``tools/ros_env.sh`` is the one place that defines the ROS environment of this repository (rclpy from the
venv's wheels, the generated messages from the colcon install tree, the sources on PYTHONPATH, a ROS
domain). :func:`ros_child_env` runs ``tools/ros_env.sh --print`` and applies what it prints, so a child
started from Python gets the same environment as one started from the shell, on the parent's ROS domain.
In an installed package without the script, the caller's environment is passed on as it is (a sourced
ROS installation provides it).

:func:`stop_process` ends a child the way Ctrl-C would, and kills it when it does not exit in time.
"""
from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
#: the environment script of a source checkout; absent in an installed package
ENV_SCRIPT = REPO_ROOT / "tools" / "ros_env.sh"
#: variables the script computes for one venv; dropped (then recomputed) when a child runs in another venv
VENV_VARS = ("PYTHONPATH", "LD_LIBRARY_PATH", "AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH", "VIRTUAL_ENV")


def private_domain_id() -> str:
    """A ROS domain in 1..101 derived from this process's id (the rule of ``tools/ros_env.sh``)."""
    return str(os.getpid() % 101 + 1)


def ros_child_env(
    base: Mapping[str, str] | None = None, *, venv: str | Path | None = None, **extra: str
) -> dict[str, str]:
    """Environment for a ROS child process: ``base`` (default ``os.environ``) with ``tools/ros_env.sh``'s
    variables applied, then ``extra``.

    The child stays on ``base``'s ROS domain: ``SPECPRUNE_ROS_ISOLATE`` is dropped, so the script keeps
    ``ROS_DOMAIN_ID`` (under ``make test`` it would otherwise pick a fresh one). Without a domain in
    ``base`` the child gets :func:`private_domain_id`; the discovery range defaults to ``LOCALHOST``.

    ``venv``: compute the environment for that virtual environment instead of the script's default
    (``.venv``): :data:`VENV_VARS` of ``base`` are dropped and recomputed for it, and ``VENV`` is set.
    That needs the script; without it this raises FileNotFoundError.
    """
    env = dict(os.environ if base is None else base)
    if venv is not None:
        for key in VENV_VARS:
            env.pop(key, None)
        env["VENV"] = str(venv)
    env.pop("SPECPRUNE_ROS_ISOLATE", None)  # keep ROS_DOMAIN_ID: the child must see its parent's nodes
    env.setdefault("ROS_DOMAIN_ID", private_domain_id())
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if ENV_SCRIPT.is_file():
        out = subprocess.run(
            ["bash", str(ENV_SCRIPT), "--print"], env=env, check=True, capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                env[key] = value
    elif venv is not None:
        raise FileNotFoundError(
            f"{ENV_SCRIPT} is missing: the environment of the venv {venv} is computed by that script of a "
            "source checkout of specprune_ros"
        )
    env.update(extra)
    return env


def stop_process(
    *procs: subprocess.Popen | None, sig: int = signal.SIGINT, timeout: float = 20.0
) -> None:
    """Stop child processes: send ``sig`` (default SIGINT, like Ctrl-C) to each one still running, then
    wait up to ``timeout`` seconds for each and kill it if it has not exited. ``None`` entries and
    processes that have already exited are skipped; every process is reaped."""
    running = [p for p in procs if p is not None and p.poll() is None]
    for proc in running:
        proc.send_signal(sig)
    for proc in running:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
