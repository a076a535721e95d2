"""Action-aware coarse/fine controller (SpecPrune-VLA section 3.3).

Fine-grained motion (approach, grasp, place) is sensitive to pruning, so fine mode keeps MORE tokens
(paper semantics). The signal is the executed, un-normalized delta end-effector command ``a``:
``v_t = |a[0:3]|``, ``v_r = |a[3:6]|``, ``a_z = a[2]``, optionally joined by a measured end-effector speed.
Pure and deterministic: the same action sequence gives the same modes.
"""
from __future__ import annotations

import math

import numpy as np

from .presets import ControllerConfig
from .types import MODE_COARSE, MODE_FINE


def enters_fine(a: np.ndarray, cfg: ControllerConfig) -> bool:
    v_t = float(np.linalg.norm(a[0:3]))
    v_r = float(np.linalg.norm(a[3:6]))
    planar = float(np.linalg.norm(a[0:2]))
    return v_t < cfg.enter_translation or (planar < cfg.enter_planar and a[2] < cfg.enter_z and v_r < cfg.enter_rotation)


def leaves_fine(a: np.ndarray, cfg: ControllerConfig) -> bool:
    return float(a[2]) > cfg.leave_z or float(np.linalg.norm(a[3:6])) > cfg.leave_rotation


class ModeController:
    """Tracks the mode across an episode. Call :meth:`update` once per query (a chunk boundary)."""

    def __init__(self, cfg: ControllerConfig) -> None:
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        self.mode = MODE_COARSE
        self.steps = 0
        self.last_action: np.ndarray | None = None

    def _step(self, a: np.ndarray) -> bool:
        """Advance one executed action; True when it switches coarse -> fine (mid-chunk)."""
        self.steps += 1
        self.last_action = a
        if self.mode == MODE_COARSE and self.steps > self.cfg.warmup_steps and enters_fine(a, self.cfg):
            self.mode = MODE_FINE
            return True
        return False

    def update(self, executed: np.ndarray | None, ee_speed: tuple[float, float] | None = None) -> str:
        """Feed the actions executed since the last query, then apply the chunk-boundary rules.

        executed: (N, A) un-normalized actions in execution order (None/empty: nothing executed yet).
        ee_speed: measured (linear m/s, angular rad/s), if the consumer has it.
        """
        if not self.cfg.enabled:
            return MODE_COARSE
        switched = False
        if executed is not None and np.size(executed):
            for a in np.atleast_2d(np.asarray(executed, dtype=np.float64)):  # (N, A)
                switched |= self._step(a)
        if self.mode == MODE_FINE and not switched:
            leave = self.last_action is not None and leaves_fine(self.last_action, self.cfg)
            if ee_speed is not None:
                lin, ang = ee_speed
                leave = leave or lin > self.cfg.measured_leave_linear or ang > self.cfg.measured_leave_angular
            if leave:
                self.mode = MODE_COARSE
        elif self.mode == MODE_COARSE and ee_speed is not None and self.steps > self.cfg.warmup_steps:
            lin, ang = ee_speed
            recent_leave = self.last_action is not None and leaves_fine(self.last_action, self.cfg)
            if lin < self.cfg.measured_enter_linear and not recent_leave:
                self.mode = MODE_FINE
        return self.mode

    def fine_switch_row(self, chunk: np.ndarray) -> int | None:
        """Row of ``chunk`` after whose execution the controller would switch coarse -> fine, else None.

        A consumer may drop the rows after it and query again, so that the fine part is planned with the
        larger token budget. The controller's state is not changed.
        """
        if not self.cfg.enabled or not self.cfg.requery_on_fine or self.mode != MODE_COARSE:
            return None
        steps = self.steps
        for row, a in enumerate(np.asarray(chunk, dtype=np.float64)):
            steps += 1
            if steps > self.cfg.warmup_steps and enters_fine(a, self.cfg):
                return row if row < len(chunk) - 1 else None
        return None


def requery_rows(requery: bool, requery_after: int | None, rows: int) -> int | None:
    """Rows of a ``rows``-row chunk to execute before an early re-query, or None to execute them all.

    A chunk whose statistics say the controller enters fine mode after row ``requery_after`` is cut to rows
    ``0..requery_after`` (SpecPrune-VLA's LIBERO evaluation drops the queued actions and queries again); a
    switch after the last row, or none, cuts nothing. Every consumer (the direct LIBERO path, the policy
    node's execution, the LIBERO bridge) applies this one rule.
    """
    if requery and requery_after is not None and 0 <= int(requery_after) < rows - 1:
        return int(requery_after) + 1
    return None


def step_dt_problem(step_dt: float, period: float | None = None) -> str | None:
    """Why a chunk whose rows are ``step_dt`` seconds apart cannot be executed one row per ``period`` seconds, or
    None. NaN, inf and negative values are refused; 0 means "not given" (a message that leaves the field unset);
    with ``period`` a positive value must match it within 1% (rows meant for another rate would move the arm at
    another speed; ``period=None`` where a row is a step of a simulation, whatever the wall-clock pace)."""
    if not math.isfinite(step_dt) or step_dt < 0:
        return f"step_dt={step_dt} must be a finite number of seconds >= 0"
    if period is not None and step_dt > 0 and abs(step_dt - period) > 0.01 * period:
        return f"step_dt={step_dt} s, but rows are executed every {period} s"
    return None
