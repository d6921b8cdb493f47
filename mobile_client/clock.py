"""Clocks the collectors read event times from.

Why: event times must come from one monotonic clock per session; tests and the replay flow
drive a `VirtualClock` so that synthetic key and touch timings survive the real window event
path unchanged (a script cannot press keys 150 ms apart without sleeping).
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]


def monotonic() -> float:
    """Seconds on the platform's monotonic clock (the default for collectors)."""
    return time.monotonic()


class VirtualClock:
    """A clock that only moves when told to (`advance`, `set`)."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("seconds: a clock cannot go back")
        self._now += float(seconds)
        return self._now

    def set(self, t: float) -> None:
        if t < self._now:
            raise ValueError(f"t: a clock cannot go back ({t} < {self._now})")
        self._now = float(t)
