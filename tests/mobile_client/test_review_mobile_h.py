"""Review H: a redirect is not the bank's answer; a full disk does not crash collection or lose a payment's answer.

No Kivy here: the API client against `httpx.MockTransport`, the controllers against the fake banks
of test_controllers and test_consent_and_erasure, and the evidence buffer with a store that fails.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from evaluation.synthetic import SyntheticPerson
from mobile_client.api import ApiClient, Queued
from mobile_client.clock import VirtualClock
from mobile_client.controllers.privacy import ERASE_PENDING, PrivacyController
from mobile_client.controllers.transaction import TransactionController
from mobile_client.evidence import FLUSH_EVERY, EvidenceBuffer
from mobile_client.profile import Profile
from mobile_client.raw_store import RawEventStore
from mobile_client.secrets_store import FileSecretStore
from modalities.events import AccelSample, KeyEvent
from tests.mobile_client.test_consent_and_erasure import FaultyBank, revoke_touch_answered
from tests.mobile_client.test_controllers import FakeBank, _enrolled, _play
from tests.mobile_client.test_review_erasure_payments_threads import _client

PORTAL = {"location": "http://portal.example/login?continue=bank"}


@pytest.fixture()
def person() -> SyntheticPerson:
    return SyntheticPerson(11)


# -- 1: a 3xx (a captive portal, a proxy) is no answer from the bank --------------------------------
@pytest.mark.parametrize("status", [301, 302, 307])
def test_a_redirect_is_not_the_banks_answer_and_the_change_waits(tmp_path: Path, status: int) -> None:
    """The app follows no redirect: a 3xx counted as done dropped a revocation the bank never saw."""
    c = _client(tmp_path, lambda req: httpx.Response(status, headers=PORTAL, text="<html>Sign in to Wi-Fi</html>"))
    res = c.send_or_queue("POST", "/v1/users/user-1/consents", {"modality": "touch", "granted": False})
    assert isinstance(res, Queued) and res.error.offline
    assert [i["body"]["granted"] for i in c.queue.items()] == [False]


def test_a_queued_request_flushed_through_a_redirect_stays_queued(tmp_path: Path) -> None:
    answers: dict[str, Any] = {"status": 302}
    c: ApiClient = _client(tmp_path, lambda req: httpx.Response(answers["status"], headers=PORTAL, json={}))
    c.queue.push("POST", "/v1/users/user-1/consents", {"modality": "gait", "granted": False})
    c.queue.push("DELETE", "/v1/users/user-1", {})
    report = c.flush_queue()
    assert [o.state for o in report] == ["waiting", "waiting"] and report.sent == 0
    assert len(c.queue) == 2
    answers["status"] = 200  # back on a network that reaches the bank
    assert c.flush_queue().sent == 2 and len(c.queue) == 0


def test_a_consent_revoked_behind_a_captive_portal_says_the_bank_has_not_received_it(tmp_path: Path) -> None:
    _, s, res = revoke_touch_answered(tmp_path, 302)
    assert res.state == "queued", res.message
    assert "has not received" in res.message
    assert len(s.api.queue) == 1


def test_delete_my_data_behind_a_captive_portal_is_not_reported_as_erased(tmp_path: Path,
                                                                           person: SyntheticPerson) -> None:
    bank, clock = FaultyBank(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, person, clock)
    device = s.profile.device_id
    bank.faults[f"/v1/users/{s.profile.user_id}"] = 302
    pc = PrivacyController(s)
    message = pc.delete_my_data()
    assert pc.erase_state == "pending", message
    assert "your bank erased" not in message and "Not finished" in message
    assert s.profile.device_id == device and (s.data_dir / ERASE_PENDING).exists()
    # and the waiting erasure is not settled through the portal either
    assert pc.settle() == "pending"
    assert s.profile.registered and s.profile.device_id == device


# -- 2: a full disk neither crashes collection nor loses what was recorded or a payment's answer ----
class FullDisk:
    """Stands in for `RawEventStore.append` while the phone's storage is full (`full` toggles it)."""

    def __init__(self, append: Any) -> None:
        self.append_real, self.full, self.tries = append, True, 0

    def __call__(self, events: Any) -> int:
        self.tries += 1
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return int(self.append_real(events))


def _keys(n: int, t0: float = 0.0) -> list[KeyEvent]:
    return [KeyEvent("a", t0 + i * 0.2, t0 + i * 0.2 + 0.08) for i in range(n)]


def test_typing_on_a_full_disk_does_not_crash_and_nothing_recorded_is_lost(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    """`add` flushes every 500 events from the collectors' handlers: an OSError there crashed the app."""
    store = RawEventStore(tmp_path / "raw", FileSecretStore(tmp_path / "s"))
    disk = FullDisk(store.append)
    store.append = disk  # type: ignore[method-assign]
    buf = EvidenceBuffer(store, clock=lambda: 1e6)
    events = _keys(FLUSH_EVERY + 300)
    with caplog.at_level(logging.WARNING, logger="mobile_client.evidence"):
        buf.extend(events)  # a key released on a full disk
    assert "could not be stored" in caplog.text
    assert disk.tries == 1  # not one encryption of the whole backlog per key after a failed write
    assert len(buf.keys()) == len(events)  # still evidence for a payment
    disk.full = False  # room again: the next flush writes every event, once
    assert buf.flush() == len(events)
    assert store.read("keystroke") == events
    assert buf.flush() == 0


def test_events_cleared_or_forgotten_while_the_disk_was_full_are_not_written_later(tmp_path: Path) -> None:
    store = RawEventStore(tmp_path / "raw", FileSecretStore(tmp_path / "s"))
    disk = FullDisk(store.append)
    store.append = disk  # type: ignore[method-assign]
    buf = EvidenceBuffer(store, clock=lambda: 1e6)
    buf.extend(_keys(10))
    buf.add(AccelSample(1.0, 0.1, 0.2, 9.8))
    buf.flush()
    buf.forget("keystroke")  # consent withdrawn
    disk.full = False
    assert buf.flush() == 1 and store.read("keystroke") == [] and len(store.read("gait")) == 1
    disk.full = True
    buf.extend(_keys(5))
    buf.flush()
    buf.clear()  # an erasure
    disk.full = False
    assert buf.flush() == 0 and store.read("keystroke") == []


def test_a_payment_approved_while_the_disk_is_full_shows_the_banks_answer(tmp_path: Path,
                                                                         person: SyntheticPerson,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The bank approved: storing recordings or the profile afterwards failing must not hide that."""
    bank, clock = FakeBank(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, person, clock)
    tc = TransactionController(s)
    _play(s, clock, person.keystrokes(120, 2))
    s.store.append = FullDisk(s.store.append)  # type: ignore[method-assign]

    def no_space(*_a: Any, **_k: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Profile, "save", no_space)
    d = tc.authorize("12.00", "Sam")
    assert d.outcome == "approve" and len(bank.sent("/authorize")) == 1
    assert s.api.held_payment("12.00", "GBP", "Sam") is None


def test_recordings_past_retention_go_while_the_app_stays_open(tmp_path: Path) -> None:
    """Recordings older than the retention period go on the next write or read, at most hourly.

    Retention ran only as the app started: an app left open for weeks kept what the Privacy
    screen says is deleted after 30 days.
    """
    t = [1_000_000.0]
    store = RawEventStore(tmp_path / "raw", FileSecretStore(tmp_path / "s"), now=lambda: t[0])
    store.append(_keys(10))
    t[0] += 31 * 86400
    assert store.read("keystroke") == []  # read after the period: the old batch is gone
    store.append(_keys(5, t0=100.0))
    t[0] += 600  # within the hour: no sweep on every write
    store.append(_keys(5, t0=200.0))
    assert len(store.read("keystroke")) == 10
    t[0] += 31 * 86400
    store.append(_keys(3, t0=300.0))  # a write sweeps too
    assert len(list((tmp_path / "raw" / "keystroke").glob("*.bin"))) == 1
