"""evaluation/synthetic.py: stable people, valid event streams, people differ more than sessions."""

from __future__ import annotations

import numpy as np

from evaluation.synthetic import SyntheticPerson
from modalities.events import AccelSeries, KeySequence, TouchAction, TouchStream


def test_same_seed_same_person_and_valid_streams() -> None:
    a, b = SyntheticPerson(3), SyntheticPerson(3)
    ka, kb = a.keystrokes(200, 1), b.keystrokes(200, 1)
    assert np.array_equal(ka.press, kb.press) and len(ka) == 200
    assert np.all(ka.release >= ka.press) and np.all(np.diff(ka.press) > 0)
    t = a.touch(6, 2)
    assert (t.action == int(TouchAction.DOWN)).sum() == 6 == (t.action == int(TouchAction.UP)).sum()
    w = a.walk(10.0, rate_hz=100, rng=3)
    assert len(w) == 1000 and abs(float(np.median(np.linalg.norm(w.xyz, axis=1))) - 9.8) < 1.5


def test_people_differ_more_than_sessions() -> None:
    def feats(p: SyntheticPerson, seed: int) -> np.ndarray:
        return np.concatenate([summary_keystroke(p.keystrokes(100, seed)),
                               summary_touch(p.touch(5, seed)),
                               summary_gait(p.walk(5.0, rng=seed))])

    p, q = SyntheticPerson(1), SyntheticPerson(2)
    within = np.mean([np.abs(feats(p, s) - feats(p, s + 10)).sum() for s in range(5)])
    between = np.mean([np.abs(feats(p, s) - feats(q, s + 10)).sum() for s in range(5)])
    assert between > 1.5 * within


# Plain summary statistics: this test is about the generator, so it uses the simplest features
# that show whether people differ, not the modality packages' feature vectors.

def _stats(x: np.ndarray) -> list[float]:
    if x.size == 0:
        return [0.0, 0.0, 0.0]
    return [float(np.mean(x)), float(np.std(x)), float(np.median(x))]


def summary_keystroke(seq: KeySequence) -> np.ndarray:
    """Hold, down-down and up-down latency statistics (pauses over 1.5 s dropped)."""
    hold = seq.release - seq.press
    dd = np.diff(seq.press)
    ud = seq.press[1:] - seq.release[:-1]
    keep = dd < 1.5
    dd, ud = dd[keep], ud[keep]
    q = np.percentile(dd, [25, 75]).tolist() if dd.size else [0.0, 0.0]
    values = np.array(_stats(hold) + _stats(dd) + _stats(ud) + q)
    return values


def _strokes(ts: TouchStream) -> list[slice]:
    downs = np.flatnonzero(ts.action == int(TouchAction.DOWN))
    ups = np.flatnonzero(ts.action == int(TouchAction.UP))
    out = []
    for d in downs:
        after = ups[ups > d]
        if after.size and after[0] - d >= 2:
            out.append(slice(int(d), int(after[0]) + 1))
    return out


def summary_touch(ts: TouchStream) -> np.ndarray:
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
        raise ValueError("no complete stroke (DOWN ... UP) in the window")
    arr = np.asarray(rows)
    values = np.concatenate([arr.mean(axis=0), arr[:, :2].std(axis=0)])
    return values


def summary_gait(series: AccelSeries) -> np.ndarray:
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
    return values


