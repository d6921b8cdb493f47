"""Touch dynamics: strokes from raw touch events, per-stroke features, scorers.

Numpy-only at import time (the phone imports this). A touch `FeatureWindow` is one stroke;
decisions over several strokes average the per-stroke scores (`accumulate`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from modalities.touch.features import (
    FEATURE_DIM,
    FEATURE_NAMES,
    FEATURE_VERSION,
    IDX,
    stream_features,
    stroke_windows,
    window_features,
)
from modalities.touch.scorers import (
    BackgroundLR,
    FusedTouch,
    PLDATouch,
    QuadBackgroundLR,
    TouchKNN,
    TouchManhattan,
    TouchOneClassSVM,
    accumulate,
    direction_class,
)
from modalities.touch.strokes import Segmentation, Stroke, segment
from modalities.touch.windows import WINDOWS, strokes_of_kind, windows_for_subject

__all__ = [
    "DECISION_WINDOWS", "FEATURE_DIM", "FEATURE_NAMES", "FEATURE_VERSION", "WINDOWS", "BackgroundLR", "FusedTouch", "PLDATouch",
    "QuadBackgroundLR",
    "Segmentation", "Stroke", "TouchKNN", "TouchManhattan", "TouchOneClassSVM", "accumulate",
    "default_scorer", "direction_class", "scored", "segment", "stream_features", "stroke_windows",
    "strokes_of_kind", "train_scorer", "window_features", "windows_for_subject",
]

#: swipes one decision reads (their mean score): the unit the fusion calibration is fitted on
#: (`evaluation.pair_scores.as_decided`). Fewer would be read on that calibration as if they
#: were five: the mean of one or two swipes spreads wider, so its LLR would be overconfident.
DECISION_WINDOWS = WINDOWS["5 swipes"][1]


def scored(values: Sequence[float]) -> bool:
    """Whether touch models read this window (one stroke's features): swipes only.

    Templates, population models and their calibration are built on swipes
    (`train_scorer`, `evaluation.pair_scores.touch_split`); a tap is another task, and a
    swipe model's score of one lands far outside its calibration (impostors' taps read as
    the strongest match). The server enrols and scores only what this accepts.
    """
    return float(values[IDX["is_tap"]]) < 0.5


def default_scorer() -> TouchKNN:
    """Best scorer that needs no population model (fresh clone, empty model registry)."""
    return TouchKNN()


def train_scorer(data_dir: str | os.PathLike[str], subjects: Iterable[int] | None = None) -> FusedTouch:
    """Best population-trained swipe scorer, trained on `subjects` (default: all) of `data_dir`."""
    import numpy as np

    from evaluation.datasets import load_bbmas_touch

    streams = load_bbmas_touch(data_dir, subjects)
    X, y = [], []
    for s, stream in streams.items():
        F, tap, _ = stream_features(stream)
        X.append(F[~tap])
        y.append(np.full(int((~tap).sum()), s))
    if len(X) < 3:
        raise ValueError(f"train_scorer needs at least 3 subjects with touch data in {data_dir}, got {len(X)}")
    return FusedTouch().fit(np.vstack(X), np.concatenate(y))
