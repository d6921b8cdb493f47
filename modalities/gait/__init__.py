"""Gait (phone-in-pocket accelerometer) modality.

Contract (docs/contracts.md): `FEATURE_VERSION`, `FEATURE_DIM`, `window_features` (one
window, what the phone sends), `windows_for_subject` (how benches cut recordings),
`default_scorer()` (no population model needed) and `train_scorer(data_dir, subjects)` (the
best population-trained scorer). Top-level imports are numpy/scipy only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from modalities.base import Scorer
from modalities.gait.features import (
    BLOCKS,
    FEATURE_DIM,
    FEATURE_VERSION,
    WINDOWS,
    SubjectWindows,
    uniform_features,
    window_features,
    windows_for_subject,
)
from modalities.gait.scorers import GaitFusion, GaitLDA, GaitManhattan, moving_mean
from modalities.gait.signal import RATE, resample

#: window (seconds) the trained scorer is fitted on by default
TRAIN_WINDOW_S = 10.0

__all__ = ["BLOCKS", "FEATURE_DIM", "FEATURE_VERSION", "WINDOWS", "RATE", "GaitFusion", "GaitLDA", "GaitManhattan",
           "SubjectWindows", "default_scorer", "moving_mean", "resample", "train_scorer", "uniform_features",
           "window_features", "windows_for_subject"]


def default_scorer() -> Scorer:
    """Best scorer that needs no population model: scaled Manhattan on all feature blocks."""
    return GaitManhattan()


def best_population_scorer() -> GaitFusion:
    """Unfitted instance of the best population-trained configuration (bench-selected)."""
    return GaitFusion()


def train_scorer(data_dir: str | os.PathLike[str], subjects: Iterable[int] | None = None,
                 window_s: float = TRAIN_WINDOW_S) -> Scorer:
    """Fit the best population scorer on every window of `subjects` (default: all) in `data_dir`.

    Rate-augmented copies of the recordings (`modalities.gait.augment`) would be added here if
    `modalities.gait.data.AUGMENT_COPIES` > 0 (measured, not adopted: BENCHMARKS.md "Gait").
    """
    from modalities.gait.data import load_training_windows

    _, X, y = load_training_windows(data_dir, subjects, window_s)
    if X.shape[0] == 0:
        raise ValueError(f"no gait windows of {window_s} s for the given subjects in {data_dir}")
    return best_population_scorer().fit(X, y)
