"""Device-side windowing for the demo, the load generator and tests: raw events stay here.

Every feature vector comes from the modality package (`modalities.<m>`), the same code the
phone and the benches run. This module only cuts a recording the way the benches label it:
keystroke windows of the package's `DEFAULT_WINDOW_KEYS` keys, one window per touch stroke
(a "5 swipes" decision sends five of them, see `evidence_unit`), and the gait package's
window of walking (`TRAIN_WINDOW_S`, 10 s, cut from the walking stretches of the recording
resampled as a whole: `modalities.gait.features.walking_windows`, what its models are trained
and calibrated on and what the app sends; here one every 10 s, no overlap).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from modalities.events import AccelSeries, EventValidationError, FeatureWindow, KeySequence, TouchStream
from modalities.reading import decision_windows, read_windows

log = logging.getLogger(__name__)

#: seconds of walking per gait window: the trained models' and their calibration's window
#: (5 s windows read on a 10 s model's calibration put 1.4 % of impostor windows above LLR 4.6)
GAIT_SECONDS = 10.0


def modality_package(modality: str) -> ModuleType | None:
    """The modality package if it is installed and complete enough to use, else None."""
    try:
        mod = importlib.import_module(f"modalities.{modality}")
    except ModuleNotFoundError as exc:
        if exc.name not in (f"modalities.{modality}",):
            raise
        return None
    needed = ("FEATURE_VERSION", "FEATURE_DIM", "window_features")
    return mod if all(hasattr(mod, n) for n in needed) else None


def _package(modality: str) -> ModuleType:
    pkg = modality_package(modality)
    if pkg is None:
        raise EventValidationError("modality", f"unknown modality {modality!r}")
    return pkg


def window_features(modality: str, events: KeySequence | TouchStream | AccelSeries) -> FeatureWindow:
    """Features of one window, from the modality package."""
    return _package(modality).window_features(events)  # type: ignore[no-any-return]


def keys_per_window() -> int:
    """The keystroke package's window size."""
    return int(getattr(_package("keystroke"), "DEFAULT_WINDOW_KEYS", 100))


def features_for(modality: str, events: KeySequence | TouchStream | AccelSeries) -> list[FeatureWindow]:
    """Cut `events` into non-overlapping windows and extract each one's features.

    Touch gives one window per complete single-finger stroke (the touch package describes one
    stroke per window); windows that fail validation are skipped (logged), in every modality:
    a keystroke window or a touch stroke alone, and for gait a window alone or a whole recording
    that cannot be resampled. A bad window costs itself, never the others of the recording.
    """
    if modality == "touch":
        assert isinstance(events, TouchStream)
        return _stroke_windows(events)
    if modality == "gait":  # as the models are trained and the app cuts it: walking stretches only
        from modalities.gait.features import walking_windows

        assert isinstance(events, AccelSeries)
        try:
            return walking_windows(events, GAIT_SECONDS, hop_s=GAIT_SECONDS)
        except EventValidationError as exc:
            log.debug("skipping a gait recording: %s", exc)
            return []
    out = []
    for w in _cut(modality, events):
        try:
            out.append(window_features(modality, w))
        except EventValidationError as exc:
            log.debug("skipping a %s window: %s", modality, exc)
    return out


def _stroke_windows(events: TouchStream) -> list[FeatureWindow]:
    """The touch package's `stroke_windows` (strokes of the whole stream), a refused stroke skipped and logged."""
    _package("touch")  # not installed: refused as for the other modalities
    from modalities.touch.features import stroke_window
    from modalities.touch.strokes import segment

    out = []
    for stroke in segment(events).strokes:
        try:
            out.append(stroke_window(stroke))
        except EventValidationError as exc:
            log.debug("skipping a touch stroke: %s", exc)
    return out


def _cut(modality: str, events: KeySequence | TouchStream | AccelSeries) -> list[KeySequence]:
    if modality == "keystroke":
        assert isinstance(events, KeySequence)
        n, size = len(events), keys_per_window()
        return [events[a:a + size] for a in range(0, n - size + 1, size)]
    raise EventValidationError("modality", f"unknown modality {modality!r}")


def evidence_unit(modality: str, windows: list[FeatureWindow], i: int) -> list[FeatureWindow]:
    """The windows of the i-th decision's evidence: `decision_windows` consecutive windows the models read.

    Touch: 5 consecutive swipes (taps are skipped: the server reads swipes only, and leaves out
    touch evidence of fewer than 5); the others: one window. Fewer read windows than the unit
    give none.
    """
    read = read_windows(windows)
    k = decision_windows(modality)
    if len(read) < k:
        return []
    return [read[(i * k + j) % len(read)] for j in range(k)]
