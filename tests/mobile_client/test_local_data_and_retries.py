"""The app survives damaged local files, and a payment retried after a lost answer is one payment.

No Kivy here: the offline queue, the profile, the raw store, the device key, the API client's
idempotent payment retries and the walk replay, each against the failure a tester met
(a crash loop on start, a second transaction, a silent fallback).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from evaluation.synthetic import SyntheticPerson
from mobile_client import api as api_mod
from mobile_client.api import ApiClient, ApiError, OfflineQueue
from mobile_client.collectors.replay import looped, recorded_walk
from mobile_client.device_key import DeviceKey
from mobile_client.profile import Profile
from mobile_client.raw_store import RawEventStore
from mobile_client.secrets_store import FileSecretStore
from mobile_client.services import DeviceKeyUnreadable, build_services
from modalities.events import AccelSeries, FeatureWindow


def _client(tmp_path: Path, handler, retries: int = 2) -> ApiClient:
    key = DeviceKey(FileSecretStore(tmp_path / "s"))
    return ApiClient("http://bank.test", key, "dev-1", "user-1", OfflineQueue(tmp_path / "q.jsonl"),
                     retries=retries, backoff_s=0.0, transport=httpx.MockTransport(handler), sleep=lambda s: None)


# ---------------------------------------------------------------------------- the offline queue
def test_outbox_with_a_torn_line_is_quarantined_and_the_rest_is_sent(tmp_path: Path, caplog) -> None:
    outbox = tmp_path / "q.jsonl"
    good = [{"method": "POST", "path": f"/v1/users/user-1/consents/{i}", "body": {"i": i}, "queued_at": 1.0}
            for i in range(2)]
    outbox.write_text(json.dumps(good[0]) + "\n" + '{"method": "POST", "path": "/v1/us' + "\n" + json.dumps(good[1]) + "\n")
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.url.path)
        return httpx.Response(201, json={})

    c = _client(tmp_path, handler)
    with caplog.at_level(logging.WARNING, logger="mobile_client.api"):
        assert c.health()  # any request first sends what waited: the torn line must not stop it
    assert seen[:2] == [g["path"] for g in good] and seen[2] == "/v1/health"
    assert len(c.queue) == 0
    assert (tmp_path / "q.jsonl.bad").read_text() == '{"method": "POST", "path": "/v1/us\n'
    assert "unreadable line" in caplog.text


def test_outbox_push_after_a_torn_tail_keeps_every_request(tmp_path: Path) -> None:
    outbox = tmp_path / "q.jsonl"
    outbox.write_text('{"method": "DELETE", "path": "/v1/users/u", "bo')  # a crash mid-append, no newline
    q = OfflineQueue(outbox)
    q.push("POST", "/v1/users/u/consents", {"modality": "gait"})
    items = q.items()
    assert [i["path"] for i in items] == ["/v1/users/u/consents"]
    assert outbox.read_text().endswith("\n") and all(json.loads(line) for line in outbox.read_text().splitlines())
    assert not (tmp_path / "q.jsonl.tmp").exists()


# ---------------------------------------------------------------------------- the profile
@pytest.mark.parametrize("content", ["", '{"user_id": "user-1", "onb', '{"consents": []}', "[]",
                                     '{"enrolled": "gait"}', '{"consents": {"gait": true}}'])
def test_a_damaged_profile_is_moved_aside_and_the_app_starts_as_new(tmp_path: Path, caplog, content: str) -> None:
    path = tmp_path / "profile.json"
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="mobile_client.profile"):
        p = Profile.load(path)
    assert not p.onboarded and not p.registered and p.enrolled == []
    assert p.user_id and p.device_id and not p.consented("gait")
    assert not path.exists()
    aside = list(tmp_path.glob("profile.json.bad-*"))
    assert len(aside) == 1 and aside[0].read_text() == content
    assert "moved to" in caplog.text


def test_a_profile_missing_a_purpose_gets_it_as_not_consented(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"user_id": "user-1", "consents": {"gait": {"authentication": True}}}))
    p = Profile.load(path)
    assert p.user_id == "user-1" and p.consents["gait"] == {"authentication": True, "federated_training": False}


# ---------------------------------------------------------------------------- keys and the raw store
def test_a_damaged_raw_store_key_means_a_new_key_and_no_unreadable_batches(tmp_path: Path, caplog) -> None:
    s = build_services(tmp_path, "http://127.0.0.1:9")
    s.store.append(SyntheticPerson(1).keystrokes(60, 0).to_events())
    assert not s.store.is_empty()
    (tmp_path / "secrets" / "raw-store-key").write_bytes(b"not a fernet key")
    with caplog.at_level(logging.WARNING, logger="mobile_client.raw_store"):
        s2 = build_services(tmp_path, "http://127.0.0.1:9")
    assert s2.store.is_empty() and "new key" in caplog.text
    s2.store.append(SyntheticPerson(1).keystrokes(60, 0).to_events())
    assert len(s2.store.read("keystroke")) == 60


def test_a_stray_file_in_the_raw_store_is_ignored_with_a_log_line(tmp_path: Path, caplog) -> None:
    store = RawEventStore(tmp_path / "raw", FileSecretStore(tmp_path / "s"))
    store.append(SyntheticPerson(1).keystrokes(60, 0).to_events())
    (tmp_path / "raw" / "keystroke" / "copy.bin").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="mobile_client.raw_store"):
        assert store.apply_retention() == 0
        assert store.summary().counts["keystroke"] == 60
        assert len(store.read("keystroke")) == 60
        build_services(tmp_path / "app", "http://127.0.0.1:9")  # the app starts with it
    assert "copy.bin" in caplog.text and caplog.text.count("copy.bin") == 1  # logged once, not per call
    assert store.delete_all() == 2 and not (tmp_path / "raw" / "keystroke" / "copy.bin").exists()


def test_a_damaged_device_key_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    build_services(tmp_path / "app", "http://127.0.0.1:9")
    (tmp_path / "app" / "secrets" / "device-ed25519").write_bytes(b"short")
    with pytest.raises(DeviceKeyUnreadable):
        build_services(tmp_path / "app", "http://127.0.0.1:9")
    env = dict(os.environ, SDL_VIDEODRIVER="offscreen", KIVY_NO_ARGS="1", KIVY_HOME=str(tmp_path / "kivy"),
               KIVY_NO_CONSOLELOG="1")
    code = "import sys; from pathlib import Path; from mobile_client.__main__ import main; sys.exit(main(data=Path(sys.argv[1])))"
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "app")], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1, p.stderr[-2000:]
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "device key" in p.stderr and "set it up anew" in p.stderr


# ---------------------------------------------------------------------------- one payment, one transaction
def _window(seed: int) -> FeatureWindow:
    return FeatureWindow("keystroke", "v1", float(seed), float(seed) + 10.0, 50, 0.9,
                         np.random.default_rng(seed).normal(size=8))


def _decision(body: dict) -> dict:
    return {"transaction_id": "tx-" + body["idempotency_key"][:6], "decision": "approve", "risk": 0.1,
            "tier": "low", "reasons": [], "amount": body["amount"], "currency": body["currency"], "payee": body["payee"]}


def test_a_payment_retried_after_a_lost_answer_resends_the_same_key_and_evidence(tmp_path: Path) -> None:
    bodies: list[bytes] = []
    state = {"answer": False}

    def handler(req: httpx.Request) -> httpx.Response:
        bodies.append(req.content)
        if not state["answer"]:  # the server got it (and may have recorded it); the reply is lost
            raise httpx.ReadTimeout("no answer", request=req)
        return httpx.Response(200, json=_decision(json.loads(req.content)))

    c = _client(tmp_path, handler)
    with pytest.raises(ApiError) as err:
        c.authorize("12.00", "GBP", "Sam", [_window(1)])
    assert err.value.answer_unknown
    first = bodies[-1]
    state["answer"] = True  # "Try again": the phone gathered other evidence meanwhile
    d = c.authorize("12.00", "GBP", "Sam", [_window(2)])
    assert bodies[-1] == first, "a retry must re-send the first try's body byte for byte (same key, same windows)"
    assert [w.to_dict() for w in d.evidence] == [_window(1).to_dict()] and d.idempotency_key == json.loads(first)["idempotency_key"]
    # after an answer, the next payment (even the same one again) is a new payment
    c.authorize("12.00", "GBP", "Sam", [_window(3)])
    assert json.loads(bodies[-1])["idempotency_key"] != d.idempotency_key
    # another payee or amount after a lost answer is another payment too
    state["answer"] = False
    with pytest.raises(ApiError):
        c.authorize("12.00", "GBP", "Sam", [_window(4)])
    state["answer"] = True
    c.authorize("13.00", "GBP", "Sam", [_window(5)])
    assert json.loads(bodies[-1])["evidence"] == [_window(5).to_dict()]


def test_a_refused_payment_is_not_retried_with_its_old_key(tmp_path: Path) -> None:
    keys: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        keys.append(json.loads(req.content)["idempotency_key"])
        if len(keys) == 1:
            return httpx.Response(403, json={"detail": "no consent", "code": "consent_required"})
        return httpx.Response(200, json=_decision(json.loads(req.content)))

    c = _client(tmp_path, handler)
    with pytest.raises(ApiError) as err:
        c.authorize("12.00", "GBP", "Sam", [_window(1)])
    assert not err.value.answer_unknown
    c.authorize("12.00", "GBP", "Sam", [_window(1)])
    assert keys[0] != keys[1]


def test_an_interactive_payment_waits_a_bounded_time(tmp_path: Path) -> None:
    timeouts: list[float] = []
    sleeps: list[float] = []

    def handler(req: httpx.Request) -> httpx.Response:
        timeouts.append(req.extensions["timeout"]["read"])
        raise httpx.ReadTimeout("slow", request=req)

    key = DeviceKey(FileSecretStore(tmp_path / "s"))
    c = ApiClient("http://bank.test", key, "dev-1", "user-1", OfflineQueue(tmp_path / "q.jsonl"),
                  transport=httpx.MockTransport(handler), sleep=sleeps.append)  # the app's defaults: 3 retries, 10 s
    with pytest.raises(ApiError):
        c.authorize("12.00", "GBP", "Sam", [])
    worst = sum(timeouts) + sum(sleeps)
    assert worst <= 20.0, f"a payment could keep the person waiting {worst:.0f} s ({len(timeouts)} tries)"
    assert len(timeouts) == api_mod.AUTHORIZE_RETRIES + 1


# ---------------------------------------------------------------------------- the walk replay
def test_an_unusable_walk_folder_is_named_in_a_warning(tmp_path: Path, caplog) -> None:
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "1_PocketPhone_Accelerometer_(X).csv").write_text("this is not,a csv\n garbage\n")
    for folder in (tmp_path / "missing", garbage):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mobile_client.collectors.replay"):
            series, label = recorded_walk(folder, 32.0)
        assert label.startswith("synthetic") and series.duration >= 31.0
        assert str(folder) in caplog.text and "synthetic" in caplog.text


def test_a_short_walk_recording_is_looped_to_the_length_asked(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "short"
    folder.mkdir()
    t = 1_700_000_000.0 + np.arange(600) * 0.01  # a 6 s recording
    rows = "\n".join(f"{x:.3f},{np.sin(x):.4f},1.0,9.8" for x in t)
    (folder / "1_PocketPhone_Accelerometer_(X).csv").write_text("time,Xvalue,Yvalue,Zvalue\n" + rows + "\n")
    with caplog.at_level(logging.WARNING, logger="mobile_client.collectors.replay"):
        series, label = recorded_walk(folder, 32.0)
    assert label.startswith("BB-MAS"), caplog.text
    assert series.duration >= 31.9 and "looped" in caplog.text
    assert np.all(np.diff(series.t) > 0)


def test_looped_keeps_a_long_recording_and_the_spacing_of_a_short_one() -> None:
    long = AccelSeries(np.arange(4000) * 0.01, np.zeros((4000, 3)))
    assert looped(long, 30.0) is long
    short = AccelSeries(np.arange(100) * 0.01, np.ones((100, 3)))
    out = looped(short, 5.0)
    assert out.duration == pytest.approx(5.0, abs=0.011) and np.allclose(np.diff(out.t), 0.01)


# ---------------------------------------------------------------------------- hand-offs: queue, retry, walk
@pytest.mark.parametrize("status", [500, 503, 429])
def test_send_or_queue_keeps_a_request_the_server_cannot_take_yet(tmp_path: Path, status: int) -> None:
    state = {"status": status}

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(state["status"], json={"detail": "busy"} if state["status"] >= 400 else {})

    c = _client(tmp_path, handler)
    res = c.send_or_queue("POST", "/v1/users/user-1/consents", {"modality": "gait"})
    assert isinstance(res, api_mod.Queued) and not res and res.error.status == status
    assert [i["path"] for i in c.queue.items()] == ["/v1/users/user-1/consents"]
    state["status"] = 201
    assert c.flush_queue() == 1 and len(c.queue) == 0


def test_send_or_queue_raises_a_refusal_and_queues_nothing(tmp_path: Path) -> None:
    c = _client(tmp_path, lambda req: httpx.Response(403, json={"detail": "no", "code": "consent_required"}))
    with pytest.raises(ApiError) as err:
        c.send_or_queue("POST", "/v1/users/user-1/consents", {"modality": "gait"})
    assert err.value.status == 403 and len(c.queue) == 0


def test_a_retried_payment_notes_and_adapts_with_the_windows_it_resent(tmp_path: Path) -> None:
    from mobile_client.clock import VirtualClock
    from mobile_client.controllers.transaction import TransactionController
    from tests.mobile_client.test_controllers import FakeBank, _enrolled, _play

    class LosingBank(FakeBank):
        """Records a payment, loses its answer `lose` times, then answers from its record (same key)."""

        def __init__(self) -> None:
            super().__init__()
            self.lose = 0
            self.answers: dict[str, httpx.Response] = {}

        def handle(self, req: httpx.Request) -> httpx.Response:
            if req.url.path == "/v1/transactions/authorize":
                key = json.loads(req.content)["idempotency_key"]
                if key not in self.answers:
                    self.answers[key] = super().handle(req)
                if self.lose > 0:
                    self.lose -= 1
                    raise httpx.ReadTimeout("answer lost", request=req)
                self.log.append((req.method, req.url.path, json.loads(req.content)))
                return self.answers[key]
            return super().handle(req)

    person, bank, clock = SyntheticPerson(11), LosingBank(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, person, clock)
    tc = TransactionController(s)
    _play(s, clock, person.keystrokes(120, 2))
    bank.lose = 2  # the first try and its automatic retry both lose the answer
    with pytest.raises(ApiError) as err:
        tc.authorize("12.00", "Sam")
    assert err.value.answer_unknown
    first = bank.sent("/authorize")[-1]["evidence"]
    assert first and {w["modality"] for w in first} == {"keystroke"}
    _play(s, clock, person.keystrokes(120, 3))  # the person types more before "Try again"
    d = tc.authorize("12.00", "Sam")
    assert bank.sent("/authorize")[-1]["evidence"] == first  # the held body went again
    assert [w.to_dict() for w in d.evidence] == first
    assert s.evidence.sent_until("keystroke") == max(w["end"] for w in first)
    assert tc.evidence_summary["keystroke"] == len(first)
    adapted = [b for b in bank.sent("/enrolment") if b.get("confirmed_transaction_id") == d.transaction_id]
    assert adapted and adapted[-1]["windows"] == first  # the approved call's own windows, not today's
    # the typing gathered during the retry was never sent: the next payment carries it
    tc.authorize("5.00", "Kiosk")
    nxt = bank.sent("/authorize")[-1]["evidence"]
    assert nxt and min(w["start"] for w in nxt) > max(w["end"] for w in first)


def _walk_progress_after(tmp_path: Path, series_parts: list[AccelSeries | None]) -> float:
    from mobile_client.clock import VirtualClock
    from mobile_client.collectors.replay import ReplaySource
    from mobile_client.controllers.enrolment import EnrolmentController

    clock = VirtualClock(1000.0)
    s = build_services(tmp_path / "app", "http://bank.test", retries=0, clock=clock)
    s.profile.consents["gait"]["authentication"] = True
    ec = EnrolmentController(s)
    ec.begin("gait")
    for part in series_parts:
        if part is None:
            clock.advance(20.0)  # the phone lies still: no samples at all
            continue
        ReplaySource(part, clock=clock).play_all(s.evidence.add)
        clock.advance(part.duration + 0.01)
    return ec.walk_progress()


def test_walk_progress_counts_samples_walked_not_an_idle_gap(tmp_path: Path) -> None:
    walk = SyntheticPerson(3).walk(10.0, 100.0, rng=1)
    rest = SyntheticPerson(3).walk(1.0, 100.0, rng=2)
    p = _walk_progress_after(tmp_path, [walk, None, rest])  # 10 s, a 20 s pause, 1 s
    assert p == pytest.approx(11.0 / 30.0, abs=0.02), p


def test_walk_progress_of_a_looped_short_recording_reaches_the_end(tmp_path: Path) -> None:
    short = AccelSeries(1_700_000_000.0 + np.arange(600) * 0.01, np.ones((600, 3)))  # a 6 s recording
    assert _walk_progress_after(tmp_path, [looped(short, 32.0)]) == 1.0
    assert _walk_progress_after(tmp_path / "b", [looped(short, 15.0)]) == pytest.approx(0.5, abs=0.01)
