"""Android accelerometer stamps must never go back in time within a walk (burst delivered late)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from mobile_client.clock import VirtualClock
from mobile_client.collectors.accelerometer import AndroidAccelerometer
from mobile_client.evidence import EvidenceBuffer


def _bare_accelerometer(sink: Any, clock: VirtualClock) -> AndroidAccelerometer:
    acc = object.__new__(AndroidAccelerometer)  # __init__ refuses off Android; _push is what the listener calls
    acc._lock, acc._sink, acc._clock = threading.Lock(), sink, clock
    return acc


def test_a_walk_whose_first_samples_arrive_together_keeps_its_time_order() -> None:
    """The listener thread was busy (GC, GIL) as the walk began: its first 0.5 s arrive at once.

    Each sample is stamped as it arrives; the stamps must keep the sensor's order (the gait
    features sort by time, so a stamp going back interleaves two stretches of the walk).
    """
    clock = VirtualClock(10_000.0)
    buf = EvidenceBuffer(None, clock=clock)
    acc = _bare_accelerometer(buf.add, clock)
    boot_minus_app = 3_600.0
    fs, n = 50.0, 200
    start = clock()
    for i in range(n):
        t = i / fs
        # samples 0..24 are delivered together 0.5 s after the first was measured; then on time
        clock.set(max(clock(), start + (0.5 if i < 25 else t + 0.004)))
        acc._push(start + t + boot_minus_app, 0.0, 0.0, 9.81)
    stamps = np.array([a.time for a in buf.accel()])
    assert len(stamps) == n
    back = np.flatnonzero(np.diff(stamps) <= 0)
    assert back.size == 0, f"stamps go back in time at samples {back[:5] + 1} (by {np.diff(stamps)[back][:3]})"
