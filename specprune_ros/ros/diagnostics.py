"""Counters, rates and health level of the policy node and of the simulator bridges, and their
``diagnostic_msgs/DiagnosticArray`` form.

:class:`NodeHealth` (policy node) and :class:`BridgeHealth` (simulator bridges) are plain Python (thread-safe,
no ROS); :func:`to_diagnostic_array` builds the message. Policy node levels: OK = the last attempt produced a
chunk; WARN = inputs refused (stale, skewed, frozen, missing, the clock gone back, no instruction) or not
active yet; ERROR = the last inference raised, or configuration failed. An error is reported at least once (:class:`StatusLatch`):
one that the next chunk clears before the next report is still the next report's level and message (marked
"since recovered").
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque

OK, WARN, ERROR = 0, 1, 2
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR"}

# Why a simulator bridge did not run an action chunk (BridgeHealth): refused, an ERROR ...
INVALID_CHUNK = "invalid_chunk"  # wrong shape, rows*cols not the number of values, NaN or inf
STEP_DT = "step_dt"  # planned for another control period
# ... or dropped, counted only: it answers no pending observation
STALE_CHUNK = "stale_chunk"  # computed from an observation older than the one the simulator waits on
NO_EPISODE = "no_episode"  # no episode is running


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


class StatusLatch:
    """The level and message a status reports, where an ERROR is reported at least once: cleared before the next
    report, it is still that report's level, its message followed by "(since recovered: <current>)". Not
    thread-safe: its owner holds a lock. ``last_problem``: the last ERROR or refusal message, kept after recovery."""

    def __init__(self, level: int = WARN, message: str = "not configured") -> None:
        self.level, self.message = level, message
        self.last_problem = ""
        self._unreported: str | None = None

    def set(self, level: int, message: str, problem: bool = False) -> None:
        """The current level and message; ``problem`` (implied by ERROR) also makes it ``last_problem``."""
        self.level, self.message = level, message
        if problem or level == ERROR:
            self.last_problem = message
        if level == ERROR:
            self._unreported = message

    def report(self) -> tuple[int, str]:
        """``(level, message)`` to publish now; reading it counts as reporting a cleared error."""
        level, message = self.level, self.message
        if self._unreported is not None and level != ERROR:
            level, message = ERROR, f"{self._unreported} (since recovered: {message})"
        self._unreported = None
        return level, message


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
        self._status = StatusLatch()

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
            self._status.set(WARN, message, problem=True)

    def failure(self, message: str) -> None:
        with self._lock:
            self.inference_errors += 1
            self._status.set(ERROR, message)

    def error(self, message: str) -> None:
        """An ERROR that is not an inference error: configuration failed, inputs could not be assembled."""
        with self._lock:
            self._status.set(ERROR, message)

    def chunk(self, latency_s: float, mode: str, preset: str, kept: int, total: int, ee_speed_source: str) -> None:
        with self._lock:
            self.chunks += 1
            self.inference_rate.tick()
            self.latencies_ms.append(latency_s * 1e3)
            self.mode, self.preset, self.tokens_kept, self.tokens_total = mode, preset, kept, total
            self.ee_speed_source = ee_speed_source
            self._status.set(OK, "producing action chunks")

    def set_state(self, state: str, message: str | None = None, level: int | None = None) -> None:
        with self._lock:
            self.state = state
            if message is not None:
                self._status.set(WARN if level is None else level, message)

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
                "last_error": self._status.last_problem,
                "unknown_parameters": ",".join(self.unknown_parameters),
            }
            for view, meter in self.camera_rates.items():
                values[f"camera_rate_hz.{view}"] = f"{meter.rate():.1f}"
                values[f"frames_received.{view}"] = str(self.frames_received[view])
            for reason, n in sorted(self.refused.items()):
                values[f"refused.{reason}"] = str(n)
            level, message = self._status.report()
            if self.unknown_parameters and level == OK:
                level, message = WARN, f"unknown parameters ignored: {values['unknown_parameters']}"
            return level, message, values


class BridgeHealth:
    """What a simulator bridge reports on /diagnostics. Methods are called from the executor and worker threads.

    OK while episodes run (WARN if unknown parameters were given); ERROR from a refused action chunk (malformed,
    NaN, another control period) or a simulator failure until a chunk is accepted again or an episode starts
    (reported at least once, as the policy node's errors). Chunks dropped because they answer no pending
    observation (computed before the episode began, or for an older observation, or sent while no episode runs)
    are counted, not errors: a policy that queried while an episode ended sends them in normal operation. But
    :data:`STALE_STREAK` stale chunks in a row, none accepted in between, are a WARN until a chunk is accepted or
    an episode starts: their stamps predate the observation they should answer, as when the policy's clock is
    not the simulator's.
    """

    #: consecutive stale chunks (none accepted in between) that make a WARN
    STALE_STREAK = 3

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.accepted = 0
        self.refused: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.episode = -1
        self.episode_status = "waiting"
        self.stale_in_a_row = 0
        self.unknown_parameters: list[str] = []
        self._status = StatusLatch(WARN, "simulator starting")

    def chunk_accepted(self) -> None:
        with self._lock:
            self.accepted += 1
            self.stale_in_a_row = 0
            self._status.set(OK, f"episode {max(self.episode, 0)}: executing action chunks")

    def chunk_refused(self, reason: str, message: str) -> None:
        with self._lock:
            self.refused[reason] += 1
            self._status.set(ERROR, message)

    def chunk_dropped(self, reason: str) -> None:
        with self._lock:
            self.dropped[reason] += 1
            if reason != STALE_CHUNK:
                return
            self.stale_in_a_row += 1
            if self.stale_in_a_row >= self.STALE_STREAK and self._status.level != ERROR:
                self._status.set(WARN, f"episode {max(self.episode, 0)}: {self.stale_in_a_row} action chunks in a row "
                                       "dropped as stale: their stamps predate the observation they must answer (in "
                                       "the test bed, the episode's first): do the policy's and the simulator's "
                                       "clocks disagree (use_sim_time on one node only)?", problem=True)

    def chunks_not_run(self) -> int:
        """Chunks refused or dropped so far."""
        with self._lock:
            return sum(self.refused.values()) + sum(self.dropped.values())

    def failure(self, message: str) -> None:
        """The simulator failed (could not start, a step raised; the bridge reports the episode as failed): ERROR
        until a chunk is accepted again or the next episode starts."""
        with self._lock:
            self.episode_status = "failure"
            self._status.set(ERROR, message)

    def episode_update(self, episode: int, status: str, started: bool = False) -> None:
        """The episode's index and status (waiting, running, success, timeout, failure, aborted); ``started``: it has
        just begun, which clears an earlier failure."""
        with self._lock:
            self.episode, self.episode_status = episode, status
            if started:
                self.stale_in_a_row = 0
            if started or (self._status.level != ERROR and self.stale_in_a_row < self.STALE_STREAK):
                self._status.set(OK, f"episode {max(episode, 0)}: {status}")

    def snapshot(self) -> tuple[int, str, dict[str, str]]:
        """``(level, message, key -> value)``, as :meth:`NodeHealth.snapshot`."""
        with self._lock:
            values = {
                "episode": str(max(self.episode, 0)),
                "episode_status": self.episode_status,
                "chunks_accepted": str(self.accepted),
                "chunks_refused": str(sum(self.refused.values())),
                "chunks_dropped": str(sum(self.dropped.values())),
                "last_error": self._status.last_problem,
                "unknown_parameters": ",".join(self.unknown_parameters),
            }
            for name, counter in (("refused", self.refused), ("dropped", self.dropped)):
                for reason, n in sorted(counter.items()):
                    values[f"{name}.{reason}"] = str(n)
            level, message = self._status.report()
            if self.unknown_parameters and level == OK:
                level, message = WARN, f"unknown parameters ignored: {values['unknown_parameters']}"
            return level, message, values


#: how the policy node's /diagnostics message starts after a failed configure transition
CONFIGURE_FAILED = "configure failed"


def configure_failure(array, node_name: str) -> str | None:
    """The configure error that the node ``node_name`` (:func:`diagnostic_name`) reports in a ``DiagnosticArray``,
    else None (a process that starts a policy node sees it fail to load a checkpoint here: the node keeps running,
    unconfigured)."""
    for status in array.status:
        if status.hardware_id == node_name and status.message.startswith(CONFIGURE_FAILED):
            return status.message
    return None


class ConfigureFailureWatch:
    """Subscribes ``node`` to /diagnostics and keeps in ``error`` the first configure error the policy node
    ``node_name`` reports (:func:`configure_failure`), for a process that starts a policy node and must not wait
    on one that stays up unconfigured; :meth:`clear` forgets it (before another policy node starts)."""

    def __init__(self, node, node_name: str) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        self.node_name = node_name
        self.error: str | None = None
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_diagnostics(self, array) -> None:
        self.error = self.error or configure_failure(array, self.node_name)

    def clear(self) -> None:
        self.error = None


def diagnostic_name(node) -> str:
    """How ``node`` names itself on /diagnostics: its fully qualified name without the leading slash (the node
    name in the root namespace; ``arm1/specprune_policy`` in ``/arm1``, so two instances stay apart)."""
    return node.get_fully_qualified_name().lstrip("/")


def to_diagnostic_array(health: NodeHealth | BridgeHealth, node, what: str = "policy") -> object:
    """A ``diagnostic_msgs/DiagnosticArray`` stamped now with one status named ``<diagnostic_name(node)>: <what>``
    (``hardware_id``: the same name)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    node_name, stamp = diagnostic_name(node), node.get_clock().now().to_msg()
    level, message, values = health.snapshot()
    status = DiagnosticStatus()
    status.level = bytes([level])
    status.name = f"{node_name}: {what}"
    status.hardware_id = node_name
    status.message = message[:500]
    status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = [status]
    return msg
