"""How loaded the LLM backend is, as one number in [0, 1] that may relax cache policy.

0 means normal operation (the policy as configured), 1 means fully overloaded (each
category's thresholds and TTLs at the bounds it allows). Signals are pluggable: anything
with a `level()` method works. Each built-in signal smooths its input so one slow call
does not flip the policy, and decays back to 0 when the backend recovers.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from .numbers import is_number


class LoadSignal(Protocol):
    def level(self) -> float: ...


def _ramp(value: float, normal: float, overloaded: float) -> float:
    """0 at or below `normal`, 1 at or above `overloaded`, linear between."""
    return min(1.0, max(0.0, (value - normal) / (overloaded - normal)))


def _check_range(normal: float, overloaded: float, what: str) -> None:
    if not (is_number(normal) and is_number(overloaded) and 0 <= normal < overloaded):
        raise ValueError(f"{what}: need 0 <= normal < overloaded, got {normal} and {overloaded}")


class LatencySignal:
    """Backend latency, smoothed with a time-based exponential moving average."""

    def __init__(
        self,
        normal_seconds: float,
        overloaded_seconds: float,
        half_life_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_range(normal_seconds, overloaded_seconds, "LatencySignal")
        if not half_life_seconds > 0:
            raise ValueError("half_life_seconds must be positive")
        self.normal, self.overloaded = normal_seconds, overloaded_seconds
        self.half_life = half_life_seconds
        self._clock = clock
        self._avg: float | None = None
        self._at = clock()
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        if not (is_number(seconds) and seconds >= 0):
            raise ValueError(f"latency must be a non-negative number of seconds, got {seconds!r}")
        # Anything past twice `overloaded` says no more than "overloaded" does; unclamped, one
        # absurd report (a clock jump, 1e30 s) would hold the average up for hours of halvings.
        seconds = min(float(seconds), 2 * self.overloaded)
        with self._lock:
            now = self._clock()
            if self._avg is None:
                self._avg = seconds
            else:
                keep = 0.5 ** ((now - self._at) / self.half_life)
                self._avg = keep * self._avg + (1 - keep) * seconds
            self._at = now

    def level(self) -> float:
        with self._lock:
            if self._avg is None:
                return 0.0
            # Without new calls the estimate decays toward normal: a backend nobody is
            # calling any more (because everything hits) must not stay "overloaded".
            keep = 0.5 ** ((self._clock() - self._at) / self.half_life)
            avg = keep * self._avg + (1 - keep) * self.normal
        return _ramp(avg, self.normal, self.overloaded)


class QueueDepthSignal:
    """Requests waiting for the backend, read from a callable (e.g. a semaphore's waiters)."""

    def __init__(self, depth: Callable[[], float], normal: float, overloaded: float) -> None:
        _check_range(normal, overloaded, "QueueDepthSignal")
        self.depth, self.normal, self.overloaded = depth, normal, overloaded

    def level(self) -> float:
        return _ramp(float(self.depth()), self.normal, self.overloaded)


class RateLimitSignal:
    """Share of throttled answers (HTTP 429) among the backend's answers in a time window."""

    def __init__(
        self,
        normal_rate: float = 0.0,
        overloaded_rate: float = 0.2,
        window_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_range(normal_rate, overloaded_rate, "RateLimitSignal")
        if not window_seconds > 0:
            raise ValueError("window_seconds must be positive")
        self.normal, self.overloaded, self.window = normal_rate, overloaded_rate, window_seconds
        self._clock = clock
        self._events: deque[tuple[float, bool]] = deque()
        self._lock = threading.Lock()

    def record(self, status: int) -> None:
        with self._lock:
            self._events.append((self._clock(), status == 429))
            self._trim()

    def _trim(self) -> None:
        start = self._clock() - self.window
        while self._events and self._events[0][0] < start:
            self._events.popleft()

    def level(self) -> float:
        with self._lock:
            self._trim()
            if not self._events:
                return 0.0
            rate = sum(throttled for _, throttled in self._events) / len(self._events)
        return _ramp(rate, self.normal, self.overloaded)


class MaxSignal:
    """The most alarming of several signals."""

    def __init__(self, *signals: LoadSignal) -> None:
        self.signals = signals

    def level(self) -> float:
        return max((s.level() for s in self.signals), default=0.0)


class FixedSignal:
    """A level set by the operator (or a test, or a replay)."""

    def __init__(self, level: float = 0.0) -> None:
        self.set(level)

    def set(self, level: float) -> None:
        if not (isinstance(level, int | float) and 0.0 <= level <= 1.0):
            raise ValueError(f"load level must be in [0, 1], got {level!r}")
        self._level = float(level)

    def level(self) -> float:
        return self._level


class BackendMonitor:
    """What a caller sees of its LLM backend (latency and 429s) as one load signal.

    The service feeds it from `/v1/backend` reports; the `cached` wrapper from the calls
    it makes on misses.
    """

    def __init__(
        self,
        normal_seconds: float = 2.0,
        overloaded_seconds: float = 10.0,
        overloaded_429_rate: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.latency = LatencySignal(normal_seconds, overloaded_seconds, clock=clock)
        self.rate_limit = RateLimitSignal(0.0, overloaded_429_rate, clock=clock)

    def record(self, seconds: float, status: int = 200) -> None:
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {status!r}")
        self.latency.record(seconds)
        self.rate_limit.record(status)

    def level(self) -> float:
        return max(self.latency.level(), self.rate_limit.level())
