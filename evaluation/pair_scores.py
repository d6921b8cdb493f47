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


def keystroke_split(eval_dir: Path, evals: Sequence[int]) -> Split:
    """Enrolment / test windows of 100 keys per subject (test windows without overlap)."""
    from evaluation.datasets import load_bbmas_keystrokes
    from evaluation.protocols import chronological_split
    from modalities.keystroke import DEFAULT_WINDOW_KEYS, window_matrix

    split: Split = {}
    for s, q in load_bbmas_keystrokes(eval_dir, evals).items():
        a, b = chronological_split(len(q), 0.5)
        e, t = window_matrix(q[a], DEFAULT_WINDOW_KEYS), window_matrix(q[b], DEFAULT_WINDOW_KEYS)
        if e.shape[0] >= 3 and t.shape[0] >= 1:
            split[s] = (e, t[::2])  # test windows without overlap (hop = window)
    return split


#: keystroke probe lengths (keys) a published model's calibrator is fitted on: a phone sends a recording
#: of n <= 100 keys as ONE window of n keys (`mobile_client.features.keystroke_windows`), so the
#: calibrator sees such windows, with their quality (n-gram coverage, which grows with n)
CALIBRATION_KEYS = (30, 50, 70, 100)


def keystroke_length_split(eval_dir: Path, evals: Sequence[int],
                           lengths: Sequence[int] = CALIBRATION_KEYS) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                                          np.ndarray]]:
    """`keystroke_split`'s enrolment windows, probed with windows of every length in `lengths`.

    Per subject: (enrolment windows, probe feature rows, their qualities, their lengths). The
    probes are cut from the later half without overlap within a length and featurised alone
    (`window_features`), as the phone featurises a short recording.
    """
    from evaluation.datasets import load_bbmas_keystrokes
    from evaluation.protocols import chronological_split
    from modalities.keystroke import DEFAULT_WINDOW_KEYS, window_features, window_matrix

    out: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for s, q in load_bbmas_keystrokes(eval_dir, evals).items():
        a, b = chronological_split(len(q), 0.5)
        e, later = window_matrix(q[a], DEFAULT_WINDOW_KEYS), q[b]
        ws = [(n, window_features(later[i:i + n])) for n in lengths for i in range(0, len(later) - n + 1, n)]
        if e.shape[0] >= 3 and ws:
            out[s] = (e, np.vstack([w.values for _, w in ws]), np.array([w.quality for _, w in ws]),
                      np.array([n for n, _ in ws]))
    return out


class _Grouped:
    """A scorer whose probe 'windows' are groups of k strokes: the group score is the mean."""

    def __init__(self, scorer: Any, k: int) -> None:
        self.scorer, self.k = scorer, k

    def enroll(self, X: np.ndarray) -> Any:
        return self.scorer.enroll(X)

    def compare(self, template: Any, X: np.ndarray) -> np.ndarray:
        from modalities.touch import accumulate

        return accumulate(self.scorer.compare(template, X), self.k)


def touch_split(eval_dir: Path, evals: Sequence[int]) -> Split:
    """Enrolment / test swipes per subject (taps left out; at least one 5-swipe test window)."""
    from evaluation.datasets import load_bbmas_touch
    from evaluation.protocols import chronological_split
    from modalities.touch import WINDOWS, stream_features

    _, k = WINDOWS["5 swipes"]
    split: Split = {}
    for s, stream in load_bbmas_touch(eval_dir, evals).items():
        F, tap, _ = stream_features(stream)
        X = F[~tap]
        if len(X) < 10:
            continue
        a, b = chronological_split(len(X), 0.5)
        if b.stop - b.start >= k:
            split[s] = (X[a], X[b])
    return split


def gait_split(eval_dir: Path, evals: Sequence[int]) -> Split:
    """Enrolment / test 10 s walking windows per subject (test windows without overlap)."""
    from modalities.gait import TRAIN_WINDOW_S
    from modalities.gait.data import load_windows

    split: Split = {}
    for s, sw in load_windows(eval_dir, evals, TRAIN_WINDOW_S).items():
        e, t = sw.chronological(0.5)
        if len(e) >= 2 and len(t) >= 1:
            split[s] = (sw.X[e], sw.X[t][::2])  # hop half a window: every other one is disjoint
    return split


#: how each modality's evaluation data is cut (the window the fusion bench's evidence budget names)
SPLITS: dict[str, Callable[[Path, Sequence[int]], Split]] = {
    "keystroke": keystroke_split,
    "touch": touch_split,
    "gait": gait_split,
}


def as_decided(modality: str, scorer: Any) -> Any:
    """`scorer` scoring the unit a decision reads (`decision_windows`): touch probes are groups of 5 swipes."""
    from modalities.reading import decision_windows

    k = decision_windows(modality)
    return _Grouped(scorer, k) if k > 1 else scorer


def scores_of(scorer: Any, split: Split) -> PairScores:
    """Scores of every (template, probe) pair of `split` by an already trained `scorer`."""
    templates = {s: scorer.enroll(e) for s, (e, _) in split.items()}
    out: PairScores = {}
    for s, tmpl in templates.items():
        for p, (_, t) in split.items():
            out[(s, p)] = np.asarray(scorer.compare(tmpl, t), float)
    return out


def genuine_impostor(ps: PairScores) -> tuple[np.ndarray, np.ndarray]:
    """All genuine scores (a template's own probes) and all impostor scores (everyone else's)."""
    gen = [v for (s, p), v in ps.items() if s == p]
    imp = [v for (s, p), v in ps.items() if s != p]
    return (np.concatenate(gen) if gen else np.zeros(0)), (np.concatenate(imp) if imp else np.zeros(0))


def _keystroke(train_dir: Path, train: tuple[int, ...], eval_dir: Path, evals: tuple[int, ...], seed: int) -> tuple[Any, Split]:
    from modalities.keystroke import train_scorer

    return train_scorer(train_dir, train), keystroke_split(eval_dir, evals)


def _touch(train_dir: Path, train: tuple[int, ...], eval_dir: Path, evals: tuple[int, ...], seed: int) -> tuple[Any, Split]:
    from modalities.touch import train_scorer

    return as_decided("touch", train_scorer(train_dir, train)), touch_split(eval_dir, evals)


def _gait(train_dir: Path, train: tuple[int, ...], eval_dir: Path, evals: tuple[int, ...], seed: int) -> tuple[Any, Split]:
    from modalities.gait import TRAIN_WINDOW_S, train_scorer

    return train_scorer(train_dir, train, window_s=TRAIN_WINDOW_S), gait_split(eval_dir, evals)


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
    return scores_of(scorer, split)


def pair_scores(modality: str, train_dir: str | os.PathLike[str], train: Sequence[int], eval_dir: str | os.PathLike[str],
                evals: Sequence[int], *, seed: int = 0, quick: bool = False) -> PairScores:
    """Scores of `modality` for every (template, probe) pair of `evals`, models trained on `train`."""
    return _cached(modality, str(train_dir), tuple(sorted(int(s) for s in train)), str(eval_dir),
                   tuple(sorted(int(s) for s in evals)), seed)
