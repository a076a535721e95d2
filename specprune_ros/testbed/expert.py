"""Scripted expert for :class:`~specprune_ros.testbed.task.TabletopTask`.

The expert is a pure function of the task state (no hidden phase), so it recovers from perturbations and
can label any visited state; that is what data collection with injected noise relies on.

Phases, all derived from the state: hover over the target at carry height (coarse, fast), align and descend
(fine, slow: a proportional controller), close, lift, carry to the named plate (coarse), descend, open (as
soon as the object is low over the plate, wherever it came down within ``RELEASE_TOL``).
"""
from __future__ import annotations

import numpy as np

from .task import FINGER_OPEN, PLATE_HEIGHT, TabletopTask

#: carry / hover height of the tool point, metres
CARRY_Z = 0.11
#: proportional gain: action units per metre of error (1.0 action = pos_step metres)
GAIN = 60.0
#: horizontal error (m) below which the expert descends onto the target
ALIGN_TOL = 0.004
#: horizontal error (m) below which the expert starts lowering while still aligning
APPROACH_TOL = 0.03
#: horizontal error (m) to the plate centre below which the expert descends to place
PLACE_TOL = 0.012
#: horizontal distance (m) of the held object from the plate centre within which the expert lets go once low
#: enough (at or below its placing height), also when it came down off centre or too low
RELEASE_TOL = 0.025
#: largest action norm in the fine phases (below SpecPrune's fine-mode threshold of 0.35)
FINE_SPEED = 0.3


def _limit(v: np.ndarray, vmax: float) -> np.ndarray:
    """Clip each component to [-1, 1], then scale the vector down to norm ``vmax`` if it is longer."""
    v = np.clip(v, -1.0, 1.0)
    n = float(np.linalg.norm(v))
    return v * (vmax / n) if n > vmax else v


def expert_action(task: TabletopTask) -> np.ndarray:
    """The expert's 7-D action for the task's current state."""
    s, sc = task.state, task.scene
    a = np.zeros(7)
    a[5] = float(np.clip(-0.5 * s.yaw / task.config.yaw_step, -1.0, 1.0))  # hold the yaw at zero
    if s.held < 0:
        obj = sc.objects[sc.target]
        p = s.object_pos[sc.target]
        err_xy = p[:2] - s.ee[:2]
        d = float(np.linalg.norm(err_xy))
        grasp_z = p[2] + 0.45 * obj.height
        at_grasp = d <= 1.5 * ALIGN_TOL and abs(s.ee[2] - grasp_z) < 0.004
        if s.finger < FINGER_OPEN - 1e-9 and not (at_grasp and s.finger >= obj.radius):
            # fingers not open and no grasp under way (a closing that missed): open, rise a little
            a[2] = float(np.clip((CARRY_Z - s.ee[2]) * GAIN, 0.0, 0.3))
            a[6] = -1.0
            return a
        if d > APPROACH_TOL:  # coarse: fly over the target at carry height
            z_goal = CARRY_Z
            vmax = 1.0
        else:  # fine: align, then descend, slowly
            z_goal = grasp_z if d <= ALIGN_TOL else max(grasp_z + 0.02, min(s.ee[2], CARRY_Z))
            vmax = FINE_SPEED
        a[0:3] = _limit(np.array([err_xy[0], err_xy[1], z_goal - s.ee[2]]) * GAIN, vmax)
        a[6] = 1.0 if at_grasp else -1.0
        return a
    obj = sc.objects[s.held]
    plate = sc.plate_xy[sc.goal_plate]
    err_xy = plate - s.ee[:2]
    d = float(np.linalg.norm(err_xy))
    place_z = PLATE_HEIGHT + 0.5 * obj.height + 0.012
    if d <= RELEASE_TOL and s.ee[2] < place_z + 0.006:  # low over the plate: let go
        a[6] = -1.0
        return a
    if d > PLACE_TOL:
        if s.ee[2] < CARRY_Z - 0.03 and d > APPROACH_TOL:  # lift before moving
            a[2] = 1.0
        else:
            a[0:3] = _limit(np.array([err_xy[0], err_xy[1], CARRY_Z - s.ee[2]]) * GAIN, 1.0)
        a[6] = 1.0
        return a
    a[0:3] = _limit(np.array([err_xy[0], err_xy[1], place_z - s.ee[2]]) * GAIN, FINE_SPEED)
    a[6] = 1.0
    return a


def expert_plan(task: TabletopTask, n: int) -> np.ndarray:
    """The expert's next ``n`` actions from the current state, shape (n, 7), if it were left in control.

    Simulated on the task itself and restored afterwards (the task's state is unchanged). Past the end of the
    episode (success or time-out) the last action repeats, as OFT pads chunks past a demonstration's end.
    """
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    snap = task.snapshot()
    plan = []
    try:
        while len(plan) < n and not task.done:
            plan.append(expert_action(task))
            task.step(plan[-1])
    finally:
        task.restore(snap)
    if not plan:  # the episode is already over: hold still, keep the gripper as the expert last wanted
        plan.append(expert_action(task))
    plan += [plan[-1]] * (n - len(plan))
    return np.stack(plan)


def run_expert(task: TabletopTask, noise: float = 0.0, rng: np.random.Generator | None = None) -> bool:
    """Run the expert until the episode ends; with ``noise`` > 0 the executed translation is perturbed.

    Returns the task's success.
    """
    if noise > 0 and rng is None:
        raise ValueError("noise > 0 needs an explicit rng (np.random.default_rng(seed)) for determinism")
    while not task.done:
        a = expert_action(task)
        if noise > 0:
            a = a.copy()
            a[[0, 1, 2, 5]] += rng.normal(0.0, noise, size=4)
        task.step(a)
    return task.success
