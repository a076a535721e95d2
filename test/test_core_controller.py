"""Coarse/fine controller transitions on scripted actions."""
from __future__ import annotations

import numpy as np

from specprune_ros.core.controller import ModeController, enters_fine, leaves_fine, step_dt_problem
from specprune_ros.core.presets import ControllerConfig

CFG = ControllerConfig()
FAST = np.array([0.6, 0.3, 0.0, 0.0, 0.0, 0.0, -1.0])  # |a[0:3]| = 0.67: coarse
SLOW = np.array([0.1, 0.1, 0.05, 0.0, 0.0, 0.0, -1.0])  # |a[0:3]| < 0.35: fine
LIFT = np.array([0.3, 0.2, 0.5, 0.0, 0.0, 0.0, 1.0])  # a_z > 0.2: leave fine
TURN = np.array([0.4, 0.0, 0.0, 0.5, 0.0, 0.0, 1.0])  # v_r > 0.3: leave fine


def chunk(row, n=8):
    return np.tile(row, (n, 1))


def test_rules():
    assert not enters_fine(FAST, CFG) and enters_fine(SLOW, CFG)
    # second clause: small planar motion, not going up, little rotation, although |a[0:3]| >= 0.35
    assert enters_fine(np.array([0.05, 0.05, -0.5, 0.1, 0, 0, 0]), CFG)
    assert leaves_fine(LIFT, CFG) and leaves_fine(TURN, CFG) and not leaves_fine(SLOW, CFG)


def test_warmup_then_enter_fine():
    c = ModeController(CFG)
    assert c.update(None) == "coarse"
    assert c.update(chunk(SLOW, 8)) == "coarse"  # 8 steps <= warm-up of 10
    assert c.update(chunk(SLOW, 8)) == "fine"


def test_hysteresis_and_chunk_boundary_rule():
    c = ModeController(CFG)
    c.update(chunk(FAST, 16))
    assert c.mode == "coarse"
    c.update(np.vstack([chunk(FAST, 4), chunk(SLOW, 4)]))
    assert c.mode == "fine"
    # moderate motion that neither enters nor leaves keeps fine (hysteresis)
    c.update(chunk(np.array([0.3, 0.3, 0.1, 0, 0, 0, 0]), 8))
    assert c.mode == "fine"
    # leaving is decided at the boundary, on the last executed action
    c.update(np.vstack([chunk(LIFT, 4), chunk(SLOW, 4)]))
    assert c.mode == "fine"
    c.update(np.vstack([chunk(SLOW, 4), chunk(LIFT, 4)]))
    assert c.mode == "coarse"
    c.update(chunk(TURN, 8))
    assert c.mode == "coarse"


def test_fine_switch_row_requests_requery():
    c = ModeController(CFG)
    c.update(chunk(FAST, 16))
    plan = np.vstack([chunk(FAST, 3), chunk(SLOW, 5)])
    assert c.fine_switch_row(plan) == 3
    assert c.mode == "coarse" and c.steps == 16  # simulation does not change state
    assert c.fine_switch_row(chunk(FAST)) is None
    assert ModeController(ControllerConfig(requery_on_fine=False)).fine_switch_row(plan) is None


def test_measured_speed():
    c = ModeController(CFG)
    c.update(chunk(FAST, 16))
    assert c.update(chunk(FAST, 8), ee_speed=(0.01, 0.0)) == "fine"  # measured slow although commands are large
    assert c.update(chunk(SLOW, 8), ee_speed=(0.04, 0.0)) == "fine"  # between thresholds: stays
    assert c.update(chunk(SLOW, 8), ee_speed=(0.10, 0.0)) == "coarse"  # measured fast: leave
    assert c.update(chunk(FAST, 8), ee_speed=(0.03, 0.9)) == "coarse"


def test_disabled_and_reset():
    c = ModeController(ControllerConfig(enabled=False))
    assert c.update(chunk(SLOW, 40)) == "coarse"
    c = ModeController(CFG)
    c.update(chunk(SLOW, 20))
    assert c.mode == "fine"
    c.reset()
    assert c.mode == "coarse" and c.steps == 0


def test_step_dt_problem():
    assert step_dt_problem(0.05, 0.05) is None and step_dt_problem(0.0503, 0.05) is None
    assert step_dt_problem(0.0, 0.05) is None  # not given
    assert "rows are executed every 0.05 s" in step_dt_problem(0.1, 0.05)
    assert step_dt_problem(0.1) is None  # no fixed period: a row is a simulation step
    for bad in (float("nan"), float("inf"), -0.05):
        assert "finite number of seconds >= 0" in step_dt_problem(bad)
