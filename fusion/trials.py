"""Build multi-modal trials from per-modality window scores of the *same* people.

A provider gives, for one modality, the scores of every (template subject, probe subject)
pair: one score per test window of the probe, in time order. A trial takes a fixed evidence
budget from each modality (the standard budget is one window of each; extended is three of
each, averaged), all from the probe's test part; genuine trials use the template owner's own
windows, impostor trials another evaluation subject's. No chimeras: every trial's modalities
come from one real person.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PairScores = dict[tuple[int, int], np.ndarray]


@dataclass(frozen=True)
class Trials:
    """(n_trials, n_modalities) scores with NaN for missing, and who is who."""

    modalities: tuple[str, ...]
    scores: np.ndarray
    template: np.ndarray
    probe: np.ndarray

    @property
    def label(self) -> np.ndarray:
        return (self.template == self.probe).astype(int)

    def genuine(self) -> np.ndarray:
        return self.scores[self.label == 1]

    def impostor(self) -> np.ndarray:
        return self.scores[self.label == 0]


def _take(scores: np.ndarray, n: int, per: int) -> float:
    """Mean of `per` consecutive windows starting at window n*per (NaN if not enough)."""
    a = n * per
    if scores.size < a + per:
        return float("nan")
    return float(np.mean(scores[a:a + per]))


def build_trials(
    per_modality: dict[str, PairScores],
    subjects: Sequence[int],
    *,
    per: int = 1,
    genuine_per_subject: int = 12,
    impostor_per_pair: int = 2,
) -> Trials:
    """Trials for every template subject that has scores in every modality.

    A trial is kept only when every modality has its full budget: missing-modality handling is
    tested separately, so the comparison between rules is on identical evidence.
    """
    mods = tuple(per_modality)
    subs = [s for s in subjects if all((s, s) in per_modality[m] for m in mods)]
    rows, tmpl, prob = [], [], []
    for s in subs:
        for p in subs:
            n_max = genuine_per_subject if p == s else impostor_per_pair
            for n in range(n_max):
                v = [_take(per_modality[m].get((s, p), np.empty(0)), n, per) for m in mods]
                if np.all(np.isfinite(v)):
                    rows.append(v)
                    tmpl.append(s)
                    prob.append(p)
    if not rows:
        raise ValueError("no complete multi-modal trials: do the folders share subjects with all modalities?")
    return Trials(mods, np.asarray(rows, float), np.asarray(tmpl), np.asarray(prob))
