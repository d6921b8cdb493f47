"""A published keystroke model's calibrator is fitted on the window lengths a phone sends.

A phone sends a recording of n <= 100 keys as one window of n keys. Short windows are noisier
for everyone, the owner included, so a calibrator fitted on 100-key windows alone reads a short
owner window as strong evidence against the owner: BENCHMARKS.md (Keystroke, "Windows shorter
than 100 keys") measured 8 % of a federated embedding's 30-key owner windows at a keystroke-alone
deny level, where the LLR promises 1 %. `server.training._fit_keystroke_by_quality` fits on
30-100 key windows with their quality, so the LLR's slope shrinks as windows shorten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import evaluation.pair_scores
from fusion.engine import FusionEngine
from fusion.policy import ModalityEvidence, default_policy
from server.training import _fit_keystroke_by_quality

LENGTHS = (30, 50, 70, 100)
PEOPLE = 12
PROBES = 40  # per person and length


class _Scorer:
    """Scores a probe row [person, noise]: 1.5 for its own template, 0 for another's, plus its noise."""

    def enroll(self, X: np.ndarray) -> int:
        return int(X[0, 0])

    def compare(self, template: int, X: np.ndarray) -> np.ndarray:
        return np.where(X[:, 0] == template, 1.5, 0.0) + X[:, 1]


def _split(qualities: dict[int, float], jitter: float) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Each person's probes at every length: the noise's spread grows as windows shorten (1/sqrt(keys))."""
    rng = np.random.default_rng(0)
    out = {}
    for s in range(PEOPLE):
        rows, qual, keys = [], [], []
        for n in LENGTHS:
            noise = rng.normal(0.0, 0.45 * np.sqrt(100 / n), PROBES)
            rows.append(np.column_stack([np.full(PROBES, s), noise]))
            qual.append(np.clip(qualities[n] + rng.normal(0, jitter, PROBES), 0, 1))
            keys.append(np.full(PROBES, n))
        out[s] = (np.array([[s, 0.0]] * 3), np.vstack(rows), np.concatenate(qual), np.concatenate(keys))
    return out


def _fit(monkeypatch: pytest.MonkeyPatch, qualities: dict[int, float],
         jitter: float = 0.02) -> tuple[FusionEngine, dict[int, Any]]:
    split = _split(qualities, jitter)
    monkeypatch.setattr(evaluation.pair_scores, "keystroke_length_split", lambda data_dir, subs: split)
    engine = FusionEngine()
    _fit_keystroke_by_quality(engine, _Scorer(), Path("unused"), list(range(PEOPLE)))
    return engine, split


def _deny_rate(engine: FusionEngine, split: dict[int, Any], n: int) -> float:
    """Share of owner windows of `n` keys that decisions read and whose LLR reaches the deny level."""
    scorer, floor, deny = _Scorer(), default_policy().min_quality, default_policy().tiers[0].deny_llr
    llrs = []
    for s, (_, X, q, keys) in split.items():
        for x, qq in zip(X[keys == n], q[keys == n]):
            if qq >= floor:
                ev = ModalityEvidence("keystroke", float(scorer.compare(s, x[None])[0]), float(qq))
                llrs.append(engine.calibrate(ev).llr)
    return float(np.mean(np.array(llrs) <= deny))


def test_short_owner_windows_are_not_read_as_strong_evidence_against_the_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    qualities = {30: 0.22, 50: 0.3, 70: 0.36, 100: 0.45}  # BB-MAS medians rise with the keys (all read here)
    engine, split = _fit(monkeypatch, qualities)
    cal = engine.calibrators["keystroke"]
    assert cal.use_quality and engine.report["keystroke"]["quality_aware"] == {"window_keys": list(LENGTHS),
                                                                                 "min_quality": default_policy().min_quality}
    # the same score is weaker evidence from a shorter window, on both sides
    assert abs(cal.llr_one(-1.0, 0.22)) < abs(cal.llr_one(-1.0, 0.45))
    assert cal.llr_one(2.5, 0.22) < cal.llr_one(2.5, 0.45)
    quality_aware = _deny_rate(engine, split, 30)
    assert quality_aware <= 0.02, quality_aware

    # the calibrator this replaces: the scores of 100-key windows alone, quality not used
    full = [(s, X[keys == 100]) for s, (_, X, _, keys) in split.items()]
    scorer = _Scorer()
    gen = np.concatenate([scorer.compare(s, X) for s, X in full])
    imp = np.concatenate([scorer.compare(t, X) for s, X in full for t in range(PEOPLE) if t != s])
    old = FusionEngine().fit_modality("keystroke", genuine=gen, impostor=imp)
    assert _deny_rate(old, split, 30) > 3 * max(quality_aware, 0.01)


def test_qualities_without_spread_fall_back_to_the_scores_and_say_so(monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    engine, _ = _fit(monkeypatch, {30: 0.5, 50: 0.5, 70: 0.5, 100: 0.5}, jitter=0.0)
    assert not engine.calibrators["keystroke"].use_quality
    assert engine.report["keystroke"]["quality_aware"] is False
    assert "quality-aware fit was refused" in caplog.text


def test_the_floor_survives_the_calibration_file_and_a_bad_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from fusion.calibration import LogisticCalibrator

    engine, _ = _fit(monkeypatch, {30: 0.22, 50: 0.3, 70: 0.36, 100: 0.45})
    d = engine.calibrators["keystroke"].to_dict()
    back = LogisticCalibrator.from_dict(d)
    assert back.quality_floor == default_policy().min_quality
    # below the floor a quality reads as the floor: the fit saw none there
    assert back.llr_one(-1.0, 0.05) == back.llr_one(-1.0, back.quality_floor) != back.llr_one(-1.0, 0.4)
    for bad in (1.0, -0.1, "0.2", float("nan")):
        with pytest.raises(ValueError, match="quality_floor"):
            LogisticCalibrator.from_dict({**d, "quality_floor": bad})
    # without its floor (a file written before floors existed reads qualities from 0) this line's slope
    # reverses below the qualities it was fitted on: refused, not served
    old = {k: v for k, v in d.items() if k != "quality_floor"}
    with pytest.raises(ValueError, match=r"reverses the evidence at quality 0\.\d+ .*inside \[0, 1\]"):
        LogisticCalibrator.from_dict(old)
