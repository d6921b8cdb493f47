"""App review: held payments, consent during a step-up, the Android sensor clock, a lost key-up.

A held payment survives a refusal that settles nothing; a withdrawn consent is not adapted with;
Android accelerometer samples are stamped on the app's clock; a lost key-up does not stop
soft-keyboard capture.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from evaluation.synthetic import SyntheticPerson
from mobile_client.api import ApiClient, ApiError, HeldPayments, OfflineQueue
from mobile_client.clock import VirtualClock
from mobile_client.collectors.accelerometer import AndroidAccelerometer
from mobile_client.collectors.keys import MAX_HOLD_S, KeyPairer
from mobile_client.controllers.consent import ConsentController
from mobile_client.controllers.transaction import TransactionController
from mobile_client.device_key import DeviceKey
from mobile_client.evidence import EvidenceBuffer
from mobile_client.secrets_store import FileSecretStore
from modalities.events import FeatureWindow
from tests.mobile_client.test_controllers import FakeBank, _enrolled, _play


# -- 1: a held payment is let go only by an answer that settles it --------------------------------
def _window(seed: int) -> FeatureWindow:
    return FeatureWindow("keystroke", "v1", float(seed), float(seed) + 10.0, 50, 0.9,
                         np.random.default_rng(seed).normal(size=8))


class Bank:
    """Records a payment per idempotency key; answers each try as `script` says."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.recorded: dict[str, dict[str, Any]] = {}
        self.keys: list[str] = []

    def handle(self, req: httpx.Request) -> httpx.Response:
        body = json.loads(req.content)
        key = body["idempotency_key"]
        self.keys.append(key)
        what = self.script.pop(0) if self.script else "ok"
        if what == "lost":  # recorded, but the answer never reaches the phone
            self.recorded.setdefault(key, body)
            raise httpx.ReadTimeout("answer lost", request=req)
        if isinstance(what, tuple):  # a refusal: (status, code)
            status, code = what
            detail = {"detail": f"refused: {code}", "code": code} if code else {"detail": "refused"}
            return httpx.Response(status, json=detail)
        self.recorded.setdefault(key, body)
        return httpx.Response(200, json={"transaction_id": "tx-" + key[:6], "decision": "approve", "risk": 0.1,
                                         "tier": "low"})


def _client(tmp_path: Path, bank: Bank) -> ApiClient:
    key = DeviceKey(FileSecretStore(tmp_path / "s"))
    return ApiClient("http://bank.test", key, "dev-1", "user-1", OfflineQueue(tmp_path / "outbox.jsonl"),
                     transport=httpx.MockTransport(bank.handle), sleep=lambda _s: None)


@pytest.mark.parametrize("refusal", [(429, "rate_limited"), (429, None), (401, "stale_request"),
                                     (401, "replayed_request"), (403, "wrong_user"), (400, None), (503, None)])
def test_a_refused_retry_of_a_payment_without_an_answer_keeps_it_held(tmp_path: Path, refusal: Any) -> None:
    tries = 2 if refusal[0] in (429, 503) else 1  # a 4xx other than 429 is not retried
    bank = Bank(["lost", "lost", *[refusal] * tries, "ok"])
    c = _client(tmp_path, bank)
    with pytest.raises(ApiError) as first:  # tap 1: no answer (the bank recorded it)
        c.authorize("50.00", "GBP", "Sam", [_window(1)])
    assert first.value.answer_unknown
    with pytest.raises(ApiError) as second:  # tap 2: refused without a word on the first try
        c.authorize("50.00", "GBP", "Sam", [_window(2)])
    assert second.value.status == refusal[0]
    # still in doubt: the screen must say it may have gone through, not "try again" as if new
    assert second.value.answer_unknown
    assert c.held_payment("50.00", "GBP", "Sam") is not None
    d = c.authorize("50.00", "GBP", "Sam", [_window(3)])  # tap 3: answered
    assert len(bank.recorded) == 1, f"one payment, {len(bank.recorded)} transactions at the bank"
    assert d.idempotency_key == next(iter(bank.recorded)) and c.held_payment("50.00", "GBP", "Sam") is None


def test_a_retry_refused_in_the_same_call_after_a_lost_answer_keeps_it_held(tmp_path: Path) -> None:
    """Try 1 lost, its automatic retry answered 429: the payment may be recorded (one call, two tries)."""
    bank = Bank(["lost", (429, "rate_limited"), "ok"])
    c = _client(tmp_path, bank)
    with pytest.raises(ApiError) as err:
        c.authorize("50.00", "GBP", "Sam", [_window(1)])
    assert err.value.status == 429 and err.value.answer_unknown
    assert "may have gone through" in err.value.user_message
    c.authorize("50.00", "GBP", "Sam", [_window(2)])
    assert len(bank.recorded) == 1 and len(set(bank.keys)) == 1


@pytest.mark.parametrize("refusal", [(403, "consent_required"), (409, "evidence_replay"), (423, "user_locked"),
                                     (422, "unsupported_currency"), (409, "idempotency_conflict"),
                                     (422, "validation_error")])
def test_a_refusal_that_proves_nothing_was_recorded_lets_a_held_payment_go(tmp_path: Path, refusal: Any) -> None:
    bank = Bank(["lost", "lost", refusal])
    c = _client(tmp_path, bank)
    with pytest.raises(ApiError):
        c.authorize("50.00", "GBP", "Sam", [_window(1)])
    with pytest.raises(ApiError) as err:
        c.authorize("50.00", "GBP", "Sam", [_window(2)])
    assert not err.value.answer_unknown
    assert c.held_payment("50.00", "GBP", "Sam") is None
    c.authorize("50.00", "GBP", "Sam", [_window(3)])
    assert bank.keys[-1] != bank.keys[0]  # a new payment, with the evidence gathered now


def test_a_first_try_refused_without_a_lost_answer_is_let_go(tmp_path: Path) -> None:
    """Nothing of it can be recorded (a refused request writes nothing): the next tap is a new payment."""
    bank = Bank([(429, "rate_limited"), (429, "rate_limited"), "ok"])
    c = _client(tmp_path, bank)
    with pytest.raises(ApiError) as err:
        c.authorize("50.00", "GBP", "Sam", [_window(1)])
    assert not err.value.answer_unknown and "may have gone through" not in err.value.user_message
    assert c.held_payment("50.00", "GBP", "Sam") is None
    c.authorize("50.00", "GBP", "Sam", [_window(2)])
    assert bank.keys[-1] != bank.keys[0]


def test_a_payment_held_across_a_restart_stays_held_after_a_429(tmp_path: Path) -> None:
    """The app closed with the payment on disk: its try may have been recorded, so a 429 settles nothing."""
    bank = Bank(["lost", "lost"])
    c1 = _client(tmp_path, bank)
    with pytest.raises(ApiError):
        c1.authorize("50.00", "GBP", "Sam", [_window(1)])
    bank.script = [(429, "rate_limited"), (429, "rate_limited"), "ok"]
    c2 = _client(tmp_path, bank)  # restarted: the held payment is read from disk
    assert isinstance(c2.held, HeldPayments) and c2.held_payment("50.00", "GBP", "Sam") is not None
    with pytest.raises(ApiError) as err:
        c2.authorize("50.00", "GBP", "Sam", [_window(2)])
    assert err.value.answer_unknown
    c2.authorize("50.00", "GBP", "Sam", [_window(3)])
    assert len(bank.recorded) == 1 and len(set(bank.keys)) == 1


# -- 2: a consent withdrawn while a step-up waits for its code ------------------------------------
def _step_up_waiting(tmp_path: Path) -> tuple[Any, TransactionController, FakeBank, Any]:
    """An enrolled person's payment of 250 in step-up, waiting for its one-time code (typing and walking evidence)."""
    person = SyntheticPerson(11)
    bank, clock = FakeBank(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, person, clock)
    tc = TransactionController(s)
    clock.advance(60.0)
    _play(s, clock, person.keystrokes(120, 2))
    _play(s, clock, person.walk(16, 100, 2))
    bank.decision = "step_up"
    return s, tc, bank, tc.authorize("250.00", "Jordan Lee")


def test_a_modality_withdrawn_before_the_code_is_not_adapted_with(tmp_path: Path) -> None:
    s, tc, bank, d = _step_up_waiting(tmp_path)
    assert d.outcome == "step_up" and {w.modality for w in d.evidence} >= {"gait", "keystroke"}
    r = ConsentController(s).set("gait", "authentication", False)
    assert r.state == "saved" and not s.profile.consented("gait")
    n_before = len(bank.log)
    assert tc.step_up is not None and tc.verify_code(tc.step_up.code) is True
    adapted = [b for _, p, b in bank.log[n_before:] if p.endswith("/enrolment")]
    sent = {w["modality"] for b in adapted for w in b["windows"]}
    assert "gait" not in sent, f"gait windows sent after gait consent was withdrawn: {sent}"
    assert "keystroke" in sent  # the modality still consented adapts as before


def test_adaptation_checks_consent_when_it_sends(tmp_path: Path) -> None:
    """Also where the withdrawal did not come through ConsentController (the profile changed under it)."""
    s, tc, bank, _ = _step_up_waiting(tmp_path)
    s.profile.consents["gait"]["authentication"] = False
    n_before = len(bank.log)
    assert tc.step_up is not None and tc.verify_code(tc.step_up.code) is True
    sent = {w["modality"] for _, p, b in bank.log[n_before:] if p.endswith("/enrolment") for w in b["windows"]}
    assert "gait" not in sent and "keystroke" in sent


# -- 3: Android accelerometer samples on the app's clock ------------------------------------------
def _bare_accelerometer(sink: Any, clock: VirtualClock) -> AndroidAccelerometer:
    acc = object.__new__(AndroidAccelerometer)  # its __init__ refuses off Android; _push is what the listener calls
    acc._lock, acc._sink, acc._clock = threading.Lock(), sink, clock
    return acc


def _walk(acc: AndroidAccelerometer, clock: VirtualClock, boot_minus_app: float, seconds: float, seed: int,
          latency: float = 0.004) -> np.ndarray:
    """Deliver a walk as the listener would: each sample arrives `latency` after it was measured."""
    walk = SyntheticPerson(seed).walk(seconds, 50, 0)
    start = clock()
    sensor_t = []
    for t, (x, y, z) in zip(walk.t, walk.xyz):
        clock.set(max(clock(), start + float(t) + latency))
        boottime_ns = int((start + float(t) + boot_minus_app) * 1e9)  # SensorEvent.timestamp
        acc._push(boottime_ns * 1e-9, float(x), float(y), float(z))  # as onSensorChanged converts it
        sensor_t.append(boottime_ns * 1e-9)
    return np.asarray(sensor_t)


def test_android_samples_are_stamped_on_the_app_clock_after_the_phone_slept() -> None:
    app_clock = VirtualClock(10_000.0)  # an app clock other than the sensor's (CLOCK_MONOTONIC where no CLOCK_BOOTTIME)
    buf = EvidenceBuffer(None, clock=app_clock)
    acc = _bare_accelerometer(buf.add, app_clock)
    sensor_t = _walk(acc, app_clock, 3_600.0, 20.0, 1)  # the phone slept an hour since boot
    walked = buf.accel()
    stamps = np.array([a.time for a in walked])
    assert len(walked) == len(sensor_t)
    # on the app's clock, and the sensor's spacing kept (the gait features read the rate from it)
    assert 10_000.0 <= stamps[0] and stamps[-1] <= app_clock() + 1e-6
    assert np.allclose(np.diff(stamps), np.diff(sensor_t), atol=1e-6)
    assert len(buf.accel(15.0)) > 0  # just walked: recent
    app_clock.advance(120.0)  # two minutes after the walk ended, the person pays
    recent = buf.accel(15.0)
    assert recent == [], f"{len(recent)} samples of a walk that ended 2 minutes ago count as the last 15 s"


def test_a_walk_after_another_sleep_is_anchored_again() -> None:
    app_clock = VirtualClock(10_000.0)
    buf = EvidenceBuffer(None, clock=app_clock)
    acc = _bare_accelerometer(buf.add, app_clock)
    _walk(acc, app_clock, 3_600.0, 10.0, 1)
    n_first = len(buf.accel())
    # the phone sleeps 30 minutes: the sensor's clock counts them, the app's does not
    _walk(acc, app_clock, 3_600.0 + 1_800.0, 10.0, 2)
    second = buf.accel()[n_first:]
    now = app_clock()
    assert second and now - 10.1 <= second[0].time and second[-1].time <= now + 1e-6
    assert len(buf.accel(5.0)) > 0 and all(a.time <= now + 1e-6 for a in buf.accel())


# -- 4: a lost key-up ------------------------------------------------------------------------------
def test_a_lost_key_up_does_not_block_soft_keyboard_text_for_ever() -> None:
    p = KeyPairer()
    p.down("enter", 0.0)  # its key-up went to another window
    assert p.text_commit("hi", 1.0) == []  # a key really held blocks the commit, as before
    later = p.text_commit("hello world", 10 * MAX_HOLD_S)
    assert [e.key for e in later][:5] == ["h", "e", "l", "l", "o"]


def test_an_expired_key_down_makes_no_press_of_its_auto_repeat() -> None:
    p = KeyPairer()
    for i in range(250):  # "a" held 7.5 s with auto-repeat: a stuck key, never a press
        p.down("a", i * 0.03)
    assert p.text_commit("x", 7.5) != []
    p.down("a", 7.6)
    assert p.up("a", 7.7) is None  # the stuck press's up: dropped, not a 0.1 s hold
    p.down("a", 8.0)
    ev = p.up("a", 8.1)
    assert ev is not None and ev.key == "a" and ev.release - ev.press == pytest.approx(0.1)
