"""Controllers against a fake bank (no Kivy).

Evidence is never re-sent, set-up resumes, step-ups need the server's word, the offline queue
is sent, and refusals and reasons read as plain language.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from evaluation.synthetic import SyntheticPerson
from mobile_client import features
from mobile_client.api import ApiError
from mobile_client.clock import VirtualClock
from mobile_client.collectors.replay import ReplaySource
from mobile_client.controllers.consent import ConsentController
from mobile_client.controllers.enrolment import EnrolmentController
from mobile_client.controllers.privacy import PrivacyController
from mobile_client.controllers.transaction import TransactionController, explain
from mobile_client.evidence import EvidenceBuffer
from mobile_client.services import AppServices, build_services

MODS = ("keystroke", "touch", "gait")


class FakeBank:
    """Answers the app's routes like the server does where it matters here.

    Like the server it refuses a window twice (409 evidence_replay); stricter than it, it also
    refuses evidence whose events overlap a window already received (a re-cut of old behaviour).
    """

    def __init__(self) -> None:
        self.up = True
        self.log: list[tuple[str, str, Any]] = []
        self.seen: dict[str, list[tuple[float, float]]] = {m: [] for m in MODS}
        self.enrol_failures: dict[str, int] = {}  # modality -> how many uploads to drop as "offline"
        self.decision = "approve"
        self.step_up_reply: httpx.Response = httpx.Response(200, json={"status": "approved_after_step_up"})

    def _replayed(self, windows: list[dict[str, Any]]) -> httpx.Response | None:
        for i, w in enumerate(windows):
            if any(w["start"] <= end and start <= w["end"] for start, end in self.seen[w["modality"]]):
                return httpx.Response(409, json={"detail": f"windows[{i}]: this {w['modality']} feature window "
                                                           "was already received", "code": "evidence_replay"})
        for w in windows:
            self.seen[w["modality"]].append((w["start"], w["end"]))
        return None

    def handle(self, req: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("connection refused")
        path = req.url.path
        body = json.loads(req.content) if req.content else None
        if path.endswith("/enrolment") and body and "confirmed_transaction_id" not in body:
            m = body["windows"][0]["modality"]
            if self.enrol_failures.get(m, 0) > 0:
                self.enrol_failures[m] -= 1
                raise httpx.ConnectError("connection refused")
            if (refused := self._replayed(body["windows"])) is not None:
                return refused
        self.log.append((req.method, path, body))
        if path == "/v1/transactions/authorize":
            assert body is not None
            if (refused := self._replayed(body["evidence"])) is not None:
                return refused
            return httpx.Response(200, json={
                "transaction_id": f"tx-{len(self.log)}", "decision": self.decision, "risk": 0.1, "tier": "low",
                "amount": body["amount"], "currency": body["currency"], "payee": body["payee"],
                "reasons": [{"modality": w, "code": "match"} for w in {e["modality"] for e in body["evidence"]}]})
        if path.endswith("/step-up"):
            return self.step_up_reply
        return httpx.Response(201, json={})

    def sent(self, path_end: str) -> list[Any]:
        return [b for _, p, b in self.log if p.endswith(path_end)]


def _services(tmp_path: Path, bank: FakeBank, clock: VirtualClock, bank_key: str | None = "k") -> AppServices:
    s = build_services(tmp_path / "app", "http://bank.test", retries=0, bank_api_key=bank_key, clock=clock)
    s.api._http = httpx.Client(base_url="http://bank.test", transport=httpx.MockTransport(bank.handle))
    s.api._sleep = lambda _s: None
    return s


@pytest.fixture()
def person() -> SyntheticPerson:
    return SyntheticPerson(11)


def _play(s: AppServices, clock: VirtualClock, rec: Any) -> None:
    """Behaviour happening now: events placed on the clock, which then moves past them."""
    ReplaySource(rec, clock=clock).play_all(s.evidence.add)
    clock.advance(ReplaySource(rec).duration + 0.5)


def _set_up_tasks(s: AppServices, clock: VirtualClock, person: SyntheticPerson) -> EnrolmentController:
    """Consent to authentication and do the three set-up tasks (nothing sent yet: `finish` sends)."""
    ConsentController(s).apply({m: {"authentication": True, "federated_training": False} for m in MODS})
    ec = EnrolmentController(s)
    for m, rec in (("keystroke", person.keystrokes(300, 1)), ("touch", person.touch(14, 1)),
                   ("gait", person.walk(32, 100, 1))):
        ec.begin(m)
        _play(s, clock, rec)
        assert ec.check(m).ok
    return ec


def _enrolled(tmp_path: Path, bank: FakeBank, person: SyntheticPerson, clock: VirtualClock,
              bank_key: str | None = "k") -> AppServices:
    s = _services(tmp_path, bank, clock, bank_key)
    _set_up_tasks(s, clock, person).finish()
    return s


def test_payments_send_only_new_behaviour(tmp_path: Path, person: SyntheticPerson) -> None:
    bank, clock = FakeBank(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, person, clock)
    tc = TransactionController(s)
    clock.advance(60.0)
    # nothing new since set-up: the enrolment walk is not "recent" and not sent again
    d1 = tc.authorize("42.50", "Jordan Lee")
    assert d1.outcome == "approve" and bank.sent("/authorize")[0]["evidence"] == []
    # a second payment right after the first, and one after new typing and walking
    tc.authorize("15.00", "Corner Coffee")
    _play(s, clock, person.keystrokes(120, 2))
    _play(s, clock, person.walk(16, 100, 2))
    tc.authorize("9.99", "Bakery")
    third = bank.sent("/authorize")[2]["evidence"]
    assert {w["modality"] for w in third} == {"keystroke", "gait"}
    tc.authorize("5.00", "Kiosk")  # nothing new again: no window offered twice
    assert bank.sent("/authorize")[3]["evidence"] == []


def test_walk_recency_counts_from_now_not_from_the_last_sample() -> None:
    clock = VirtualClock(0.0)
    buf = EvidenceBuffer(None, clock=clock)
    ReplaySource(SyntheticPerson(1).walk(20, 50, 0), clock=clock).play_all(buf.add)
    clock.set(20.0)
    assert len(buf.accel(15.0)) > 600  # walking just now
    clock.advance(120.0)
    assert buf.accel(15.0) == []  # two minutes later it is not recent any more


def test_interrupted_set_up_finishes_without_resending(tmp_path: Path, person: SyntheticPerson) -> None:
    bank, clock = FakeBank(), VirtualClock(1000.0)
    s = _services(tmp_path, bank, clock)
    ConsentController(s).apply({"keystroke": {"authentication": True, "federated_training": False},
                                "touch": {"authentication": True, "federated_training": False}})
    ec = EnrolmentController(s)
    for m, rec in (("keystroke", person.keystrokes(300, 1)), ("touch", person.touch(14, 1))):
        ec.begin(m)
        _play(s, clock, rec)
        assert ec.check(m).ok
    bank.enrol_failures["touch"] = 1  # the swipes upload is lost on the way
    with pytest.raises(ApiError) as exc:
        ec.finish()
    assert exc.value.offline and s.profile.enrolled == []
    sent = ec.finish()  # Finish again: only the swipes go
    assert sorted(sent) == ["keystroke", "touch"] and s.profile.enrolled == ["keystroke", "touch"]
    uploads = [b["windows"][0]["modality"] for b in bank.sent("/enrolment")]
    assert uploads == ["keystroke", "touch"]


def test_enrolment_closed_reads_as_a_sentence() -> None:
    exc = ApiError("POST /v1/users/u/enrolment: 409 ...", 409, {
        "detail": "confirmed_transaction_id: enrolment closed with this user's first transaction; ...",
        "code": "enrolment_closed"})
    assert exc.user_message.startswith("Set-up can no longer be changed from the app")


def test_refusals_read_as_plain_language() -> None:
    refused = ApiError("POST /x: 422 amount: must be positive", 422,
                       {"detail": "amount: must be positive", "code": "validation_error"})
    assert refused.user_message == "Your bank refused this: amount: must be positive"
    offline = ApiError("POST /v1/devices: server unreachable ([Errno 111] Connection refused)", None)
    assert offline.user_message == "Could not reach your bank. Check your connection and try again."
    assert "busy" in ApiError("POST /x: server unreachable", 503).user_message
    replay = ApiError("x", 409, {"detail": "windows[5]: this gait feature window was already received",
                                 "code": "evidence_replay"})
    for exc in (refused, offline, replay):
        assert "{" not in exc.user_message and "/v1/" not in exc.user_message and "Errno" not in exc.user_message


def _step_up(tmp_path: Path, bank: FakeBank, bank_key: str | None) -> TransactionController:
    s = _services(tmp_path, bank, VirtualClock(1000.0), bank_key)
    ConsentController(s).apply({"touch": {"authentication": True, "federated_training": False}})
    bank.decision = "step_up"
    tc = TransactionController(s)
    assert tc.authorize("1250", "Harbour Lettings").outcome == "step_up"
    return tc


def test_step_up_refused_by_the_server_is_not_approved(tmp_path: Path) -> None:
    bank = FakeBank()
    bank.step_up_reply = httpx.Response(401, json={"detail": "X-API-Key: missing or unknown API key",
                                                   "code": "api_key_required"})
    tc = _step_up(tmp_path, bank, bank_key="wrong-key")
    assert tc.step_up is not None
    with pytest.raises(ApiError) as exc:
        tc.verify_code(tc.step_up.code)
    assert exc.value.status == 401 and tc.step_up is not None  # still pending: the person may retry
    bank.step_up_reply = httpx.Response(200, json={"status": "approved_after_step_up", "decision": "approve"})
    assert tc.verify_code(tc.step_up.code) is True and tc.step_up is None


def test_step_up_without_a_bank_key_waits_for_the_bank(tmp_path: Path) -> None:
    tc = _step_up(tmp_path, FakeBank(), bank_key=None)
    assert tc.step_up is not None
    with pytest.raises(ApiError) as exc:
        tc.verify_code(tc.step_up.code)
    assert exc.value.code == "bank_confirms" and "will let you know" in exc.value.user_message


def test_payment_goes_on_when_a_modality_cannot_be_featurised(tmp_path: Path, person: SyntheticPerson,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    bank, clock = FakeBank(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, person, clock)
    _play(s, clock, person.keystrokes(120, 2))
    _play(s, clock, person.walk(16, 100, 2))

    def broken(*_a: Any, **_k: Any) -> list[Any]:
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(features, "keystroke_windows", broken)
    d = TransactionController(s).authorize("10", "Bob")
    assert d.outcome == "approve"
    assert {w["modality"] for w in bank.sent("/authorize")[0]["evidence"]} == {"gait"}


def test_soft_keyboard_words_are_not_sent_and_their_features_stay_finite() -> None:
    from mobile_client.collectors.keys import KeyPairer
    from modalities.events import KeySequence

    keys = KeyPairer().text_commit("Jordan Lee", 100.0)  # one instant, 10 keys of zero hold
    assert features.keystroke_windows(keys) == []  # no typing rhythm in them: never sent
    w = features.modality_module("keystroke").window_features(KeySequence.from_events(keys))
    assert w.n_events == 10 and np.isfinite(w.values).all()


def test_waiting_requests_are_sent_before_the_next_one(tmp_path: Path) -> None:
    bank, clock = FakeBank(), VirtualClock(1000.0)
    s = _services(tmp_path, bank, clock)
    ConsentController(s).apply({"touch": {"authentication": True, "federated_training": False}})
    bank.up = False
    ConsentController(s).set("touch", "authentication", False)  # revoked offline: queued
    assert "server will be asked when you are back online." in PrivacyController(s).delete_my_data()
    assert len(s.api.queue) == 2
    bank.up = True
    n_before = len(bank.log)
    s.api.health()  # any request: what waited goes first, in order
    assert [(m, p) for m, p, _ in bank.log[n_before:]] == [
        ("POST", f"/v1/users/{s.profile.user_id}/consents"), ("DELETE", f"/v1/users/{s.profile.user_id}"),
        ("GET", "/v1/health")]
    assert bank.log[n_before][2]["granted"] is False and len(s.api.queue) == 0


def test_flush_keeps_requests_the_server_could_not_take_yet(tmp_path: Path) -> None:
    calls: list[str] = []

    def busy(req: httpx.Request) -> httpx.Response:
        calls.append(req.url.path)
        return httpx.Response(503)

    s = build_services(tmp_path / "app", "http://bank.test", retries=0)
    s.api._http = httpx.Client(base_url="http://bank.test", transport=httpx.MockTransport(busy))
    s.api.queue.push("POST", "/v1/users/u/consents", {"modality": "gait"})
    assert s.api.flush_queue() == 0 and len(s.api.queue) == 1  # kept for later, not dropped


@pytest.mark.parametrize(("reason", "text"), [
    ({"modality": "none", "code": "no_evidence"}, "No recent behaviour could be checked on this phone"),
    ({"modality": "none", "code": "locked"},
     "Your account is now locked after several failed checks; please contact your bank"),
    ({"modality": "keystroke", "code": "reenrolment_required"}, "Typing rhythm needs setting up again before it can be used"),
    ({"modality": "touch", "code": "implausible_input"}, "Swiping evidence looked automated"),
    ({"modality": "gait", "code": "uncalibrated"}, "Walking pattern is being updated and was not used this time"),
    ({"modality": "fusion", "code": "uncorroborated"},
     "Overall evidence rested on one signal; this amount needs two that agree"),
    ({"modality": "keystroke", "code": "strong_mismatch"}, "Typing rhythm did not match your usual pattern"),
    ({"modality": "touch", "code": "strong_match"}, "Swiping matched your usual pattern"),
])
def test_reasons_in_words(reason: dict[str, str], text: str) -> None:
    assert explain(reason) == text
