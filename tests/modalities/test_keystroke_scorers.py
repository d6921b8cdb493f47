"""Keystroke scorers: genuine beats impostor, enrol/compare separate, save/load round trips."""

from __future__ import annotations

import numpy as np
import pytest

from modalities.base import ModelVersionError, Scorer, ScorerDetector
from modalities.events import EventValidationError
from modalities.keystroke import FEATURE_DIM, default_scorer, train_scorer
from modalities.keystroke.detectors import ONE_CLASS, ManhattanScaledDetector
from modalities.keystroke.learned import LEARNED, BackgroundSVMScorer, LikelihoodRatioScorer, log_timing


def cmu_like(n_subjects: int = 8, n_reps: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-text vectors (11 keys, CMU layout) of typists with their own rhythm."""
    rng = np.random.default_rng(seed)
    X, y = [], []
    for s in range(n_subjects):
        hold = rng.uniform(0.06, 0.14, 11)
        dd = rng.uniform(0.12, 0.45, 10)
        for _ in range(n_reps):
            h = hold * np.exp(rng.normal(0, 0.12, 11))
            d = dd * np.exp(rng.normal(0, 0.15, 10))
            v = np.empty(31)
            v[0::3], v[1::3] = h, d
            v[2::3] = d - h[:-1]
            X.append(v)
            y.append(s)
    return np.array(X), np.array(y)


def all_scorers() -> list[Scorer]:
    return [cls() for cls in ONE_CLASS.values()] + [cls() for cls in LEARNED.values()]


@pytest.mark.parametrize("scorer", all_scorers(), ids=lambda s: s.name)
def test_genuine_scores_above_impostors_and_save_load(scorer: Scorer, tmp_path) -> None:
    X, y = cmu_like()
    train = y >= 4
    scorer.fit(X[train], y[train])
    ev = X[y == 0]
    tmpl = scorer.enroll(ev[:30])
    gen = scorer.compare(tmpl, ev[30:])
    imp = scorer.compare(tmpl, X[(y > 0) & (y < 4)])
    assert gen.shape == (30,) and np.all(np.isfinite(imp))
    assert np.median(gen) > np.percentile(imp, 90)
    path = tmp_path / "m.npz"
    scorer.save(path)
    again = Scorer.load(path)
    assert type(again) is type(scorer)
    np.testing.assert_allclose(again.compare(tmpl, ev[30:]), gen, rtol=1e-9)


def test_population_scorers_need_subject_labels() -> None:
    X, _ = cmu_like()
    with pytest.raises(EventValidationError, match="subjects"):
        LikelihoodRatioScorer().fit(X)
    with pytest.raises(ModelVersionError, match="not fitted"):
        BackgroundSVMScorer().enroll(X[:10])


def test_wrong_dimension_and_version_are_refused(tmp_path) -> None:
    X, y = cmu_like()
    det = ManhattanScaledDetector()
    tmpl = det.enroll(X[:20])
    with pytest.raises(EventValidationError, match="values"):
        det.compare(tmpl, X[:5, :30])
    with pytest.raises(EventValidationError, match="values"):
        log_timing(np.zeros((3, 30)))
    s = LikelihoodRatioScorer().fit(X, y)
    s.save(tmp_path / "m.npz")
    LikelihoodRatioScorer.version = "999"
    try:
        with pytest.raises(ModelVersionError, match="version"):
            Scorer.load(tmp_path / "m.npz")
    finally:
        LikelihoodRatioScorer.version = "1"


def test_scale_floor_keeps_coarse_clock_scores_finite() -> None:
    X, _ = cmu_like(1, 20)
    Xq = np.round(X / 0.015625) * 0.015625  # BB-MAS-like ticks: many features constant
    Xq[:, 0] = Xq[0, 0]
    det = ManhattanScaledDetector()
    tmpl = det.enroll(Xq)
    assert tmpl["scale"].min() >= det.min_scale
    assert np.all(np.isfinite(det.compare(tmpl, Xq + 0.015625)))


def test_sklearn_style_wrapper_accepts_keystroke_detectors() -> None:
    X, y = cmu_like()
    est = ScorerDetector(default_scorer()).fit(X[y == 0])
    assert np.mean(est.predict(X[y == 0]) == 1) > 0.9
    assert np.mean(est.predict(X[y == 1]) == -1) > 0.9


def test_train_scorer_on_real_windows(data_dir, tmp_path) -> None:
    from evaluation.datasets import available_subjects, load_bbmas_keystrokes
    from modalities.keystroke import window_matrix

    subs = available_subjects(data_dir, "keystroke")
    scorer = train_scorer(data_dir, subs[:6])
    held = load_bbmas_keystrokes(data_dir, subs[6:8])
    (a, qa), (b, qb) = held.items()
    Xa, Xb = window_matrix(qa, 100), window_matrix(qb, 100)
    assert Xa.shape[1] == FEATURE_DIM
    tmpl = scorer.enroll(Xa[: len(Xa) // 2])
    gen, imp = scorer.compare(tmpl, Xa[len(Xa) // 2:]), scorer.compare(tmpl, Xb)
    assert np.mean(gen) > np.mean(imp)
    scorer.save(tmp_path / "ks.npz")
    np.testing.assert_allclose(Scorer.load(tmp_path / "ks.npz").compare(tmpl, Xb), imp, rtol=1e-9)
