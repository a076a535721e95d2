"""Bad input never produces a chunk: each fault gives a clear diagnostic, and the node recovers when good input returns."""
from __future__ import annotations

from typing import Callable

import pytest
from node_harness import Harness, wait_until
from ros_env import ensure

from specprune_ros.core.fake import FakePolicy

WARN, ERROR = 1, 2


@pytest.fixture(scope="module")
def context():
    ensure()
    import rclpy
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


@pytest.fixture(scope="module")
def harness(context):
    h = Harness(context, {"fake_policy": True, "execute_steps": 1, "frozen_timeout": 0.5, "max_age": 1.5})
    h.feed(rate=30.0)
    yield h
    h.close()


def refused(values: dict[str, str]) -> int:
    return int(values.get("refused_total", "0") or 0)


def check_fault(h: Harness, apply: Callable[[], None], clear: Callable[[], None], needle: str, level: int = WARN) -> str:
    """Healthy -> fault (diagnostic containing ``needle``, no chunk while it lasts) -> healthy again."""
    h.wait_chunks(h.n_chunks() + 1)
    apply()
    try:
        _, message, values = h.wait_diag(lambda lv, m, v: needle in m and lv >= level, what=f"diagnostic {needle!r}")
        n = h.n_chunks()
        before = refused(values)
        # the node keeps refusing (several control ticks), and publishes nothing meanwhile
        h.wait_diag(lambda lv, m, v: refused(v) >= before + 3 and needle in m, what="more refusals")
        assert h.n_chunks() == n, f"a chunk was published during the fault {needle!r}"
        assert values["last_error"] and needle in values["last_error"]
    finally:
        clear()
    h.wait_chunks(n + 1)
    h.wait_diag(lambda lv, m, v: lv == 0, what="OK after recovery")
    return message


@pytest.mark.parametrize("encoding", ["yuv422", "16UC1", "mono16", "bayer_rggb8", "32FC1", "rgb16", "8UC3"])
def test_unsupported_encoding(harness, encoding):
    f = harness.feeder
    message = check_fault(
        harness, lambda: setattr(f, "encoding", encoding), lambda: setattr(f, "encoding", "rgb8"), "unsupported image encoding"
    )
    assert encoding in message and "rgb8" in message


def test_wrong_data_size(harness):
    f = harness.feeder
    check_fault(harness, lambda: setattr(f, "bad_step", True), lambda: setattr(f, "bad_step", False), "expected height*step")


def test_image_too_small_for_policy(harness):
    f = harness.feeder
    check_fault(harness, lambda: setattr(f, "size", 8), lambda: setattr(f, "size", 64), "too small")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_joint(harness, value):
    f = harness.feeder

    def apply():
        f.bad_value = value
        f.nan_joint = "panda_joint3"

    message = check_fault(harness, apply, lambda: setattr(f, "nan_joint", None), "NaN or inf")
    assert "panda_joint3" in message


def test_compressed_frame_the_decoder_refuses(context):
    from test_images_decode import _png_header_only

    h = Harness(context, {"fake_policy": True, "execute_steps": 1, "camera_compressed": [True, True]})
    try:
        h.feed(rate=30.0)
        f = h.feeder
        check_fault(h, lambda: setattr(f, "compressed_payload", _png_header_only(100_000, 100_000)),
                    lambda: setattr(f, "compressed_payload", None), "could not decode the compressed image")
    finally:
        h.close()


def test_non_finite_joint_on_the_chain_but_not_listed(context):
    # panda_joint7 moves the hand but the node lists six arm joints: the EE pose cannot be computed
    arm6 = [f"panda_joint{i}" for i in range(1, 7)]
    h = Harness(context, {"fake_policy": True, "execute_steps": 1, "arm_joints": arm6})
    try:
        h.feed(rate=30.0)
        f = h.feeder

        def apply():
            f.bad_value = float("nan")
            f.nan_joint = "panda_joint7"

        message = check_fault(h, apply, lambda: setattr(f, "nan_joint", None), "NaN or inf")
        assert "panda_joint7" in message
    finally:
        h.close()


def test_missing_joint(harness):
    f = harness.feeder
    message = check_fault(
        harness, lambda: setattr(f, "drop_joint", "panda_joint5"), lambda: setattr(f, "drop_joint", None), "missing from recent"
    )
    assert "panda_joint5" in message


def test_joint_never_published(context):
    h = Harness(
        context,
        {"fake_policy": True, "execute_steps": 1, "gripper_joints": ["panda_finger_joint1", "gripper_extra"]},
    )
    try:
        h.feed()
        _, message, _ = h.wait_diag(lambda lv, m, v: "lacks joint" in m, what="missing joint diagnostic")
        assert "gripper_extra" in message
        assert h.n_chunks() == 0
    finally:
        h.close()


def test_stale_camera_stamps(harness):
    f = harness.feeder
    message = check_fault(
        harness, lambda: setattr(f, "camera_stamp_offset", -5.0), lambda: setattr(f, "camera_stamp_offset", 0.0), "stale"
    )
    assert "max_age" in message


def test_camera_stops(harness):
    f = harness.feeder
    check_fault(harness, lambda: setattr(f, "camera_on", False), lambda: setattr(f, "camera_on", True), "stale")


def test_skewed_camera(harness):
    """The wrist camera lags 0.3 s: no wrist frame lies within max_skew of the newest primary frame."""
    f = harness.feeder
    message = check_fault(
        harness, lambda: f.view_stamp_offset.update({1: -0.3}), f.view_stamp_offset.clear, "not synchronised"
    )
    assert "wrist" in message and "max_skew" in message


def test_constant_delay_within_buffer_is_aligned(harness):
    """Cameras 0.2 s behind the joint states: nearest-stamp alignment finds matching joint states, no refusal."""
    f = harness.feeder
    f.camera_stamp_offset = -0.2
    try:
        n = harness.n_chunks()
        harness.wait_chunks(n + 5)
    finally:
        f.camera_stamp_offset = 0.0


def test_frozen_camera(harness):
    f = harness.feeder
    message = check_fault(harness, lambda: setattr(f, "freeze", True), lambda: setattr(f, "freeze", False), "frozen")
    assert "primary" in message


def test_diagnostics_count_refusals_by_reason(harness):
    _, _, values = harness.wait_diag(lambda lv, m, v: lv == 0, what="OK")
    for reason in ("bad_frame", "bad_joint_state", "stale", "frozen", "policy_input"):
        assert int(values.get(f"refused.{reason}", 0)) > 0, reason
    assert int(values["bad_frames"]) > 0


def test_no_instruction_then_instruction(context):
    from std_msgs.msg import String

    h = Harness(context, {"fake_policy": True, "execute_steps": 1}, instruction=None)
    try:
        h.feed()
        h.wait_diag(lambda lv, m, v: "no instruction" in m and lv == WARN, what="no instruction")
        assert h.n_chunks() == 0
        h.instruction_pub.publish(String(data="open the drawer"))
        h.wait_chunks(1)
    finally:
        h.close()


def test_instruction_parameter_is_enough(context):
    h = Harness(context, {"fake_policy": True, "execute_steps": 1, "instruction": "close the drawer"}, instruction=None)
    try:
        h.feed()
        h.wait_chunks(1)
    finally:
        h.close()


def test_no_robot_description_when_required(context):
    from node_harness import PANDA_URDF
    from std_msgs.msg import String

    h = Harness(context, {"fake_policy": True, "execute_steps": 1}, urdf=None)
    try:
        h.feed()
        _, message, _ = h.wait_diag(lambda lv, m, v: "robot_description" in m, what="no robot_description")
        assert h.n_chunks() == 0
        h.urdf_pub.publish(String(data="<robot name='broken'><link name='a'/></robot>"))  # no EE frame in it
        _, message, _ = h.wait_diag(lambda lv, m, v: "unusable" in m, what="unusable URDF reported")
        assert "panda_hand_tcp" in message
        assert h.n_chunks() == 0
        h.urdf_pub.publish(String(data=PANDA_URDF))
        h.wait_chunks(1)
    finally:
        h.close()


def test_inference_error_is_reported_and_survived(context):
    policies: list[FakePolicy] = []

    def factory(cfg, pcfg):
        policies.append(FakePolicy(views=tuple(cfg.camera_views), proprio_dim=8, fail_on=(2, 3)))
        return policies[-1]

    h = Harness(context, {"execute_steps": 1}, policy_factory=factory)
    try:
        h.feed()
        _, message, values = h.wait_diag(lambda lv, m, v: lv == ERROR, what="ERROR diagnostic")
        assert "inference failed" in message and "fake policy failure on call" in message
        h.wait_chunks(4)  # calls 0, 1, 4, 5 succeed: the node kept going
        assert [c.sequence for c in h.chunks[:4]] == [0, 1, 2, 3]
        _, _, values = h.wait_diag(lambda lv, m, v: lv == 0, what="OK after errors")
        assert values["inference_errors"] == "2"
    finally:
        h.close()
