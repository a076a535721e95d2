"""Input alignment and staleness rules of the Synchronizer (no ROS)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from specprune_ros.core.kinematics import KinematicModel
from specprune_ros.core.proprio import ProprioBuilder, ProprioConfig
from specprune_ros.core.sync import (
    BAD_FRAME,
    BAD_JOINT_STATE,
    FROZEN,
    NO_DATA,
    NO_INSTRUCTION,
    NO_ROBOT_DESCRIPTION,
    SKEW,
    STALE,
    StaleInput,
    SyncConfig,
    SyncInputError,
    Synchronizer,
)
from specprune_ros.core.types import InputError

URDF = (Path(__file__).parent / "fixtures" / "panda.urdf").read_text()
ARM = [f"panda_joint{i}" for i in range(1, 8)]
FINGERS = ["panda_finger_joint1", "panda_finger_joint2"]
READY = [0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4]


def frame(value: int) -> np.ndarray:
    return np.full((32, 32, 3), value % 256, np.uint8)


def joints(sync: Synchronizer, stamp: float, q=READY, vel=None) -> None:
    sync.add_joint_state(stamp, ARM + FINGERS, list(q) + [0.04, 0.04], vel)


@pytest.fixture
def builder() -> ProprioBuilder:
    kin = KinematicModel(URDF, "panda_hand_tcp", ARM)
    return ProprioBuilder(ProprioConfig(sources=("libero",), gripper_joints=tuple(FINGERS)), kin)


@pytest.fixture
def sync(builder) -> Synchronizer:
    s = Synchronizer(SyncConfig(views=("primary", "wrist"), max_age=0.5, max_skew=0.05, frozen_timeout=1.0), builder)
    s.set_instruction("pick up the cube")
    return s


def feed(sync: Synchronizer, t: float, k: int = 0) -> None:
    sync.add_image("primary", t, frame(k))
    sync.add_image("wrist", t + 0.01, frame(k + 100))
    joints(sync, t - 0.005)


def reason_of(sync, now) -> str:
    with pytest.raises(SyncInputError) as info:
        sync.sync(now)
    assert isinstance(info.value, InputError)
    return info.value.reason


def test_good_inputs_give_observation(sync):
    for k in range(5):
        feed(sync, 10.0 + 0.1 * k, k)
    res = sync.sync(now=10.45, executed_actions=np.zeros((2, 7)))
    obs = res.observation
    assert obs.stamp == pytest.approx(10.4)  # newest primary frame
    assert obs.images["primary"][0, 0, 0] == 4 and obs.images["wrist"][0, 0, 0] == 104
    assert obs.proprio.shape == (8,)
    np.testing.assert_allclose(obs.proprio[:3], [0.3069, 0, 0.4869], atol=5e-5)
    assert obs.instruction == "pick up the cube"
    assert obs.executed_actions.shape == (2, 7)
    assert res.frame_seqs["primary"] == 5
    assert res.skew == pytest.approx(0.01)
    obs.validate(("primary", "wrist"), 8)


def test_nearest_stamp_alignment_picks_closest_frame(sync):
    for k in range(6):
        sync.add_image("wrist", 10.0 + 0.033 * k, frame(k))
    sync.add_image("primary", 10.1, frame(50))
    joints(sync, 10.0)
    joints(sync, 10.09)
    joints(sync, 10.2)
    res = sync.sync(10.2)
    assert res.image_stamps["wrist"] == pytest.approx(10.099)
    assert res.joints.stamp == pytest.approx(10.09)


def test_missing_inputs_are_reported(builder):
    s = Synchronizer(SyncConfig(views=("primary", "wrist")), builder)
    assert reason_of(s, 1.0) == NO_DATA
    s.add_image("primary", 1.0, frame(1))
    with pytest.raises(StaleInput, match="wrist"):
        s.sync(1.0)
    s.add_image("wrist", 1.0, frame(2))
    with pytest.raises(StaleInput, match="joint state"):
        s.sync(1.0)
    joints(s, 1.0)
    assert reason_of(s, 1.0) == NO_INSTRUCTION
    s.set_instruction("open the drawer")
    assert s.sync(1.0).observation.instruction == "open the drawer"


def test_stale_camera_and_recovery(sync):
    feed(sync, 10.0)
    assert reason_of(sync, 10.6) == STALE
    feed(sync, 10.6, 1)
    assert sync.sync(10.62).observation.stamp == pytest.approx(10.6)


def test_future_stamp_is_refused(sync):
    feed(sync, 10.0)
    with pytest.raises(StaleInput, match="future"):
        sync.sync(9.0)


def test_skewed_inputs(sync):
    sync.add_image("primary", 10.0, frame(1))
    sync.add_image("wrist", 9.8, frame(2))
    joints(sync, 10.0)
    with pytest.raises(StaleInput, match="wrist") as info:
        sync.sync(10.0)
    assert info.value.reason == SKEW
    sync.add_image("wrist", 10.02, frame(3))
    joints(sync, 9.0)  # newer message, old stamp: the nearest snapshot is still 10.0
    assert sync.sync(10.03).joints.stamp == 10.0


def test_frozen_camera(sync):
    for k in range(12):
        t = 10.0 + 0.1 * k
        sync.add_image("primary", t, frame(7))  # identical content
        sync.add_image("wrist", t, frame(k))
        joints(sync, t)
    assert reason_of(sync, 11.1) == FROZEN
    sync.add_image("primary", 11.2, frame(8))
    sync.add_image("wrist", 11.2, frame(20))
    joints(sync, 11.2)
    assert sync.sync(11.2).observation.stamp == pytest.approx(11.2)


def test_bad_frame_blocks_until_good_frame(sync):
    feed(sync, 10.0)
    sync.add_image_error("wrist", 10.05, "unsupported image encoding 'yuv422'")
    with pytest.raises(SyncInputError, match="yuv422") as info:
        sync.sync(10.06)
    assert info.value.reason == BAD_FRAME
    sync.add_image("wrist", 10.1, frame(3))
    sync.sync(10.1)


def test_bad_joint_values(sync):
    feed(sync, 10.0)
    q = list(READY)
    q[2] = float("nan")
    joints(sync, 10.0, q)  # the nearest joint state to the frame (ties: the newest)
    with pytest.raises(SyncInputError, match="NaN") as info:
        sync.sync(10.02)
    assert info.value.reason == BAD_JOINT_STATE
    joints(sync, 10.0)
    sync.sync(10.02)
    with pytest.raises(SyncInputError, match="2 names but 1"):
        sync.add_joint_state(10.0, ["a", "b"], [0.0])


def test_missing_joint_and_split_publishers():
    kin = KinematicModel(URDF, "panda_hand_tcp", ARM)
    b = ProprioBuilder(ProprioConfig(sources=("libero",), gripper_joints=tuple(FINGERS)), kin)
    s = Synchronizer(SyncConfig(views=("primary",), max_skew=0.05), b)
    s.set_instruction("x")
    s.add_image("primary", 5.0, frame(1))
    s.add_joint_state(5.0, ARM, READY)  # arm controller
    with pytest.raises(SyncInputError, match="panda_finger_joint1"):
        s.sync(5.0)
    s.add_joint_state(5.01, FINGERS, [0.02, 0.02])  # gripper driver publishes separately
    s.add_image("primary", 5.02, frame(2))
    obs = s.sync(5.02).observation  # nearest snapshot (5.01) holds the merged arm + finger values
    np.testing.assert_allclose(obs.proprio[6:], [0.02, 0.02])


def test_no_robot_description_when_fk_needed():
    b = ProprioBuilder(ProprioConfig(sources=("libero",), gripper_joints=tuple(FINGERS)), None)
    s = Synchronizer(SyncConfig(views=("primary",)), b)
    s.set_instruction("x")
    s.add_image("primary", 1.0, frame(1))
    joints(s, 1.0)
    assert reason_of(s, 1.0) == NO_ROBOT_DESCRIPTION
    s.set_proprio(ProprioBuilder(b.config, KinematicModel(URDF, "panda_hand_tcp", ARM)))
    assert s.sync(1.0).observation.proprio.shape == (8,)


def test_ee_speed_from_velocities_and_finite_differences(sync):
    rng = np.random.default_rng(0)
    qdot = rng.uniform(-0.3, 0.3, 7)
    t0 = 10.0
    sync.add_image("primary", t0 + 0.1, frame(1))
    sync.add_image("wrist", t0 + 0.1, frame(2))
    joints(sync, t0, READY)
    joints(sync, t0 + 0.1, np.array(READY) + qdot * 0.1)
    fd = sync.sync(t0 + 0.1)
    assert fd.ee_speed_source == "finite_difference"
    joints(sync, t0 + 0.1, np.array(READY) + qdot * 0.1, list(qdot) + [0.0, 0.0])
    jac = sync.sync(t0 + 0.1)
    assert jac.ee_speed_source == "jacobian"
    assert jac.observation.ee_speed[0] > 0.01
    np.testing.assert_allclose(fd.observation.ee_speed, jac.observation.ee_speed, rtol=0.05)


def test_buffers_are_bounded(sync):
    for k in range(100):
        feed(sync, 10.0 + 0.01 * k, k)
    assert max(sync.buffered().values()) <= 10


def test_config_validation():
    with pytest.raises(ValueError, match="max_age"):
        SyncConfig(max_age=0)
    with pytest.raises(ValueError, match="'side'"):
        SyncConfig(views=("primary",), reference_view="side")
    with pytest.raises(ValueError, match="repeats"):
        SyncConfig(views=("a", "a"))


def test_joint_that_stops_being_published(sync):
    feed(sync, 10.0)
    sync.add_image("primary", 10.6, frame(1))
    sync.add_image("wrist", 10.6, frame(2))
    sync.add_joint_state(10.6, ARM[:6] + FINGERS, READY[:6] + [0.04, 0.04])  # panda_joint7 dropped out
    with pytest.raises(StaleInput, match="panda_joint7") as info:
        sync.sync(10.6)
    assert info.value.reason == STALE


def test_repeated_joint_names_are_refused(sync):
    with pytest.raises(SyncInputError, match=r"\['panda_joint1'\] more than once") as info:
        sync.add_joint_state(10.0, ARM + FINGERS + ["panda_joint1"], READY + [0.04, 0.04, 2.5])
    assert info.value.reason == BAD_JOINT_STATE


def test_each_joint_stamp_obeys_the_age_rule():
    kin = KinematicModel(URDF, "panda_hand_tcp", ARM)
    b = ProprioBuilder(ProprioConfig(sources=("libero",), gripper_joints=tuple(FINGERS)), kin)
    s = Synchronizer(SyncConfig(views=("primary",), max_age=0.5, max_skew=0.1), b)
    s.set_instruction("x")
    # a gripper driver at 5 Hz beside a fast arm controller: its last value lags the frame by up to its period
    s.add_joint_state(9.85, FINGERS, [0.02, 0.02])
    s.add_joint_state(10.0, ARM, READY)
    s.add_image("primary", 10.0, frame(1))
    assert s.sync(10.0).skew == pytest.approx(0.0)
    s.add_joint_state(15.0, ARM, READY)  # an arm stamp 5 s ahead of this node's clock
    s.add_joint_state(10.05, FINGERS, [0.02, 0.02])
    s.add_image("primary", 10.05, frame(2))
    with pytest.raises(StaleInput, match="joint 'panda_joint1' stamp 15.000 is 4.950 s in the future") as info:
        s.sync(10.05)
    assert info.value.reason == STALE


def test_nan_on_an_unlisted_chain_joint_is_refused_not_raised():
    # panda_joint7 moves the hand but is not among the joints the node lists: the pose cannot be computed
    kin = KinematicModel(URDF, "panda_hand_tcp", ARM[:6])
    assert "panda_joint7" in kin.chain_joints and "panda_finger_joint1" not in kin.chain_joints
    b = ProprioBuilder(ProprioConfig(sources=("libero",), gripper_joints=tuple(FINGERS)), kin)
    s = Synchronizer(SyncConfig(views=("primary",)), b)
    s.set_instruction("x")
    s.add_image("primary", 1.0, frame(1))
    s.add_joint_state(1.0, ARM + FINGERS, READY[:6] + [float("nan"), 0.04, 0.04])
    with pytest.raises(SyncInputError, match=r"\['panda_joint7'\] are NaN or inf") as info:
        s.sync(1.0)
    assert info.value.reason == BAD_JOINT_STATE
    s.add_joint_state(1.01, ARM + FINGERS, READY + [0.04, 0.04])
    s.add_image("primary", 1.01, frame(2))
    good = s.sync(1.01).observation.proprio
    # a NaN on a joint off the chain is ignored: it neither blocks nor poisons the next poses
    s.add_joint_state(1.02, ARM + ["panda_finger_joint2"], READY + [float("nan")])
    np.testing.assert_allclose(kin.frame_pose(dict(zip(ARM, READY))).position, kin.frame_pose(
        {**dict(zip(ARM, READY)), "panda_finger_joint1": float("nan")}).position)
    s.add_joint_state(1.03, ARM + FINGERS, READY + [0.04, 0.04])
    s.add_image("primary", 1.03, frame(3))
    np.testing.assert_allclose(s.sync(1.03).observation.proprio, good)


def test_non_finite_stamps_are_refused(sync):
    feed(sync, 10.0)
    for add in (lambda: sync.add_image("primary", math.nan, frame(1)), lambda: joints(sync, math.inf)):
        with pytest.raises(SyncInputError, match="is not a time"):
            add()
    with pytest.raises(StaleInput, match="is not a time"):
        sync.sync(math.nan)
    assert sync.sync(10.01).observation.stamp == 10.0


def test_a_jump_back_of_the_clock_clears_the_buffers(sync):
    """A bag replayed in a loop: the clock and the stamps start over. The first query that sees the clock go back
    clears the buffers (as tf2 on a jump back): nothing of the previous pass is used with the new one."""
    from specprune_ros.core.sync import TIME_JUMP

    for k in range(3):
        feed(sync, 20.0 + 0.1 * k, k)
    assert sync.sync(20.21).observation.stamp == 20.2
    sync.add_image("primary", 10.0, frame(7))  # the new pass's first frame
    assert reason_of(sync, 10.01) == TIME_JUMP and sync.time_jumps == 1
    assert reason_of(sync, 10.015) == NO_DATA  # nothing of the previous pass is kept
    feed(sync, 10.02, 8)
    obs = sync.sync(10.03).observation
    assert obs.stamp == 10.02 and obs.images["primary"][0, 0, 0] == 8 and sync.time_jumps == 1


def test_a_frame_stamped_ahead_by_a_glitch_never_blocks_the_camera(sync):
    """Arrival order is kept: after one frame stamped a minute ahead (refused as from the future while it is the
    newest), the next frames are used at once, not refused until time reaches that stamp."""
    feed(sync, 10.0, 1)
    sync.add_image("primary", 70.0, frame(2))
    assert reason_of(sync, 10.02) == STALE
    feed(sync, 10.05, 3)
    assert sync.sync(10.06).observation.stamp == 10.05


def test_every_joint_of_the_end_effector_chain_is_required(builder):
    """With arm_joints naming 6 of the Panda's 7, the pose still depends on joint 7: missing or stale, it is
    refused, never taken from its neutral or last value."""
    def sync_with(joint7_stamp: float | None) -> Synchronizer:
        kin = KinematicModel(URDF, "panda_hand_tcp", ARM[:6])
        b = ProprioBuilder(ProprioConfig(sources=("libero",), gripper_joints=tuple(FINGERS)), kin)
        s = Synchronizer(SyncConfig(views=("primary", "wrist"), max_age=0.5, max_skew=0.05), b)
        s.set_instruction("pick up the cube")
        s.add_image("primary", 10.0, frame(1))
        s.add_image("wrist", 10.0, frame(2))
        if joint7_stamp is not None:  # a second publisher
            s.add_joint_state(joint7_stamp, ["panda_joint7"], [READY[6]])
        s.add_joint_state(10.0, ARM[:6] + FINGERS, READY[:6] + [0.04, 0.04])
        return s

    with pytest.raises(InputError, match="panda_joint7"):
        sync_with(None).sync(10.01)
    assert reason_of(sync_with(9.0), 10.01) == STALE
    assert sync_with(9.99).sync(10.01).observation.proprio is not None


def test_the_ee_speed_uses_every_chain_joint_without_a_proprio():
    """Kinematics for the EE speed only (no proprio sources): a chain joint left out of arm_joints must still be
    published, and its value is used (it was taken at its neutral value)."""
    arm = [j for j in ARM if j != "panda_joint4"]
    partial = ProprioBuilder(ProprioConfig(sources=()), KinematicModel(URDF, "panda_hand_tcp", arm))
    full = ProprioBuilder(ProprioConfig(sources=()), KinematicModel(URDF, "panda_hand_tcp", ARM))
    velocities = {j: 0.3 for j in arm}

    def sync_with(joint4: float | None) -> Synchronizer:
        s = Synchronizer(SyncConfig(views=("primary", "wrist"), max_age=0.5, max_skew=0.05, require_joint_states=True),
                         partial)
        s.set_instruction("pick up the cube")
        s.add_image("primary", 10.0, frame(1))
        s.add_image("wrist", 10.0, frame(2))
        if joint4 is not None:  # its own publisher
            s.add_joint_state(9.999, ["panda_joint4"], [joint4])
        s.add_joint_state(10.0, arm, [q for j, q in zip(ARM, READY) if j != "panda_joint4"], [velocities[j] for j in arm])
        return s

    assert reason_of(sync_with(None), 10.01) == BAD_JOINT_STATE  # joint 4 never published
    got = sync_with(-2.0).sync(10.01).observation.ee_speed
    positions = dict(zip(ARM, READY), panda_joint4=-2.0)
    expected = full.ee_speed(positions, dict(velocities, panda_joint4=0.0))
    assert got == pytest.approx(expected)
    assert got != pytest.approx(full.ee_speed(dict(zip(ARM, READY)), dict(velocities, panda_joint4=0.0)))
