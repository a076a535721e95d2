"""Counters, rates and health level of the policy node, and their ``diagnostic_msgs/DiagnosticArray`` form.

:class:`NodeHealth` is plain Python (thread-safe, no ROS); :func:`to_diagnostic_array` builds the message.
Levels: OK = the last attempt produced a chunk; WARN = inputs refused (stale, skewed, frozen, missing, no
instruction) or not active yet; ERROR = the last inference raised, or configuration failed. An error is
reported at least once: one that the next chunk clears before the next report is still the next report's
level and message (marked "since recovered").
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

OK, WARN, ERROR = 0, 1, 2
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR"}


class RateMeter:
    """Events per second over the last ``window`` events (monotonic clock)."""

    def __init__(self, window: int = 30) -> None:
        self._times: deque[float] = deque(maxlen=window)

    def tick(self, t: float | None = None) -> None:
        self._times.append(time.monotonic() if t is None else t)

    def rate(self, now: float | None = None, idle_after: float = 5.0) -> float:
        """Rate in Hz; 0 when fewer than 2 events or none in the last ``idle_after`` seconds."""
        if len(self._times) < 2:
            return 0.0
        now = time.monotonic() if now is None else now
        if now - self._times[-1] > idle_after:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0


@dataclass
class _Last:
    level: int = WARN
    message: str = "not configured"
    error: str = ""


class NodeHealth:
    """Everything /diagnostics reports. Methods are called from the executor and the inference thread."""

    def __init__(self, views: tuple[str, ...] = ()) -> None:
        self._lock = threading.Lock()
        self.views = tuple(views)
        self.camera_rates = {v: RateMeter() for v in self.views}
        self.frames_received: Counter[str] = Counter()
        self.joint_rate = RateMeter()
        self.inference_rate = RateMeter()
        self.latencies_ms: deque[float] = deque(maxlen=50)
        self.refused: Counter[str] = Counter()
        self.chunks = 0
        self.inference_errors = 0
        self.frames_dropped_busy = 0
        self.frames_skipped = 0
        self.bad_frames = 0
        self.state = "unconfigured"
        self.mode = ""
        self.preset = ""
        self.tokens_kept = 0
        self.tokens_total = 0
        self.ee_speed_source = "none"
        self.unknown_parameters: list[str] = []
        self._last = _Last()
        self._unreported_error: str | None = None

    # --- events
    def frame(self, view: str, busy: bool) -> None:
        with self._lock:
            if view in self.camera_rates:
                self.camera_rates[view].tick()
            self.frames_received[view] += 1
            if busy:
                self.frames_dropped_busy += 1

    def bad_frame(self) -> None:
        with self._lock:
            self.bad_frames += 1

    def joint_state(self) -> None:
        with self._lock:
            self.joint_rate.tick()

    def skipped(self, n: int) -> None:
        with self._lock:
            self.frames_skipped += max(int(n), 0)

    def refusal(self, reason: str, message: str) -> None:
        with self._lock:
            self.refused[reason] += 1
            self._last = _Last(WARN, message, message)

    def failure(self, message: str) -> None:
        with self._lock:
            self.inference_errors += 1
            self._last = _Last(ERROR, message, message)
            self._unreported_error = message

    def error(self, message: str) -> None:
        """An ERROR that is not an inference error: configuration failed, inputs could not be assembled."""
        with self._lock:
            self._last = _Last(ERROR, message, message)
            self._unreported_error = message

    def chunk(self, latency_s: float, mode: str, preset: str, kept: int, total: int, ee_speed_source: str) -> None:
        with self._lock:
            self.chunks += 1
            self.inference_rate.tick()
            self.latencies_ms.append(latency_s * 1e3)
            self.mode, self.preset, self.tokens_kept, self.tokens_total = mode, preset, kept, total
            self.ee_speed_source = ee_speed_source
            self._last = _Last(OK, "producing action chunks", self._last.error)

    def set_state(self, state: str, message: str | None = None, level: int | None = None) -> None:
        with self._lock:
            self.state = state
            if message is not None:
                self._last = _Last(WARN if level is None else level, message, self._last.error)

    # --- report
    def snapshot(self) -> tuple[int, str, dict[str, str]]:
        """``(level, message, key -> value)``; values are strings as DiagnosticStatus wants them.

        Reading a snapshot counts as reporting it: an error cleared since the previous snapshot is reported here
        once, then no more.
        """
        with self._lock:
            lat = list(self.latencies_ms)
            values = {
                "state": self.state,
                "chunks_published": str(self.chunks),
                "inference_rate_hz": f"{self.inference_rate.rate():.2f}",
                "latency_last_ms": f"{lat[-1]:.1f}" if lat else "",
                "latency_mean_ms": f"{sum(lat) / len(lat):.1f}" if lat else "",
                "latency_max_ms": f"{max(lat):.1f}" if lat else "",
                "joint_state_rate_hz": f"{self.joint_rate.rate():.1f}",
                "frames_dropped_busy": str(self.frames_dropped_busy),
                "frames_skipped": str(self.frames_skipped),
                "bad_frames": str(self.bad_frames),
                "inference_errors": str(self.inference_errors),
                "refused_total": str(sum(self.refused.values())),
                "mode": self.mode,
                "preset": self.preset,
                "tokens_kept": str(self.tokens_kept),
                "tokens_total": str(self.tokens_total),
                "ee_speed_source": self.ee_speed_source,
                "last_error": self._last.error,
                "unknown_parameters": ",".join(self.unknown_parameters),
            }
            for view, meter in self.camera_rates.items():
                values[f"camera_rate_hz.{view}"] = f"{meter.rate():.1f}"
                values[f"frames_received.{view}"] = str(self.frames_received[view])
            for reason, n in sorted(self.refused.items()):
                values[f"refused.{reason}"] = str(n)
            level, message = self._last.level, self._last.message
            if self._unreported_error is not None and level != ERROR:
                level, message = ERROR, f"{self._unreported_error} (since recovered: {message})"
            self._unreported_error = None
            if self.unknown_parameters and level == OK:
                level, message = WARN, f"unknown parameters ignored: {values['unknown_parameters']}"
            return level, message, values


def to_diagnostic_array(health: NodeHealth, node_name: str, stamp) -> object:
    """A ``diagnostic_msgs/DiagnosticArray`` with one status named ``<node_name>: policy``."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    level, message, values = health.snapshot()
    status = DiagnosticStatus()
    status.level = bytes([level])
    status.name = f"{node_name}: policy"
    status.hardware_id = node_name
    status.message = message[:500]
    status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = [status]
    return msg
