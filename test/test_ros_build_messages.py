"""The colcon-built ROS 2 package: generated messages, their wire format, the install tree.

Runs against the install tree of `make setup` (see docs/development.md), plus one build from scratch
into a temporary directory with the configuration a normal ROS 2 install uses (Python sources
installed), imported without the repository on the path.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ros_env import (  # noqa: F401  (ros_context is a fixture)
    INSTALL_PREFIX, REPO_ROOT, install_site_packages, messages, ros_context, subprocess_env)

VENV = Path(sys.prefix)

ACTION_CHUNK_FIELDS = {
    "header": "std_msgs/Header",
    "sequence": "uint64",
    "step_dt": "double",
    "rows": "uint32",
    "cols": "uint32",
    "actions": "sequence<double>",
    "action_names": "sequence<string>",
    "joint_names": "sequence<string>",
    "mode": "string",
    "tokens_total": "uint32",
    "tokens_kept": "uint32",
    "views": "sequence<string>",
    "tokens_kept_per_view": "sequence<uint32>",
    "inference_latency": "double",
    "requery": "boolean",
    "requery_after": "int32",
    "preset": "string",
}
INFERENCE_STATS_FIELDS = {
    "header": "std_msgs/Header",
    "sequence": "uint64",
    "tokens_per_layer": "sequence<uint32>",
    "visual_tokens_per_layer": "sequence<uint32>",
    "stage_names": "sequence<string>",
    "stage_ms": "sequence<double>",
    "lookback": "int32",
    "mode": "string",
    "preset": "string",
}
EPISODE_STATUS_FIELDS = {
    "header": "std_msgs/Header",
    "task": "string",
    "instruction": "string",
    "episode": "uint32",
    "step": "uint32",
    "max_steps": "uint32",
    "status": "string",
    "success": "boolean",
    "chunks": "uint32",
}


def _full_action_chunk(msg_module, sequence: int = 41):
    """An ActionChunk with every field set to a non-default value."""
    actions = np.arange(8 * 7, dtype=np.float64).reshape(8, 7) / 7.0 - 3.0  # (rows, cols)
    m = msg_module.ActionChunk()
    m.header.stamp.sec = 1_700_000_123
    m.header.stamp.nanosec = 456_789_000
    m.header.frame_id = "panda_link0"
    m.sequence = sequence
    m.step_dt = 0.05
    m.rows, m.cols = actions.shape
    m.actions = actions.ravel().tolist()  # row-major
    m.action_names = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    m.joint_names = []
    m.mode = m.MODE_FINE
    m.tokens_total = 612
    m.tokens_kept = 301
    m.views = ["primary", "wrist"]
    m.tokens_kept_per_view = [170, 131]
    m.inference_latency = 0.3125
    m.requery = True
    m.requery_after = 2
    m.preset = "paper"
    return m, actions


def test_messages_have_the_documented_fields():
    msg = messages()
    assert msg.ActionChunk.get_fields_and_field_types() == ACTION_CHUNK_FIELDS
    assert msg.InferenceStats.get_fields_and_field_types() == INFERENCE_STATS_FIELDS
    assert msg.EpisodeStatus.get_fields_and_field_types() == EPISODE_STATUS_FIELDS
    assert (msg.ActionChunk.MODE_COARSE, msg.ActionChunk.MODE_FINE, msg.ActionChunk.MODE_OFF) == (
        "coarse", "fine", "off")
    statuses = [getattr(msg.EpisodeStatus, f"STATUS_{s.upper()}")
                for s in ("waiting", "running", "success", "timeout", "failure")]
    assert statuses == ["waiting", "running", "success", "timeout", "failure"]


def test_generated_package_is_found_beside_the_sources():
    import specprune_ros
    import specprune_ros.core.types as types_module

    msg = messages()
    site = install_site_packages()
    assert site is not None
    # the sources come from the repository, the generated messages from the install tree
    assert Path(types_module.__file__).resolve().is_relative_to(REPO_ROOT / "specprune_ros")
    assert Path(msg.__file__).resolve().is_relative_to(site.resolve())
    assert Path(specprune_ros.__path__[0]).resolve() == REPO_ROOT / "specprune_ros"


def test_action_chunk_round_trips_through_cdr():
    from rclpy.serialization import deserialize_message, serialize_message

    msg = messages()
    original, actions = _full_action_chunk(msg)
    raw = serialize_message(original)
    assert isinstance(raw, bytes) and len(raw) > actions.nbytes
    back = deserialize_message(raw, msg.ActionChunk)
    assert back == original
    restored = np.asarray(back.actions, dtype=np.float64).reshape(back.rows, back.cols)
    np.testing.assert_array_equal(restored, actions)
    assert back.header.frame_id == "panda_link0" and back.header.stamp.nanosec == 456_789_000
    # a different value must change the bytes (the comparison above is not vacuous)
    original.tokens_kept_per_view = [170, 130]
    assert serialize_message(original) != raw


def test_stats_and_episode_messages_round_trip():
    from rclpy.serialization import deserialize_message, serialize_message

    msg = messages()
    stats = msg.InferenceStats(
        sequence=7, tokens_per_layer=[612] * 2 + [301] * 30, visual_tokens_per_layer=[512] * 2 + [201] * 30,
        stage_names=["vision", "llm", "total"], stage_ms=[12.5, 80.25, 95.0], lookback=-1, mode="coarse",
        preset="paper")
    assert deserialize_message(serialize_message(stats), msg.InferenceStats) == stats
    status = msg.EpisodeStatus(task="libero_spatial/3", instruction="pick up the black bowl", episode=2,
                               step=120, max_steps=220, status="success", success=True)
    assert deserialize_message(serialize_message(status), msg.EpisodeStatus) == status


def test_action_chunk_through_publisher_and_subscriber(ros_context):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    msg = messages()
    node = rclpy.create_node("action_chunk_pubsub_test", context=ros_context)
    topic = f"/test_action_chunk_{os.getpid()}"
    received = []
    pub = node.create_publisher(msg.ActionChunk, topic, 10)
    node.create_subscription(msg.ActionChunk, topic, received.append, 10)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    try:
        sent = []
        deadline = time.monotonic() + 20.0  # only against a hang: discovery usually takes milliseconds
        while not received and time.monotonic() < deadline:
            chunk, _ = _full_action_chunk(msg, sequence=len(sent))
            sent.append(chunk)
            pub.publish(chunk)
            executor.spin_once(timeout_sec=0.1)
        for _ in range(5):  # collect anything still in flight
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.shutdown()
        node.destroy_node()
    assert received, f"no ActionChunk came back on {topic}"
    by_sequence = {m.sequence: m for m in sent}
    for got in received:
        assert got == by_sequence[got.sequence]
    sequences = [m.sequence for m in received]
    assert sequences == sorted(sequences)


def test_child_processes_share_the_ros_domain():
    env = subprocess_env()
    assert env["ROS_DOMAIN_ID"] == os.environ["ROS_DOMAIN_ID"]
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    paths = env["PYTHONPATH"].split(os.pathsep)
    site = install_site_packages()
    assert paths.index(str(REPO_ROOT)) < paths.index(str(site))  # sources before the install tree
    # a nested tools/ros_env.sh under `make test` (SPECPRUNE_ROS_ISOLATE=1) keeps the domain it chose
    nested = subprocess.run(
        ["bash", "-c", 'source tools/ros_env.sh; echo "$ROS_DOMAIN_ID"; '
                       'tools/ros_env.sh bash -c \'echo "$ROS_DOMAIN_ID"\''],
        cwd=REPO_ROOT, env=dict(os.environ, SPECPRUNE_ROS_ISOLATE="1"), capture_output=True, text=True,
        check=True).stdout.split()
    assert len(nested) == 2 and nested[0] == nested[1], nested


def _setup_py_entry_points() -> dict[str, str]:
    """console_scripts of setup.py: name -> 'module:function'."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    lines = ast.literal_eval(value)
                    return dict(tuple(p.strip() for p in line.split("=", 1)) for line in lines)
    raise AssertionError("setup.py declares no console_scripts")


def _check_executables(lib_dir: Path) -> None:
    entry_points = _setup_py_entry_points()
    for name in ("policy_node", "libero_sim_node", "testbed_sim_node"):
        script = lib_dir / name
        assert script.is_file(), f"{script} was not installed"
        assert os.access(script, os.X_OK), f"{script} is not executable"
        text = script.read_text()
        module, function = entry_points[name].split(":")
        assert f"from {module} import {function}" in text
        ast.parse(text)  # valid Python


def test_package_xml_is_a_valid_format_3_interface_package():
    from catkin_pkg.package import parse_package

    package = parse_package(str(REPO_ROOT / "package.xml"))
    package.validate()  # raises InvalidPackage with the reason
    assert (package.name, package.package_format, package.get_build_type()) == ("specprune_ros", 3, "ament_cmake")
    version = re.search(r'version="([^"]+)"', (REPO_ROOT / "setup.py").read_text()).group(1)
    assert package.version == version, "package.xml and setup.py disagree on the version"
    assert [g.name for g in package.member_of_groups] == ["rosidl_interface_packages"]
    build = {d.name for d in package.buildtool_depends}
    assert {"ament_cmake", "ament_cmake_python", "rosidl_default_generators"} <= build
    runtime = {d.name for d in package.exec_depends + package.build_export_depends}
    # everything the node, the bridges and the launch file import at run time
    assert {"rclpy", "rosidl_default_runtime", "lifecycle_msgs", "python3-numpy"} <= runtime
    # every ROS package whose interfaces or modules the sources and launch files import (rosdep installs these)
    imported = set()
    for path in [*(REPO_ROOT / "specprune_ros").rglob("*.py"), *(REPO_ROOT / "launch").glob("*.py")]:
        imported |= set(re.findall(r"^\s*(?:from|import) ([a-z_]+)\.(?:msg|srv|action)\b", path.read_text(), re.M))
        imported |= set(re.findall(r"^\s*(?:from|import) (launch|launch_ros|ament_index_python)\b", path.read_text(), re.M))
    imported.discard("specprune_ros")  # its own messages
    assert {"std_srvs", "diagnostic_msgs", "launch_ros"} <= imported  # the scan finds what it should
    depends = runtime | {d.name for d in package.build_depends}
    assert imported <= depends, f"imported but not in package.xml: {sorted(imported - depends)}"


def test_install_tree_of_make_setup():
    share = INSTALL_PREFIX / "share" / "specprune_ros"
    assert (share / "package.xml").is_file()
    assert (INSTALL_PREFIX / "share/ament_index/resource_index/packages/specprune_ros").is_file()
    for name in ("ActionChunk", "InferenceStats", "EpisodeStatus"):
        assert (share / "msg" / f"{name}.msg").is_file()
    for sub in ("launch", "config"):
        for src in (REPO_ROOT / sub).glob("*"):
            if src.is_file() and src.suffix in (".py", ".yaml", ".xml"):
                assert (share / sub / src.name).is_file(), f"{sub}/{src.name} is not installed"
    _check_installed_checkpoint(share)
    _check_executables(INSTALL_PREFIX / "lib" / "specprune_ros")


def _check_installed_checkpoint(share: Path) -> None:
    """The committed test-bed checkpoint is in the share directory, where testbed.launch.py looks for it."""
    src = REPO_ROOT / "checkpoints" / "testbed"
    names = subprocess.run(["git", "ls-files", "."], cwd=src, capture_output=True, text=True, check=True).stdout.split()
    assert "config.json" in names
    for name in names:
        assert (share / "checkpoints" / "testbed" / name).is_file(), f"checkpoints/testbed/{name} is not installed"


def test_fix_ros_wheels_cmake_rewrites_builder_paths_once():
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    try:
        import fix_ros_wheels_cmake as fix
    finally:
        sys.path.remove(str(REPO_ROOT / "tools"))
    text = ('INTERFACE_INCLUDE_DIRECTORIES "/opt/python/cp311-cp311/include/python3.11;'
            '/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include"\n'
            'set(OTHER "/opt/python/cp311-cp311/include/python3.11x")\n')
    once = fix.rewrite(text, "/py/include", "/np/include")
    assert once.splitlines()[0] == 'INTERFACE_INCLUDE_DIRECTORIES "/py/include;/np/include"'
    assert once.splitlines()[1] == text.splitlines()[1]  # not a Python include directory
    assert fix.rewrite(once, "/py/include", "/np/include") == once
    # after `make setup` the venv's files name no builder path any more
    done = subprocess.run([sys.executable, str(REPO_ROOT / "tools/fix_ros_wheels_cmake.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_colcon_build_from_scratch_installs_a_self_contained_package(tmp_path):
    """The configuration of a normal ROS 2 install: sources installed, nothing from the repository."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH")}
    env.update(AMENT_PREFIX_PATH=str(VENV), CMAKE_PREFIX_PATH=str(VENV), PATH=f"{VENV}/bin:{env['PATH']}")
    build = subprocess.run(
        [str(VENV / "bin" / "colcon"), "--log-base", str(tmp_path / "log"), "build", "--paths", str(REPO_ROOT),
         "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install"),
         "--cmake-args", f"-DPython3_EXECUTABLE={VENV / 'bin' / 'python'}", "-DBUILD_TESTING=OFF"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    prefix = tmp_path / "install" / "specprune_ros"
    _check_executables(prefix / "lib" / "specprune_ros")
    _check_installed_checkpoint(prefix / "share" / "specprune_ros")
    (site,) = prefix.glob("lib/python3.*/site-packages")
    assert (site / "specprune_ros" / "core" / "types.py").is_file()
    # the project's __init__.py (package path extension, version) replaced the generator's empty one
    init = REPO_ROOT / "specprune_ros" / "__init__.py"
    assert (site / "specprune_ros" / "__init__.py").read_text() == init.read_text()

    # import from the install tree alone, as `source install/setup.bash` would set it up
    probe = (
        "import specprune_ros, specprune_ros.core.types as t\n"
        "from specprune_ros.msg import ActionChunk\n"
        "from rclpy.serialization import serialize_message, deserialize_message\n"
        "from ament_index_python.packages import get_package_share_directory\n"
        "m = ActionChunk(rows=1, cols=2, actions=[0.5, -0.5], mode='coarse')\n"
        "assert deserialize_message(serialize_message(m), ActionChunk) == m\n"
        "print(t.__file__)\n"
        "print(get_package_share_directory('specprune_ros'))\n"
    )
    run_env = dict(env, PYTHONPATH=str(site), LD_LIBRARY_PATH=str(prefix / "lib"),
                   AMENT_PREFIX_PATH=f"{prefix}:{VENV}")
    run_env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)  # let the wheels add their libraries
    out = subprocess.run([str(VENV / "bin" / "python"), "-c", probe], cwd=tmp_path, env=run_env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-4000:]
    types_file, share_dir = out.stdout.split()
    assert Path(types_file).is_relative_to(site)
    assert Path(share_dir) == prefix / "share" / "specprune_ros"
    # the executable `ros2 run specprune_ros policy_node` would start, from the install tree alone
    helped = subprocess.run([str(prefix / "lib" / "specprune_ros" / "policy_node"), "--help"], cwd=tmp_path,
                            env=run_env, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0, helped.stderr[-4000:]
    assert "checkpoint" in helped.stdout and "dry_run" in helped.stdout
