"""How a subject's touch recording is cut into decision windows (bench, server demo, fusion).

A window is k consecutive strokes of one kind (swipes or taps), non-overlapping, in time
order; its score is the mean of the per-stroke scores (`scorers.accumulate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modalities.events import FeatureWindow, TouchStream
from modalities.touch.features import stroke_window
from modalities.touch.strokes import segment

#: bench window label -> (stroke kind, strokes per window)
WINDOWS: dict[str, tuple[str, int]] = {
    "1 swipe": ("swipe", 1),
    "5 swipes": ("swipe", 5),
    "1 tap": ("tap", 1),
    "5 taps": ("tap", 5),
}


@dataclass(frozen=True)
class StrokeSet:
    """Per-stroke feature windows of one kind from a recording, in time order."""

    kind: str
    windows: list[FeatureWindow]

    @property
    def values(self) -> np.ndarray:
        from modalities.touch.features import FEATURE_DIM

        if not self.windows:
            return np.zeros((0, FEATURE_DIM))
        return np.vstack([w.values for w in self.windows])


def strokes_of_kind(stream: TouchStream, kind: str) -> StrokeSet:
    """All swipes (`kind="swipe"`) or taps (`kind="tap"`) of a stream as feature windows."""
    if kind not in ("swipe", "tap"):
        raise ValueError(f"kind must be 'swipe' or 'tap', got {kind!r}")
    strokes = [s for s in segment(stream).strokes if s.is_tap == (kind == "tap")]
    return StrokeSet(kind, [stroke_window(s) for s in strokes])


def windows_for_subject(stream: TouchStream, window: str = "5 swipes") -> list[list[FeatureWindow]]:
    """Cut a recording into consecutive non-overlapping windows of `window` (a `WINDOWS` label)."""
    if window not in WINDOWS:
        raise ValueError(f"unknown touch window {window!r}; expected one of {sorted(WINDOWS)}")
    kind, k = WINDOWS[window]
    ws = strokes_of_kind(stream, kind).windows
    return [ws[i : i + k] for i in range(0, len(ws) - k + 1, k)]
