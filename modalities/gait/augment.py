"""Rate augmentation: make a 100 Hz training recording look like a cheaper, slower phone.

Why: the population models learn from 100 Hz Samsung S6 recordings but must score phones at
~20-50 Hz whose sensors may sample without an anti-alias filter and with a jittery clock.
Those phones fold energy above their Nyquist frequency into the gait band, which the common
8 Hz low-pass of `modalities.gait.signal` cannot undo. Training windows computed from
down-sampled copies of the training recordings teach the discriminant embeddings which
feature directions such a phone perturbs, and put such windows into the background the
per-user templates are trained against. Chosen on an inner split of training subjects
(BENCHMARKS.md, "Gait").

Pure numpy/scipy; deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import signal as sps

from modalities.events import AccelSeries

#: down-sampled copies: output rate range (Hz), chance of an anti-alias filter, clock jitter (s)
RATE_RANGE = (20.0, 50.0)
P_ANTI_ALIAS = 0.5
MAX_JITTER_S = 0.004
#: bump when the augmentation recipe changes (part of the feature cache key)
AUGMENT_VERSION = "rate-1"


def downsample(series: AccelSeries, rate: float, *, anti_alias: bool, jitter_s: float,
               rng: np.random.Generator) -> AccelSeries:
    """Re-sample `series` like a phone at `rate` Hz: nearest later sample at jittered clock ticks.

    With `anti_alias` the input is first low-passed at 0.4 x `rate` (a sensor with a filter);
    without it high frequencies alias into the gait band (a cheap sensor). Ticks falling in a
    hole of the input are dropped, so gaps stay gaps; times are rounded to milliseconds.
    """
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    t, xyz = np.asarray(series.t, float), np.asarray(series.xyz, float)
    if t.size < 2:
        return series
    if anti_alias:
        fs = 1.0 / float(np.median(np.diff(t)))
        if 0.4 * rate < 0.45 * fs and t.size > 60:
            sos = sps.butter(4, 0.4 * rate, fs=fs, output="sos")
            xyz = sps.sosfiltfilt(sos, xyz, axis=0)
    grid = np.arange(t[0], t[-1], 1.0 / rate)
    grid = grid + rng.normal(0.0, jitter_s, grid.size) if jitter_s > 0 else grid
    idx = np.clip(np.searchsorted(t, grid), 0, t.size - 1)
    idx = np.unique(idx[np.abs(t[idx] - grid) < 0.5 / rate])
    return AccelSeries(np.round(t[idx] * 1000.0) / 1000.0, xyz[idx], series.device)


def random_phone(segments: Sequence[AccelSeries], seed: int) -> list[AccelSeries]:
    """One recording's segments as seen by a random slower phone (rate, filter, jitter drawn from `seed`)."""
    rng = np.random.default_rng(seed)
    rate = float(rng.uniform(*RATE_RANGE))
    anti_alias = bool(rng.random() < P_ANTI_ALIAS)
    jitter = float(rng.uniform(0.0, MAX_JITTER_S))
    return [downsample(s, rate, anti_alias=anti_alias, jitter_s=jitter, rng=rng) for s in segments]
