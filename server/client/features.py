"""Device-side windowing and feature extraction: raw events stay here, only features leave.

Features come from the modality package (`modalities.<m>.window_features`) when it exists,
and otherwise from the small fallback extractors below (feature version ``fallback-*``), so
the walking skeleton runs before every modality has landed. The server checks that enrolment
and probe windows carry the same feature version, so the two are never mixed.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

import numpy as np

from modalities.events import AccelSeries, EventValidationError, FeatureWindow, KeySequence, TouchAction, TouchStream

log = logging.getLogger(__name__)

#: window sizes the demo uses (labels as in the benches: "50 keys", "5 swipes", "5 s")
KEYS_PER_WINDOW = 50
SWIPES_PER_WINDOW = 5
GAIT_SECONDS = 5.0


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


# --------------------------------------------------------------------------- fallbacks


def _stats(x: np.ndarray) -> list[float]:
    if x.size == 0:
        return [0.0, 0.0, 0.0]
    return [float(np.mean(x)), float(np.std(x)), float(np.median(x))]


def fallback_keystroke(seq: KeySequence) -> FeatureWindow:
    """Hold, down-down and up-down latency statistics (pauses over 1.5 s dropped)."""
    hold = seq.release - seq.press
    dd = np.diff(seq.press)
    ud = seq.press[1:] - seq.release[:-1]
    keep = dd < 1.5
    dd, ud = dd[keep], ud[keep]
    q = np.percentile(dd, [25, 75]).tolist() if dd.size else [0.0, 0.0]
    values = np.array(_stats(hold) + _stats(dd) + _stats(ud) + q)
    return FeatureWindow("keystroke", "fallback-keystroke-1", float(seq.press[0]), float(seq.release.max()),
                         len(seq), min(1.0, len(seq) / KEYS_PER_WINDOW), values)


def _strokes(ts: TouchStream) -> list[slice]:
    downs = np.flatnonzero(ts.action == int(TouchAction.DOWN))
    ups = np.flatnonzero(ts.action == int(TouchAction.UP))
    out = []
    for d in downs:
        after = ups[ups > d]
        if after.size and after[0] - d >= 2:
            out.append(slice(int(d), int(after[0]) + 1))
    return out


def fallback_touch(ts: TouchStream) -> FeatureWindow:
    """Per-stroke duration, length, direction, speed, pressure and contact size, averaged."""
    rows = []
    diag = float(np.hypot(ts.screen_width, ts.screen_height))
    for s in _strokes(ts):
        x, y, t = ts.x[s], ts.y[s], ts.time[s]
        dur = max(float(t[-1] - t[0]), 1e-3)
        length = float(np.sum(np.hypot(np.diff(x), np.diff(y)))) / diag
        dx, dy = (x[-1] - x[0]) / ts.screen_width, (y[-1] - y[0]) / ts.screen_height
        rows.append([dur, length, dx, dy, length / dur, float(np.mean(ts.pressure[s])),
                     float(np.mean(ts.touch_major[s])) / 10.0, x[0] / ts.screen_width, y[0] / ts.screen_height])
    if not rows:
        raise EventValidationError("action", "no complete stroke (DOWN ... UP) in the window")
    arr = np.asarray(rows)
    values = np.concatenate([arr.mean(axis=0), arr[:, :2].std(axis=0)])
    return FeatureWindow("touch", "fallback-touch-1", float(ts.time[0]), float(ts.time[-1]), len(rows),
                         min(1.0, len(rows) / SWIPES_PER_WINDOW), values)


def fallback_gait(series: AccelSeries) -> FeatureWindow:
    """Per-axis mean and spread, magnitude spread, step frequency and its regularity."""
    xyz, t = series.xyz, series.t
    mag = np.linalg.norm(xyz, axis=1)
    rate = (len(t) - 1) / max(series.duration, 1e-6)
    m = mag - mag.mean()
    spec = np.abs(np.fft.rfft(m * np.hanning(m.size)))
    freqs = np.fft.rfftfreq(m.size, 1.0 / rate)
    band = (freqs > 0.5) & (freqs < 3.5)
    f0 = float(freqs[band][np.argmax(spec[band])]) if band.any() else 0.0
    ac = np.correlate(m, m, "full")[m.size - 1:]
    ac = ac / ac[0] if ac[0] > 0 else ac
    lag = int(round(rate / f0)) if f0 > 0 else 0
    reg = float(ac[lag]) if 0 < lag < ac.size else 0.0
    values = np.concatenate([xyz.mean(axis=0) / 9.81, xyz.std(axis=0), [mag.std(), f0, reg,
                             float(np.percentile(mag, 90) - np.percentile(mag, 10))]])
    return FeatureWindow("gait", "fallback-gait-1", float(t[0]), float(t[-1]), len(t),
                         min(1.0, series.duration / GAIT_SECONDS), values)


_FALLBACK = {"keystroke": fallback_keystroke, "touch": fallback_touch, "gait": fallback_gait}


def window_features(modality: str, events: KeySequence | TouchStream | AccelSeries) -> FeatureWindow:
    """Features of one window: the modality package's extractor, or the fallback one."""
    pkg = modality_package(modality)
    if pkg is not None:
        return pkg.window_features(events)  # type: ignore[no-any-return]
    return _FALLBACK[modality](events)  # type: ignore[operator]


# --------------------------------------------------------------------------- windowing


def keys_per_window() -> int:
    """The keystroke package's window size when it names one, else 50 keys."""
    pkg = modality_package("keystroke")
    return int(getattr(pkg, "DEFAULT_WINDOW_KEYS", KEYS_PER_WINDOW)) if pkg is not None else KEYS_PER_WINDOW


def touch_subset(ts: TouchStream, s: slice) -> TouchStream:
    return TouchStream(time=ts.time[s], x=ts.x[s], y=ts.y[s], pressure=ts.pressure[s], touch_major=ts.touch_major[s],
                       touch_minor=ts.touch_minor[s], action=ts.action[s], pointer_id=ts.pointer_id[s],
                       screen_width=ts.screen_width, screen_height=ts.screen_height, device=ts.device)


def cut_windows(modality: str, events: KeySequence | TouchStream | AccelSeries) -> list[KeySequence | TouchStream | AccelSeries]:
    """Non-overlapping windows: `keys_per_window()` keys, 5 swipes or 5 s of walking."""
    if modality == "keystroke":
        assert isinstance(events, KeySequence)
        n, size = len(events), keys_per_window()
        return [events[a:a + size] for a in range(0, n - size + 1, size)]
    if modality == "touch":
        assert isinstance(events, TouchStream)
        strokes = _strokes(events)
        out: list[KeySequence | TouchStream | AccelSeries] = []
        for a in range(0, len(strokes) - SWIPES_PER_WINDOW + 1, SWIPES_PER_WINDOW):
            out.append(touch_subset(events, slice(strokes[a].start, strokes[a + SWIPES_PER_WINDOW - 1].stop)))
        return out
    if modality == "gait":
        assert isinstance(events, AccelSeries)
        out_g: list[KeySequence | TouchStream | AccelSeries] = []
        t = events.t
        start = t[0]
        while start + GAIT_SECONDS <= t[-1]:
            sel = (t >= start) & (t < start + GAIT_SECONDS)
            if sel.sum() > 10:
                out_g.append(AccelSeries(t[sel], events.xyz[sel], events.device))
            start += GAIT_SECONDS
        return out_g
    raise EventValidationError("modality", f"unknown modality {modality!r}")


def features_for(modality: str, events: KeySequence | TouchStream | AccelSeries) -> list[FeatureWindow]:
    """Cut `events` into windows and extract each one's features (windows that fail are skipped)."""
    out = []
    for w in cut_windows(modality, events):
        try:
            out.append(window_features(modality, w))
        except EventValidationError as exc:
            log.debug("skipping a %s window: %s", modality, exc)
    return out
