"""Keystroke dynamics: on-device timing features and the scorers that compare them.

Top-level imports are numpy-only (the phone and federated clients import this package);
scikit-learn is imported inside the scorers that need it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from modalities.base import Scorer
from modalities.keystroke.features import (
    FEATURE_DIM,
    FEATURE_VERSION,
    fixed_text_vector,
    window_features,
    window_matrix,
    windows_for_subject,
)

#: window size the server and fusion use when they cut a recording (bench label "100 keys")
DEFAULT_WINDOW_KEYS = 100


def default_scorer() -> Scorer:
    """Best scorer that needs no population model: K&M's scaled Manhattan (one-class)."""
    from modalities.keystroke.detectors import ManhattanScaledDetector

    return ManhattanScaledDetector()


def train_scorer(data_dir: str | os.PathLike[str], subjects: Iterable[int] | None = None,
                 n_keys: int = DEFAULT_WINDOW_KEYS) -> Scorer:
    """Best population-trained scorer, fitted on BB-MAS windows of `subjects` in `data_dir`."""
    import numpy as np

    from evaluation.datasets import DatasetError, load_bbmas_keystrokes
    from modalities.keystroke.learned import FusedScorer

    seqs = load_bbmas_keystrokes(data_dir, subjects)
    mats = {s: window_matrix(q, n_keys) for s, q in seqs.items()}
    mats = {s: m for s, m in mats.items() if m.shape[0] >= 2}
    if len(mats) < 3:
        raise DatasetError(f"need keystroke windows of at least 3 subjects in {data_dir}, got {len(mats)}")
    X = np.vstack(list(mats.values()))
    y = np.repeat(list(mats), [m.shape[0] for m in mats.values()])
    return FusedScorer().fit(X, y)


__all__ = [
    "DEFAULT_WINDOW_KEYS", "FEATURE_DIM", "FEATURE_VERSION", "default_scorer", "fixed_text_vector",
    "train_scorer", "window_features", "window_matrix", "windows_for_subject",
]
