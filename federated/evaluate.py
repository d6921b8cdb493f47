"""Evaluate a global model on people it never saw, with the modality benches' protocol.

Per evaluation subject, the earliest half of the windows enrols (`chronological_split`) and
the rest are probes; impostors are the other evaluation subjects' probe windows
(zero-effort, `zero_effort_trials`). Used by the federated bench and the operator's run
summary (the metrics written to the model registry).
"""

from __future__ import annotations

import numpy as np

from evaluation.metrics import eer
from evaluation.protocols import ScoreTable, chronological_split, zero_effort_trials
from modalities.base import Scorer


def score_table(scorer: Scorer, windows: dict[int, np.ndarray], *, method: str, window: str, modality: str,
                max_impostor_probes: int | None = 20, seed: int = 0) -> ScoreTable:
    """Genuine and zero-effort impostor scores of `scorer` on `windows` (subject -> (n, d))."""
    templates, probes = {}, {}
    for sid, X in sorted(windows.items()):
        enrol, test = chronological_split(len(X))
        if enrol.stop - enrol.start < 2 or test.stop - test.start < 1:
            continue
        templates[sid] = scorer.enroll(X[enrol])
        probes[sid] = X[test]
    table = ScoreTable()
    zero_effort_trials(table, method=method, window=window, modality=modality, templates=templates, probes=probes,
                       score=scorer.compare, max_impostor_probes=max_impostor_probes, seed=seed)
    return table


def pooled_eer(table: ScoreTable, method: str, window: str) -> float:
    sel = table.select(method, window)
    return eer(genuine=sel["genuine"], impostor=sel["impostor"])
