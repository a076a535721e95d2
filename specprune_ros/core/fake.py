"""A fake policy for tests and for exercising consumers (ROS node, bag tools) without a model."""
from __future__ import annotations

import threading
import time

import numpy as np

from .types import MODE_COARSE, ActionChunk, Observation, StepStats


class FakePolicy:
    """Deterministic stand-in for a real policy.

    Each chunk's actions are a function of the observation (mean image intensity per view, proprio and the
    call count), so a test can tell which observation produced which chunk. ``delay_s`` simulates a slow
    model; ``fail_on`` raises RuntimeError for the listed call numbers (0-based) to test error handling.
    """

    def __init__(
        self,
        views: tuple[str, ...] = ("primary", "wrist"),
        proprio_dim: int | None = 8,
        action_dim: int = 7,
        chunk_len: int = 8,
        dt: float = 0.05,
        delay_s: float = 0.0,
        fail_on: tuple[int, ...] = (),
    ) -> None:
        self.views = tuple(views)
        self.proprio_dim = proprio_dim
        self.action_dim = action_dim
        self.chunk_len = chunk_len
        self.dt = dt
        self.delay_s = delay_s
        self.fail_on = set(fail_on)
        self.calls = 0
        self.resets = 0
        self.seen: list[Observation] = []
        self._lock = threading.Lock()

    def infer(self, obs: Observation) -> ActionChunk:
        obs.validate(self.views, self.proprio_dim, self.action_dim)
        with self._lock:
            n = self.calls
            self.calls += 1
            self.seen.append(obs)
        start = time.perf_counter()
        if self.delay_s:
            time.sleep(self.delay_s)
        if n in self.fail_on:
            raise RuntimeError(f"fake policy failure on call {n}")
        means = [float(np.asarray(obs.images[v], dtype=np.float64).mean()) / 255.0 for v in self.views]
        base = np.linspace(-0.5, 0.5, self.action_dim) * (0.1 + sum(means) / max(len(means), 1))
        steps = np.arange(self.chunk_len)[:, None] * 0.01  # (T, 1)
        actions = (base[None, :] + steps).astype(np.float64)  # (T, A)
        elapsed = (time.perf_counter() - start) * 1e3
        stats = StepStats(
            timings_ms={"total": elapsed},
            tokens_per_layer=[0],
            kept_per_view={v: 256 for v in self.views},
            mode=MODE_COARSE,
            preset="fake",
        )
        return ActionChunk(actions=actions, dt=self.dt, stamp=obs.stamp, stats=stats)

    def reset(self) -> None:
        self.resets += 1
