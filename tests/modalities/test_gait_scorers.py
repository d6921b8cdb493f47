"""Gait scorers: population fit on synthetic walkers, enrolment, comparison, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from modalities.base import ModelVersionError, Scorer
from modalities.events import EventValidationError
from modalities.gait import FEATURE_DIM, GaitFusion, GaitLDA, default_scorer, moving_mean, windows_for_subject
from tests.modalities.gait_synth import person, rotation, walk


@pytest.fixture(scope="module")
def population() -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """12 synthetic people, two sessions each with a slightly different phone pose: (enrol, test)."""
    out = {}
    for s in range(12):
        p = person(100 + s)
        rng = np.random.default_rng(s)
        pose = rotation(rng)
        segs = [walk(p, 40, 50.0, seed=2 * s, pose=pose, noise=0.6),
                walk(p, 40, 50.0, t0=3600.0, seed=2 * s + 1, pose=pose, noise=0.6)]
        sw = windows_for_subject(segs, 5.0)
        e, t = sw.chronological()
        out[s] = (sw.X[e], sw.X[t])
    return out


def _eer_like(scorer: Scorer, pop: dict[int, tuple[np.ndarray, np.ndarray]], subjects: list[int]) -> float:
    """Fraction of (genuine, impostor) pairs ranked wrongly: 0 is perfect, 0.5 is chance."""
    gen, imp = [], []
    for s in subjects:
        t = scorer.enroll(pop[s][0])
        for p in subjects:
            (gen if p == s else imp).append(scorer.compare(t, pop[p][1]))
    g, i = np.concatenate(gen), np.concatenate(imp)
    return float(np.mean(g[:, None] <= i[None, :]))


def test_population_scorers_separate_unseen_people(population) -> None:
    train, evals = list(range(8)), list(range(8, 12))
    X = np.vstack([np.vstack(population[s]) for s in train])
    y = np.concatenate([np.full(len(population[s][0]) + len(population[s][1]), s) for s in train])
    for scorer in (GaitLDA(n_pca=40, n_lda=7), GaitFusion(views={"a": (("inv", "cycle"), 30), "b": (("raw",), 30)})):
        scorer.fit(X, y)
        assert _eer_like(scorer, population, evals) < 0.1
    assert _eer_like(default_scorer(), population, evals) < 0.2


def test_fusion_save_load_round_trip(tmp_path, population) -> None:
    X = np.vstack([np.vstack(population[s]) for s in range(6)])
    y = np.concatenate([np.full(len(population[s][0]) + len(population[s][1]), s) for s in range(6)])
    m = GaitFusion(views={"a": (("inv", "cycle"), 30), "b": (("raw",), 20)}).fit(X, y)
    path = tmp_path / "gait.npz"
    m.save(path)
    m2 = Scorer.load(path)
    assert isinstance(m2, GaitFusion)
    t = m.enroll(population[7][0])
    np.testing.assert_allclose(m2.compare(t, population[7][1]), m.compare(t, population[7][1]))
    assert path.stat().st_size < 1_000_000


def test_regularisation_and_adaptive_norm_are_saved_and_used(tmp_path, population) -> None:
    """C and the s-norm cohort fractions travel with the model file and change enrolment/scores."""
    X = np.vstack([np.vstack(population[s]) for s in range(6)])
    y = np.concatenate([np.full(len(population[s][0]) + len(population[s][1]), s) for s in range(6)])
    a = GaitLDA(n_pca=20, template="logreg", C=0.1).fit(X, y)
    b = GaitLDA(n_pca=20, template="logreg", C=10.0).fit(X, y)
    ta, tb = a.enroll(population[7][0]), b.enroll(population[7][0])
    # stronger regularisation: a smaller weight vector on the same embedding
    assert np.linalg.norm(ta["w"]) < np.linalg.norm(tb["w"])
    c = GaitLDA(n_pca=20, template="logreg", C=0.1, z_top=0.1, t_top=0.5).fit(X, y)
    tc = c.enroll(population[7][0])
    # z-norm over the top background scores only: a higher mean than over all of them
    assert tc["znorm"][0] > ta["znorm"][0]
    assert not np.allclose(c.compare(tc, population[7][1]), a.compare(ta, population[7][1]))
    path = tmp_path / "lda.npz"
    c.save(path)
    c2 = Scorer.load(path)
    assert c2.get_params()["C"] == 0.1 and c2.get_params()["t_top"] == 0.5
    np.testing.assert_allclose(c2.compare(tc, population[7][1]), c.compare(tc, population[7][1]))


def test_load_refuses_another_version(tmp_path, population, monkeypatch) -> None:
    X = np.vstack([np.vstack(population[s]) for s in range(4)])
    y = np.concatenate([np.full(len(population[s][0]) + len(population[s][1]), s) for s in range(4)])
    path = tmp_path / "lda.npz"
    GaitLDA(n_pca=20).fit(X, y).save(path)
    monkeypatch.setattr(GaitLDA, "version", "999")
    with pytest.raises(ModelVersionError):
        Scorer.load(path)


def test_bad_input_is_refused_with_the_field_named(population) -> None:
    m = GaitLDA(n_pca=20)
    with pytest.raises(ModelVersionError):
        m.compare({"w": np.zeros(3), "b": np.zeros(1), "znorm": np.ones(2)}, population[0][1])
    X = np.vstack([population[s][0] for s in range(2)])
    with pytest.raises(EventValidationError) as e:
        m.fit(X, np.repeat([0, 1], [len(population[0][0]), len(population[1][0])]))
    assert e.value.field == "subjects"
    with pytest.raises(EventValidationError):
        default_scorer().enroll(np.zeros((5, FEATURE_DIM - 1)))


def test_moving_mean_accumulates_evidence() -> None:
    np.testing.assert_allclose(moving_mean(np.array([1.0, 2.0, 3.0, 4.0]), 3), [2.0, 3.0])
    assert moving_mean(np.array([1.0, 2.0]), 3).size == 0
    np.testing.assert_allclose(moving_mean(np.array([1.0, 2.0]), 1), [1.0, 2.0])


def test_package_contract_and_train_scorer_on_real_data(data_dir, tmp_path) -> None:
    import modalities.gait as gait
    from evaluation.datasets import available_subjects
    from modalities.gait.data import load_windows

    assert isinstance(gait.FEATURE_VERSION, str) and gait.FEATURE_DIM == len(gait.window_features(walk(person(1), 10, 100.0)).values)
    subs = available_subjects(data_dir, "gait")[:5]
    train, probe = subs[:4], subs[4]
    m = gait.train_scorer(data_dir, subjects=train)
    path = tmp_path / "gait.npz"
    m.save(path)
    m2 = Scorer.load(path)
    sw = load_windows(data_dir, [probe], 10.0)[probe]
    e, t = sw.chronological()
    tmpl = m2.enroll(sw.X[e])
    other = load_windows(data_dir, [train[0]], 10.0)[train[0]].X
    genuine, impostor = m2.compare(tmpl, sw.X[t]), m2.compare(tmpl, other)
    assert np.median(genuine) > np.median(impostor)
