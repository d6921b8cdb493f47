"""Protocols keep population training and evaluation subject-disjoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluation.protocols import (
    Fold,
    ScoreTable,
    adaptive_trials,
    chronological_split,
    resolve_folds,
    sliding_windows,
    subject_folds,
    zero_effort_trials,
)


def test_subject_folds_are_disjoint_and_cover() -> None:
    subs = list(range(1, 40))
    folds = subject_folds(subs, k=3, seed=5)
    evals = [set(e) for _, e in folds]
    assert set().union(*evals) == set(subs)
    for tr, ev in folds:
        assert not set(tr) & set(ev) and set(tr) | set(ev) == set(subs)
    assert subject_folds(subs, 3, 5) == folds  # seeded


def test_fold_refuses_overlap(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both train and eval"):
        Fold(0, tmp_path, (1, 2), tmp_path, (2, 3))


def test_resolve_folds_on_data(data_dir: Path, tmp_path: Path) -> None:
    folds = resolve_folds("gait", data_dir=data_dir, k=2, seed=0)
    assert len(folds) == 2 and not set(folds[0].train_subjects) & set(folds[0].eval_subjects)
    quick = resolve_folds("gait", data_dir=data_dir, k=2, max_subjects=10)
    assert len(quick[0].train_subjects) + len(quick[0].eval_subjects) == 10
    # explicit train/eval folders: all of A trains, all of B evaluates
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    src = sorted((data_dir / "bbmas_phone_gait").glob("*_PocketPhone_*"))
    for f in src[:3]:
        (a / f.name).symlink_to(f)
    for f in src[3:5]:
        (b / f.name).symlink_to(f)
    (f0,) = resolve_folds("gait", train_dir=a, eval_dir=b)
    assert len(f0.train_subjects) == 3 and len(f0.eval_subjects) == 2
    with pytest.raises(ValueError, match="go together"):
        resolve_folds("gait", train_dir=a)


def test_chronological_and_windows() -> None:
    enrol, test = chronological_split(10, 0.5)
    assert (enrol.stop, test.start, test.stop) == (5, 5, 10)
    w = sliding_windows(100, 50)
    assert [(s.start, s.stop) for s in w] == [(0, 50), (25, 75), (50, 100)]
    with pytest.raises(ValueError):
        chronological_split(10, 1.0)


def _windows(k: int):
    """Window scores that are the template itself: one per k items."""

    def score(template: float, X: np.ndarray) -> np.ndarray:
        return np.full(len(X) // k, float(template))

    return score


def test_adaptive_trials_score_before_update_and_match_impostors_in_time() -> None:
    """Genuine window j meets the template after j updates; impostor window j of m the one after j*n//m."""
    k = 2
    enrolment = {1: np.zeros((4, 3)), 2: np.zeros((6, 3)), 3: np.zeros((4, 3))}
    tests = {1: np.zeros((8, 3)), 2: np.zeros((4, 3)), 3: np.zeros((9, 3))}  # 4, 2 and 4 windows of 2
    # the template is the number of enrolled items, so a score says which state scored it
    out = adaptive_trials(enroll=lambda E: float(len(E)), window_scores=_windows(k),
                          enrolment=enrolment, tests=tests, k=k)
    assert set(out) == {(s, p) for s in tests for p in tests}
    np.testing.assert_array_equal(out[(1, 1)], [4, 6, 8, 10])  # scored first, then enrolled
    np.testing.assert_array_equal(out[(2, 2)], [6, 8])
    np.testing.assert_array_equal(out[(3, 3)], [4, 6, 8, 10])  # the ninth item is no window
    # template 1 (4 windows) against subject 2's 2 windows: states after 0 and 2 updates
    np.testing.assert_array_equal(out[(1, 2)], [4, 8])
    # template 2 (2 windows) against subject 1's 4 windows: after 0, 0, 1, 1 updates
    np.testing.assert_array_equal(out[(2, 1)], [6, 6, 8, 8])
    # no state after the owner's last window is ever used on an impostor
    assert max(out[(1, 3)]) < 4 + 2 * 4


def test_adaptive_trials_templates_learn_only_from_their_owner() -> None:
    """A drifting owner scores higher once adapted; what impostors present changes no template."""
    rng = np.random.default_rng(0)
    k = 5
    drift = np.linspace(0, 3, 60)[:, None] * np.array([[1.0, 0.0]])
    owner = rng.normal(size=(60, 2)) * 0.3 + drift  # moves away from where it enrolled
    enrolment = {1: owner[:20], 2: rng.normal(size=(20, 2)) * 0.3 + [0, 3]}
    tests = {1: owner[20:], 2: rng.normal(size=(40, 2)) * 0.3 + [0, 3]}

    def score(template: np.ndarray, X: np.ndarray) -> np.ndarray:
        return -np.linalg.norm(X.reshape(-1, k, 2).mean(axis=1) - template, axis=1)

    def recent_mean(E: np.ndarray) -> np.ndarray:
        return E[-10:].mean(axis=0)

    out = adaptive_trials(enroll=recent_mean, window_scores=score, enrolment=enrolment, tests=tests, k=k)
    static = score(recent_mean(enrolment[1]), tests[1])
    assert out[(1, 1)][0] == pytest.approx(static[0])  # nothing seen yet
    assert out[(1, 1)][-3:].mean() > static[-3:].mean() + 1.0  # followed the drift
    moved = {**tests, 2: tests[2] + 50.0}
    again = adaptive_trials(enroll=recent_mean, window_scores=score, enrolment=enrolment, tests=moved, k=k)
    np.testing.assert_allclose(again[(1, 1)], out[(1, 1)])
    assert not np.allclose(again[(1, 2)], out[(1, 2)])  # the impostor's windows did change
    with pytest.raises(ValueError):
        adaptive_trials(enroll=recent_mean, window_scores=score, enrolment=enrolment, tests=tests, k=0)


def test_adaptive_trials_follow_the_servers_adaptation_rules() -> None:
    """Only windows `adapts` accepts adapt, with their first `max_adapt` items; the enrolment is cut by `evict`."""
    from functools import partial

    from server.services.enrolment import evicted

    def enroll(E: np.ndarray) -> float:  # plain items are 0, adapted ones 1: the template says how many of each
        return float(100 * np.sum(E[:, 0] == 0) + np.sum(E[:, 0] == 1))

    verdicts = iter([True, False, True, True, True])
    seen: list[float] = []

    def adapts(score: float) -> bool:
        seen.append(score)
        return next(verdicts)

    out = adaptive_trials(enroll=enroll, window_scores=_windows(3), enrolment={1: np.zeros((6, 1)), 2: np.zeros((9, 1))},
                          tests={1: np.ones((15, 1)), 2: np.ones((2, 1))}, k=3, adapts=adapts, max_adapt=2,
                          evict=partial(evicted, cap=7, adapted_cap=3))
    # 6 plain; +2 adapted (the plain enrolment's oldest makes room); not adapted; +2, the adapted
    # share (3) reached: the oldest adapted and one more plain go; +2: the oldest adapted go
    np.testing.assert_array_equal(out[(1, 1)], [600, 502, 502, 403, 403])
    assert seen == [600, 502, 502, 403, 403]  # each owner window's own score decides
    np.testing.assert_array_equal(out[(2, 2)], [])  # a plain enrolment past the cap keeps its newest 7 ...
    np.testing.assert_array_equal(out[(2, 1)], [700] * 5)  # ... and meets impostors so
    assert (1, 2) not in out  # subject 2 has no whole test window
    with pytest.raises(ValueError):
        adaptive_trials(enroll=enroll, window_scores=_windows(3), enrolment={1: np.zeros((6, 1))},
                        tests={1: np.ones((3, 1))}, k=3, max_adapt=0)


def test_score_table_roundtrip_and_trials(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    probes = {s: rng.normal(s, 0.1, size=(6, 3)) for s in (1, 2, 3)}
    templates = {s: probes[s][:3].mean(axis=0) for s in probes}
    t = ScoreTable()
    zero_effort_trials(t, method="m", window="w", modality="gait", templates=templates, probes=probes,
                       score=lambda tm, x: -np.abs(x - tm).sum(axis=1), max_impostor_probes=2)
    sel = t.select("m", "w")
    assert sel["genuine"].size == 18 and sel["impostor"].size == 3 * 2 * 2
    assert sel["genuine"].min() > sel["impostor"].max()
    t.to_csv(tmp_path / "s.csv")
    back = ScoreTable.from_csv(tmp_path / "s.csv")
    assert back.rows == t.rows
    with pytest.raises(ValueError, match="non-finite"):
        t.add(method="m", window="w", modality="gait", template_subject=1, probe_subject=1, scores=[np.nan])
