"""Rate augmentation: down-sampled copies look like a slower phone and keep the walker's features."""

from __future__ import annotations

import numpy as np
import pytest

from modalities.events import AccelSeries
from modalities.gait import FEATURE_DIM, windows_for_subject
from modalities.gait.augment import RATE_RANGE, downsample, random_phone
from modalities.gait.signal import input_rate
from tests.modalities.gait_synth import person, walk


def test_downsample_gives_the_requested_rate_and_keeps_gaps() -> None:
    a = walk(person(1), 30, 100.0, seed=1)
    b = walk(person(1), 30, 100.0, t0=100.0, seed=2)
    series = AccelSeries(np.r_[a.t, b.t], np.vstack([a.xyz, b.xyz]), "Synth")
    rng = np.random.default_rng(0)
    out = downsample(series, 25.0, anti_alias=False, jitter_s=0.003, rng=rng)
    assert abs(input_rate(out.t) - 25.0) < 1.0
    assert np.all(np.diff(out.t) > 0)
    # no samples invented inside the 70 s hole between the two walks
    assert not np.any((out.t > a.t[-1] + 0.1) & (out.t < b.t[0] - 0.1))
    # nearest-sample decimation keeps original values (no filter)
    assert np.isin(out.xyz[:, 0], series.xyz[:, 0]).all()


def test_anti_alias_filter_removes_energy_above_the_new_nyquist() -> None:
    t = np.arange(0, 20, 0.01)
    tone = np.sin(2 * np.pi * 21.0 * t)  # aliases to 4 Hz at 25 Hz without a filter
    s = AccelSeries(t, np.column_stack([tone, tone, tone + 9.8]), "Synth")
    rng = np.random.default_rng(0)
    raw = downsample(s, 25.0, anti_alias=False, jitter_s=0.0, rng=rng)
    filt = downsample(s, 25.0, anti_alias=True, jitter_s=0.0, rng=rng)
    assert raw.xyz[:, 0].std() > 0.5
    assert filt.xyz[:, 0].std() < 0.05


def test_random_phone_is_seeded_and_in_range() -> None:
    segs = [walk(person(2), 40, 100.0, seed=3)]
    a, b = random_phone(segs, seed=11), random_phone(segs, seed=11)
    assert np.array_equal(a[0].t, b[0].t) and np.array_equal(a[0].xyz, b[0].xyz)
    assert RATE_RANGE[0] - 1 <= input_rate(a[0].t) <= RATE_RANGE[1] + 1
    c = random_phone(segs, seed=12)
    assert c[0].t.size != a[0].t.size or not np.array_equal(c[0].t, a[0].t)


def test_augmented_windows_stay_close_to_the_same_walker() -> None:
    """A down-sampled copy's features are nearer its own walker's than another walker's."""
    p, q = person(3), person(4)
    own = windows_for_subject([walk(p, 60, 100.0, seed=5)], 10.0, detect_walking=False).X
    aug = windows_for_subject(random_phone([walk(p, 60, 100.0, seed=6)], seed=7), 10.0, detect_walking=False).X
    other = windows_for_subject([walk(q, 60, 100.0, seed=8)], 10.0, detect_walking=False).X
    assert aug.shape[1] == FEATURE_DIM and len(aug) >= 5
    sd = np.vstack([own, other]).std(axis=0) + 1e-6
    d_same = np.abs((aug.mean(0) - own.mean(0)) / sd).mean()
    d_other = np.abs((other.mean(0) - own.mean(0)) / sd).mean()
    assert d_same < d_other


def test_downsample_rejects_a_bad_rate() -> None:
    with pytest.raises(ValueError, match="rate"):
        downsample(walk(person(1), 5, 100.0), 0.0, anti_alias=False, jitter_s=0.0, rng=np.random.default_rng(0))
