"""Edge cases of the modalities a demanding caller hits: each is a clear error naming the problem, or finite features.

Found in review (branch review/modalities); each test failed before its fix.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from modalities.events import AccelSeries, EventValidationError
from modalities.gait.features import BLOCKS, N_STATS, walking_windows, window_features, windows_for_subject
from modalities.keystroke.learned import FusedScorer, LikelihoodRatioScorer
from tests.modalities.gait_synth import person, walk
from tests.modalities.test_keystroke_scorers import cmu_like


@pytest.fixture(scope="module")
def long_walk() -> AccelSeries:
    return walk(person(11), 20, 50.0, seed=3)


@pytest.mark.parametrize("window_s", [2.0, 1.0])
def test_walking_windows_refuses_a_window_too_short_to_describe(long_walk: AccelSeries, window_s: float) -> None:
    """20 s of walking cut in 2 s windows gave [] without a word: every window was refused inside."""
    with pytest.raises(ValueError, match="window_s must be at least 3 s"):
        walking_windows(long_walk, window_s)
    with pytest.raises(ValueError, match="window_s must be at least 3 s"):
        windows_for_subject([long_walk], window_s)


@pytest.mark.parametrize("hop_s", [0.01, -1.0])
def test_a_hop_under_one_sample_is_refused_naming_hop_s(long_walk: AccelSeries, hop_s: float) -> None:
    """A hop that rounds to 0 samples failed with ``range() arg 3 must not be zero`` (or no window at all)."""
    with pytest.raises(ValueError, match="hop_s"):
        windows_for_subject([long_walk], 5.0, hop_s=hop_s)
    if hop_s > 0:
        with pytest.raises(ValueError, match="hop_s must be at least one sample"):
            walking_windows(long_walk, 5.0, hop_s=hop_s)


@pytest.mark.parametrize("window_s", [0.0, -5.0, float("nan")])
def test_windows_for_subject_refuses_a_window_length_of_no_seconds(long_walk: AccelSeries, window_s: float) -> None:
    """0 s failed inside ``range()``; a negative or NaN length gave an empty result as if nobody walked."""
    with pytest.raises(ValueError, match="window_s"):
        windows_for_subject([long_walk], window_s)


def test_valid_gait_windows_are_unchanged(long_walk: AccelSeries) -> None:
    """The check refuses only what gave no window: 5 s windows still come out, as many as before."""
    sw = windows_for_subject([long_walk], 5.0)
    ws = walking_windows(long_walk, 5.0)
    assert len(sw) > 0 and len(ws) == len(sw)
    np.testing.assert_allclose(np.vstack([w.values for w in ws]), sw.X)


def test_llr_fit_without_within_person_spread_is_refused_and_keeps_the_fitted_model() -> None:
    """One window per subject made W = 0: a bare ``LinAlgError: Singular matrix``.

    It was raised after the standardiser and cohort of the new data were already set beside the
    previous fit's covariances; copies of one window each fitted silently, inverting rounding noise.
    """
    X, y = cmu_like(n_subjects=6, n_reps=20)
    s = LikelihoodRatioScorer().fit(X, y)
    before = {k: v.copy() for k, v in s.get_state().items()}
    tmpl = s.enroll(X[y == 0][:10])
    scores = s.compare(tmpl, X[:5])
    one_each = np.flatnonzero(np.r_[True, y[1:] != y[:-1]])  # the first window of each subject
    Xo = X[one_each] * 1.5  # another population, so a half-updated model would score differently
    for scorer in (s, FusedScorer()):
        with pytest.raises(EventValidationError, match="no subject has two different windows") as e:
            scorer.fit(Xo, y[one_each])
        assert e.value.field == "values"
    with pytest.raises(EventValidationError, match="no subject has two different windows"):
        LikelihoodRatioScorer().fit(np.repeat(Xo, 3, axis=0), np.repeat(y[one_each], 3))  # identical windows
    after = s.get_state()
    assert sorted(after) == sorted(before)
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)
    np.testing.assert_array_equal(s.compare(tmpl, X[:5]), scores)


def test_a_constant_accelerometer_gives_finite_features_without_numpy_warnings() -> None:
    """An emulator or a still phone reading exactly (0, 9.776, 0.813) spewed numpy warnings.

    log(0) of the flat x axis's kurtosis: ``RuntimeWarning: divide by zero encountered in log`` per window.
    """
    t = np.arange(500) / 50.0
    still = AccelSeries(t, np.tile([0.0, 9.776, 0.813], (t.size, 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = window_features(still)
        sw = windows_for_subject([still], 5.0, detect_walking=False)
    assert np.isfinite(w.values).all() and w.quality == 0.0
    assert len(sw) > 0 and np.isfinite(sw.X).all()
    raw_x = BLOCKS["raw"].start  # the x axis's channel features: log sd, ..., skew, log kurtosis
    assert w.values[raw_x + N_STATS - 1] == 0.0  # what nan_to_num made of -inf before: numbers unchanged


def test_gait_lda_on_windows_that_do_not_vary_or_one_per_subject_is_a_clear_error() -> None:
    """All-constant features were an IndexError from inside scikit-learn; one window per subject its LDA's error."""
    from modalities.gait import FEATURE_DIM, GaitLDA

    with pytest.raises(EventValidationError, match="^values: every window has the same features"):
        GaitLDA().fit(np.zeros((60, FEATURE_DIM)), np.repeat(np.arange(6), 10))
    one_each = np.random.default_rng(0).normal(size=(6, FEATURE_DIM))
    with pytest.raises(EventValidationError, match=r"^subjects: need more windows \(6\) than subjects \(6\)"):
        GaitLDA().fit(one_each, np.arange(6))


@pytest.mark.parametrize("kind", ["PLDATouch", "FusedTouch"])
def test_touch_population_scorers_refuse_strokes_that_do_not_vary_and_keep_their_fit(kind: str) -> None:
    """Identical strokes were a bare LinAlgError, and a failed refit left a half-replaced model.

    The standardiser (PLDATouch) or the members (FusedTouch) were replaced before the error
    ("leading minor ... not positive definite"): a model mixing two fits, or an unfitted one.
    """
    import modalities.touch as touch

    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, touch.FEATURE_DIM))
    X[:, 0] = rng.uniform(-np.pi, np.pi, 120)  # stroke directions spread over the classes
    y = np.repeat(np.arange(6), 20)
    scorer = getattr(touch, kind)().fit(X, y)
    before = {k: v.copy() for k, v in scorer.get_state().items()}
    with pytest.raises(EventValidationError, match="^values: touch-plda cannot learn from these strokes"):
        scorer.fit(np.ones((120, touch.FEATURE_DIM)), y)
    after = scorer.get_state()
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)
