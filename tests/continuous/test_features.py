import numpy as np
import pytest

from continuous.features import (
    KEY_CATEGORIES,
    PCAEncoder,
    WindowFeaturizer,
    jitter_window,
    key_category,
    running_features,
    summary_features,
    window_starts,
)
from modalities.events import EventValidationError, KeySequence
from tests.continuous.conftest import make_sequence


def test_running_features_from_events() -> None:
    seq = KeySequence(np.array(["a", "space", "Q"], dtype=object), np.array([0.0, 0.3, 0.5]), np.array([0.1, 0.35, 0.6]))
    rf = running_features(seq, ("key_category", "hold", "flight", "dd"))
    assert rf.shape == (3, 4)
    assert rf[:, 0].tolist() == [KEY_CATEGORIES.index("a"), KEY_CATEGORIES.index("space"), KEY_CATEGORIES.index("letter")]
    np.testing.assert_allclose(rf[:, 1], [0.1, 0.05, 0.1])
    np.testing.assert_allclose(rf[:, 2], [0.0, 0.2, 0.15])
    np.testing.assert_allclose(rf[:, 3], [0.0, 0.3, 0.2])


def test_key_categories_and_summary() -> None:
    assert key_category("enter") == key_category("return") == KEY_CATEGORIES.index("enter")
    assert key_category("7") == KEY_CATEGORIES.index("digit")
    assert key_category(".") == KEY_CATEGORIES.index("punctuation")
    assert key_category("lshift") == KEY_CATEGORIES.index("other")
    keys = np.array(["space", "a", "enter", "space"], dtype=object)
    s = summary_features(keys, np.array([1.0, 1.5, 2.0, 4.0]), ("duration", "space_count", "enter_count"))
    assert s.tolist() == [3.0, 2.0, 1.0]


def test_window_starts_hop() -> None:
    assert window_starts(250, 100, 50).tolist() == [0, 50, 100, 150]
    assert window_starts(99, 100, 50).size == 0


@pytest.mark.parametrize("mode", ["interval_offset", "per_event"])
def test_jitter_keeps_holds_and_order_and_stays_within_bounds(mode: str) -> None:
    seq = make_sequence(100, seed=3)
    j = jitter_window(seq, np.random.default_rng(0), 0.025, mode)
    np.testing.assert_allclose(j.release - j.press, seq.release - seq.press)
    assert np.all(np.diff(j.press) >= 0)
    if mode == "interval_offset":
        d = np.diff(j.press) - np.diff(seq.press)
        assert np.ptp(d[np.diff(seq.press) > 0.03]) < 1e-9  # one offset for every interval
        assert 0 < abs(d[0]) <= 0.025
    else:
        assert np.max(np.abs(j.press - seq.press)) <= 0.025 * 100  # monotone fix-up only moves forward
    assert not np.allclose(j.press, seq.press)


def test_featurizer_is_window_local_and_pca_has_the_papers_shape() -> None:
    seq = make_sequence(400, seed=4)
    f = WindowFeaturizer(("key_category", "hold", "flight", "dd"), ("duration", "space_count", "enter_count"), 100, 10)
    f.fit(seq, stride=1)
    assert f.dim == 13
    obs = f.observations(seq, np.array([0, 50]))
    assert obs.shape == (2, 13) and obs.dtype == np.float32
    # an observation depends only on its own window's events
    np.testing.assert_allclose(f.observe(seq[50:150]), obs[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(EventValidationError, match="keys"):
        f.observe(seq[:99])
    with pytest.raises(EventValidationError, match="starts"):
        f.observations(seq, np.array([350]))


def test_pca_recovers_the_dominant_direction() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 1)) * np.array([[3.0, 0.0, 0.0]]) + rng.normal(scale=0.01, size=(200, 3))
    enc = PCAEncoder.fit(X, 2)
    assert abs(enc.components[0, 0]) > 0.99
    assert enc.transform(X).shape == (200, 2)
