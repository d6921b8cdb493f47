"""Clocks the collectors read event times from.

Why: event times must come from one clock per session, and "recent" evidence (the last 100
keys within 5 minutes, the last 15 s of walking) is measured on it. That clock is `monotonic`:
CLOCK_BOOTTIME where the platform has it (Linux, Android), which goes on counting while the
phone is suspended, so touches, keys and a walk from before the phone slept are as old after it
wakes as they really are; `time.monotonic` (CLOCK_MONOTONIC, which stops during suspend)
elsewhere. Every collector stamps events with the clock it is given (the app passes this one),
never with a platform event's own timestamp: Kivy's touch times and Android's
`SensorEvent.timestamp` are mapped onto it (`collectors.accelerometer.AndroidAccelerometer`).

Tests and the replay flow drive a `VirtualClock` so that synthetic key and touch timings survive
the real window event path unchanged (a script cannot press keys 150 ms apart without sleeping).
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]

#: set when CLOCK_BOOTTIME was found unusable (an old kernel: EINVAL): `time.monotonic` from then on
_no_boottime = False


def monotonic() -> float:
    """Seconds on the collectors' clock: CLOCK_BOOTTIME (counts suspend) where there is one, else `time.monotonic`.

    The fallback is decided once (the first failed read), so one run never mixes the two clocks.
    """
    global _no_boottime
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None and not _no_boottime:
        try:
            return float(time.clock_gettime(boottime))
        except OSError:
            _no_boottime = True
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
