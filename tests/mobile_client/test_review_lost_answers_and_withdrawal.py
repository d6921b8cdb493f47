"""Answers lost or unreadable, error pages from a gateway, a withdrawn consent's recordings, the app's log level.

No real proxy: a fake transport around test_controllers' `FakeBank` stores a request and then
drops the connection (the answer is lost), or answers 2xx with a body that is not JSON, or
answers as a gateway would (an HTML 403).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from evaluation.synthetic import SyntheticPerson
from mobile_client.api import ApiError
from mobile_client.clock import VirtualClock
from mobile_client.controllers.consent import ConsentController
from mobile_client.controllers.privacy import PrivacyController
from mobile_client.raw_store import RawEventStore
from mobile_client.services import AppServices
from tests.mobile_client.test_controllers import MODS, FakeBank, _enrolled, _play, _services, _set_up_tasks, _step_up

GARBLED = b'{"transaction_id": '  # a 2xx body cut short on the way (what the reviewer's proxy sent)


def _route(s: AppServices, bank: FakeBank, fault: Callable[[httpx.Request, Callable[[], httpx.Response]], httpx.Response]) -> None:
    """Every request of `s` goes through `fault(request, pass_on)`; `pass_on()` lets the bank answer it."""
    def handler(req: httpx.Request) -> httpx.Response:
        return fault(req, lambda: bank.handle(req))

    s.api._http = httpx.Client(base_url="http://bank.test", transport=httpx.MockTransport(handler))


# ---------------------------------------------------------------------------- 1. set-up after a lost answer
@pytest.mark.parametrize("retries", [0, 1])
def test_set_up_goes_on_when_the_bank_stored_an_upload_whose_answer_was_lost(tmp_path: Path, retries: int) -> None:
    """The bank stored the swipes but the connection dropped: the next try's replay refusal means "stored"."""
    bank, clock = FakeBank(), VirtualClock(1000.0)
    s = _services(tmp_path, bank, clock)
    ec = _set_up_tasks(s, clock, SyntheticPerson(4))
    s.api.retries = retries
    lost = {"n": 1}

    def drop_after(req: httpx.Request, pass_on: Callable[[], httpx.Response]) -> httpx.Response:
        r = pass_on()
        if req.url.path.endswith("/enrolment") and b'"touch"' in req.content and lost["n"]:
            lost["n"] -= 1
            raise httpx.ReadError("connection dropped after the bank answered")
        return r

    _route(s, bank, drop_after)
    if retries == 0:
        with pytest.raises(ApiError) as exc:
            ec.finish()
        assert exc.value.answer_unknown and s.profile.enrolled == []
    sent = ec.finish()  # (retries=1: this call's own retry is refused as a replay)
    assert sorted(sent) == sorted(MODS) and s.profile.enrolled == sorted(MODS)
    assert all(ec.tasks[m].sent for m in MODS)
    uploads = [b["windows"][0]["modality"] for b in bank.sent("/enrolment")]
    assert uploads == ["keystroke", "touch", "gait"]  # touch stored once, walking sent after it


def test_set_up_counts_an_upload_answered_with_an_unreadable_2xx_as_sent(tmp_path: Path) -> None:
    bank, clock = FakeBank(), VirtualClock(1000.0)
    s = _services(tmp_path, bank, clock)
    ec = _set_up_tasks(s, clock, SyntheticPerson(4))

    def garble(req: httpx.Request, pass_on: Callable[[], httpx.Response]) -> httpx.Response:
        r = pass_on()
        return httpx.Response(r.status_code, content=GARBLED) if req.url.path.endswith("/enrolment") else r

    _route(s, bank, garble)
    assert sorted(ec.finish()) == sorted(MODS) and s.profile.enrolled == sorted(MODS)


def test_a_replay_refusal_of_windows_never_sent_without_an_answer_stays_a_refusal(tmp_path: Path) -> None:
    bank, clock = FakeBank(), VirtualClock(1000.0)
    s = _services(tmp_path, bank, clock)
    ec = _set_up_tasks(s, clock, SyntheticPerson(4))
    bank.seen["touch"].append((float("-inf"), float("inf")))  # the bank already holds these swipes: not from us
    for _ in range(2):
        with pytest.raises(ApiError) as exc:
            ec.finish()
        assert exc.value.code == "evidence_replay"
        assert ec.tasks["touch"].sent == 0 and s.profile.enrolled == []


def test_a_replay_refusal_after_a_lost_upload_of_other_windows_stays_a_refusal(tmp_path: Path) -> None:
    bank, clock = FakeBank(), VirtualClock(1000.0)
    s = _services(tmp_path, bank, clock)
    ec = _set_up_tasks(s, clock, SyntheticPerson(4))
    bank.enrol_failures["touch"] = 1  # lost before the bank saw it
    with pytest.raises(ApiError):
        ec.finish()
    ec.tasks["touch"].windows = ec.tasks["touch"].windows[1:]  # not the windows whose upload got no answer
    bank.seen["touch"].append((float("-inf"), float("inf")))
    with pytest.raises(ApiError) as exc:
        ec.finish()
    assert exc.value.code == "evidence_replay" and ec.tasks["touch"].sent == 0


# ---------------------------------------------------------------------------- 2. an unreadable 2xx
def test_a_withdrawal_answered_with_an_unreadable_2xx_counts_as_recorded(tmp_path: Path) -> None:
    bank, clock, person = FakeBank(), VirtualClock(1000.0), SyntheticPerson(4)
    s = _enrolled(tmp_path, bank, person, clock)

    def garble(req: httpx.Request, pass_on: Callable[[], httpx.Response]) -> httpx.Response:
        r = pass_on()
        return httpx.Response(201, content=GARBLED) if req.url.path.endswith("/consents") else r

    _route(s, bank, garble)
    r = ConsentController(s).set("keystroke", "authentication", False)  # raised JSONDecodeError before
    assert r.state == "saved" and not s.profile.consented("keystroke") and "keystroke" not in s.profile.enrolled
    assert bank.sent("/consents")[-1] == {"modality": "keystroke", "purpose": "authentication", "granted": False,
                                          "policy_version": bank.sent("/consents")[-1]["policy_version"]}
    n0 = s.evidence.count("keystroke")
    _play(s, clock, person.keystrokes(120, 9))
    assert s.evidence.count("keystroke") == n0  # no more typing collected
    assert PrivacyController(s).delete_my_data().startswith("Deleted")  # erase with a garbled 2xx: done too


def test_an_unreadable_2xx_where_the_body_is_needed_is_an_api_error(tmp_path: Path) -> None:
    bank = FakeBank()
    tc = _step_up(tmp_path, bank, bank_key="k")
    assert tc.step_up is not None
    bank.step_up_reply = httpx.Response(200, content=b"<html>ok</html>")
    with pytest.raises(ApiError) as exc:  # not a bare JSONDecodeError ("something went wrong on this phone")
        tc.verify_code(tc.step_up.code)
    assert exc.value.code == "unreadable_answer" and exc.value.answer_unknown and tc.step_up is not None


# ---------------------------------------------------------------------------- 3. withdrawal deletes the recordings
def test_withdrawing_a_consent_deletes_its_recordings_pending_and_stored(tmp_path: Path) -> None:
    bank, clock, person = FakeBank(), VirtualClock(1000.0), SyntheticPerson(4)
    s = _enrolled(tmp_path, bank, person, clock)  # set-up flushed its events to the store
    _play(s, clock, person.keystrokes(120, 9))  # and these wait in memory
    assert s.store.summary().counts["keystroke"] > 0 and s.evidence.keys()
    touch_before = s.store.summary().counts["touch"]
    r = ConsentController(s).set("keystroke", "authentication", False)
    assert r.state == "saved"
    assert s.evidence.keys() == []
    rows = [i.label for i in PrivacyController(s).stored()]
    assert "On this phone: 0 key presses" in rows, rows
    s.close()  # what waited in memory is not written afterwards
    store = RawEventStore(s.data_dir / "raw", s.secrets)
    assert store.read("keystroke") == [] and store.summary().counts["keystroke"] == 0
    assert store.summary().counts["touch"] == touch_before > 0  # the other modalities are kept
    assert "recordings on this phone were deleted" in r.message


def test_a_refused_withdrawal_deletes_nothing(tmp_path: Path) -> None:
    bank, clock, person = FakeBank(), VirtualClock(1000.0), SyntheticPerson(4)
    s = _enrolled(tmp_path, bank, person, clock)
    n = s.store.summary().counts["keystroke"]

    def refuse(req: httpx.Request, pass_on: Callable[[], httpx.Response]) -> httpx.Response:
        return httpx.Response(403, json={"detail": "not allowed", "code": "forbidden"}) \
            if req.url.path.endswith("/consents") else pass_on()

    _route(s, bank, refuse)
    assert ConsentController(s).set("keystroke", "authentication", False).state == "refused"
    assert s.store.summary().counts["keystroke"] == n > 0


# ---------------------------------------------------------------------------- 4. a gateway's error page
HTML_403 = b"<html><head><title>403 Forbidden</title></head><body><h1>Forbidden</h1><p>Request ID 7f3a user=alice</p></body></html>"


def test_a_non_json_error_body_is_neither_shown_nor_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bank, clock, person = FakeBank(), VirtualClock(1000.0), SyntheticPerson(4)
    s = _enrolled(tmp_path, bank, person, clock)

    def gateway(req: httpx.Request, pass_on: Callable[[], httpx.Response]) -> httpx.Response:
        return httpx.Response(403, content=HTML_403, headers={"content-type": "text/html"})

    _route(s, bank, gateway)
    with caplog.at_level(logging.DEBUG):
        r = ConsentController(s).set("touch", "authentication", False)
        with pytest.raises(ApiError) as exc:
            s.api.request("POST", "/v1/transactions/authorize", {"x": 1})
    assert r.state == "refused" and r.message == "Not changed. Your bank refused this (error 403)."
    assert exc.value.user_message == "Your bank refused this (error 403)."
    logged = "\n".join(rec.getMessage() for rec in caplog.records if rec.name.startswith("mobile_client"))
    assert "consent change refused" in logged
    for text in (r.message, exc.value.user_message, str(exc.value), repr(exc.value.detail), logged):
        assert "alice" not in text and "<html" not in text and "Request ID" not in text, text


@pytest.mark.parametrize("body", [b'"just a string"', b'[1, 2]', b'{"detail": ["loc", "msg"]}', b'{"detail": 42}'])
def test_only_a_string_detail_of_a_json_object_is_shown(tmp_path: Path, body: bytes) -> None:
    bank = FakeBank()
    s = _services(tmp_path, bank, VirtualClock(1000.0))
    _route(s, bank, lambda req, pass_on: httpx.Response(400, content=body))
    with pytest.raises(ApiError) as exc:
        s.api.request("GET", "/v1/health", signed=False)
    assert exc.value.user_message == "Your bank refused this (error 400)."
    _route(s, bank, lambda req, pass_on: httpx.Response(400, json={"detail": "amount: must be positive"}))
    with pytest.raises(ApiError) as exc:
        s.api.request("GET", "/v1/health", signed=False)
    assert exc.value.user_message == "Your bank refused this: amount: must be positive"


# ---------------------------------------------------------------------------- 5. a step-up whose answer was lost
def _step_up_bank(lookup_up: bool) -> Callable[..., httpx.Response]:
    """The bank approves the first report and drops the connection; later reports are `not_pending`."""
    state = {"approved": False}

    def fault(req: httpx.Request, pass_on: Callable[[], httpx.Response]) -> httpx.Response:
        path = req.url.path
        if path.endswith("/step-up"):
            if not state["approved"]:
                state["approved"] = True
                raise httpx.ReadError("connection dropped after the bank answered")
            return httpx.Response(409, json={"detail": "transaction_id: status is 'approved_after_step_up', "
                                                       "not step_up_pending", "code": "not_pending"})
        if req.method == "GET" and path.startswith("/v1/transactions/"):
            if not lookup_up:
                raise httpx.ConnectError("connection refused")
            assert req.headers.get("x-api-key") == "k"
            status = "approved_after_step_up" if state["approved"] else "step_up_pending"
            return httpx.Response(200, json={"transaction_id": path.rsplit("/", 1)[1], "status": status,
                                             "decision": "approve" if state["approved"] else "step_up"})
        return pass_on()

    return fault


@pytest.mark.parametrize("retries", [0, 1])
def test_a_step_up_approved_with_a_lost_answer_is_looked_up_not_called_unapproved(tmp_path: Path, retries: int) -> None:
    bank = FakeBank()
    tc = _step_up(tmp_path, bank, bank_key="k")
    assert tc.step_up is not None
    code = tc.step_up.code
    tc.s.api.retries = retries
    _route(tc.s, bank, _step_up_bank(lookup_up=True))
    if retries == 0:
        with pytest.raises(ApiError) as exc:
            tc.verify_code(code)
        assert exc.value.answer_unknown and tc.step_up is not None
    assert tc.verify_code(code) is True and tc.step_up is None  # the bank's record: approved


def test_a_step_up_that_cannot_be_looked_up_says_it_may_be_approved(tmp_path: Path) -> None:
    bank = FakeBank()
    tc = _step_up(tmp_path, bank, bank_key="k")
    assert tc.step_up is not None
    code = tc.step_up.code
    _route(tc.s, bank, _step_up_bank(lookup_up=False))
    with pytest.raises(ApiError):
        tc.verify_code(code)
    with pytest.raises(ApiError) as exc:
        tc.verify_code(code)
    assert exc.value.code == "maybe_approved"
    text = exc.value.user_message
    assert "may already have approved" in text and "no longer waiting" not in text and "not approved" not in text.lower()


def test_not_pending_without_a_lost_answer_stays_a_refusal(tmp_path: Path) -> None:
    bank = FakeBank()
    tc = _step_up(tmp_path, bank, bank_key="k")
    assert tc.step_up is not None
    bank.step_up_reply = httpx.Response(409, json={"detail": "status is 'denied'", "code": "not_pending"})
    with pytest.raises(ApiError) as exc:
        tc.verify_code(tc.step_up.code)
    assert exc.value.code == "not_pending" and not any(m == "GET" for m, _, _ in bank.log)


# ---------------------------------------------------------------------------- 6. the app's log level under Kivy
LOG_PROBE = """
import logging, sys
from mobile_client.__main__ import configure_logging
configure_logging()
from mobile_client.headless import window_size
window_size(64, 64)
import mobile_client.ui.app  # Kivy (KIVY_LOG_MODE=KIVY) is imported here, as by main()
logging.getLogger("httpcore.connection").debug("HTTPCORE-DEBUG-MARKER")
logging.getLogger("mobile_client.api").info("APP-INFO-MARKER")
print("LEVELS", logging.getLogger("httpcore").isEnabledFor(logging.DEBUG),
      logging.getLogger("mobile_client").isEnabledFor(logging.INFO))
for h in logging.root.handlers:
    h.flush()
"""


def test_the_apps_log_stays_at_info_after_kivy_is_imported(gl_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(gl_env, KIVY_LOG_MODE="KIVY", KIVY_HOME=str(tmp_path / "kivy-home"))
    p = subprocess.run([sys.executable, "-c", LOG_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "LEVELS False True" in p.stdout, p.stdout + p.stderr[-2000:]
    logs = "".join(f.read_text(errors="replace") for f in (tmp_path / "kivy-home" / "logs").glob("*.txt"))
    assert "HTTPCORE-DEBUG-MARKER" not in logs and "HTTPCORE-DEBUG-MARKER" not in p.stderr
    assert "APP-INFO-MARKER" in logs + p.stderr  # the app's own lines still reach Kivy's log

