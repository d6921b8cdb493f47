"""A refused erasure is not done; no network or racing writes on the UI's side; held payments are one payment.

No Kivy here (the UI hand-offs are in test_ui_responsive): a queued erasure the bank refuses, the
Privacy inventory without network, the offline queue under two threads, payments held on disk
across restarts and other payments, what a reset or a revoked consent lets go, a paused phone
while an erasure waits, a profile that cannot be read now, and Android's unwrap errors.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from evaluation.synthetic import SyntheticPerson
from mobile_client import api as api_mod
from mobile_client.api import ApiClient, ApiError, OfflineQueue
from mobile_client.clock import VirtualClock
from mobile_client.controllers.consent import ConsentController
from mobile_client.controllers.privacy import ERASE_PENDING, PrivacyController
from mobile_client.controllers.transaction import InputError, TransactionController
from mobile_client.device_key import DeviceKey
from mobile_client.profile import Profile
from mobile_client.secrets_store import FileSecretStore
from modalities.events import FeatureWindow
from tests.mobile_client.test_consent_and_erasure import FaultyBank
from tests.mobile_client.test_controllers import FakeBank, _enrolled, _play, _services


@pytest.fixture()
def person() -> SyntheticPerson:
    return SyntheticPerson(11)


def _client(tmp_path: Path, handler: Any, retries: int = 0) -> ApiClient:
    key = DeviceKey(FileSecretStore(tmp_path / "s"))
    return ApiClient("http://bank.test", key, "dev-1", "user-1", OfflineQueue(tmp_path / "q.jsonl"),
                     retries=retries, backoff_s=0.0, transport=httpx.MockTransport(handler), sleep=lambda s: None)


def _window(seed: int, modality: str = "keystroke") -> FeatureWindow:
    return FeatureWindow(modality, "v1", float(seed), float(seed) + 10.0, 50, 0.9,
                         np.random.default_rng(seed).normal(size=8))


def _decision(body: dict[str, Any]) -> dict[str, Any]:
    return {"transaction_id": "tx-" + body["idempotency_key"][:6], "decision": "approve", "risk": 0.1,
            "tier": "low", "reasons": [], "amount": body["amount"], "currency": body["currency"], "payee": body["payee"]}


def _pending_erasure(tmp_path: Path, person: SyntheticPerson) -> tuple[Any, FaultyBank, PrivacyController, str]:
    bank, clock = FaultyBank(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, person, clock)
    user = s.profile.user_id
    bank.faults[f"/v1/users/{user}"] = 503
    pc = PrivacyController(s)
    pc.delete_my_data()
    assert pc.erase_state == "pending"
    return s, bank, pc, user


# -- 1: a queued erasure the bank refuses is not done ----------------------------------------------
class RefusingBank(FaultyBank):
    """FaultyBank whose injected answers carry a machine code too."""

    def __init__(self) -> None:
        super().__init__()
        self.codes: dict[str, str] = {}

    def handle(self, req: httpx.Request) -> httpx.Response:
        for suffix, code in self.codes.items():
            if req.url.path.endswith(suffix) and suffix not in self.faults:
                status = 401 if code in ("stale_request", "unknown_device") else 403
                return httpx.Response(status, json={"detail": f"refused: {code}", "code": code})
        return super().handle(req)


@pytest.mark.parametrize("code", ["stale_request", "forbidden"])
def test_a_queued_erasure_the_bank_refuses_keeps_the_device_and_says_so(tmp_path: Path, person: SyntheticPerson,
                                                                        code: str) -> None:
    bank, clock = RefusingBank(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, person, clock)
    user, device, key = s.profile.user_id, s.profile.device_id, s.key.public_key_b64
    bank.faults[f"/v1/users/{user}"] = 503
    pc = PrivacyController(s)
    pc.delete_my_data()
    del bank.faults[f"/v1/users/{user}"]
    bank.codes[f"/v1/users/{user}"] = code  # back, but it refuses the signed DELETE (wrong clock, 403)
    state = pc.settle()
    assert state == "failed" and pc.erase_state == "failed", pc.erase_state
    assert "refused" in pc.erase_message and "still holds" in pc.erase_message
    assert s.profile.registered and s.profile.device_id == device and s.key.public_key_b64 == key
    assert DeviceKey(s.secrets).public_key_b64 == key  # the key on disk was not destroyed
    assert not (s.data_dir / ERASE_PENDING).exists() and len(s.api.queue) == 0
    # the person asked for an erasure: closed before it was shown, the refusal is still said at the next start
    [notice] = _services(tmp_path, bank, clock).take_notices()
    assert notice == pc.erase_message
    assert not s.evidence.paused  # collection resumes: the phone stays set up


def test_a_queued_erasure_answered_unknown_device_counts_as_done(tmp_path: Path, person: SyntheticPerson) -> None:
    bank, clock = RefusingBank(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, person, clock)
    user, device = s.profile.user_id, s.profile.device_id
    bank.faults[f"/v1/users/{user}"] = 503
    pc = PrivacyController(s)
    pc.delete_my_data()
    del bank.faults[f"/v1/users/{user}"]
    bank.codes[f"/v1/users/{user}"] = "unknown_device"  # the bank holds nothing for this phone
    assert pc.settle() == "done"
    assert not s.profile.registered and s.profile.device_id != device


def test_flush_reports_each_requests_outcome(tmp_path: Path) -> None:
    answers = iter([httpx.Response(204), httpx.Response(401, json={"detail": "x", "code": "stale_request"}),
                    httpx.Response(503)])
    c = _client(tmp_path, lambda req: next(answers))
    for i in range(4):
        c.queue.push("POST", f"/v1/x/{i}", {})
    report = c.flush_queue()
    assert [(o.state, o.status, o.code) for o in report] == [
        ("sent", 200, None), ("refused", 401, "stale_request"), ("waiting", 503, None), ("waiting", 503, None)]
    assert [i["path"] for i in c.queue.items()] == ["/v1/x/2", "/v1/x/3"]


# -- 2: no network on the UI's side; the queue under two threads -------------------------------
def test_the_privacy_inventory_sends_nothing_while_an_erasure_waits(tmp_path: Path, person: SyntheticPerson) -> None:
    s, bank, pc, user = _pending_erasure(tmp_path, person)
    del bank.faults[f"/v1/users/{user}"]
    n = len(bank.log)
    pc.stored()  # what the Privacy screen shows on the main thread: local only
    assert len(bank.log) == n and len(s.api.queue) == 1 and s.profile.registered


def test_a_request_pushed_during_a_flush_is_kept(tmp_path: Path) -> None:
    started = threading.Event()

    def handler(req: httpx.Request) -> httpx.Response:
        started.set()
        time.sleep(0.4)
        return httpx.Response(204)

    c = _client(tmp_path, handler)
    c.queue.push("DELETE", "/v1/users/user-1", {})
    t = threading.Thread(target=c.flush_queue)
    t.start()
    assert started.wait(5)
    c.queue.push("POST", "/v1/users/user-1/consents", {"modality": "gait", "granted": False})
    t.join()
    assert [(i["method"], i["body"].get("granted")) for i in c.queue.items()] == [("POST", False)]


def test_two_flushes_at_once_send_each_request_once(tmp_path: Path) -> None:
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.url.path)
        time.sleep(0.2)
        return httpx.Response(204)

    c = _client(tmp_path, handler)
    c.queue.push("POST", "/v1/a", {})
    c.queue.push("POST", "/v1/b", {})
    threads = [threading.Thread(target=c.flush_queue) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == ["/v1/a", "/v1/b"] and len(c.queue) == 0


def test_outbox_and_profile_writers_each_use_a_temp_file_of_their_own(tmp_path: Path, monkeypatch) -> None:
    import os

    sources: list[str] = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (sources.append(str(src)), real(src, dst))[1])
    q = OfflineQueue(tmp_path / "outbox.jsonl")
    q.push("POST", "/a", {})
    q.push("POST", "/b", {})
    Profile().save(tmp_path / "profile.json")
    Profile().save(tmp_path / "profile.json")
    assert len(sources) == 4 and len(set(sources)) == 4, sources  # mkstemp: never a shared fixed name
    assert all(Path(src).parent == tmp_path for src in sources)


# -- 3: a held payment is one payment, across restarts and other payments ---------------------------
def _losing(bodies: list[bytes], state: dict[str, Any]) -> Any:
    def handler(req: httpx.Request) -> httpx.Response:
        bodies.append(req.content)
        if state.get("lose"):
            raise httpx.ReadTimeout("answer lost", request=req)
        if state.get("garbled"):
            return httpx.Response(200, json={"decision": "approve"})
        return httpx.Response(200, json=_decision(json.loads(req.content)))
    return handler


def test_a_held_payment_survives_a_restart_and_another_payment(tmp_path: Path) -> None:
    bodies: list[bytes] = []
    state = {"lose": True}
    c = _client(tmp_path, _losing(bodies, state))
    with pytest.raises(ApiError):
        c.authorize("12.00", "GBP", "Sam Smith", [_window(1)])
    first = bodies[-1]
    with pytest.raises(ApiError):  # another payment, also unanswered, in between
        c.authorize("30.00", "GBP", "Kiosk", [_window(2)])
    c.close()
    state["lose"] = False
    c2 = _client(tmp_path, _losing(bodies, state))  # the app was restarted
    d = c2.authorize("12.00", "GBP", "  sam   SMITH ", [_window(3)])  # typed with other case and spacing
    assert bodies[-1] == first, "the held body must go again byte for byte"
    assert d.idempotency_key == json.loads(first)["idempotency_key"]
    assert [w.to_dict() for w in d.evidence] == [_window(1).to_dict()]
    assert c2.held_payment("30.00", "GBP", "Kiosk") is not None  # the other one is still held
    c2.authorize("12.00", "GBP", "Sam Smith", [_window(4)])  # answered: the next one is new
    assert json.loads(bodies[-1])["idempotency_key"] != d.idempotency_key


def test_an_unreadable_answer_keeps_the_payment_held(tmp_path: Path) -> None:
    bodies: list[bytes] = []
    state = {"garbled": True}
    c = _client(tmp_path, _losing(bodies, state))
    with pytest.raises(ApiError) as err:
        c.authorize("12.00", "GBP", "Sam", [_window(1)])
    assert err.value.answer_unknown and "may have gone through" in err.value.user_message
    state["garbled"] = False
    c.authorize("12.00", "GBP", "Sam", [_window(2)])
    assert bodies[-1] == bodies[0]


@pytest.mark.parametrize("change", [{"decision": "launch_missiles"}, {"decision": None}, {"risk": float("nan")},
                                    {"risk": 7.0}, {"risk": "high"}])
def test_an_answer_with_no_known_decision_or_risk_is_unreadable_and_stays_held(tmp_path: Path,
                                                                              change: dict[str, Any]) -> None:
    bodies: list[bytes] = []

    def handler(req: httpx.Request) -> httpx.Response:
        bodies.append(req.content)
        body = {**_decision(json.loads(req.content)), **change}
        return httpx.Response(200, content=json.dumps(body).encode(), headers={"content-type": "application/json"})

    c = _client(tmp_path, handler)
    with pytest.raises(ApiError) as err:
        c.authorize("12.00", "GBP", "Sam", [_window(1)])
    assert err.value.code == "unreadable_answer" and err.value.answer_unknown
    assert c.held_payment("12.00", "GBP", "Sam") is not None  # the bank may have recorded it: same key next time


class PhoneClocks:
    """A held payment's clocks: the wall clock (the person may set it) and this boot's (id, CLOCK_BOOTTIME)."""

    def __init__(self) -> None:
        self.wall, self.boot_id, self.since_boot = time.time(), "boot-1", 5000.0

    def install(self, c: ApiClient) -> None:
        c.held._now = lambda: self.wall  # type: ignore[method-assign]
        c.held._boot = lambda: (self.boot_id, self.since_boot)  # type: ignore[method-assign]

    def passes(self, seconds: float) -> None:
        self.wall += seconds
        self.since_boot += seconds


def _held_with(tmp_path: Path, clocks: PhoneClocks) -> tuple[ApiClient, list[bytes]]:
    bodies: list[bytes] = []
    c = _client(tmp_path, _losing(bodies, {"lose": True}))
    clocks.install(c)
    with pytest.raises(ApiError):
        c.authorize("12.00", "GBP", "Sam", [_window(1)])
    assert c.held_payment("12.00", "GBP", "Sam") is not None
    return c, bodies


def test_a_held_payment_is_let_go_after_a_day(tmp_path: Path) -> None:
    clocks = PhoneClocks()
    c, _ = _held_with(tmp_path, clocks)
    clocks.passes(api_mod.HELD_PAYMENT_MAX_AGE_S - 60)
    assert c.held_payment("12.00", "GBP", "Sam") is not None
    clocks.passes(61)
    assert c.held_payment("12.00", "GBP", "Sam") is None


def test_a_wall_clock_set_forward_does_not_let_a_held_payment_go(tmp_path: Path) -> None:
    """Let go, the payment the bank may have recorded would be paid again under a new key."""
    clocks = PhoneClocks()
    c, bodies = _held_with(tmp_path, clocks)
    clocks.passes(60)
    clocks.wall += 3 * 24 * 3600  # the person sets the date ahead
    assert c.held_payment("12.00", "GBP", "Sam") is not None
    with pytest.raises(ApiError):
        c.authorize("12.00", "GBP", "Sam", [_window(2)])
    assert bodies[-1] == bodies[0]  # the same payment, same key and bytes


def test_a_wall_clock_set_back_does_not_keep_a_held_payment(tmp_path: Path) -> None:
    """Kept, a new payment of the same amount and payee days later would re-send the old one."""
    clocks = PhoneClocks()
    c, _ = _held_with(tmp_path, clocks)
    clocks.passes(api_mod.HELD_PAYMENT_MAX_AGE_S + 60)
    clocks.wall -= 3 * 24 * 3600  # the person sets the date back
    assert c.held_payment("12.00", "GBP", "Sam") is None


def test_after_a_restart_of_the_phone_a_held_payment_is_aged_by_the_wall_clock(tmp_path: Path) -> None:
    clocks = PhoneClocks()
    c, _ = _held_with(tmp_path, clocks)
    clocks.boot_id, clocks.since_boot = "boot-2", 30.0  # its boot clock started again
    clocks.wall += 3600
    assert c.held_payment("12.00", "GBP", "Sam") is not None
    clocks.wall += api_mod.HELD_PAYMENT_MAX_AGE_S
    assert c.held_payment("12.00", "GBP", "Sam") is None


def test_the_boot_clock_is_this_boots_id_and_time_where_the_platform_has_them() -> None:
    here = api_mod.boot_clock()
    if not (api_mod.BOOT_ID_PATH.exists() and hasattr(time, "CLOCK_BOOTTIME")):
        assert here is None
        return
    assert here is not None and here[0] == api_mod.BOOT_ID_PATH.read_text().strip()
    assert abs(here[1] - time.clock_gettime(time.CLOCK_BOOTTIME)) < 5.0


def test_the_no_answer_text_says_only_what_is_true() -> None:
    from mobile_client.ui.screens import NO_ANSWER

    assert "it is the same payment and cannot be paid twice" not in NO_ANSWER
    assert "same payee and amount again from this phone" in NO_ANSWER and "check with your bank" in NO_ANSWER


# -- 4: a reset or a revoked consent lets held payments go -------------------------------------------
def _unanswered_payment(tmp_path: Path, person: SyntheticPerson) -> tuple[Any, TransactionController, FakeBank]:
    bank, clock = FakeBank(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, person, clock)
    lose = {"on": True}

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/authorize") and lose["on"]:
            raise httpx.ReadTimeout("lost", request=req)
        return bank.handle(req)

    s.api._http = httpx.Client(base_url="http://bank.test", transport=httpx.MockTransport(handler))
    _play(s, clock, person.touch(6, 5))
    _play(s, clock, person.walk(16, 100, 5))
    tc = TransactionController(s)
    with pytest.raises(ApiError):
        tc.authorize("12.00", "Sam")
    lose["on"] = False
    assert s.api.pending_payment is not None
    return s, tc, bank


def test_delete_my_data_lets_go_of_held_payments_and_the_last_payment(tmp_path: Path, person: SyntheticPerson) -> None:
    s, tc, _bank = _unanswered_payment(tmp_path, person)
    tc.step_up = types.SimpleNamespace(transaction_id="tx-1", code="123456", attempts_left=3)  # type: ignore[assignment]
    tc._sent = [_window(1)]
    PrivacyController(s).delete_my_data()
    assert s.api.pending_payment is None and not (s.data_dir / "held_payments.json").exists()
    assert tc.step_up is None and tc._sent == [] and tc.last is None


def test_revoking_a_modality_lets_go_of_held_payments_with_its_samples(tmp_path: Path, person: SyntheticPerson) -> None:
    s, _tc, _bank = _unanswered_payment(tmp_path, person)
    mods = s.api.pending_payment.modalities  # type: ignore[union-attr]
    assert "gait" in mods
    res = ConsentController(s).set("gait", "authentication", False)
    assert s.api.pending_payment is None and res.dropped_payment
    assert "check with your bank" in res.message


# -- 6: while an erasure waits, nothing is collected and payments are paused -----------------------
def test_while_an_erasure_waits_nothing_is_collected_and_payments_are_paused(tmp_path: Path,
                                                                            person: SyntheticPerson) -> None:
    s, bank, _pc, _user = _pending_erasure(tmp_path, person)
    clock = VirtualClock(5000.0)
    before = s.evidence.count("keystroke")
    _play(s, clock, person.keystrokes(120, 7))
    assert s.evidence.count("keystroke") == before  # typing now is not collected
    n = len(bank.log)
    with pytest.raises(InputError) as err:
        TransactionController(s).authorize("12.00", "Sam")
    assert "being erased" in err.value.message and len(bank.log) == n


def test_a_phone_restarted_while_an_erasure_waits_collects_nothing(tmp_path: Path, person: SyntheticPerson) -> None:
    s, bank, _pc, _user = _pending_erasure(tmp_path, person)
    s.close()
    s2 = _services(tmp_path, bank, VirtualClock(1000.0))
    assert s2.evidence.paused


# -- 7: a profile that cannot be read now is left alone ------------------------------------------
def test_a_profile_that_cannot_be_read_now_is_left_alone(tmp_path: Path, monkeypatch) -> None:
    from mobile_client.profile import ProfileUnreadable

    path = tmp_path / "profile.json"
    Profile(user_id="user-keep", device_id="dev-keep", registered=True).save(path)
    real_bytes, real_text = Path.read_bytes, Path.read_text

    def refuse(self: Path, *a: Any, **k: Any) -> Any:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return (real_bytes if not a and not k else real_text)(self, *a, **k)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(ProfileUnreadable):
        Profile.load(path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["profile.json"]  # nothing moved aside
    assert Profile.load(path).user_id == "user-keep"


def test_a_damaged_profile_keeps_the_ids_it_still_shows(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    path.write_text('{"user_id": "user-keep", "device_id": "dev-keep", "registered": "yes"')
    p = Profile.load(path)
    assert (p.user_id, p.device_id) == ("user-keep", "dev-keep") and not p.registered
    assert any(f.name.startswith("profile.json.bad-") for f in tmp_path.iterdir())


# -- 8: erasure order -----------------------------------------------------------------------------
def test_erasure_stops_collection_before_deleting_and_marks_before_queueing(tmp_path: Path,
                                                                           person: SyntheticPerson) -> None:
    bank, clock = FaultyBank(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, person, clock)
    seen: dict[str, Any] = {}
    real_delete, real_push = s.store.delete_all, s.api.queue.push

    def delete_all() -> int:
        seen["collecting"] = s.evidence.allowed("keystroke") and not s.evidence.paused
        return real_delete()

    def push(*a: Any) -> Any:
        seen["marker"] = (s.data_dir / ERASE_PENDING).exists()
        return real_push(*a)

    s.store.delete_all = delete_all  # type: ignore[method-assign]
    s.api.queue.push = push  # type: ignore[method-assign]
    bank.faults[f"/v1/users/{s.profile.user_id}"] = 503
    PrivacyController(s).delete_my_data()  # waits: marker first, then the queued request
    assert seen == {"collecting": False, "marker": True}
    del bank.faults[f"/v1/users/{s.profile.user_id}"]
    seen.clear()
    s.evidence.paused = False  # as if restarted without the pause: the reset itself must stop collection
    PrivacyController(s).settle()
    assert seen["collecting"] is False


# -- 9: Android's unwrap errors ---------------------------------------------------------------------
class FakeJavaException(Exception):
    pass


class _DamagedKeystore(FileSecretStore):
    kind = "Android Keystore (wrapped)"

    def get(self, name: str) -> bytes | None:
        if (self.folder / name).exists():
            raise FakeJavaException("javax.crypto.AEADBadTagException")
        return None


def test_a_keystore_that_cannot_unwrap_is_a_clear_error_and_a_new_raw_store_key(tmp_path: Path, monkeypatch) -> None:
    from mobile_client import services as services_mod
    from mobile_client.raw_store import SECRET_NAME, RawEventStore
    from mobile_client.services import DeviceKeyUnreadable, build_services

    monkeypatch.setitem(sys.modules, "jnius", types.SimpleNamespace(JavaException=FakeJavaException))
    build_services(tmp_path / "app", "http://127.0.0.1:9")  # a device key and a raw-store key on disk
    monkeypatch.setattr(services_mod, "platform_secret_store", lambda folder: _DamagedKeystore(folder))
    with pytest.raises(DeviceKeyUnreadable):
        build_services(tmp_path / "app", "http://127.0.0.1:9")
    secrets = _DamagedKeystore(tmp_path / "raw-secrets")
    (secrets.folder / SECRET_NAME).write_bytes(b"wrapped")
    (tmp_path / "raw" / "keystroke").mkdir(parents=True)
    (tmp_path / "raw" / "keystroke" / "1.000-000001-1.bin").write_bytes(b"old")
    RawEventStore(tmp_path / "raw", types.SimpleNamespace(  # type: ignore[arg-type]
        kind=secrets.kind, get=secrets.get, put=FileSecretStore(tmp_path / "plain").put,
        delete=lambda name: None))
    assert not list((tmp_path / "raw" / "keystroke").glob("*.bin"))


# -- a quick review of the above -------------------------------------------------------------------
def test_a_2xx_answer_that_is_no_json_is_an_unreadable_answer_and_stays_held(tmp_path: Path) -> None:
    bodies: list[bytes] = []

    def handler(req: httpx.Request) -> httpx.Response:
        bodies.append(req.content)
        return httpx.Response(200, content=b"<html>ok</html>")

    c = _client(tmp_path, handler)
    with pytest.raises(ApiError) as err:
        c.authorize("12.00", "GBP", "Sam", [_window(1)])
    assert err.value.code == "unreadable_answer" and err.value.answer_unknown
    assert c.held_payment("12.00", "GBP", "Sam") is not None


def test_a_held_payments_file_of_the_wrong_shape_is_treated_as_none(tmp_path: Path) -> None:
    c = _client(tmp_path, lambda req: httpx.Response(200, json=_decision(json.loads(req.content))))
    assert c.held.path is not None
    c.held.path.write_text(json.dumps([{"body": "[1, 2]", "amount": "12.00", "currency": "GBP", "payee": "Sam",
                                        "idempotency_key": "k", "held_at": time.time()}]))
    assert c.held_payment("12.00", "GBP", "Sam") is None
    c.authorize("12.00", "GBP", "Sam", [_window(2)])  # and paying still works


def test_a_closed_client_queues_nothing_more(tmp_path: Path) -> None:
    """The app closes the client while a job still runs (its grace period is over).

    The app has saved that job's intent already, in order with the later ones; a late request
    queued now would reach the bank after them (a consent switched on, then off, ending on).
    """
    c = _client(tmp_path, lambda req: httpx.Response(200, json={}))
    c.queue.push("POST", "/v1/users/user-1/consents", {"modality": "keystroke", "granted": False})
    c.close()
    with pytest.raises(api_mod.QueueClosed):
        c.send_or_queue("POST", "/v1/users/user-1/consents", {"modality": "keystroke", "granted": True})
    with pytest.raises(api_mod.QueueClosed):
        c.queue.clear()
    assert [i["body"]["granted"] for i in c.queue.items()] == [False]


def test_an_erasure_waiting_for_the_bank_lets_go_of_held_payments(tmp_path: Path, person: SyntheticPerson) -> None:
    bank, clock = FaultyBank(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, person, clock)
    body = json.dumps({"user_id": s.profile.user_id, "evidence": [_window(1).to_dict()]}).encode()
    s.api.held.hold(api_mod.PendingPayment("12.00", "GBP", "Sam", "k", body, [_window(1)], s.api.held._now()))
    assert s.api.held_payment("12.00", "GBP", "Sam") is not None
    bank.faults[f"/v1/users/{s.profile.user_id}"] = 503
    pc = PrivacyController(s)
    pc.delete_my_data()
    assert pc.erase_state == "pending" and s.api.held_payment("12.00", "GBP", "Sam") is None


def test_the_erase_pending_message_is_shown_not_could_not_reach() -> None:
    e = ApiError("an erasure waits for the bank", None, {"detail": "x", "code": "erase_pending"})
    assert e.user_message == api_mod.CODE_TEXT["erase_pending"]
