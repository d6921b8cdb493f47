"""Key times in milliseconds are a bad sample on the phone, never garbage sent nor a crash.

The app's own collectors stamp seconds (`mobile_client.clock`); events stamped in milliseconds
(Android KeyEvent times taken as they are) are refused by the event types
(`modalities.events.check_key_seconds`). Set-up then has no window to judge and does not pass.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from evaluation.synthetic import SyntheticPerson
from mobile_client import features
from mobile_client.clock import VirtualClock
from mobile_client.controllers.consent import ConsentController
from mobile_client.controllers.enrolment import EnrolmentController
from mobile_client.services import AppServices
from modalities.events import KeyEvent
from tests.mobile_client.test_controllers import MODS, FakeBank, _services


def _key_events_ms(person: SyntheticPerson, n: int, seed: int, t0: float) -> list[KeyEvent]:
    """`n` key presses starting at `t0` seconds, stamped in milliseconds."""
    return [KeyEvent(e.key, (t0 + e.press) * 1000, (t0 + e.release) * 1000)
            for e in person.keystrokes(n, seed).to_events()]


def test_key_windows_of_times_in_milliseconds_are_none_and_said(caplog: pytest.LogCaptureFixture) -> None:
    person = SyntheticPerson(11)
    assert features.keystroke_windows(person.keystrokes(300, 1).to_events())  # in seconds: windows
    with caplog.at_level(logging.WARNING, logger="mobile_client.features"):
        assert features.keystroke_windows(_key_events_ms(person, 300, 1, 0.0)) == []
    assert "milliseconds" in caplog.text


def _set_up(tmp_path: Path) -> tuple[AppServices, EnrolmentController]:
    s = _services(tmp_path, FakeBank(), VirtualClock(1000.0))
    ConsentController(s).apply({m: {"authentication": True, "federated_training": False} for m in MODS})
    return s, EnrolmentController(s)


def test_set_up_with_times_in_milliseconds_has_no_window_and_does_not_pass(tmp_path: Path) -> None:
    s, ec = _set_up(tmp_path)
    ec.begin("keystroke")
    s.evidence.extend(_key_events_ms(SyntheticPerson(11), 300, 1, 1000.0))
    report = ec.check("keystroke")
    assert (report.ok, report.n_windows, report.unavailable) == (False, 0, False)
