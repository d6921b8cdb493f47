"""Event and feature types refuse malformed input with an error naming the field."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modalities.events import (
    AccelSample,
    AccelSeries,
    EventValidationError,
    FeatureWindow,
    KeyEvent,
    KeySequence,
    TouchAction,
    TouchEvent,
    TouchStream,
    stack_values,
)


def test_key_event_valid_and_roundtrip() -> None:
    seq = KeySequence.from_events([KeyEvent("a", 0.0, 0.1), KeyEvent("b", 0.2, 0.25)])
    assert len(seq) == 2
    assert seq.to_events()[1] == KeyEvent("b", 0.2, 0.25)
    assert len(seq[1:]) == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"key": "a", "press": math.nan, "release": 1.0}, "press"),
        ({"key": "a", "press": 0.0, "release": math.inf}, "release"),
        ({"key": "a", "press": 1.0, "release": 0.5}, "release"),
        ({"key": "", "press": 0.0, "release": 0.5}, "key"),
    ],
)
def test_key_event_rejects(kwargs: dict, field: str) -> None:
    with pytest.raises(EventValidationError) as e:
        KeyEvent(**kwargs)
    assert e.value.field == field
    assert field in str(e.value)


def test_key_sequence_rejects_unsorted_and_empty() -> None:
    with pytest.raises(EventValidationError, match="press.*sorted"):
        KeySequence(np.array(["a", "b"], dtype=object), np.array([1.0, 0.5]), np.array([1.1, 0.6]))
    with pytest.raises(EventValidationError, match="empty"):
        KeySequence(np.array([], dtype=object), np.array([]), np.array([]))
    with pytest.raises(EventValidationError, match="release"):
        KeySequence(np.array(["a"], dtype=object), np.array([1.0]), np.array([0.9]))


def test_touch_event_and_stream() -> None:
    ev = [
        TouchEvent(0.0, 10, 10, 0.5, 3, 2, TouchAction.DOWN),
        TouchEvent(0.01, 12, 20, 0.5, 3, 2, TouchAction.MOVE),
        TouchEvent(0.02, 14, 30, 0.5, 3, 2, 1),
    ]
    s = TouchStream.from_events(ev)
    assert list(s.action) == [0, 2, 1]
    assert s.to_events()[2].action is TouchAction.UP
    with pytest.raises(EventValidationError) as e:
        TouchEvent(0.0, 1, 1, -0.1, 1, 1, TouchAction.DOWN)
    assert e.value.field == "pressure"
    with pytest.raises(EventValidationError) as e:
        TouchEvent(0.0, 1, 1, 0.1, 1, 1, 9)
    assert e.value.field == "action"
    with pytest.raises(EventValidationError, match="time"):
        TouchStream.from_events(list(reversed(ev)))


def test_accel_series() -> None:
    s = AccelSeries.from_samples([AccelSample(0.0, 0, 0, 9.8), AccelSample(0.01, 0.1, 0, 9.7)])
    assert s.duration == pytest.approx(0.01)
    with pytest.raises(EventValidationError) as e:
        AccelSample(0.0, math.nan, 0, 0)
    assert e.value.field == "x"
    with pytest.raises(EventValidationError, match="xyz"):
        AccelSeries(np.array([0.0, 1.0]), np.zeros((2, 2)))
    with pytest.raises(EventValidationError, match="sorted"):
        AccelSeries(np.array([1.0, 0.0]), np.zeros((2, 3)))


def _fw(**over: object) -> FeatureWindow:
    base: dict = dict(modality="gait", feature_version="1", start=0.0, end=1.0, n_events=10, quality=0.5, values=np.ones(4))
    base.update(over)
    return FeatureWindow(**base)


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"modality": "iris"}, "modality"),
        ({"end": -1.0}, "end"),
        ({"n_events": 0}, "n_events"),
        ({"quality": 1.5}, "quality"),
        ({"values": np.array([1.0, np.nan])}, "values"),
        ({"values": np.array([])}, "values"),
        ({"feature_version": ""}, "feature_version"),
    ],
)
def test_feature_window_rejects(over: dict, field: str) -> None:
    with pytest.raises(EventValidationError) as e:
        _fw(**over)
    assert e.value.field == field


def test_feature_window_dict_roundtrip_and_stack() -> None:
    w = _fw()
    w2 = FeatureWindow.from_dict(w.to_dict())
    assert np.array_equal(w2.values, w.values) and w2.quality == w.quality
    assert stack_values([w, w2]).shape == (2, 4)
    with pytest.raises(EventValidationError, match="feature_version"):
        stack_values([w, _fw(feature_version="2")])
    with pytest.raises(EventValidationError) as e:
        FeatureWindow.from_dict({"modality": "gait"})
    assert e.value.field == "feature_version"


def test_key_sequence_refuses_a_string_or_2d_keys_naming_the_field() -> None:
    """A single string "ab" used to crash with IndexError instead of a validation error."""
    for keys in ("ab", [["a"], ["b"]]):
        with pytest.raises(EventValidationError) as e:
            KeySequence(keys, [0.0, 1.0], [0.1, 1.1])  # type: ignore[arg-type]
        assert e.value.field == "keys"


@pytest.mark.parametrize(
    ("d", "field"),
    [
        ([1, 2], "window"),
        (None, "window"),
        ({"n_events": "abc"}, "n_events"),
        ({"n_events": None}, "n_events"),
        ({"n_events": 1.7}, "n_events"),
        ({"n_events": True}, "n_events"),
        ({"values": ["a"]}, "values"),
    ],
)
def test_feature_window_from_dict_names_the_bad_field(d: object, field: str) -> None:
    """Device JSON used to raise bare TypeError/ValueError, or truncate n_events 1.7 to 1."""
    if isinstance(d, dict):
        d = {**_fw().to_dict(), **d}
    with pytest.raises(EventValidationError) as e:
        FeatureWindow.from_dict(d)  # type: ignore[arg-type]
    assert e.value.field == field


def test_feature_window_accepts_integral_n_events() -> None:
    assert FeatureWindow.from_dict({**_fw().to_dict(), "n_events": 3.0}).n_events == 3
    assert _fw(n_events=np.int64(7)).n_events == 7


def _stream(**over: object) -> TouchStream:
    cols: dict = dict(time=[0.0, 0.1, 0.2], x=[0.0, 50.0, 100.0], y=[0.0, 0.0, 0.0], pressure=[0.5] * 3,
                      touch_major=[3.0] * 3, touch_minor=[2.0] * 3, action=[0, 2, 1], pointer_id=[0, 0, 0])
    cols.update(over)
    return TouchStream(**cols)


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"action": [0, 261, 1]}, "action"),  # raw Android POINTER_DOWN: overflowed int8
        ({"action": np.array([0, 258, 1])}, "action"),  # used to wrap silently to MOVE
        ({"action": np.array([0.0, 2.0, 1.9])}, "action"),  # used to truncate to UP
        ({"action": ["0", "2", "1"]}, "action"),
        ({"pointer_id": [40000] * 3}, "pointer_id"),  # overflowed int16
        ({"pointer_id": np.array([0, 65536, 0])}, "pointer_id"),  # used to wrap to 0
        ({"pointer_id": [-1] * 3}, "pointer_id"),
        ({"pointer_id": [0.5] * 3}, "pointer_id"),
        ({"pressure": [0.5, -1.0, 0.5]}, "pressure"),
        ({"touch_major": [-5.0] * 3}, "touch_major"),
        ({"touch_minor": [-5.0] * 3}, "touch_minor"),
        ({"screen_width": "1080"}, "screen_width"),
        ({"screen_height": -1.0}, "screen_height"),
        ({"screen_height": math.nan}, "screen_height"),
    ],
)
def test_touch_stream_refuses_what_touch_event_refuses(over: dict, field: str) -> None:
    with pytest.raises(EventValidationError) as e:
        _stream(**over)
    assert e.value.field == field


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"action": 261}, "action"),
        ({"action": 1.9}, "action"),
        ({"action": "1"}, "action"),
        ({"pointer_id": 40000}, "pointer_id"),
        ({"pointer_id": 1.5}, "pointer_id"),
        ({"pointer_id": "a"}, "pointer_id"),
        ({"screen_width": "1080"}, "screen_width"),
        ({"screen_width": 0}, "screen_width"),
    ],
)
def test_touch_event_refuses_bad_codes_and_types(over: dict, field: str) -> None:
    kwargs: dict = dict(time=0.0, x=1.0, y=1.0, pressure=0.1, touch_major=1.0, touch_minor=1.0, action=0)
    kwargs.update(over)
    with pytest.raises(EventValidationError) as e:
        TouchEvent(**kwargs)
    assert e.value.field == field


def test_touch_stream_keeps_valid_codes_and_dtypes() -> None:
    s = _stream(action=np.array([0.0, 2.0, 1.0]), pointer_id=np.array([1, 1, 1], dtype=np.int64), screen_width=1440)
    assert s.action.dtype == np.int8 and list(s.action) == [0, 2, 1]
    assert s.pointer_id.dtype == np.int16 and s.screen_width == 1440.0
    ev = TouchEvent(0.0, 1, 1, 0.1, 1, 1, 5.0, pointer_id=np.int64(3))  # type: ignore[arg-type]
    assert ev.action is TouchAction.POINTER_DOWN and ev.pointer_id == 3
