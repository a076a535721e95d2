"""Load: cameras at 30 Hz with a slow policy -> one inference in flight, newest frame used, no backlog, memory flat."""
from __future__ import annotations

import bisect
import threading

import numpy as np
from node_harness import Harness, wait_until
from ros_env import ros_context  # noqa: F401  (fixture)

from specprune_ros.core.fake import FakePolicy
from specprune_ros.core.types import Observation


class SlowPolicy(FakePolicy):
    """FakePolicy that records concurrency and what the camera stream held when each inference started."""

    def __init__(self, feeder_ref: list, **kw) -> None:
        super().__init__(**kw)
        self.feeder_ref = feeder_ref
        self.in_flight = 0
        self.max_in_flight = 0
        self.published_at_start: list[int] = []  # frames published when each inference started
        self._count_lock = threading.Lock()

    def infer(self, obs):
        with self._count_lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            feeder = self.feeder_ref[0] if self.feeder_ref else None
            self.published_at_start.append(len(feeder.published) if feeder else 0)
        try:
            chunk = super().infer(obs)
            with self._lock:  # keep what the checks need, not the frames (they would count as a leak)
                self.seen[next(i for i, o in enumerate(self.seen) if o is obs)] = Observation(images={}, proprio=None, instruction="", stamp=obs.stamp)
            return chunk
        finally:
            with self._count_lock:
                self.in_flight -= 1


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_slow_policy_no_backlog_newest_frame_memory_flat(ros_context):
    feeder_ref: list = []
    policies: list[SlowPolicy] = []

    def factory(cfg, pcfg):
        policies.append(SlowPolicy(feeder_ref, views=tuple(cfg.camera_views), proprio_dim=8, delay_s=0.25))
        return policies[-1]

    h = Harness(ros_context, {"execute_steps": 1, "max_age": 1.0}, policy_factory=factory)
    try:
        feeder_ref.append(h.feed(rate=30.0, size=256))
        h.wait_chunks(2, timeout=20)
        rss_start = rss_bytes()
        h.wait_chunks(12, timeout=30)
        rss_end = rss_bytes()
        feeder = h.feeder
        policy = policies[0]

        # at most one inference in flight, ever
        assert policy.max_in_flight == 1
        # frames arrive ~7x faster than inferences; the node skipped the ones it could not use
        n_frames = len(feeder.published)
        assert n_frames > 3 * policy.calls
        # each inference used (nearly) the newest frame published when it started: the lag in frames is
        # what is in transit, and it does not grow over the run (a backlog would grow by ~7 per inference)
        published = list(feeder.published)
        lags = []
        for obs, n_pub in zip(policy.seen, policy.published_at_start):
            idx = bisect.bisect_left(published, obs.stamp - 1e-6)
            lags.append(n_pub - 1 - idx)
        assert max(lags) <= 4, lags
        assert lags[-1] <= 4
        stamps = [o.stamp for o in policy.seen]
        assert all(b > a for a, b in zip(stamps, stamps[1:]))  # always a newer observation, never a queued old one
        # the node reports what it dropped
        _, _, values = h.wait_diag(lambda lv, m, v: int(v["frames_dropped_busy"]) > 0, what="dropped-frame counters")
        assert int(values["frames_skipped"]) > 0
        # bounded buffers and flat memory: 256x256 frames at 30 Hz x 2 views would leak ~11 MB/s if kept
        assert max(h.node.sync.buffered().values()) <= 10
        assert rss_end - rss_start < 10 * 2**20, (rss_start, rss_end)

        # stopping the cameras leaves no queued work: once the last frames are stale, nothing more runs
        feeder.stop()
        h.feeder = None
        h.wait_diag(lambda lv, m, v: "stale" in m, what="stale cameras after the stream stopped")
        wait_until(lambda: policy.in_flight == 0, what="in-flight inference to finish")
        calls = policy.calls
        wait_until(lambda: h.n_chunks() >= calls, what="last chunk")
        assert h.node._pool._work_queue.qsize() == 0
        h.wait_diag(lambda lv, m, v: "stale" in m and int(v["refused.stale"]) > 5, what="more stale refusals")
        assert h.n_chunks() == calls == policy.calls  # the node never re-acts on the last frame
        assert np.all(np.diff([c.sequence for c in h.chunks]) == 1)
    finally:
        h.close()
