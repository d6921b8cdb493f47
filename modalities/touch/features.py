"""Per-stroke features (Touchalytics set and more), pure numpy: what the phone computes.

One touch `FeatureWindow` is one stroke: the phone sends a window as each finger lifts, and a
decision over several strokes ("5 swipes") averages the per-stroke scores (see
`modalities.touch.scorers.accumulate`). Units are device-normalised by `strokes.segment`
(positions in screen widths, contact size and pressure relative to the phone model's typical
value), so strokes of different phones land on comparable scales.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from modalities.events import EventValidationError, FeatureWindow, TouchStream
from modalities.touch.strokes import Stroke, segment

FEATURE_VERSION = "touch-stroke-1"

FEATURE_NAMES: tuple[str, ...] = (
    "log_duration", "start_x", "start_y", "end_x", "end_y", "dx", "dy",
    "log_e2e_length", "log_path_length", "straightness",
    "e2e_cos", "e2e_sin", "mean_dir_cos", "mean_dir_sin",
    "log_speed_p20", "log_speed_p50", "log_speed_p80", "log_mean_speed",
    "log_speed_first3", "log_speed_last3", "peak_speed_time_frac",
    "accel_p20", "accel_p50", "accel_p80",
    "max_abs_deviation", "deviation_p20", "deviation_p50", "deviation_p80",
    "curvature_abs", "curvature_signed",
    "pressure_median", "pressure_start", "pressure_end", "pressure_max",
    "size_median", "size_start", "size_end", "size_max", "minor_median", "log_area_median", "size_slope",
    "log_n_points", "log_inter_stroke", "is_tap", "path_frac_first_half",
)
FEATURE_DIM = len(FEATURE_NAMES)
IDX = {n: i for i, n in enumerate(FEATURE_NAMES)}

_MIN_DT = 0.004  # s; floor for sample intervals (duplicated / interpolated times)
_EPS = 1e-4


def _pct(a: np.ndarray, q: Sequence[float], default: float = 0.0) -> np.ndarray:
    return np.percentile(a, q) if a.size else np.full(len(q), default)


def stroke_features(s: Stroke) -> np.ndarray:
    """Feature vector (FEATURE_DIM,) of one stroke; every value finite."""
    t, x, y = s.t, s.x, s.y
    n = t.shape[0]
    dur = float(t[-1] - t[0])
    dxs, dys = np.diff(x), np.diff(y)
    seg = np.hypot(dxs, dys)
    dts = np.maximum(np.diff(t), _MIN_DT)
    speed = seg / dts
    path = float(seg.sum())
    dx, dy = float(x[-1] - x[0]), float(y[-1] - y[0])
    e2e = float(np.hypot(dx, dy))
    ang = np.arctan2(dy, dx) if e2e > _EPS else 0.0
    moving = seg > 1e-9
    if moving.any():
        mdc, mds = float(np.sum(dxs[moving])), float(np.sum(dys[moving]))
        r = np.hypot(mdc, mds)
        mdir = (mdc / r, mds / r) if r > 0 else (0.0, 0.0)
    else:
        mdir = (0.0, 0.0)
    accel = np.diff(speed) / np.maximum(0.5 * (dts[1:] + dts[:-1]), _MIN_DT) if speed.size > 1 else np.zeros(0)
    # signed perpendicular deviation from the start->end line
    if e2e > _EPS:
        dev = ((x - x[0]) * dy - (y - y[0]) * dx) / e2e
    else:
        dev = np.zeros(n)
    # turning angles between consecutive moving segments
    th = np.arctan2(dys[moving], dxs[moving])
    turn = np.angle(np.exp(1j * np.diff(th))) if th.size > 1 else np.zeros(0)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    half = np.searchsorted(t, t[0] + dur / 2, side="right") - 1
    lsp = lambda v: float(np.log(v + 1e-3))  # noqa: E731 - tiny local helper
    sp20, sp50, sp80 = _pct(speed, [20, 50, 80])
    ac20, ac50, ac80 = _pct(accel, [20, 50, 80])
    dv20, dv50, dv80 = _pct(dev, [20, 50, 80])
    inter = 1.0 if s.prev_up is None else float(np.clip(t[0] - s.prev_up, 0.0, 30.0))
    p, sz = s.pressure, s.size
    feats = [
        np.log(dur + 0.01), x[0], y[0], x[-1], y[-1], dx, dy,
        np.log(e2e + 1e-3), np.log(path + 1e-3), e2e / path if path > _EPS else 1.0,
        np.cos(ang) if e2e > _EPS else 0.0, np.sin(ang) if e2e > _EPS else 0.0, mdir[0], mdir[1],
        lsp(sp20), lsp(sp50), lsp(sp80), lsp(path / max(dur, _MIN_DT)),
        lsp(float(np.median(speed[:3])) if speed.size else 0.0),
        lsp(float(np.median(speed[-3:])) if speed.size else 0.0),
        float((t[int(np.argmax(speed)) + 1] - t[0]) / dur) if speed.size and dur > 0 else 0.0,
        np.arcsinh(ac20), np.arcsinh(ac50), np.arcsinh(ac80),
        float(np.max(np.abs(dev))), dv20, dv50, dv80,
        float(np.sum(np.abs(turn)) / max(path, 0.01)), float(np.sum(turn) / max(path, 0.01)),
        float(np.median(p)), float(p[0]), float(p[-1]), float(np.max(p)),
        float(np.median(sz)), float(sz[0]), float(sz[-1]), float(np.max(sz)), float(np.median(s.minor)),
        float(np.log(np.median(sz * s.minor) + 1e-3)), float(sz[-1] - sz[0]),
        np.log(n), np.log(inter + 0.05), float(s.is_tap),
        float(cum[half] / path) if path > _EPS else 0.5,
    ]
    v = np.asarray(feats, dtype=np.float64)
    if v.shape[0] != FEATURE_DIM:  # pragma: no cover - guards edits of the list above
        raise AssertionError(f"feature list has {v.shape[0]} values, names {FEATURE_DIM}")
    return np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)


def stroke_quality(s: Stroke) -> float:
    """How much evidence a stroke carries: few samples or no pressure channel mean less."""
    q = min(1.0, len(s) / (2.0 if s.is_tap else 6.0))
    return float(q * (1.0 if s.has_pressure else 0.9))


def stroke_window(s: Stroke) -> FeatureWindow:
    """The `FeatureWindow` of one stroke (what leaves the device)."""
    return FeatureWindow(modality="touch", feature_version=FEATURE_VERSION, start=s.start, end=s.end,
                         n_events=len(s), quality=stroke_quality(s), values=stroke_features(s))


def window_features(stream: TouchStream) -> FeatureWindow:
    """Features of ONE window of touch events: the last complete single-pointer stroke in it.

    The phone calls this when a finger lifts, with the samples since the previous UP (plus that
    UP, so the inter-stroke time is known). Raises `EventValidationError` when the window holds
    no complete stroke.
    """
    seg = segment(stream)
    if not seg.strokes:
        raise EventValidationError("events", "no complete single-finger stroke (DOWN ... UP) in the window")
    return stroke_window(seg.strokes[-1])


def stroke_windows(stream: TouchStream) -> list[FeatureWindow]:
    """Batch: one `FeatureWindow` per stroke of a whole recording, in time order."""
    return [stroke_window(s) for s in segment(stream).strokes]


def stream_features(stream: TouchStream) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch for benches: (features (n, FEATURE_DIM), is_tap (n,) bool, start times (n,))."""
    strokes = segment(stream).strokes
    if not strokes:
        return np.zeros((0, FEATURE_DIM)), np.zeros(0, bool), np.zeros(0)
    X = np.vstack([stroke_features(s) for s in strokes])
    return X, np.array([s.is_tap for s in strokes]), np.array([s.start for s in strokes])
