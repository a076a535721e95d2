"""Test helpers for code that needs rclpy and the generated ``specprune_ros.msg`` messages.

``make test`` already runs pytest inside ``tools/ros_env.sh`` (the one place that defines the ROS
environment of this repository). Importing this module also makes a direct
``.venv/bin/python -m pytest test/test_x.py`` work: it puts the colcon install tree from ``make setup``
on ``sys.path`` behind the sources, loads its generated libraries (see ``ensure``), and, when the shell did not set one, picks a ROS domain of this process's own on loopback, so
runs of several people on one machine do not see each other.

Usage in a test module (test/ is on ``sys.path`` under pytest)::

    from ros_env import messages, ros_context, subprocess_env  # noqa: F401  (ros_context is a fixture)

    def test_publish(ros_context):
        msg = messages()  # the module specprune_ros.msg, or a test failure that says how to build it
        node = rclpy.create_node("t", context=ros_context)
        ...

    proc = subprocess.Popen([...], env=subprocess_env())  # children get the same environment
"""
from __future__ import annotations

import ctypes
import importlib
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

from specprune_ros.rosenv import private_domain_id, ros_child_env

REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALL_PREFIX = REPO_ROOT / "install" / "specprune_ros"
_BUILD_HINT = (
    "run `make setup` (it builds the messages with colcon into install/), then run the tests with "
    "`make test` or `tools/ros_env.sh .venv/bin/python -m pytest ...`"
)


def install_site_packages() -> Path | None:
    """The install tree's site-packages directory holding ``specprune_ros/msg``, or None if not built."""
    for candidate in sorted(INSTALL_PREFIX.glob("lib/python3.*/site-packages")):
        if (candidate / "specprune_ros" / "msg").is_dir():
            return candidate
    return None


def ensure() -> None:
    """Make the generated messages importable in this process and keep its ROS traffic private.

    Idempotent. Does nothing that ``tools/ros_env.sh`` has already done.
    """
    # Import the package from the sources first (editable install or repository root), so the install
    # tree added below can only contribute what the sources lack: the generated msg/ subpackage.
    import specprune_ros

    site = install_site_packages()
    if site is not None:
        if str(site) not in sys.path:
            sys.path.append(str(site))
        generated = str(site / "specprune_ros")
        if generated not in list(specprune_ros.__path__):
            specprune_ros.__path__.append(generated)  # what pkgutil.extend_path does at first import
        # The type support dispatch dlopen()s libspecprune_ros__rosidl_typesupport_<impl>.so by bare
        # name when a message type is first used; the dynamic linker searches the LD_LIBRARY_PATH this
        # process started with. Without tools/ros_env.sh that lacks install/, so load the libraries by
        # absolute path now: dlopen() by name then finds them already loaded (matched by soname).
        lib = INSTALL_PREFIX / "lib"
        paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
        if str(lib) not in paths:
            for library in sorted(lib.glob("libspecprune_ros__*.so")):
                ctypes.CDLL(str(library))
            os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([str(lib), *paths])  # for children
    # rcl reads these when a context is initialized, so setting them here (before rclpy.init) counts.
    os.environ.setdefault("ROS_DOMAIN_ID", private_domain_id())
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")


def messages():
    """Return the module ``specprune_ros.msg``; fail the calling test with a how-to if it is missing."""
    ensure()
    try:
        return importlib.import_module("specprune_ros.msg")
    except ImportError as exc:
        pytest.fail(f"the generated messages are not importable ({exc}); {_BUILD_HINT}", pytrace=False)


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child process (a node executable, a second Python): ``tools/ros_env.sh``'s.

    The child shares this process's ROS domain (:func:`specprune_ros.rosenv.ros_child_env`). ``extra``
    entries are added last.
    """
    ensure()
    return ros_child_env(**extra)


@pytest.fixture
def ros_context() -> Iterator[object]:
    """An initialized rclpy Context of its own, shut down after the test (no global rclpy.init)."""
    ensure()
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        if context.ok():
            rclpy.shutdown(context=context)


ensure()
