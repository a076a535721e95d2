"""Test-bed task, expert and demonstration data: determinism, expert success, success detection, kinematics."""
from __future__ import annotations

import numpy as np
import pytest

from specprune_ros.testbed.data import Episode, collect_episode, dataset_statistics, generate, load_episodes, save_episodes
from specprune_ros.testbed.expert import expert_action, expert_plan, run_expert
from specprune_ros.testbed.task import (
    FINGER_OPEN,
    GANTRY_URDF,
    JOINT_NAMES,
    PLATE_HEIGHT,
    TabletopTask,
    TaskConfig,
)


def _rollout(seed: int, n: int = 40) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    task = TabletopTask(seed)
    snaps = []
    for _ in range(n):
        task.step(expert_action(task))
        snaps.append(task.snapshot())
    return snaps, task.render()


def test_same_seed_same_scene_frames_and_trajectory():
    a, b = TabletopTask(11), TabletopTask(11)
    assert a.instruction == b.instruction
    fa, fb = a.render(), b.render()
    for v in ("primary", "wrist"):
        assert fa[v].shape == (224, 224, 3) and fa[v].dtype == np.uint8
        np.testing.assert_array_equal(fa[v], fb[v])
    sa, ra = _rollout(11)
    sb, rb = _rollout(11)
    np.testing.assert_array_equal(np.stack(sa), np.stack(sb))
    np.testing.assert_array_equal(ra["wrist"], rb["wrist"])


def test_different_seeds_differ():
    frames = [TabletopTask(s).render()["primary"] for s in range(5)]
    instructions = {TabletopTask(s).instruction for s in range(20)}
    assert all(not np.array_equal(frames[0], f) for f in frames[1:])
    assert len(instructions) > 10


def test_instruction_names_the_target_and_the_image_does_not_single_it_out():
    positions, same_shape = [], 0
    for seed in range(100):
        sc = TabletopTask(seed).scene
        target = sc.objects[sc.target]
        assert target.name in sc.instruction and f"{sc.plate_colors[sc.goal_plate]} plate" in sc.instruction
        colors = [o.color for o in sc.objects]
        assert len(set(colors)) == len(colors) == 4, "every object has a colour of its own: the name is unambiguous"
        positions.append(sc.target)
        same_shape += any(o.shape == target.shape for i, o in enumerate(sc.objects) if i != sc.target)
    # nothing but the name tells the target: it is any of the objects, and often not the only one of its shape
    assert set(positions) == {0, 1, 2, 3} and max(np.bincount(positions)) < 40
    assert same_shape > 40


def test_expert_solves_at_least_99_percent():
    results = [run_expert(TabletopTask(seed)) for seed in range(100)]
    assert sum(results) >= 99


def test_expert_recovers_from_noise():
    results = [run_expert(TabletopTask(seed), noise=0.15, rng=np.random.default_rng(seed)) for seed in range(30)]
    assert sum(results) >= 29


def _place_target_in_gripper(task: TabletopTask, xy) -> None:
    s, sc = task.state, task.scene
    i = sc.target
    obj = sc.objects[i]
    s.ee = np.array([xy[0], xy[1], PLATE_HEIGHT + obj.height])
    s.held = i
    s.finger = obj.radius
    s.object_pos[i] = [xy[0], xy[1], s.ee[2] - 0.5 * obj.height]


OPEN = np.array([0, 0, 0, 0, 0, 0, -1.0])
CLOSE = np.array([0, 0, 0, 0, 0, 0, 1.0])


def test_release_over_goal_plate_is_success():
    task = TabletopTask(4)
    _place_target_in_gripper(task, task.scene.plate_xy[task.scene.goal_plate])
    assert not task.success
    task.step(OPEN)
    assert task.state.held == -1 and task.success and task.done
    assert task.state.object_pos[task.scene.target, 2] == pytest.approx(PLATE_HEIGHT)


def test_release_over_other_plate_or_table_is_not_success():
    task = TabletopTask(4)
    other = 1 - task.scene.goal_plate
    _place_target_in_gripper(task, task.scene.plate_xy[other])
    task.step(OPEN)
    assert task.state.held == -1 and not task.success and not task.done
    task = TabletopTask(4)
    grid = [np.array([x, y]) for x in np.linspace(-0.2, 0.2, 9) for y in np.linspace(-0.2, 0.2, 9)]
    free = next(p for p in grid if all(np.linalg.norm(p - q) > 0.08 for q in task.scene.plate_xy))
    _place_target_in_gripper(task, free)
    task.step(OPEN)
    assert task.state.held == -1 and not task.success
    # just outside the goal plate's rim (centre beyond radius minus margin): not success either
    task = TabletopTask(4)
    goal = task.scene.plate_xy[task.scene.goal_plate]
    _place_target_in_gripper(task, goal + np.array([0.049, 0.0]))
    task.step(OPEN)
    assert not task.success


def test_holding_target_over_plate_is_not_success_until_released():
    task = TabletopTask(7)
    _place_target_in_gripper(task, task.scene.plate_xy[task.scene.goal_plate])
    for _ in range(3):
        task.step(CLOSE)
        assert task.state.held == task.scene.target and not task.success


def test_distractor_on_goal_plate_is_not_success():
    task = TabletopTask(9)
    sc, s = task.scene, task.state
    j = (sc.target + 1) % len(sc.objects)
    xy = sc.plate_xy[sc.goal_plate]
    s.ee = np.array([xy[0], xy[1], 0.05])
    s.held, s.finger = j, sc.objects[j].radius
    s.object_pos[j] = [xy[0], xy[1], 0.03]
    task.step(OPEN)
    assert s.held == -1 and not task.success


def test_grasp_needs_alignment_and_open_fingers():
    task = TabletopTask(2)
    sc, s = task.scene, task.state
    i = sc.target
    obj = sc.objects[i]
    p = s.object_pos[i]
    # misaligned by more than the tolerance: closing grasps nothing
    s.ee = np.array([p[0] + obj.grasp_tolerance + 0.003, p[1], 0.45 * obj.height])
    for _ in range(6):
        task.step(CLOSE)
    assert s.held == -1 and s.finger == 0.0
    # aligned, but the fingers are closed already: nothing fits between them
    s.ee = np.array([p[0], p[1], 0.45 * obj.height])
    task.step(CLOSE)
    assert s.held == -1
    # aligned with open fingers: grasped, fingers stop at the object's width, object follows the gripper
    s.finger = FINGER_OPEN
    for _ in range(6):
        task.step(CLOSE)
    assert s.held == i and s.finger == pytest.approx(obj.radius)
    task.step(np.array([0.5, 0, 1.0, 0, 0, 0, 1.0]))
    np.testing.assert_allclose(s.object_pos[i, :2], s.ee[:2])


def test_gripper_too_high_does_not_grasp():
    task = TabletopTask(2)
    s, sc = task.state, task.scene
    p = s.object_pos[sc.target]
    s.ee = np.array([p[0], p[1], sc.objects[sc.target].height + 0.02])
    for _ in range(6):
        task.step(CLOSE)
    assert s.held == -1


def test_bad_actions_are_rejected_with_a_clear_message():
    task = TabletopTask(0)
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        task.step(np.zeros(6))
    with pytest.raises(ValueError, match="NaN"):
        task.step(np.array([0, 0, np.nan, 0, 0, 0, 1.0]))
    with pytest.raises(ValueError, match="seed"):
        TabletopTask(-1)
    with pytest.raises(ValueError, match="max_steps"):
        TaskConfig(max_steps=0)


def test_episode_ends_at_max_steps_and_refuses_more():
    task = TabletopTask(0, TaskConfig(max_steps=3))
    for _ in range(3):
        task.step(OPEN)
    assert task.done and not task.success
    with pytest.raises(RuntimeError, match="reset"):
        task.step(OPEN)
    task.reset()
    assert task.state.step == 0 and not task.done


def test_actions_move_the_tool_and_rotation_is_accepted():
    task = TabletopTask(0)
    start = task.state.ee.copy()
    task.step(np.array([1.0, -0.5, 0.2, 0.3, -0.3, 0.0, -1.0]))  # roll/pitch are ignored by the gantry
    np.testing.assert_allclose(task.state.ee - start, [0.01, -0.005, 0.002])
    np.testing.assert_allclose(task.joint_velocities()[:3], [0.2, -0.1, 0.04])
    task.step(np.array([5.0, 0, 0, 0, 0, 1.0, -1.0]))  # clipped to 1
    assert task.state.ee[0] - start[0] == pytest.approx(0.02)
    assert task.state.yaw == pytest.approx(0.05)


def test_proprio_and_joint_states_agree_with_urdf_kinematics():
    from specprune_ros.core.kinematics import KinematicModel

    km = KinematicModel(GANTRY_URDF, "tcp")
    task = TabletopTask(3)
    for a in ([1, 0.5, -0.5, 0, 0, 1.0, 1.0], [0, -1, 0.2, 0, 0, -0.4, -1.0]):
        task.step(np.array(a))
        q = dict(zip(JOINT_NAMES, task.joint_positions()))
        pose = km.frame_pose(q)
        prop = task.proprio()
        assert prop.shape == (8,)
        np.testing.assert_allclose(pose.position, prop[0:3], atol=1e-9)
        np.testing.assert_allclose(pose.axis_angle, prop[3:6], atol=1e-6)
        np.testing.assert_allclose(prop[6:8], [task.state.finger, -task.state.finger])


def test_snapshot_restore_round_trip_renders_identically():
    task = TabletopTask(5)
    for _ in range(30):
        task.step(expert_action(task))
    snap, frames = task.snapshot(), task.render()
    other = TabletopTask(5)
    other.restore(snap)
    for v in frames:
        np.testing.assert_array_equal(other.render()[v], frames[v])
    with pytest.raises(ValueError, match="snapshot must have shape"):
        other.restore(snap[:-1])


def test_wrist_view_follows_the_gripper():
    task = TabletopTask(1)
    before = task.render()
    task.step(np.array([1.0, 0, 0, 0, 0, 0, -1.0]))
    after = task.render()
    assert not np.array_equal(before["wrist"], after["wrist"])
    assert np.abs(before["primary"].astype(int) - after["primary"].astype(int)).sum() < \
        np.abs(before["wrist"].astype(int) - after["wrist"].astype(int)).sum()


def test_collected_episode_labels_chunks_and_frames(tmp_path):
    ep = collect_episode(1_000_003, noise=0.15, noise_seed=3)
    assert ep.success and len(ep) == len(ep.proprio) == len(ep.snapshots) == len(ep.executed) == len(ep.plans)
    assert not np.allclose(ep.actions[:, :3], ep.executed[:, :3])  # noise was injected into executed actions
    task = TabletopTask(ep.seed)
    for t in (0, 17, len(ep) - 2):  # each label is the expert's own plan from the recorded state
        task.restore(ep.snapshots[t])
        np.testing.assert_array_equal(ep.action_chunk(t), expert_plan(task, 8))
        np.testing.assert_array_equal(ep.actions[t], expert_action(task))
        np.testing.assert_array_equal(task.snapshot(), ep.snapshots[t])  # planning left the state as it was
    frames = ep.frames(steps=np.array([0, 5]))
    assert frames["primary"].shape == (2, 224, 224, 3)
    np.testing.assert_array_equal(frames["wrist"][0], TabletopTask(ep.seed).render()["wrist"])
    path = save_episodes(tmp_path / "eps.npz", [ep])
    (back,) = load_episodes(path)
    assert isinstance(back, Episode) and back.instruction == ep.instruction
    np.testing.assert_array_equal(back.plans, ep.plans)


def test_noise_free_plans_are_what_the_expert_then_does():
    ep = collect_episode(1_000_004, noise=0.0, noise_seed=4)
    assert ep.success
    np.testing.assert_array_equal(ep.executed, ep.actions)
    for t in (0, 40, len(ep) - 3):
        rows = np.minimum(np.arange(t, t + 8), len(ep) - 1)  # past the end the last action repeats
        np.testing.assert_array_equal(ep.plans[t], ep.actions[rows])


def test_excursions_leave_the_expert_path_and_are_labelled_with_the_way_back():
    calm = collect_episode(1_000_005, noise=0.0, noise_seed=5)
    ep = collect_episode(1_000_005, noise=0.0, noise_seed=5, excursion_rate=0.2)
    speed = np.linalg.norm(ep.executed[:, :3], axis=1)
    off = np.flatnonzero(np.isclose(speed, 1.0) & np.any(np.abs(ep.executed[:, :3] - ep.actions[:, :3]) > 1e-6, axis=1))
    assert len(off) >= 3 and len(ep) > len(calm)  # some steps went elsewhere than the expert wanted
    t = off[-1] + 1  # the first step after an excursion: the plan heads back towards the target
    task = TabletopTask(ep.seed)
    task.restore(ep.snapshots[t])
    np.testing.assert_array_equal(ep.plans[t], expert_plan(task, 8))
    with pytest.raises(ValueError, match="excursion_rate"):
        generate(1, excursion_rate=0.5)


def test_fine_excursions_drift_off_the_object_miss_grasps_and_are_labelled_with_the_recovery():
    ep = collect_episode(1_000_005, noise=0.0, noise_seed=5, fine_excursion_rate=0.2)
    task = TabletopTask(ep.seed)
    missed, drifted = [], []
    for t in range(len(ep)):
        task.restore(ep.snapshots[t])
        s, target = task.state, task.scene.target
        if s.held >= 0:
            continue
        offset = task.state.object_pos[target, :2] - s.ee[:2]
        if s.finger < FINGER_OPEN - 1e-9 and ep.executed[t, 6] < 0:  # fingers shut on nothing, being reopened
            missed.append(t)
        elif 0.008 < np.linalg.norm(offset) < 0.03 and ep.executed[t, 6] < 0:
            drifted.append((t, offset))
    assert missed, "no missed grasp in a run with fine excursions"
    for t in missed:  # the label after a missed grasp: open, and do not go down
        assert ep.plans[t, 0, 6] == -1.0 and ep.plans[t, 0, 2] >= 0.0
    back = [float(ep.plans[t, 0, :2] @ off) > 0 for t, off in drifted]  # labels point back at the object
    assert len(back) >= 5 and np.mean(back) > 0.9
    calm = collect_episode(1_000_005, noise=0.0, noise_seed=5)
    assert not any(calm.plans[t, 0, 6] < 0 and calm.executed[t, 6] > 0 for t in range(len(calm)))
    assert any(ep.plans[t, 0, 6] < 0 and ep.executed[t, 6] > 0 for t in range(len(ep)))  # closings the expert did not want
    with pytest.raises(ValueError, match="fine_excursion_rate"):
        generate(1, fine_excursion_rate=0.5)


def test_expert_lets_go_low_over_the_plate_even_off_centre_or_too_low_but_not_beside_it():
    task = TabletopTask(4)
    plate = task.scene.plate_xy[task.scene.goal_plate]
    for offset, z_extra, lets_go in ((0.0, 0.0, True), (0.015, 0.0, True), (0.02, -0.01, True),
                                     (0.0, 0.03, False), (0.035, 0.0, False)):
        _place_target_in_gripper(task, plate + [offset, 0.0])
        obj = task.scene.objects[task.scene.target]
        task.state.ee[2] = PLATE_HEIGHT + 0.5 * obj.height + 0.012 + z_extra  # the expert's placing height + z_extra
        task.state.object_pos[task.scene.target, 2] = task.state.ee[2] - 0.5 * obj.height
        a = expert_action(task)
        assert (a[6] < 0) == lets_go, (offset, z_extra, a)
        if lets_go:
            task.step(a)
            assert task.success
            task.reset()


def test_late_releases_keep_the_gripper_shut_past_the_release_point_labelled_let_go():
    calm = collect_episode(1_000_007, noise=0.0, noise_seed=7)
    late = collect_episode(1_000_007, noise=0.0, noise_seed=7, late_release=1.0)
    assert calm.success and late.success

    def let_go(ep):  # states holding the object whose label is "open now"
        held = ep.snapshots[:, 5] >= 0
        return np.flatnonzero(held & (ep.plans[:, 0, 6] < 0))

    assert len(let_go(calm)) == 1
    rows = let_go(late)
    assert len(rows) >= 2 and np.all(late.executed[rows[:-1], 6] > 0) and late.executed[rows[-1], 6] < 0
    z = late.proprio[rows, 2]
    assert np.all(np.diff(z) <= 0) and z[-1] < z[0]  # going on down while it should have let go
    with pytest.raises(ValueError, match="late_release"):
        generate(1, late_release=1.5)


def test_generate_and_statistics():
    eps = generate(4, seed=1, noise=0.1)
    assert len(eps) == 4 and all(e.success for e in eps)
    assert all(e.seed >= 1_000_000 for e in eps)
    st = dataset_statistics(eps)
    assert st["action"]["mask"] == [True] * 6 + [False]
    assert len(st["proprio"]["q01"]) == 8
    assert st["num_transitions"] == sum(len(e) for e in eps)
    with pytest.raises(ValueError, match="n_episodes"):
        generate(0)
