"""Per-modality scores of every (template subject, probe subject) pair, for fusion.

Each provider trains the modality's best population scorer on the training subjects, enrols
every evaluation subject on the earliest half of their data and scores the later half of
every evaluation subject's data, cut the way that modality's bench cuts it (the window the
fusion bench's evidence budget names). Results are cached per call within a process, since
the fusion bench asks for the same scores for both budgets.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

PairScores = dict[tuple[int, int], np.ndarray]
Split = dict[int, tuple[Any, Any]]  # subject -> (enrolment windows, test windows)


def _keystroke(train_dir: Path, train: tuple[int, ...], eval_dir: Path, evals: tuple[int, ...], seed: int) -> tuple[Any, Split]:
    from evaluation.datasets import load_bbmas_keystrokes
    from evaluation.protocols import chronological_split
    from modalities.keystroke import DEFAULT_WINDOW_KEYS, train_scorer, window_matrix

    scorer = train_scorer(train_dir, train)
    split: Split = {}
    for s, q in load_bbmas_keystrokes(eval_dir, evals).items():
        a, b = chronological_split(len(q), 0.5)
        e, t = window_matrix(q[a], DEFAULT_WINDOW_KEYS), window_matrix(q[b], DEFAULT_WINDOW_KEYS)
        if e.shape[0] >= 3 and t.shape[0] >= 1:
            split[s] = (e, t[::2])  # test windows without overlap (hop = window)
    return scorer, split


class _Grouped:
    """A scorer whose probe 'windows' are groups of k strokes: the group score is the mean."""

    def __init__(self, scorer: Any, k: int) -> None:
        self.scorer, self.k = scorer, k

    def enroll(self, X: np.ndarray) -> Any:
        return self.scorer.enroll(X)

    def compare(self, template: Any, X: np.ndarray) -> np.ndarray:
        from modalities.touch import accumulate

        return accumulate(self.scorer.compare(template, X), self.k)


def _touch(train_dir: Path, train: tuple[int, ...], eval_dir: Path, evals: tuple[int, ...], seed: int) -> tuple[Any, Split]:
    from evaluation.datasets import load_bbmas_touch
    from evaluation.protocols import chronological_split
    from modalities.touch import WINDOWS, stream_features, train_scorer

    _, k = WINDOWS["5 swipes"]
    scorer = train_scorer(train_dir, train)
    split: Split = {}
    for s, stream in load_bbmas_touch(eval_dir, evals).items():
        F, tap, _ = stream_features(stream)
        X = F[~tap]
        if len(X) < 10:
            continue
        a, b = chronological_split(len(X), 0.5)
        if b.stop - b.start >= k:
            split[s] = (X[a], X[b])
    return _Grouped(scorer, k), split


def _gait(train_dir: Path, train: tuple[int, ...], eval_dir: Path, evals: tuple[int, ...], seed: int) -> tuple[Any, Split]:
    from modalities.gait import TRAIN_WINDOW_S, train_scorer
    from modalities.gait.data import load_windows

    scorer = train_scorer(train_dir, train, window_s=TRAIN_WINDOW_S)
    split: Split = {}
    for s, sw in load_windows(eval_dir, evals, TRAIN_WINDOW_S).items():
        e, t = sw.chronological(0.5)
        if len(e) >= 2 and len(t) >= 1:
            split[s] = (sw.X[e], sw.X[t][::2])  # hop half a window: every other one is disjoint
    return scorer, split


PROVIDERS: dict[str, Callable[[Path, tuple[int, ...], Path, tuple[int, ...], int], tuple[Any, Split]]] = {
    "keystroke": _keystroke,
    "touch": _touch,
    "gait": _gait,
}


@lru_cache(maxsize=32)
def _cached(modality: str, train_dir: str, train: tuple[int, ...], eval_dir: str, evals: tuple[int, ...], seed: int) -> PairScores:
    if modality not in PROVIDERS:
        raise ValueError(f"no pair-score provider for modality {modality!r}")
    scorer, split = PROVIDERS[modality](Path(train_dir), train, Path(eval_dir), evals, seed)
    templates = {s: scorer.enroll(e) for s, (e, _) in split.items()}
    out: PairScores = {}
    for s, tmpl in templates.items():
        for p, (_, t) in split.items():
            out[(s, p)] = np.asarray(scorer.compare(tmpl, t), float)
    return out


def pair_scores(modality: str, train_dir: str | os.PathLike[str], train: Sequence[int], eval_dir: str | os.PathLike[str],
                evals: Sequence[int], *, seed: int = 0, quick: bool = False) -> PairScores:
    """Scores of `modality` for every (template, probe) pair of `evals`, models trained on `train`."""
    return _cached(modality, str(train_dir), tuple(sorted(int(s) for s in train)), str(eval_dir),
                   tuple(sorted(int(s) for s in evals)), seed)
