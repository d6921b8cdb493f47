"""Gait signal pipeline and window features on synthetic walks with known properties."""

from __future__ import annotations

import numpy as np
import pytest

from modalities.events import AccelSeries, EventValidationError, FeatureWindow
from modalities.gait import FEATURE_DIM, FEATURE_VERSION, window_features, windows_for_subject
from modalities.gait.features import BLOCKS, block_columns, uniform_features
from modalities.gait.signal import (
    NEAR_DUPLICATE_S,
    RATE,
    aligned_axes,
    cycle_period,
    input_rate,
    merge_duplicate_times,
    resample,
    walking_mask,
)
from tests.modalities.gait_synth import person, rotation, walk


def test_resample_brings_any_rate_to_the_internal_grid() -> None:
    p = person(1)
    for rate, jitter in ((100.0, 0.0), (25.0, 0.004), (20.0, 0.0), (200.0, 0.001)):
        parts = resample(walk(p, 20, rate, jitter=jitter))
        assert len(parts) == 1
        u = parts[0]
        assert u.rate == RATE
        assert abs(u.duration - 20) < 0.2
        assert np.all(np.isfinite(u.xyz))


def test_resample_rejects_slow_input_naming_the_field() -> None:
    with pytest.raises(EventValidationError) as e:
        resample(walk(person(1), 20, 10.0))
    assert e.value.field == "time" and "below" in e.value.message


def test_duplicate_timestamps_are_averaged_and_gaps_split() -> None:
    s = walk(person(2), 30, 50.0)
    t = s.t.copy()
    t[100] = t[99]  # a duplicate time
    t[750:] += 2.0  # a 2 s hole at 15 s
    parts = resample(AccelSeries(t, s.xyz))
    assert len(parts) == 2
    assert abs(parts[0].duration - 15) < 0.2 and abs(parts[1].duration - 15) < 0.2


def test_same_walk_at_100_hz_and_25_hz_in_g_gives_nearly_the_same_features() -> None:
    """The cross-device promise: rate and units must not change what the model sees."""
    p, q = person(3), person(4)
    a = window_features(walk(p, 10, 100.0, seed=1)).values
    b_series = walk(p, 10, 25.0, seed=2, jitter=0.004, units_g=True)
    b = window_features(AccelSeries(b_series.t, b_series.xyz * 9.80665)).values  # loader converts g
    other = window_features(walk(q, 10, 100.0, seed=1)).values
    cols = block_columns(("inv", "cycle"))
    same = np.linalg.norm(a[cols] - b[cols])
    diff = np.linalg.norm(a[cols] - other[cols])
    assert same < 0.5 * diff


def test_invariant_blocks_ignore_phone_pose_raw_block_does_not() -> None:
    p = person(5)
    rng = np.random.default_rng(0)
    a = uniform_features(resample(walk(p, 10, 25.0, seed=3, noise=0.0))[0].xyz)
    b = uniform_features(resample(walk(p, 10, 25.0, seed=3, noise=0.0, pose=rotation(rng)))[0].xyz)
    inv = block_columns(("inv", "cycle", "harm"))
    raw = BLOCKS["raw"]
    rel_inv = np.linalg.norm(a[inv] - b[inv]) / np.linalg.norm(a[inv])
    rel_raw = np.linalg.norm(a[raw] - b[raw]) / np.linalg.norm(a[raw])
    assert rel_inv < 1e-6
    assert rel_raw > 0.05


def test_aligned_vertical_axis_recovers_vertical_motion() -> None:
    p = person(6)
    x0 = resample(walk(p, 10, 25.0, noise=0.0))[0].xyz
    x1 = resample(walk(p, 10, 25.0, noise=0.0, pose=rotation(np.random.default_rng(1))))[0].xyz
    v0, v1 = aligned_axes(x0)[:, 0], aligned_axes(x1)[:, 0]
    assert np.corrcoef(v0, v1)[0, 1] > 0.99


def test_cycle_period_finds_the_stride() -> None:
    p = person(7)
    x = resample(walk(p, 10, 100.0))[0].xyz
    period, reg = cycle_period(np.linalg.norm(x, axis=1))
    assert abs(period - p["period"]) < 0.06
    assert reg > 0.5


def test_walking_detection_skips_standing() -> None:
    s = walk(person(8), 30, 50.0, stand_s=12.0)
    u = resample(s)[0]
    mask = walking_mask(u.xyz)
    t = np.arange(mask.size) / u.rate
    assert mask[t < 10].mean() < 0.1
    assert mask[t > 14].mean() > 0.9
    sw = windows_for_subject([s], 5.0)
    assert len(sw) > 0 and sw.walk_total < 20.0  # the standing part is not walking time


def test_window_features_contract() -> None:
    fw = window_features(walk(person(9), 10, 100.0))
    assert isinstance(fw, FeatureWindow)
    assert fw.modality == "gait" and fw.feature_version == FEATURE_VERSION
    assert fw.values.shape == (FEATURE_DIM,) and np.all(np.isfinite(fw.values))
    assert fw.quality > 0.8
    still = AccelSeries(np.arange(250) / 25.0, np.tile([0.0, 0.0, 9.81], (250, 1)) + 0.01 * np.random.default_rng(0).normal(size=(250, 3)))
    assert window_features(still).quality == 0.0


def test_chronological_split_enrols_the_earliest_half_of_walking() -> None:
    p = person(10)
    segs = [walk(p, 60, 100.0, seed=1), walk(p, 60, 100.0, t0=3600.0, seed=2)]
    sw = windows_for_subject(segs, 10.0)
    e, t = sw.chronological(0.5)
    assert len(e) and len(t)
    assert sw.start[e].max() < 3600.0 <= sw.start[t].min()
    assert set(e).isdisjoint(t)


def _batched_times(seconds: float, batch: int = 5, period: float = 0.1, spacing: float = 1e-6) -> np.ndarray:
    """Android-style batched delivery: `batch` samples stamped `spacing` s apart every `period` s."""
    nb = int(seconds / period)
    return (np.arange(nb)[:, None] * period + np.arange(batch)[None, :] * spacing).ravel()


def test_input_rate_ignores_near_duplicate_timestamps() -> None:
    """Microsecond-apart batches used to read as a 1 MHz input (and a 1 MHz resampling grid)."""
    assert abs(input_rate(_batched_times(10)) - 10.0) < 0.01
    t = np.arange(1000) / 100.0
    assert abs(input_rate(np.sort(np.r_[t, t + 1e-6])) - 100.0) < 0.1


def test_near_duplicate_samples_are_averaged_but_a_1_ms_clock_keeps_every_sample() -> None:
    t = np.array([0.0, 1e-6, 2e-6, 0.001, 0.002])
    xyz = np.arange(15.0).reshape(5, 3)
    tm, xm = merge_duplicate_times(t, xyz, NEAR_DUPLICATE_S)
    np.testing.assert_array_equal(tm, [0.0, 0.001, 0.002])
    np.testing.assert_allclose(xm, [[3, 4, 5], [9, 10, 11], [12, 13, 14]])
    s = walk(person(6), 10, 100.0, seed=4)
    doubled = AccelSeries(np.column_stack([s.t, s.t + 1e-6]).ravel(), np.repeat(s.xyz, 2, axis=0))
    np.testing.assert_allclose(window_features(doubled).values, window_features(s).values)


def test_resample_refuses_batched_and_too_fast_input_naming_the_field() -> None:
    t = _batched_times(3)
    with pytest.raises(EventValidationError) as e:  # one instant per 0.1 s: 10 Hz of information
        resample(AccelSeries(t, np.random.default_rng(0).normal(size=(t.size, 3))))
    assert e.value.field == "time" and "below" in e.value.message
    with pytest.raises(EventValidationError) as e:
        resample(walk(person(1), 2, 5000.0))
    assert e.value.field == "time" and "above" in e.value.message


def test_channels_described_together_equal_each_described_alone() -> None:
    """`_channel_features` takes a window's channels at once; each channel's figures stay its own.

    A flat channel (a still phone's exact 0 axis) among walking ones keeps its kurtosis term at 0
    and does not disturb the others.
    """
    from modalities.gait.features import PER_CHANNEL, _channel_features

    rng = np.random.default_rng(3)
    t = np.arange(250) / 25.0
    chans = np.column_stack([np.sin(2 * np.pi * 1.8 * t) + 0.3 * rng.standard_normal(t.size),
                             np.zeros(t.size), 2.0 * np.cos(2 * np.pi * 0.9 * t) + rng.standard_normal(t.size)])
    together = _channel_features(chans, 25.0).reshape(3, PER_CHANNEL)
    for k in range(3):
        alone = _channel_features(chans[:, k:k + 1], 25.0)
        np.testing.assert_allclose(together[k], alone, rtol=0, atol=1e-12)
    assert np.all(np.isfinite(together)) and together[1, 8] == 0.0  # the flat channel's log kurtosis
    assert not np.allclose(together[0], together[2])


def test_gravity_split_given_or_computed_gives_the_same_frame() -> None:
    from modalities.gait.signal import butter_sos, gravity_body

    rng = np.random.default_rng(4)
    x = rng.standard_normal((250, 3)) + np.array([0.0, 9.81, 0.0])
    np.testing.assert_array_equal(aligned_axes(x), aligned_axes(x, split=gravity_body(x)))
    assert butter_sos(2, 0.3, 25.0) is butter_sos(2, 0.3, 25.0)  # designed once, shared
