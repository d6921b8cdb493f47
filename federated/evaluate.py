"""Evaluate a global model on people it never saw, with the modality benches' protocol.

Per evaluation subject, the earliest half of the data enrols and the rest are probe
decisions (`federated.features.eval_splits`: keystroke 50-key windows, touch 5-swipe
decisions scored by the mean per-swipe score, gait 10 s windows); impostors are the other
evaluation subjects' probes (zero-effort, `zero_effort_trials`). Used by the federated bench,
the tests and the operator's run summary.
"""

from __future__ import annotations

import numpy as np

from evaluation.metrics import eer
from evaluation.protocols import ScoreTable, chronological_split, zero_effort_trials
from federated.features import EvalSplit
from modalities.base import Scorer, Template


def decision_scores(scorer: Scorer, template: Template, probes: np.ndarray) -> np.ndarray:
    """Score of each probe decision (m, k, d): mean of its `k` per-window scores."""
    m, k, d = probes.shape
    return scorer.compare(template, probes.reshape(m * k, d)).reshape(m, k).mean(axis=1)


def score_splits(scorer: Scorer, splits: dict[int, EvalSplit], *, method: str, window: str, modality: str,
                 max_impostor_probes: int | None = None, seed: int = 0) -> ScoreTable:
    """Genuine and zero-effort impostor scores of `scorer` on enrol/probe `splits`."""
    templates = {sid: scorer.enroll(sp.enrol) for sid, sp in sorted(splits.items())}
    probes = {sid: sp.probes for sid, sp in sorted(splits.items())}
    table = ScoreTable()
    zero_effort_trials(table, method=method, window=window, modality=modality, templates=templates, probes=probes,
                       score=lambda t, P: decision_scores(scorer, t, P),
                       max_impostor_probes=max_impostor_probes, seed=seed)
    return table


def score_table(scorer: Scorer, windows: dict[int, np.ndarray], *, method: str, window: str, modality: str,
                max_impostor_probes: int | None = 20, seed: int = 0) -> ScoreTable:
    """`score_splits` on time-ordered windows (n, d): the earliest half of each subject's windows enrols."""
    splits = {}
    for sid, X in sorted(windows.items()):
        enrol, test = chronological_split(len(X))
        if enrol.stop - enrol.start >= 2 and test.stop - test.start >= 1:
            splits[sid] = EvalSplit(X[enrol], X[test][:, None, :])
    return score_splits(scorer, splits, method=method, window=window, modality=modality,
                        max_impostor_probes=max_impostor_probes, seed=seed)


def pooled_eer(table: ScoreTable, method: str, window: str) -> float:
    sel = table.select(method, window)
    return eer(genuine=sel["genuine"], impostor=sel["impostor"])
