"""The phone's feature windows are the numbers the server's batch paths compute for the same events.

The fusion calibration, `cadence models train/calibrate`, the benches and the demo compute touch
features with `modalities.touch.stroke_windows` over a whole stream and gait features with
`modalities.gait.windows_for_subject` over whole recordings; the server reads the phone's
windows on models and calibrations built on those numbers, so the phone must compute the same.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import pytest

from evaluation.synthetic import SyntheticPerson
from mobile_client import features
from modalities.events import AccelSample, AccelSeries, FeatureWindow, TouchAction, TouchEvent, TouchStream
from modalities.gait import windows_for_subject
from modalities.touch import FEATURE_NAMES, scored, stroke_windows


def _batch_touch(events: list[TouchEvent]) -> list[FeatureWindow]:
    return stroke_windows(TouchStream.from_events(events, device=features.APP_DEVICE))


def _assert_same_touch(phone: list[FeatureWindow], batch: list[FeatureWindow]) -> None:
    by_span = {(w.start, w.end): w for w in batch}
    differing: set[str] = set()
    for w in phone:
        b = by_span[(w.start, w.end)]
        assert (w.n_events, w.quality, w.feature_version) == (b.n_events, b.quality, b.feature_version)
        differing |= {FEATURE_NAMES[i] for i in np.flatnonzero(w.values != b.values)}
    assert not differing, f"phone and server/bench features differ for the same strokes: {sorted(differing)}"


def _spoil(events: list[TouchEvent], stroke: int) -> list[TouchEvent]:
    """`events` with a second finger landing during the `stroke`-th stroke (which is then void)."""
    downs = [i for i, e in enumerate(events) if e.action == TouchAction.DOWN]
    i = downs[stroke] + 1
    return events[:i] + [dataclasses.replace(events[i], action=TouchAction.POINTER_DOWN, pointer_id=1)] + events[i:]


def test_touch_windows_are_the_batch_stroke_windows_of_the_same_stream() -> None:
    """Stream-level size/pressure normalisation and inter-stroke times: 12 features differed per stroke."""
    events = _spoil(SyntheticPerson(3).touch(8, 1).to_events(), 2)
    phone, batch = features.touch_windows(events), _batch_touch(events)
    assert len(phone) == len(batch) == 7  # the stroke with a second finger is void in both
    _assert_same_touch(phone, batch)
    assert len({float(w.values[FEATURE_NAMES.index("log_inter_stroke")]) for w in phone}) > 2
    assert features.split_strokes(events) and len(features.split_strokes(events)) == 7


def test_recent_swipes_are_the_batch_windows_of_the_last_five_swipes() -> None:
    events = SyntheticPerson(5).touch(12, 4).to_events()
    batch = [w for w in _batch_touch(events) if scored(w.values.tolist())]
    sent = features.recent_swipes(events)
    assert len(sent) == 5 and [(w.start, w.end) for w in sent] == [(w.start, w.end) for w in batch[-5:]]
    _assert_same_touch(sent, batch)
    assert features.recent_swipes(events[: len(events) // 6]) == []  # fewer than 5 swipes: none


def test_gait_windows_are_the_batch_windows_of_the_same_samples() -> None:
    """The whole walk is resampled and low-passed once, then cut (not each 10 s slice on its own)."""
    walk = SyntheticPerson(2).walk(40, 100, 0)
    phone = features.gait_windows(walk.to_samples(), window_s=10.0, hop_s=5.0)
    bench = windows_for_subject([walk], 10.0, hop_s=5.0)  # what train_scorer / models calibrate cut
    assert len(phone) == len(bench) >= 5
    assert np.array_equal(np.array([w.start for w in phone]), bench.start)
    assert np.array_equal(np.vstack([w.values for w in phone]), bench.X)
    assert all(w.quality > 0.9 and w.start < w.end <= w.start + 10.0 and w.n_events > 900 for w in phone)
    # the same numbers as the batch without walking detection at the same starts (detection only picks where)
    flat = windows_for_subject([walk], 10.0, hop_s=5.0, detect_walking=False)
    for w in phone:
        i = int(np.flatnonzero(flat.start == w.start)[0])
        assert np.array_equal(w.values, flat.X[i])


def test_gait_windows_split_at_gaps_like_the_loader_and_ignore_a_far_off_sample() -> None:
    a, b = SyntheticPerson(4).walk(22, 100, 0), SyntheticPerson(4).walk(21, 50, 1)
    b = AccelSeries(b.t + a.t[-1] + 30.0, b.xyz, b.device)  # a second walk half a minute later
    samples = a.to_samples() + b.to_samples()
    want = windows_for_subject([a, b], 10.0, hop_s=5.0)
    stray = AccelSample(1e7, 0.0, 9.8, 0.5)  # one reading with a clock far in the future
    t0 = time.perf_counter()
    phone = features.gait_windows([stray, *samples])
    assert time.perf_counter() - t0 < 5.0
    assert np.array_equal(np.array([w.start for w in phone]), want.start) and len(phone) >= 4
    assert np.array_equal(np.vstack([w.values for w in phone]), want.X)
    assert all(w.end < 1e6 for w in phone)
    assert features.gait_windows([stray, AccelSample(2e7, 0.0, 9.8, 0.5)]) == []


def test_gait_windows_skip_a_segment_the_batch_refuses_and_keep_the_others() -> None:
    a, b = SyntheticPerson(4).walk(22, 100, 0), SyntheticPerson(4).walk(21, 100, 1)
    g = AccelSeries(b.t + a.t[-1] + 30.0, b.xyz / 9.80665, b.device)  # a second part in g: refused
    phone = features.gait_windows(a.to_samples() + g.to_samples())
    want = windows_for_subject([a], 10.0, hop_s=5.0)
    assert np.array_equal(np.vstack([w.values for w in phone]), want.X)


# -- one real BB-MAS subject, when the data set is at hand ----------------------------------------

def _data_dir() -> Path:
    d = os.environ.get("CADENCE_DATA_DIR")
    if not d or not Path(d).is_dir():
        pytest.skip("CADENCE_DATA_DIR is not set")
    return Path(d)


def test_bbmas_subject_touch_and_gait_windows_match_the_batch_paths() -> None:
    from evaluation.datasets import available_subjects, load_bbmas_gait, load_bbmas_touch

    data_dir = _data_dir()
    both = sorted(set(available_subjects(data_dir, "touch")) & set(available_subjects(data_dir, "gait")))
    if not both:
        pytest.skip(f"no BB-MAS subject with touch and gait data in {data_dir}")
    sid = both[0]
    events = load_bbmas_touch(data_dir, [sid])[sid].to_events()
    phone, batch = features.touch_windows(events, min_points=1), _batch_touch(events)
    assert len(phone) == len(batch) > 50
    _assert_same_touch(phone, batch)
    _assert_same_touch(features.touch_windows(events), batch)  # the app's default: strokes of 3 samples or more

    seg = load_bbmas_gait(data_dir, [sid])[sid].segments[0]
    sel = seg.t <= seg.t[0] + 60.0
    seg = AccelSeries(seg.t[sel], seg.xyz[sel], seg.device)
    gait = features.gait_windows(seg.to_samples())
    want = windows_for_subject([seg], 10.0, hop_s=5.0)
    assert len(gait) == len(want) >= 1
    assert np.array_equal(np.array([w.start for w in gait]), want.start)
    assert np.allclose(np.vstack([w.values for w in gait]), want.X, rtol=0, atol=0)
