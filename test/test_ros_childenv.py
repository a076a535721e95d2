"""specprune_ros.rosenv: the environment of ROS child processes (tools/ros_env.sh applied, the parent's ROS
domain kept, another venv's paths recomputed) and stopping a child (signal, wait, kill)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from specprune_ros.rosenv import ENV_SCRIPT, REPO_ROOT, private_domain_id, ros_child_env, stop_process


def test_script_is_the_repository_one():
    assert ENV_SCRIPT == REPO_ROOT / "tools" / "ros_env.sh" and ENV_SCRIPT.is_file()


def test_keeps_the_parents_domain_even_when_isolation_is_asked():
    base = {"PATH": os.environ["PATH"], "ROS_DOMAIN_ID": "37", "SPECPRUNE_ROS_ISOLATE": "1"}
    env = ros_child_env(base, EXTRA_VAR="x")
    assert env["ROS_DOMAIN_ID"] == "37"
    assert "SPECPRUNE_ROS_ISOLATE" not in env
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert env["EXTRA_VAR"] == "x"
    assert base["SPECPRUNE_ROS_ISOLATE"] == "1"  # the caller's mapping is not changed
    paths = env["PYTHONPATH"].split(os.pathsep)
    assert paths[0] == str(REPO_ROOT)  # the sources first, as the script puts them


def test_without_a_domain_the_child_gets_this_process_s_private_one():
    env = ros_child_env({"PATH": os.environ["PATH"], "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"})
    assert env["ROS_DOMAIN_ID"] == private_domain_id() == str(os.getpid() % 101 + 1)
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET"  # the caller's choice stays


def test_extra_entries_win_over_the_script():
    env = ros_child_env({"PATH": os.environ["PATH"], "ROS_DOMAIN_ID": "5"}, ROS_DOMAIN_ID="9", RMW_IMPLEMENTATION="x")
    assert env["ROS_DOMAIN_ID"] == "9" and env["RMW_IMPLEMENTATION"] == "x"


def test_another_venv_recomputes_the_paths(tmp_path):
    venv = tmp_path / "other-venv"
    (venv / "lib" / "python3.11" / "site-packages").mkdir(parents=True)
    base = {"PATH": os.environ["PATH"], "ROS_DOMAIN_ID": "12", "PYTHONPATH": "/stale/python",
            "LD_LIBRARY_PATH": "/stale/lib", "AMENT_PREFIX_PATH": "/stale/ament", "VIRTUAL_ENV": "/stale/venv"}
    env = ros_child_env(base, venv=venv)
    assert env["VENV"] == str(venv)
    assert "VIRTUAL_ENV" not in env
    for key in ("PYTHONPATH", "LD_LIBRARY_PATH", "AMENT_PREFIX_PATH"):
        assert "/stale/" not in env[key], (key, env[key])
    assert str(venv / "lib") in env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert str(venv) in env["AMENT_PREFIX_PATH"].split(os.pathsep)
    assert env["ROS_DOMAIN_ID"] == "12"
    # the default venv keeps the caller's paths behind the script's
    same = ros_child_env(base)
    assert "/stale/python" in same["PYTHONPATH"].split(os.pathsep)


def _child(code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"  # its signal handling is in place
    return proc


def test_stop_process_interrupts_like_ctrl_c():
    proc = _child(
        "import sys, time\ntry:\n    print('ready', flush=True)\n    time.sleep(600)\nexcept KeyboardInterrupt:\n    sys.exit(7)"
    )
    stop_process(proc)
    assert proc.returncode == 7  # it ran its KeyboardInterrupt handler


def test_a_tool_started_with_sigint_ignored_still_stops_on_it():
    # what a shell without job control does to `cmd &`; the tools' run() (interruptible) undoes it
    proc = _child(
        "import signal, sys, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "from specprune_ros.cli.common import interruptible\ninterruptible()\n"
        "try:\n    print('ready', flush=True)\n    time.sleep(600)\nexcept KeyboardInterrupt:\n    sys.exit(7)"
    )
    stop_process(proc, timeout=10)
    assert proc.returncode == 7


def test_stop_process_sends_the_signal_asked_for():
    proc = _child(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))\nprint('ready', flush=True)\ntime.sleep(600)"
    )
    stop_process(proc, None, sig=signal.SIGTERM)
    assert proc.returncode == 3


def test_stop_process_kills_a_child_that_ignores_the_signal():
    procs = [
        _child("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(600)")
        for _ in range(2)
    ]
    stop_process(*procs, timeout=0.5)
    assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2


def test_stop_process_leaves_finished_processes_alone():
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(4)"])
    proc.wait()
    stop_process(proc, None)
    assert proc.returncode == 4
