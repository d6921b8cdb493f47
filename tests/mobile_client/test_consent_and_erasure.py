"""Consent, erasure and evidence quality agree with the server (controllers against a fake bank).

A consent change counts on the phone only when the bank recorded it or it waits in the queue;
a cascade is sent in full; a revoked modality must be set up again; a confirmed erasure leaves
a fresh app; windows meet the server's quality floor; reasons do not contradict the evidence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from evaluation.synthetic import SyntheticPerson
from fusion.policy import DEFAULT_POLICY
from mobile_client import features
from mobile_client.api import Decision
from mobile_client.clock import VirtualClock
from mobile_client.controllers.consent import ConsentController, ConsentRefused
from mobile_client.controllers.enrolment import EnrolmentController
from mobile_client.controllers.privacy import PrivacyController
from mobile_client.controllers.transaction import TransactionController
from tests.mobile_client.test_controllers import MODS, FakeBank, _enrolled, _play, _services

ALL_ON = {m: {"authentication": True, "federated_training": False} for m in MODS}


class FaultyBank(FakeBank):
    """A FakeBank that answers requests whose path ends with a given suffix with a given status."""

    def __init__(self) -> None:
        super().__init__()
        self.faults: dict[str, int] = {}

    def handle(self, req: httpx.Request) -> httpx.Response:
        for suffix, status in self.faults.items():
            if req.url.path.endswith(suffix):
                return httpx.Response(status, json={"detail": f"injected {status}"})
        return super().handle(req)


def _consent_posts(bank: FakeBank) -> list[dict[str, Any]]:
    return bank.sent("/consents")


@pytest.fixture()
def person() -> SyntheticPerson:
    return SyntheticPerson(11)


# -- 1: a change the bank did not take is not shown as made ------------------------------------
def revoke_touch_answered(tmp_path: Path, status: int) -> tuple[FaultyBank, Any, Any]:
    """The bank, the app's services and the result of turning touch authentication off, the bank answering `status`."""
    bank, clock = FaultyBank(), VirtualClock(1000.0)
    s = _services(tmp_path, bank, clock)
    cc = ConsentController(s)
    cc.apply({"touch": {"authentication": True, "federated_training": False}})
    bank.faults["/consents"] = status
    return bank, s, cc.set("touch", "authentication", False)


def test_a_consent_change_the_bank_refuses_changes_nothing_and_says_so(tmp_path: Path) -> None:
    _, s, res = revoke_touch_answered(tmp_path, 403)
    assert not res.applied and res.state == "refused"
    assert s.profile.consented("touch")  # still on: the bank still has it
    assert res.message.startswith("Not changed.") and "injected 403" in res.message


def test_a_consent_change_the_bank_cannot_take_yet_waits_in_the_queue(tmp_path: Path) -> None:
    bank, s, res = revoke_touch_answered(tmp_path, 500)
    assert res.applied and res.state == "queued" and "not received" in res.message
    assert not s.profile.consented("touch")
    assert [i["body"]["granted"] for i in s.api.queue.items()] == [False]
    del bank.faults["/consents"]
    s.api.flush_queue()
    last = _consent_posts(bank)[-1]
    assert (last["modality"], last["purpose"], last["granted"]) == ("touch", "authentication", False)


def test_onboarding_does_not_go_on_without_the_consents_on_record(tmp_path: Path) -> None:
    bank, clock = FaultyBank(), VirtualClock(1000.0)
    s = _services(tmp_path, bank, clock)
    bank.faults["/consents"] = 500
    with pytest.raises(ConsentRefused) as exc:
        ConsentController(s).apply(ALL_ON)
    assert "set-up cannot go on" in exc.value.user_message
    assert not s.profile.onboarded and not any(s.profile.consented(m) for m in MODS)
    assert len(s.api.queue) == 0  # onboarding does not leave half its choices waiting
    del bank.faults["/consents"]
    ConsentController(s).apply(ALL_ON)  # Agree again once the bank is back
    assert s.profile.onboarded and all(s.profile.consented(m) for m in MODS)


# -- 2: the cascade reaches the bank -----------------------------------------------------------
def test_revoking_authentication_revokes_federated_training_on_the_bank_too(tmp_path: Path) -> None:
    bank, clock = FakeBank(), VirtualClock(1000.0)
    s = _services(tmp_path, bank, clock)
    cc = ConsentController(s)
    cc.apply({"keystroke": {"authentication": True, "federated_training": True}})
    assert s.profile.federated and PrivacyController(s).federated_on()
    n = len(_consent_posts(bank))
    cc.set("keystroke", "authentication", False)
    sent = [(b["purpose"], b["granted"]) for b in _consent_posts(bank)[n:]]
    assert sent == [("federated_training", False), ("authentication", False)]
    assert s.profile.consents["keystroke"] == {"authentication": False, "federated_training": False}
    assert not s.profile.federated and not PrivacyController(s).federated_on()


# -- 3: a revoked modality is set up again -----------------------------------------------------
def test_a_revoked_modality_is_no_longer_set_up_and_can_be_set_up_again(tmp_path: Path,
                                                                         person: SyntheticPerson) -> None:
    bank, clock = FakeBank(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, person, clock)
    cc = ConsentController(s)
    cc.set("keystroke", "authentication", False)  # the server deletes the keystroke template
    assert s.profile.enrolled == ["gait", "touch"]
    res = cc.set("keystroke", "authentication", True)
    assert "Set it up again" in res.message
    ec = EnrolmentController(s)
    assert ec.todo() == ["keystroke"] and ec.missing() == ["keystroke"]
    n = len(bank.sent("/enrolment"))
    ec.begin("keystroke")
    _play(s, clock, person.keystrokes(300, 5))
    assert ec.check("keystroke").ok
    assert ec.finish() == {"keystroke": ec.tasks["keystroke"].sent}
    assert [b["windows"][0]["modality"] for b in bank.sent("/enrolment")[n:]] == ["keystroke"]
    assert s.profile.enrolled == ["gait", "keystroke", "touch"] and ec.missing() == []


# -- 4 and 5: erasure ---------------------------------------------------------------------------
def test_a_confirmed_erasure_leaves_a_fresh_app_that_registers_again(tmp_path: Path,
                                                                     person: SyntheticPerson) -> None:
    bank, clock = FakeBank(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, person, clock)
    old_device, old_key = s.profile.device_id, s.key.public_key_b64
    pc = PrivacyController(s)
    text = pc.delete_my_data()
    assert pc.erase_state == "done" and "your bank erased" in text
    p = s.profile
    assert not p.registered and not p.onboarded and p.enrolled == [] and not any(p.consented(m) for m in MODS)
    assert p.device_id != old_device and s.key.public_key_b64 != old_key
    assert s.api.device_id == p.device_id and s.api.key is s.key
    ConsentController(s).apply(ALL_ON)  # set up again: a new device is registered and signs
    reg = bank.sent("/v1/devices")[-1]
    assert reg["device_id"] == p.device_id and reg["public_key"] == s.key.public_key_b64
    assert p.registered and p.onboarded


@pytest.mark.parametrize("status", [500, 503])
def test_an_erasure_the_bank_cannot_take_yet_is_pending_not_done(tmp_path: Path, person: SyntheticPerson,
                                                                 status: int) -> None:
    bank, clock = FaultyBank(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, person, clock)
    user = s.profile.user_id
    bank.faults[f"/v1/users/{user}"] = status
    pc = PrivacyController(s)
    text = pc.delete_my_data()
    assert pc.erase_state == "pending" and "Not finished" in text and "bank erased" not in text
    assert s.profile.registered and s.profile.enrolled  # the bank still holds the pattern
    assert [(i["method"], i["path"]) for i in s.api.queue.items()] == [("DELETE", f"/v1/users/{user}")]
    assert s.store.is_empty()  # this phone's recordings are gone at once
    pc.settle()  # still busy: still pending
    assert s.profile.registered and pc.erase_state == "pending"
    del bank.faults[f"/v1/users/{user}"]
    pc.settle()  # the request went through: now the app is fresh (a worker job in the app)
    assert pc.erase_state == "done" and not s.profile.registered and len(s.api.queue) == 0
    assert ("DELETE", f"/v1/users/{user}") in [(m, p) for m, p, _ in bank.log]


def test_an_erasure_the_bank_refuses_deletes_nothing(tmp_path: Path, person: SyntheticPerson) -> None:
    bank, clock = FaultyBank(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, person, clock)
    bank.faults[f"/v1/users/{s.profile.user_id}"] = 403
    device = s.profile.device_id
    pc = PrivacyController(s)
    text = pc.delete_my_data()
    assert pc.erase_state == "failed" and text.startswith("Nothing was deleted.")
    assert s.profile.registered and s.profile.device_id == device and not s.store.is_empty()
    assert len(s.api.queue) == 0


def test_an_erasure_refused_after_failed_checks_says_how_to_get_it_done(tmp_path: Path, person: SyntheticPerson) -> None:
    """The server's 423 `failed_authentications` (a device may not erase away its failures) in plain words."""
    class FailuresOnRecord(FakeBank):
        def handle(self, req: httpx.Request) -> httpx.Response:
            if req.method == "DELETE" and req.url.path.startswith("/v1/users/"):
                return httpx.Response(423, json={"detail": "user_id: 2 consecutive failed authentication(s) on "
                                                           "record", "code": "failed_authentications"})
            return super().handle(req)

    bank, clock = FailuresOnRecord(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, person, clock)
    pc = PrivacyController(s)
    text = pc.delete_my_data()
    assert pc.erase_state == "failed" and text.startswith("Nothing was deleted.")
    assert "Ask your bank to delete it" in text and "consecutive" not in text
    assert s.profile.registered and not s.store.is_empty()


# -- 6: evidence meets the server's quality floor ------------------------------------------------
def test_the_apps_quality_floor_is_the_servers() -> None:
    assert features.SERVER_MIN_QUALITY == DEFAULT_POLICY.min_quality
    assert all(q >= DEFAULT_POLICY.min_quality for q in features.MIN_WINDOW_QUALITY.values())


@pytest.mark.parametrize("seed", [2, 5])
def test_payment_typing_windows_count_on_the_server(tmp_path: Path, person: SyntheticPerson, seed: int) -> None:
    bank, clock = FakeBank(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, person, clock)
    _play(s, clock, person.keystrokes(120, seed))  # typing a payee, an amount and a note
    windows = [w for w in TransactionController(s).gather_evidence() if w.modality == "keystroke"]
    assert windows and all(w.quality >= DEFAULT_POLICY.min_quality for w in windows)


def test_set_up_calls_typing_good_only_when_it_would_count(person: SyntheticPerson) -> None:
    from mobile_client.collectors.replay import ReplaySource

    events: list[Any] = []
    ReplaySource(person.keystrokes(300, 3)).play_all(events.append)
    short = features.keystroke_windows(events, n_keys=50, hop=25)  # what 50-key windows give
    assert max(w.quality for w in short) < DEFAULT_POLICY.min_quality + 0.05
    rep = features.quality_report("keystroke", [w for w in short if w.quality < DEFAULT_POLICY.min_quality])
    assert not rep.ok and rep.message != "Good sample"
    good = features.quality_report("keystroke", features.keystroke_windows(events))
    assert good.ok and good.mean_quality >= DEFAULT_POLICY.min_quality


# -- 7: "no evidence" does not contradict the samples shown ------------------------------------
def test_no_usable_evidence_is_not_called_no_behaviour_when_samples_were_sent(tmp_path: Path) -> None:
    s = _services(tmp_path, FakeBank(), VirtualClock(1000.0))
    tc = TransactionController(s)
    tc.last = Decision("tx-1", "step_up", 0.5, "low", [{"modality": "keystroke", "code": "low_quality"},
                                                       {"modality": "none", "code": "no_evidence"}])
    tc.evidence_summary = {"keystroke": 2, "touch": 3, "gait": 1}
    text = tc.reasons_text()
    assert "No recent behaviour" not in " ".join(text)
    assert text[-1].startswith("None of these samples could count")
    tc.evidence_summary = {"keystroke": 0, "touch": 0, "gait": 0}
    assert tc.reasons_text()[-1] == "No recent behaviour could be checked on this phone"


# -- 10: Privacy speaks people's words ---------------------------------------------------------
def test_privacy_inventory_has_no_codes_or_file_modes(tmp_path: Path, person: SyntheticPerson) -> None:
    s = _enrolled(tmp_path, FakeBank(), person, VirtualClock(1000.0))
    text = " ".join(f"{i.label} {i.detail}" for i in PrivacyController(s).stored())
    for raw in ("0600", "keystroke", "gait", "file ("):
        assert raw not in text
    assert "typing rhythm" in text and "walking pattern" in text


# -- 8: touch evidence is a decision's worth of swipes, or none -------------------------------------
def test_payments_send_the_last_five_swipes_and_never_fewer(tmp_path: Path, person: SyntheticPerson) -> None:
    """The server reads touch only as the mean of 5 swipes (its calibration's unit) and leaves out fewer."""
    bank, clock = FakeBank(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, person, clock)
    tc = TransactionController(s)
    _play(s, clock, person.touch(3, 7))
    assert not [w for w in tc.gather_evidence() if w.modality == "touch"]  # kept for a later payment
    _play(s, clock, person.touch(4, 8))
    fresh = features.touch_windows(s.evidence.touches(None, None))
    sent = [w for w in tc.gather_evidence() if w.modality == "touch"]
    assert len(fresh) == 7 and [(w.start, w.end) for w in sent] == [(w.start, w.end) for w in fresh[-5:]]


def test_taps_are_not_sent_as_swipes() -> None:
    import dataclasses

    from mobile_client.collectors.replay import ReplaySource
    from modalities.touch.features import IDX

    events: list[Any] = []
    ReplaySource(SyntheticPerson(3).touch(6, 1)).play_all(events.append)
    swipes = features.touch_windows(events)
    values = swipes[-1].values.copy()
    values[IDX["is_tap"]] = 1.0
    tap = dataclasses.replace(swipes[-1], values=values)
    assert [id(w) for w in features.last_swipes(swipes[:5] + [tap])] == [id(w) for w in swipes[:5]]
    assert features.last_swipes(swipes[:4] + [tap]) == []


def test_recent_swipes_are_the_last_five_swipes_computed_from_the_newest_back() -> None:
    """The app's payment path: the same windows as featurising every recent stroke, taps skipped."""
    import dataclasses

    from mobile_client.collectors.replay import ReplaySource
    from modalities.events import TouchAction

    events: list[Any] = []
    ReplaySource(SyntheticPerson(3).touch(9, 2)).play_all(events.append)
    last_up = max(e.time for e in events)
    down = next(e for e in events if e.action == TouchAction.DOWN)
    tap = [dataclasses.replace(down, time=last_up + 0.5 + 0.02 * k, action=a)  # a stroke that stays put
           for k, a in enumerate((TouchAction.DOWN, TouchAction.MOVE, TouchAction.MOVE, TouchAction.UP))]
    stream = events + tap
    every = features.touch_windows(stream)
    assert len(every) == 10 and not features.last_swipes(every[-1:], 1)  # the tap is featurised, never sent
    want = [(w.start, w.end) for w in features.last_swipes(every)]
    assert [(w.start, w.end) for w in features.recent_swipes(stream)] == want and len(want) == 5
    assert features.recent_swipes(features.split_strokes(stream)[-5:][0] + tap) == []  # 1 swipe and a tap
