"""Protocols keep population training and evaluation subject-disjoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluation.protocols import (
    Fold,
    ScoreTable,
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
    a.mkdir(), b.mkdir()
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
