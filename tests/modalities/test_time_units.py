"""Event times are seconds: real-data-shaped windows pass, the same in milliseconds are refused, saying so.

Milliseconds are what Android MotionEvent/KeyEvent and JavaScript event times are.

The windows are built here with the value ranges of the shared datasets (BB-MAS desktop keystrokes
on a 15.625 ms clock, CMU's password typings, BB-MAS HTC One touch samples on a 1 ms clock with
interpolated historical points, and their odd corners: a key held 311 s, a 35 s touch), not copied.
"""

from __future__ import annotations

import numpy as np
import pytest

from modalities import events
from modalities.events import (
    AccelSeries,
    EventValidationError,
    KeyEvent,
    KeySequence,
    TouchAction,
    TouchStream,
)
from modalities.gait import window_features as gait_window_features
from modalities.gait.signal import check_rate
from modalities.keystroke import window_features as key_window_features
from modalities.keystroke.features import fixed_text_vector, sequence_from_fixed_vector
from modalities.touch import stroke_windows
from modalities.touch import window_features as touch_window_features
from tests.modalities.gait_synth import person, walk

TICK = 0.015625  # BB-MAS desktop clock
KEYS = "the quick brown fox jumps over the lazy dog and then some more text typed at an ordinary pace ok"


def typing(n: int = 100, seed: int = 0) -> KeySequence:
    """`n` presses like a BB-MAS desktop window: holds 60-250 ms, press-to-press 100-500 ms, on its clock.

    With what real windows also hold: two pauses (4 s, 30 s), a press of 0 s and a key held 311 s
    (the longest hold in BB-MAS).
    """
    rng = np.random.default_rng(seed)
    hold = np.round(rng.uniform(0.06, 0.25, n) / TICK) * TICK
    dd = np.round(rng.uniform(0.10, 0.50, n - 1) / TICK) * TICK
    dd[[n // 10, 4 * n // 10]] = (4.0, 30.0)
    hold[n // 5], hold[3 * n // 5] = 0.0, 311.174
    press = 1234.5 + np.r_[0.0, np.cumsum(dd)]
    keys = np.array([("space" if c == " " else c) for c in (KEYS * 2)[:n]], dtype=object)
    return KeySequence(keys, press, press + hold)


def in_ms(seq: KeySequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return seq.keys, seq.press * 1000, seq.release * 1000


def test_typing_in_seconds_gives_features_and_in_milliseconds_is_refused() -> None:
    seq = typing()
    assert key_window_features(seq).values.shape[0] > 0
    with pytest.raises(EventValidationError, match=r"median key hold over 100 presses is 1\d\d(\.\d+)? s.*"
                                                   r"milliseconds.*divide them by 1000") as e:
        KeySequence(*in_ms(seq))
    assert e.value.field == "release"


def test_key_events_in_milliseconds_are_refused_as_one_sequence() -> None:
    """The collectors' path: single events cannot be judged, the sequence they make is."""
    ms = [KeyEvent(str(k), float(p), float(r)) for k, p, r in zip(*in_ms(typing(30, seed=1)))]
    with pytest.raises(EventValidationError, match="milliseconds"):
        KeySequence.from_events(ms)


def test_committed_text_in_milliseconds_is_refused_by_its_press_to_press_times() -> None:
    """Text a soft keyboard committed has holds of 0: the press-to-press times still show the unit."""
    seq = typing(40, seed=2)
    with pytest.raises(EventValidationError, match="median time from press to press.*milliseconds") as e:
        KeySequence(seq.keys, seq.press * 1000, seq.press * 1000)
    assert e.value.field == "press"


def test_a_few_keys_are_not_judged() -> None:
    """BB-MAS holds 2-key stretches with both keys held 12.7 s: fewer than 10 presses can time anything."""
    KeySequence(np.array(["shift", "a"], dtype=object), np.array([0.0, 0.3]), np.array([12.7, 13.1]))
    with pytest.raises(EventValidationError, match="milliseconds"):
        KeySequence(*in_ms(typing(10)))
    assert events.MIN_KEYS_FOR_UNIT_CHECK == 10 and events.MAX_MEDIAN_HOLD_S < 12.7


def test_a_cmu_password_typing_in_milliseconds_is_refused() -> None:
    """CMU's `.tie5Roanl` layout (H, DD, UD per key): its slowest typing passes, the same in ms does not."""
    keys = [".", "t", "i", "e", "five", "Shift.r", "o", "a", "n", "l", "Return"]
    rng = np.random.default_rng(3)
    vec = np.empty(31)
    vec[0::3] = rng.uniform(0.03, 0.2, 11)
    vec[1::3] = rng.uniform(0.1, 1.4, 10)
    vec[1] = 25.99  # the longest CMU press-to-press time
    vec[2::3] = vec[1::3] - vec[0:-1:3]
    np.testing.assert_allclose(fixed_text_vector(sequence_from_fixed_vector(vec, keys)), vec, atol=1e-9)
    with pytest.raises(EventValidationError, match="milliseconds"):
        sequence_from_fixed_vector(vec * 1000, keys)


def touches(seed: int = 0) -> dict[str, np.ndarray]:
    """Columns of a BB-MAS-like HTC One session: swipes, taps and one 35 s press, times in seconds.

    Swipe samples come 8-17 ms apart with interpolated historical points between (1-ms clock), a
    tap is a DOWN and an UP 50 ms apart (the sparsest real stroke), the long press reports every 16 ms.
    """
    rng = np.random.default_rng(seed)
    rows: list[tuple[float, float, float, int]] = []
    t = 100.0
    for k in range(12):
        if k % 4 == 3:  # a tap
            rows += [(t, 500.0, 900.0, TouchAction.DOWN), (t + 0.05, 501.0, 900.0, TouchAction.UP)]
            t += 0.05
        else:  # a swipe (or, once, a long press)
            n = 3000 if k == 5 else int(rng.integers(15, 60))
            gaps = np.round(rng.uniform(0.004, 0.017, n - 1) * 1000) / 1000 if k != 5 else np.full(n - 1, 0.016)
            ts = t + np.r_[0.0, np.cumsum(gaps)]
            ys = np.linspace(1500.0, 400.0 if k != 5 else 1500.0, n)
            acts = [TouchAction.DOWN] + [TouchAction.MOVE] * (n - 2) + [TouchAction.UP]
            rows += [(float(a), 540.0, float(b), int(c)) for a, b, c in zip(ts, ys, acts)]
            t = float(ts[-1])
        t += float(rng.uniform(0.3, 2.0))
    time, x, y, act = (np.array(c) for c in zip(*rows))
    n = time.size
    return {"time": time, "x": x, "y": y, "pressure": np.full(n, 0.2), "touch_major": np.full(n, 12.0),
            "touch_minor": np.full(n, 8.0), "action": act.astype(int), "pointer_id": np.zeros(n, int)}


def test_touch_in_seconds_gives_strokes_and_in_milliseconds_is_refused() -> None:
    cols = touches()
    ws = stroke_windows(TouchStream(**cols, device="HTC_One"))
    assert len(ws) == 12
    assert max(w.end - w.start for w in ws) > 35.0  # the long press is a stroke like any other
    with pytest.raises(EventValidationError, match=r"median gap between the samples of a finger.*milliseconds.*"
                                                   r"divide them by 1000") as e:
        TouchStream(**{**cols, "time": cols["time"] * 1000}, device="HTC_One")
    assert e.value.field == "time"


@pytest.mark.parametrize("stroke", ["tap", "swipe"])
def test_one_stroke_window_in_milliseconds_is_refused(stroke: str) -> None:
    """The phone's window (the samples since the previous UP, plus that UP) is judged on its own."""
    cols = touches()
    ups = np.flatnonzero(cols["action"] == TouchAction.UP)
    i = 3 if stroke == "tap" else 1
    sl = slice(int(ups[i - 1]), int(ups[i]) + 1)
    one = {k: v[sl] for k, v in cols.items()}
    assert touch_window_features(TouchStream(**one)).n_events >= 2
    with pytest.raises(EventValidationError, match="milliseconds"):
        TouchStream(**{**one, "time": one["time"] * 1000})
    gap = np.median(np.diff(one["time"][1:]))
    assert gap * 1000 > 2 * events.MAX_MEDIAN_TOUCH_INTERVAL_S  # even a 1 ms gap in ms is twice the limit


@pytest.mark.parametrize("gaps", [[3.0], [0.8, 0.9, 0.7], [4.0, 0.016]])
def test_a_finger_held_still_with_few_samples_is_seconds(gaps: list[float]) -> None:
    """A still finger may report nothing between DOWN and UP: few long gaps are a long press, not milliseconds."""
    n = len(gaps) + 1
    time = 50.0 + np.r_[0.0, np.cumsum(gaps)]
    act = np.array([TouchAction.DOWN] + [TouchAction.MOVE] * (n - 2) + [TouchAction.UP])
    cols = {"time": time, "x": np.full(n, 300.0), "y": np.full(n, 700.0), "pressure": np.full(n, 0.3),
            "touch_major": np.full(n, 10.0), "touch_minor": np.full(n, 8.0), "action": act, "pointer_id": np.zeros(n, int)}
    assert touch_window_features(TouchStream(**cols)).n_events == n
    if max(gaps) < 1:  # a 60 Hz screen's few samples in milliseconds (16 ms reads 16 s) are still refused
        with pytest.raises(EventValidationError, match="milliseconds"):
            TouchStream(**{**cols, "time": np.r_[0.0, np.cumsum(np.full(n - 1, 0.016))] * 1000})


def test_gait_in_milliseconds_is_refused_by_its_sampling_rate_and_says_so() -> None:
    """Gait resamples and checks the rate already; a 1000 times too slow rate is named as milliseconds."""
    w = walk(person(1), 12.0, 100.0)
    assert gait_window_features(w).values.shape[0] > 0
    with pytest.raises(EventValidationError, match=r"sampling rate 0\.1 Hz is below the 20 Hz minimum: the times "
                                                   r"look like milliseconds \(100 Hz if they are\)"):
        gait_window_features(AccelSeries(w.t * 1000, w.xyz))


def test_a_slow_rate_that_is_not_milliseconds_gets_no_unit_hint() -> None:
    """A 5 Hz polled accelerometer (plyer) is too slow, not in another unit: 5 kHz is no phone's rate."""
    with pytest.raises(EventValidationError) as e:
        check_rate(np.arange(100) / 5.0)
    assert "milliseconds" not in str(e.value)
