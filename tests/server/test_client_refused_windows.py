"""`server.client.features.features_for` skips a window that fails validation, in every modality.

Its docstring says so; the touch branch let a refused stroke raise, so one bad stroke cost the
whole recording (the demo's and load generator's enrolment with it).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import modalities.touch.features as touch_features
from evaluation.synthetic import SyntheticPerson
from modalities.events import EventValidationError, FeatureWindow
from modalities.touch.strokes import Stroke
from server.client.features import features_for


def test_a_refused_touch_stroke_is_skipped_and_logged_the_others_kept(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    stream = SyntheticPerson(3).touch(6, np.random.default_rng(3))
    every = features_for("touch", stream)
    assert len(every) >= 4
    real = touch_features.stroke_window
    refused_start = every[1].start

    def refusing(s: Stroke) -> FeatureWindow:  # the second stroke fails validation
        if s.start == refused_start:
            raise EventValidationError("values", "refused for the test")
        return real(s)

    monkeypatch.setattr(touch_features, "stroke_window", refusing)
    with caplog.at_level(logging.DEBUG, logger="server.client.features"):
        kept = features_for("touch", stream)
    assert [w.start for w in kept] == [w.start for w in every if w.start != refused_start]
    assert all(np.array_equal(a.values, b.values) for a, b in zip(kept, [w for w in every if w.start != refused_start]))
    assert "refused for the test" in caplog.text


def test_a_refused_keystroke_window_is_skipped_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The keystroke branch already kept its promise: the same behaviour, for comparison."""
    import server.client.features as client_features

    keys = SyntheticPerson(3).keystrokes(400, np.random.default_rng(3))
    every = features_for("keystroke", keys)
    real = client_features.window_features
    calls = iter(range(len(every)))

    def refusing(modality: str, events: object) -> FeatureWindow:
        if next(calls) == 1:
            raise EventValidationError("events", "refused for the test")
        return real(modality, events)  # type: ignore[arg-type]

    monkeypatch.setattr(client_features, "window_features", refusing)
    assert [w.start for w in features_for("keystroke", keys)] == [w.start for i, w in enumerate(every) if i != 1]
