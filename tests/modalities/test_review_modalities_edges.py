"""Edge cases of the modalities a demanding caller hits: each is a clear error naming the problem, or finite features.

Found in review (branch review/modalities); each test failed before its fix.
"""

from __future__ import annotations

import numpy as np
import pytest

from modalities.events import AccelSeries
from modalities.gait.features import walking_windows, windows_for_subject
from tests.modalities.gait_synth import person, walk


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
