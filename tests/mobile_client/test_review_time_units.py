"""Key and touch times in milliseconds are a bad sample on the phone, never garbage sent nor a crash.

The app's own collectors stamp seconds (`mobile_client.clock`); events stamped in milliseconds
(Android MotionEvent/KeyEvent times taken as they are) are refused by the event types
(`modalities.events.check_key_seconds` / `check_touch_seconds`); gait samples in milliseconds are
cut apart by the 1 s gap split. Set-up then has no window to judge and does not pass, a payment
goes on without that modality, and the log says once, per modality, that the times look like
milliseconds (the person cannot fix a collector; whoever wrote it can).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from evaluation.synthetic import SyntheticPerson
from mobile_client import features
from mobile_client.clock import VirtualClock
from mobile_client.controllers.consent import ConsentController
from mobile_client.controllers.enrolment import EnrolmentController
from mobile_client.controllers.transaction import TransactionController
from mobile_client.services import AppServices
from modalities.events import AccelSample, KeyEvent, TouchEvent
from tests.mobile_client.test_controllers import MODS, FakeBank, _enrolled, _play, _services


def _key_events_ms(person: SyntheticPerson, n: int, seed: int, t0: float) -> list[KeyEvent]:
    """`n` key presses starting at `t0` seconds, stamped in milliseconds."""
    return [KeyEvent(e.key, (t0 + e.press) * 1000, (t0 + e.release) * 1000)
            for e in person.keystrokes(n, seed).to_events()]


def _touch_events_ms(person: SyntheticPerson, n: int, seed: int, t0: float) -> list[TouchEvent]:
    """`n` swipes starting at `t0` seconds, stamped in milliseconds."""
    return [dataclasses.replace(e, time=(t0 + e.time) * 1000) for e in person.touch(n, seed).to_events()]


def test_key_windows_of_times_in_milliseconds_are_none_and_said(caplog: pytest.LogCaptureFixture) -> None:
    person = SyntheticPerson(11)
    assert features.keystroke_windows(person.keystrokes(300, 1).to_events())  # in seconds: windows
    with caplog.at_level(logging.WARNING, logger="mobile_client.features"):
        assert features.keystroke_windows(_key_events_ms(person, 300, 1, 0.0)) == []
    assert "milliseconds" in caplog.text
    assert features.touch_windows(_touch_events_ms(person, 14, 1, 0.0)) == []


def _set_up(tmp_path: Path) -> tuple[AppServices, EnrolmentController]:
    s = _services(tmp_path, FakeBank(), VirtualClock(1000.0))
    ConsentController(s).apply({m: {"authentication": True, "federated_training": False} for m in MODS})
    return s, EnrolmentController(s)


@pytest.mark.parametrize("modality", ["keystroke", "touch"])
def test_set_up_with_times_in_milliseconds_has_no_window_and_does_not_pass(tmp_path: Path, modality: str) -> None:
    s, ec = _set_up(tmp_path)
    ec.begin(modality)
    person = SyntheticPerson(11)
    make = _key_events_ms if modality == "keystroke" else _touch_events_ms
    s.evidence.extend(make(person, 300 if modality == "keystroke" else 14, 1, 1000.0))
    report = ec.check(modality)
    assert (report.ok, report.n_windows, report.unavailable) == (False, 0, False)


def test_a_payment_leaves_out_key_and_touch_times_in_milliseconds(tmp_path: Path) -> None:
    bank, clock, person = FakeBank(), VirtualClock(1000.0), SyntheticPerson(11)
    s = _enrolled(tmp_path, bank, person, clock)
    now = clock()
    s.evidence.extend(_key_events_ms(person, 120, 2, now))
    s.evidence.extend(_touch_events_ms(person, 8, 2, now))
    _play(s, clock, person.walk(16, 100, 2))
    d = TransactionController(s).authorize("10", "Bob")
    assert d.outcome == "approve"
    assert {w["modality"] for w in bank.sent("/authorize")[0]["evidence"]} == {"gait"}


def _walk_samples(person: SyntheticPerson, seconds: float, seed: int, t0: float, scale: float = 1.0) -> list[AccelSample]:
    """`seconds` of walking at 100 Hz from `t0` seconds, times multiplied by `scale` (1000: milliseconds)."""
    return [dataclasses.replace(a, time=(t0 + a.time) * scale) for a in person.walk(seconds, 100, seed).to_samples()]


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mobile_client.features" and r.levelno >= logging.WARNING]


def test_gait_samples_in_milliseconds_give_no_window_and_it_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    """The 1 s gap split cut every sample apart before any check: no window and no word of why."""
    person = SyntheticPerson(11)
    with caplog.at_level(logging.WARNING, logger="mobile_client.features"):
        assert features.gait_windows(_walk_samples(person, 32, 1, 0.0, scale=1000)) == []
        assert features.gait_windows(_walk_samples(person, 32, 2, 50.0, scale=1000)) == []
    [said] = _said(caplog)  # once per run
    assert "look like milliseconds" in said and "100 Hz if they are" in said


def test_real_walks_give_the_same_windows_and_no_word(caplog: pytest.LogCaptureFixture) -> None:
    """Two walks a minute apart (a clock gap) and a lone late sample: cut as before, nothing said."""
    person = SyntheticPerson(11)
    samples = _walk_samples(person, 32, 1, 0.0) + _walk_samples(person, 32, 2, 100.0)
    samples.append(dataclasses.replace(samples[-1], time=500.0))
    with caplog.at_level(logging.WARNING, logger="mobile_client.features"):
        windows = features.gait_windows(samples)
    assert windows and [w.start for w in windows] == [w.start for w in features.gait_windows(samples[:-1])]
    assert _said(caplog) == []


def test_touch_events_in_milliseconds_are_said_as_key_events_are(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mobile_client.features"):
        assert features.touch_windows(_touch_events_ms(SyntheticPerson(11), 14, 1, 0.0)) == []
        assert features.recent_swipes(_touch_events_ms(SyntheticPerson(11), 8, 2, 0.0), n=5) == []
    [said] = _said(caplog)
    assert "look like milliseconds" in said


@pytest.mark.parametrize("modality", ["keystroke", "touch", "gait"])
def test_set_up_with_times_in_milliseconds_says_why_in_the_log(tmp_path: Path, modality: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The person is asked for more (the screen cannot name a collector's bug); whoever wrote it reads why."""
    s, ec = _set_up(tmp_path)
    ec.begin(modality)
    person = SyntheticPerson(11)
    make = {"keystroke": lambda: _key_events_ms(person, 300, 1, 1000.0),
            "touch": lambda: _touch_events_ms(person, 14, 1, 1000.0),
            "gait": lambda: _walk_samples(person, 32, 1, 1000.0, scale=1000)}[modality]
    s.evidence.extend(make())
    with caplog.at_level(logging.WARNING, logger="mobile_client.features"):
        report = ec.check(modality)
    assert (report.ok, report.n_windows) == (False, 0)
    assert any("look like milliseconds" in m for m in _said(caplog)), _said(caplog)
