"""Accelerometer signal conditioning: one internal rate and bandwidth for every phone.

Why: a model trained on a 100 Hz Samsung S6 must score a 25 Hz phone that reports in g with a
jittery clock. Everything downstream therefore sees the same thing: a uniform grid at
`RATE` Hz, low-passed at `CUTOFF_HZ` (the same filter whatever the input rate), in m/s^2.
Input must be in m/s^2 with gravity included (Android's TYPE_ACCELEROMETER). Units are never
guessed from the data (a window of free fall or a gravity-removed stream looks like g): a
window whose median |a| is too small for gravity, or larger than any phone reads, is refused
(`to_ms2`); a caller holding g converts on purpose with ``to_ms2(xyz, units="g")``.

Pure numpy/scipy: this runs on the phone, in federated clients and in benches.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import signal as sps

from modalities.events import AccelSeries, EventValidationError

#: internal sampling rate (Hz): the lowest rate we promise to support is 20 Hz, phones at
#: ~25 Hz are common, so features never depend on content above ~10 Hz
RATE = 25.0
#: common low-pass cut-off (Hz) applied on the internal grid, whatever the input rate
CUTOFF_HZ = 8.0
#: slowest input we accept (median sampling rate, Hz)
MIN_INPUT_RATE = 20.0
#: fastest input we accept (Hz): the input grid is built at the input rate, so a bogus rate of
#: MHz (near-duplicate timestamps) would allocate gigabytes; real phones deliver <= ~500 Hz
MAX_INPUT_RATE = 2000.0
#: fastest rate a phone's accelerometer delivers (Hz): a rate too low to use that would be at most this
#: if the times were milliseconds is said to be in milliseconds (`check_rate`)
MAX_PHONE_RATE = 500.0
#: samples closer than this (s) are one instant: batched sensor deliveries stamp a batch
#: microseconds apart. Well below the 1 ms clock tick of real recordings (BB-MAS), which
#: must keep every sample.
NEAR_DUPLICATE_S = 1e-4
#: holes in the clock longer than this split a series into parts (never interpolated across)
MAX_GAP_S = 0.5
G = 9.80665
#: smallest median |a| (m/s^2) accepted: gravity alone reads 9.8 (the median of a phone's |a| is
#: 8.4-14.4 over every 5 s of the BB-MAS recordings). Below it the readings are in g (about 1),
#: gravity-removed "linear acceleration" (about 0-3) or mostly free fall (a tossed phone): none
#: is a walk Cadence can score, and converting by guess scores the wrong thing
MIN_MEDIAN_ACCEL = 3.0
#: smallest gravity (m/s^2) accepted: the median length of the mean acceleration over runs of
#: `GRAVITY_RUN` readings, where a walk's own motion averages out and gravity stays. It is
#: 9.55-10.5 in every BB-MAS recording, and 0.14-0.38 once gravity is filtered out of them
#: (Android's TYPE_LINEAR_ACCELERATION), whose median |a| (3-6 when walking hard) can pass
#: `MIN_MEDIAN_ACCEL`: such a file was scored as if it held gravity
MIN_GRAVITY = 5.0
#: readings per run in that estimate (2 s at 100 Hz, 8 s at 25 Hz)
GRAVITY_RUN = 200
#: the units `to_ms2` converts from, on the caller's word (name -> factor to m/s^2)
UNITS: dict[str, float] = {"m/s^2": 1.0, "g": G}
#: median |a| (m/s^2) no phone carried by a walking person reads (10 g): the input is in another
#: unit (mg, cm/s^2) or the sensor is broken
MAX_MEDIAN_ACCEL = 100.0
#: a single reading (m/s^2) beyond any phone accelerometer's range (they saturate at 2-32 g;
#: BB-MAS peaks at 39 m/s^2): refused rather than let overflow reach the filters and PCA
MAX_ABS_ACCEL = 1000.0


@dataclass(frozen=True)
class Uniform:
    """A uniformly sampled 3-axis part of a recording at `rate` Hz (m/s^2)."""

    t0: float
    rate: float
    xyz: np.ndarray  # (n, 3)

    @property
    def duration(self) -> float:
        return self.xyz.shape[0] / self.rate


def merge_duplicate_times(t: np.ndarray, xyz: np.ndarray, eps: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Sort by time and average samples closer than `eps` s to the previous one (batched deliveries).

    A merged run keeps its first timestamp; `eps` = 0 merges exact duplicates only.
    """
    order = np.argsort(t, kind="stable")
    t, xyz = t[order], xyz[order]
    new = np.r_[True, np.diff(t) > eps]
    if new.all():
        return t, xyz
    inv = np.cumsum(new) - 1
    counts = np.bincount(inv)
    out = np.zeros((counts.size, 3))
    np.add.at(out, inv, xyz)
    return t[new], out / counts[:, None]


def _refuse_peak(xyz: np.ndarray) -> None:
    peak = np.abs(xyz).max(axis=1)
    if float(peak.max()) > MAX_ABS_ACCEL:
        i = int(np.flatnonzero(peak > MAX_ABS_ACCEL)[0])
        raise EventValidationError("xyz", f"reading of {float(peak[i]):.3g} m/s^2 at index {i} is beyond any phone "
                                          f"accelerometer's range (at most {MAX_ABS_ACCEL:g} m/s^2)")


def to_ms2(xyz: np.ndarray, units: str = "m/s^2") -> np.ndarray:
    """Acceleration (n, 3) in m/s^2, gravity included, from readings in `units` (see `UNITS`).

    `units` is what the caller knows the readings to be ("g": multiplied by `G`); it is never
    guessed from the values. Refused with an `EventValidationError` on ``xyz``, after conversion:
    a median |a| below `MIN_MEDIAN_ACCEL` (readings in g, gravity removed, or free fall), above
    `MAX_MEDIAN_ACCEL` (another unit, a broken sensor), any reading above `MAX_ABS_ACCEL`, and
    readings without gravity in them (`MIN_GRAVITY`).
    """
    if units not in UNITS:
        raise ValueError(f"units must be one of {sorted(UNITS)}, got {units!r}")
    xyz = np.asarray(xyz, float) * UNITS[units] if units != "m/s^2" else np.asarray(xyz, float)
    if xyz.shape[0] == 0:
        return xyz
    mag = float(np.median(np.hypot(np.hypot(xyz[:, 0], xyz[:, 1]), xyz[:, 2])))  # |a|: no overflow or underflow
    if mag > MAX_MEDIAN_ACCEL:
        raise EventValidationError("xyz", f"median |a| is {mag:.3g}: not a phone's acceleration in m/s^2 (about "
                                          f"{G:.2f}, at most {MAX_MEDIAN_ACCEL:g}); check the units")
    if mag < MIN_MEDIAN_ACCEL:
        raise EventValidationError("xyz", f"median |a| is {mag:.3g} m/s^2: readings look like g or gravity-removed "
                                          "acceleration: Cadence expects m/s^2 including gravity (Android "
                                          f"TYPE_ACCELEROMETER); convert g with x {G}")
    _refuse_peak(xyz)
    gravity = gravity_estimate(xyz)
    if gravity < MIN_GRAVITY:
        raise EventValidationError("xyz", f"the mean acceleration over runs of {GRAVITY_RUN} readings is {gravity:.2g} "
                                          f"m/s^2, not gravity's {G:.1f}: the readings look gravity-removed (Android "
                                          "TYPE_LINEAR_ACCELERATION); Cadence expects m/s^2 including gravity "
                                          "(TYPE_ACCELEROMETER)")
    return xyz


def gravity_estimate(xyz: np.ndarray) -> float:
    """Median length of the mean acceleration over runs of `GRAVITY_RUN` readings (all of them if fewer)."""
    runs = xyz.shape[0] // GRAVITY_RUN
    if runs == 0:
        return float(np.linalg.norm(xyz.mean(axis=0)))
    means = xyz[:runs * GRAVITY_RUN].reshape(runs, GRAVITY_RUN, 3).mean(axis=1)
    return float(np.median(np.linalg.norm(means, axis=1)))


def input_rate(t: np.ndarray) -> float:
    """Nominal input rate: 1 / median sampling interval, ignoring near-duplicates (batched deliveries)."""
    d = np.diff(t)
    d = d[d > NEAR_DUPLICATE_S]
    if d.size == 0:
        raise EventValidationError("time", f"need at least two timestamps more than {NEAR_DUPLICATE_S * 1e3:g} ms apart")
    return float(1.0 / np.median(d))


def _unit_hint(fs_in: float, min_rate: float, max_rate: float) -> str:
    """Why a rate too low to use is 1000 times off, when times in milliseconds would make it fit."""
    if 0.95 * min_rate <= fs_in * 1e3 <= min(max_rate, MAX_PHONE_RATE):
        return (f": the times look like milliseconds ({fs_in * 1e3:.0f} Hz if they are); Cadence takes "
                "seconds: divide them by 1000 (Android's SensorEvent.timestamp is nanoseconds: multiply by 1e-9)")
    return ""


def check_rate(t: np.ndarray, min_rate: float = MIN_INPUT_RATE, max_rate: float = MAX_INPUT_RATE) -> float:
    """`input_rate(t)`; an `EventValidationError` outside [`min_rate`, `max_rate`].

    What `resample` accepts, so a data loader can refuse a file (naming it) before features are cut.
    """
    fs_in = input_rate(t)
    if fs_in < 0.95 * min_rate:  # 5% slack: phone clocks drift around their nominal rate
        shown = f"{fs_in:.1f}" if fs_in >= 1 else f"{fs_in:.2g}"  # below 1 Hz two digits: 0.05, not 0.1
        raise EventValidationError("time", f"sampling rate {shown} Hz is below the {min_rate:.0f} Hz minimum"
                                           f"{_unit_hint(fs_in, min_rate, max_rate)}")
    if fs_in > max_rate:
        raise EventValidationError("time", f"sampling rate {fs_in:.0f} Hz is above the {max_rate:.0f} Hz maximum "
                                           "(timestamps too close together)")
    return fs_in


@functools.lru_cache(maxsize=64)
def butter_sos(order: int, cutoff: float, rate: float) -> np.ndarray:
    """A Butterworth low-pass's second-order sections, designed once per (order, cut-off, rate).

    Why: every window of every recording uses the same few filters, and designing one costs more
    than running it (a third of a window's feature time went to `sps.butter`). Shared by every
    caller: not to be written to (scipy's filters take it writable, so it cannot be frozen).
    """
    return sps.butter(order, cutoff, fs=rate, output="sos")


def _lowpass(x: np.ndarray, rate: float, cutoff: float, order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth low-pass along axis 0 (no-op where the cut-off is above Nyquist)."""
    if cutoff >= 0.45 * rate or x.shape[0] < 3 * (2 * order + 1):
        return x
    sos = butter_sos(order, float(cutoff), float(rate))
    padlen = min(x.shape[0] - 1, 3 * (2 * order + 1) * 4)
    return sps.sosfiltfilt(sos, x, axis=0, padlen=padlen)


def resample(series: AccelSeries, *, rate: float = RATE, cutoff: float = CUTOFF_HZ,
             max_gap: float = MAX_GAP_S, min_rate: float = MIN_INPUT_RATE,
             max_rate: float = MAX_INPUT_RATE) -> list[Uniform]:
    """Bring a series of rate in [`min_rate`, `max_rate`] onto uniform `rate` Hz grids, one per gap-free part.

    Steps: merge (near-)duplicate times; check the rate, then that the readings are m/s^2 with
    gravity (`to_ms2`: refused otherwise, never converted); split at holes longer than `max_gap`;
    interpolate each part linearly onto a grid at its own input rate; anti-alias low-pass at
    `cutoff`; interpolate to `rate`; apply the same low-pass again on the internal grid so a
    25 Hz phone and a 100 Hz phone end with one bandwidth.
    """
    readings = np.asarray(series.xyz, float)
    with np.errstate(over="ignore", invalid="ignore"):  # absurd readings are refused below, by `to_ms2`
        t, xyz = merge_duplicate_times(np.asarray(series.t, float), readings, NEAR_DUPLICATE_S)
    if t.size < 2:
        raise EventValidationError("time", f"need at least two samples more than {NEAR_DUPLICATE_S * 1e3:g} ms apart")
    fs_in = check_rate(t, min_rate, max_rate)
    to_ms2(readings)  # m/s^2 with gravity, checked on the readings as sent: refuses, converts nothing
    cuts = np.flatnonzero(np.diff(t) > max_gap) + 1
    bounds = np.concatenate([[0], cuts, [t.size]])
    parts: list[Uniform] = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        tt, vv = t[a:b], xyz[a:b]
        if tt.size < 2 or tt[-1] - tt[0] < 1.0:
            continue
        grid_in = np.arange(tt[0], tt[-1], 1.0 / fs_in)
        x_in = np.column_stack([np.interp(grid_in, tt, vv[:, k]) for k in range(3)])
        x_in = _lowpass(x_in, fs_in, cutoff)
        grid = np.arange(tt[0], grid_in[-1], 1.0 / rate)
        x = np.column_stack([np.interp(grid, grid_in, x_in[:, k]) for k in range(3)])
        x = _lowpass(x, rate, cutoff)
        parts.append(Uniform(float(tt[0]), rate, x))
    return parts


# --------------------------------------------------------------------------- orientation


def gravity_body(x: np.ndarray, rate: float = RATE, cutoff: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Split acceleration into gravity (low-pass below `cutoff` Hz) and body (the rest)."""
    if x.shape[0] < 4 * rate:
        g = np.broadcast_to(x.mean(axis=0), x.shape).copy()
    else:
        sos = butter_sos(2, float(cutoff), float(rate))
        g = sps.sosfiltfilt(sos, x, axis=0, padlen=min(x.shape[0] - 1, int(3 * rate)))
    return g, x - g


def aligned_axes(x: np.ndarray, rate: float = RATE,
                 split: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Orientation-invariant frame (n, 3): vertical, first and second horizontal PCA axes of body motion.

    Vertical is the body acceleration projected on the unit gravity direction; the horizontal
    plane's axes come from PCA of the horizontal body acceleration, so they do not depend on how
    the phone sits in the pocket (up to sign, which the features built on them ignore).
    `split`: `gravity_body(x, rate)` where the caller has it already (it is not computed twice).
    """
    g, body = split if split is not None else gravity_body(x, rate)
    gdir = g.mean(axis=0)
    norm = np.linalg.norm(gdir)
    gdir = gdir / norm if norm > 1e-6 else np.array([0.0, 0.0, 1.0])
    vert = body @ gdir
    horiz = body - np.outer(vert, gdir)
    cov = horiz.T @ horiz / max(horiz.shape[0], 1)
    w, v = np.linalg.eigh(cov)
    h1 = horiz @ v[:, -1]
    h2 = horiz @ v[:, -2]
    # fix the sign of each horizontal axis by its skewness so a flipped phone gives the same trace
    for h in (h1, h2):
        if np.mean(h ** 3) < 0:
            h *= -1
    return np.column_stack([vert, h1, h2])


def magnitude(x: np.ndarray) -> np.ndarray:
    """|a| minus its mean: invariant to any rotation of the phone."""
    m = np.linalg.norm(x, axis=1)
    return m - m.mean()


# --------------------------------------------------------------------------- gait structure


def autocorr(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Unbiased normalised autocorrelation of a 1-D signal for lags 0..max_lag (FFT based)."""
    return autocorr_rows(np.asarray(x, float)[None, :], max_lag)[0]


def autocorr_rows(x: np.ndarray, max_lag: int) -> np.ndarray:
    """`autocorr` of each row of `x` (k, n), in one FFT (a window's channels at once); a flat row gives 0s."""
    x = x - x.mean(axis=1, keepdims=True)
    n = x.shape[1]
    max_lag = int(min(max(max_lag, 0), n - 1))
    f = np.fft.rfft(x, 2 * n, axis=1)
    ac = np.fft.irfft(f * np.conj(f), axis=1)[:, : max_lag + 1]
    ac = ac / (n - np.arange(max_lag + 1))
    out = np.zeros_like(ac)
    live = ac[:, 0] > 0
    out[live] = ac[live] / ac[live, :1]
    return out


def cycle_period(mag: np.ndarray, rate: float = RATE, lo: float = 0.7, hi: float = 1.6) -> tuple[float, float]:
    """Gait cycle (stride: two steps) period in seconds and its regularity (autocorr peak, -1..1).

    The stride is the lag of the highest autocorrelation peak in [lo, hi] s; a walking person's
    stride lasts about 0.9-1.4 s.
    """
    max_lag = int(hi * rate) + 1
    if mag.size <= max_lag + 2:
        return float("nan"), 0.0
    ac = autocorr(mag, max_lag)
    a, b = int(lo * rate), max_lag
    k = a + int(np.argmax(ac[a:b + 1]))
    # parabolic refinement of the peak
    if 0 < k < ac.size - 1:
        den = ac[k - 1] - 2 * ac[k] + ac[k + 1]
        off = float(np.clip(0.5 * (ac[k - 1] - ac[k + 1]) / den, -0.5, 0.5)) if den < 0 else 0.0
    else:
        off = 0.0
    return float((k + off) / rate), float(ac[k])


def walking_mask(x: np.ndarray, rate: float = RATE, win_s: float = 2.5, min_std: float = 0.8,
                 min_regularity: float = 0.25) -> np.ndarray:
    """Per-sample mask of walking: enough body motion and a periodic stride in a sliding window.

    Standing still has little body acceleration; turning and fumbling have no clear stride
    period. Each `win_s` window (hop half) is judged and its samples marked.
    """
    n = x.shape[0]
    mask = np.zeros(n, bool)
    w = int(win_s * rate)
    if n < w:
        return mask
    mag = np.linalg.norm(x, axis=1)
    for a in range(0, n - w + 1, max(w // 2, 1)):
        seg = mag[a:a + w]
        if seg.std() < min_std:
            continue
        _, reg = cycle_period(seg, rate)
        if reg >= min_regularity:
            mask[a:a + w] = True
    return mask


def walking_runs(mask: np.ndarray, min_len: int) -> list[slice]:
    """Contiguous runs of True of at least `min_len` samples."""
    if mask.size == 0:
        return []
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return [slice(int(a), int(b)) for a, b in zip(starts, stops) if b - a >= min_len]
