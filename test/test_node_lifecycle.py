"""Lifecycle and parameters: validation at configure with clear messages, unknown keys reported, cleanup
frees the policy, reconfigure works, params files check out, the executable runs and stops cleanly."""
from __future__ import annotations

import gc
import signal
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
from node_harness import ARM, Harness, wait_until
from ros_env import REPO_ROOT, ros_context, subprocess_env  # noqa: F401  (fixture)
from rclpy.lifecycle import TransitionCallbackReturn

from specprune_ros.core.fake import FakePolicy
from specprune_ros.ros.parameters import NodeConfigError, check_params_file, configs_from_values, describe_parameters

ERROR = 2


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"camera_topics": ["/only/one"]}, "camera_topics"),
        ({"max_age": -1.0}, "max_age"),
        ({"max_age": "soon"}, "max_age='soon'"),
        ({"preset": "fastest"}, "preset='fastest'"),
        ({"gripper_msg_type": "int"}, "gripper_msg_type"),
        ({"proprio_sources": ["ee_velocity"]}, "ee_velocity"),
        ({"checkpoint": ""}, "checkpoint is empty"),
        ({"checkpoint": "/nonexistent/ckpt"}, "/nonexistent/ckpt"),
        ({"fake_policy": True, "debug_image_view": "side"}, "debug_image_view"),
        ({"twist_linear_scale": float("inf")}, "twist_linear_scale=inf: must be finite"),
        ({"gripper_open_position": float("nan")}, "gripper_open_position=nan: must be finite"),
        ({"ee_position_offset": [0.0, float("nan"), 0.0]}, "ee_position_offset"),
    ],
)
def test_invalid_parameters_fail_configure_with_a_clear_message(ros_context, params, needle):
    base = {"fake_policy": True}
    if "checkpoint" in params:
        base = {"warmup": True}
    h = Harness(ros_context, {**base, **params}, configure=False)
    try:
        assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
        level, message, _ = h.wait_diag(lambda lv, m, v: lv == ERROR, what="configure error on /diagnostics")
        assert needle in message, message
        assert h.node.policy is None
    finally:
        h.close()


def test_wrong_values_are_refused_when_set(ros_context):
    from rclpy.parameter import Parameter

    h = Harness(ros_context, {"fake_policy": True}, configure=False)
    try:
        bad = [Parameter("max_age", value="abc"), Parameter("dry_run", value="banana"), Parameter("instruction", value=5),
               Parameter("camera_views", value=[1, 2]), Parameter("diagnostics_period", value=float("inf"))]
        for p in bad:
            (result,) = h.node.set_parameters([p])
            assert not result.successful and p.name in result.reason, (p.name, result.reason)
        assert h.node.get_parameter("max_age").value == 0.5  # unchanged
        # values configure would refuse are refused when set, with its reason; a deletion too
        for p, reason in ((Parameter("max_age", value=-1.0), "max_age=-1.0: must be > 0"),
                          (Parameter("buffer_size", value=0), "buffer_size=0: must be >= 1"),
                          (Parameter("gripper_msg_type", value="bogus"), "gripper_msg_type='bogus': choose one of"),
                          (Parameter("preset", value="nonsense"), "preset='nonsense' is unknown"),
                          (Parameter("camera_topics", type_=Parameter.Type.NOT_SET), "camera_topics cannot be deleted")):
            (result,) = h.node.set_parameters([p])
            assert not result.successful and reason in result.reason, (p.name, result.reason)
        assert h.node.has_parameter("camera_topics") and h.node.get_parameter("buffer_size").value > 0
        # one of two related parameters at a time: the conflict is left to configure
        (ok,) = h.node.set_parameters([Parameter("camera_views", value=["primary", "wrist", "side"])])
        assert ok.successful
        assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE  # camera_topics: one per view
        (ok,) = h.node.set_parameters([Parameter("camera_views", value=["primary", "wrist"])])
        assert ok.successful
        (ok,) = h.node.set_parameters([Parameter("max_age", value=0.7)])
        assert ok.successful and h.node.get_parameter("max_age").value == 0.7
        (ok,) = h.node.set_parameters([Parameter("diagnostics_period", value=0.3)])
        assert ok.successful and h.node._diag_timer.timer_period_ns == 100_000_000  # until configure
        assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert h.node._diag_timer.timer_period_ns == 300_000_000
    finally:
        h.close()


def test_proprio_size_mismatch(ros_context):
    factory = lambda cfg, pcfg: FakePolicy(views=tuple(cfg.camera_views), proprio_dim=8)  # noqa: E731
    h = Harness(
        ros_context,
        {"proprio_sources": ["joint_positions"], "proprio_joints": ARM},
        policy_factory=factory,
        configure=False,
    )
    try:
        assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
        _, message, _ = h.wait_diag(lambda lv, m, v: lv == ERROR, what="configure error")
        assert "size 8" in message and "make 7" in message
    finally:
        h.close()


def test_unknown_parameter_is_reported(ros_context):
    h = Harness(ros_context, {"fake_policy": True, "max_agee": 0.3, "execute_steps": 1})
    try:
        h.feed()
        h.wait_chunks(1)
        _, message, values = h.wait_diag(lambda lv, m, v: "max_agee" in v["unknown_parameters"], what="unknown parameter")
        assert "unknown parameters" in message
    finally:
        h.close()


def test_cleanup_frees_policy_and_reconfigure_works(ros_context):
    made: list[weakref.ref] = []

    def factory(cfg, pcfg):
        p = FakePolicy(views=tuple(cfg.camera_views), proprio_dim=8)
        made.append(weakref.ref(p))
        return p

    h = Harness(ros_context, {"execute_steps": 1}, policy_factory=factory)
    try:
        h.feed()
        h.wait_chunks(2)
        assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert h.node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        gc.collect()
        assert made[0]() is None, "the policy is still referenced after cleanup"
        n = h.n_chunks()
        assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        wait_until(lambda: h.n_chunks() > n + 1, what="chunks after reconfigure")
        assert len(made) == 2
        seqs = [c.sequence for c in h.chunks[n:]]
        assert seqs[0] == 0  # sequence restarts after configure
    finally:
        h.close()


def test_params_files_in_config_are_valid():
    for name in ("policy.yaml", "libero.yaml"):
        cfg, policy_kw = check_params_file(REPO_ROOT / "config" / name)
        assert cfg.dry_run, f"{name} must not command a robot by default"
        assert not (cfg.twist_enabled or cfg.joint_trajectory_enabled or cfg.gripper_enabled)
    _, libero = check_params_file(REPO_ROOT / "config" / "libero.yaml")
    assert libero["flip"] and libero["libero_gripper"] and libero["center_crop"]


def test_params_file_unknown_key(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("specprune_policy:\n  ros__parameters:\n    camera_view: [primary]\n")
    with pytest.raises(NodeConfigError, match="camera_view.*did you mean 'camera_views'"):
        check_params_file(f)
    f.write_text("other_node:\n  ros__parameters:\n    x: 1\n")
    with pytest.raises(NodeConfigError, match="no `specprune_policy: ros__parameters:`"):
        check_params_file(f)


def test_parameters_are_derived_from_the_configs():
    from specprune_ros.core.config import PolicyConfig

    table = describe_parameters()
    for name in PolicyConfig.fields_doc():
        if name != "views":
            assert f"`{name}`" in table
    cfg, kw = configs_from_values({"max_age": 1, "crop_scale": 1})  # ints are accepted for floats
    assert cfg.max_age == 1.0 and isinstance(kw["crop_scale"], float)


def test_executable_runs_and_stops_cleanly(tmp_path):
    """``python -m specprune_ros.ros.policy_node`` with a params file: autostarts, publishes, exits 0 on SIGINT."""
    params = tmp_path / "p.yaml"
    params.write_text(
        "/**:\n  ros__parameters:\n    fake_policy: true\n    ee_frame: ''\n"
        "    proprio_sources: [joint_positions]\n    proprio_joints: [j1]\n    diagnostics_period: 0.2\n"
    )
    env = subprocess_env(RCUTILS_LOGGING_BUFFERED_STREAM="0")
    log = tmp_path / "node.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "specprune_ros.ros.policy_node", "--ros-args", "--params-file", str(params),
             "-r", f"__node:=policy_exe_{id(params) % 100000}"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
        )
    try:
        wait_until(lambda: "active: control loop" in log.read_text() or proc.poll() is not None, 30, "node start")
        assert "active: control loop" in log.read_text(), log.read_text()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=20)
        text = log.read_text()
        assert rc == 0, text
        assert "Traceback" not in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_help_lists_parameters():
    out = subprocess.run(
        [sys.executable, "-m", "specprune_ros.ros.policy_node", "--help"],
        env=subprocess_env(), capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "usage: policy_node" in out.stdout
    for name in ("camera_topics", "max_age", "dry_run", "checkpoint", "preset"):
        assert f"  {name} (" in out.stdout



def test_every_parameter_is_documented():
    from specprune_ros.ros.parameters import parameter_specs

    doc = (REPO_ROOT / "docs" / "ros-node.md").read_text()
    missing = [s.name for s in parameter_specs() if f"`{s.name}`" not in doc]
    assert not missing, f"docs/ros-node.md lacks {missing}; regenerate its table with describe_parameters()"


def test_diagnostics_name_the_node_with_its_namespace(ros_context):
    import rclpy

    from specprune_ros.ros.diagnostics import NodeHealth, to_diagnostic_array

    for namespace, name in (("/", "specprune_policy"), ("/arm1", "arm1/specprune_policy")):
        node = rclpy.create_node("specprune_policy", namespace=namespace, context=ros_context)
        try:
            (status,) = to_diagnostic_array(NodeHealth(("primary",)), node).status
            assert (status.name, status.hardware_id) == (f"{name}: policy", name)  # two arms stay apart
        finally:
            node.destroy_node()


def test_diagnostics_report_shutdown(ros_context):
    h = Harness(ros_context, {"fake_policy": True})
    try:
        assert h.node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
        h.wait_diag(lambda lv, m, v: v.get("state") == "finalized" and m == "shut down", what="finalized state")
    finally:
        h.close()
