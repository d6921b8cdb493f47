"""Security rules a bank integrator relies on, on SQLite and on the real PostgreSQL.

Each test here reproduces a defect found by driving a live server: step-up completion on
PostgreSQL, lockout under concurrent denials, a locked user approved through step-up, plain
enrolment over an established template, bot-like enrolment windows, NUL characters, a
stranger throttling someone else's device, chunked oversize bodies, error shapes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from modalities.events import MODALITIES
from server.client.api import DeviceClient
from tests.server.conftest import built_app, evidence, make_settings, new_device
from tests.server.test_storage import db_url  # noqa: F401  (the SQLite / PostgreSQL fixture)

BANK = {"X-API-Key": "dev-bank-key"}
ADMIN = {"X-API-Key": "dev-admin-key"}


def _payload(dev: DeviceClient, windows: dict, key: str, *, who: str = "owner", i: int = 5,
             amount: str = "25.00", payee: str = "ACME", ev: bool = True) -> dict[str, Any]:
    return {"user_id": dev.user_id, "amount": amount, "currency": "EUR", "payee": payee, "channel": "app",
            "idempotency_key": key, "evidence": [w.to_dict() for w in evidence(windows, who, i)] if ev else []}


@pytest.fixture()
def backend(db_url: str, tmp_path: Path, calibration_file: Path) -> Any:  # noqa: F811
    """A client of an app on SQLite or PostgreSQL, with 'alice' enrolled in every modality."""
    with built_app(make_settings(tmp_path, database_url=db_url, fusion_calibration=calibration_file)) as app:
        with TestClient(app) as client:
            yield client, app


def _enrol(client: TestClient, windows: dict, user: str = "alice") -> DeviceClient:
    dev = new_device(client, user)
    for m in MODALITIES:
        dev.grant_consent(m)
        dev.enrol(windows["owner"][m][:5])
    return dev


def test_step_up_completes_on_both_backends(backend, windows) -> None:  # type: ignore[no-untyped-def]
    """'approved_after_step_up' is 22 characters: PostgreSQL refused it in a VARCHAR(16) (500)."""
    client, _ = backend
    dev = _enrol(client, windows, "sue")
    pending = dev.signed("POST", "/v1/transactions/authorize", _payload(dev, windows, "s1", ev=False)).json()
    assert pending["decision"] == "step_up"
    done = client.post(f"/v1/transactions/{pending['transaction_id']}/step-up", json={"success": True}, headers=BANK)
    assert done.status_code == 200 and done.json()["status"] == "approved_after_step_up", done.text
    again = client.post(f"/v1/transactions/{pending['transaction_id']}/step-up", json={"success": True}, headers=BANK)
    assert again.status_code == 409 and again.json()["code"] == "not_pending"


def test_concurrent_denials_lock_after_exactly_five(backend, windows) -> None:  # type: ignore[no-untyped-def]
    """Ten impostor calls at once: five denials are counted, the rest meet the lock (PSD2 RTS Art. 4).

    On PostgreSQL the handlers run in parallel threads; the failure count was read and
    written back without a row lock, so concurrent denials overwrote each other.
    """
    client, app = backend
    dev = _enrol(client, windows, "ivan")

    def call(i: int) -> tuple[int, str]:
        r = dev.signed("POST", "/v1/transactions/authorize",
                       _payload(dev, windows, f"imp{i}", who="other", i=5 + i, amount="5000.00"))
        return r.status_code, r.json().get("decision") or r.json().get("code")

    with ThreadPoolExecutor(max_workers=10) as pool:
        outcomes = list(pool.map(call, range(10)))
    assert sorted(outcomes) == sorted([(200, "deny")] * 5 + [(423, "user_locked")] * 5), outcomes
    with app.state.engine.connect() as conn:
        row = conn.execute(text("SELECT locked, consecutive_failures FROM server_user WHERE id = 'ivan'")).one()
    assert bool(row[0]) is True and row[1] == 5


def test_locked_user_is_not_approved_through_step_up_or_enrolled(client: TestClient, windows) -> None:
    dev = _enrol(client, windows)
    pending = dev.signed("POST", "/v1/transactions/authorize", _payload(dev, windows, "p", ev=False)).json()
    assert pending["decision"] == "step_up"
    for i in range(5):
        r = dev.signed("POST", "/v1/transactions/authorize",
                       _payload(dev, windows, f"imp{i}", who="other", i=5 + i, amount="5000.00"))
        assert r.json()["decision"] == "deny"
    r = client.post(f"/v1/transactions/{pending['transaction_id']}/step-up", json={"success": True}, headers=BANK)
    assert r.status_code == 423 and r.json()["code"] == "user_locked"
    r = dev.signed("POST", "/v1/users/alice/enrolment", {"windows": [windows["other"]["gait"][20].to_dict()]})
    assert r.status_code == 423 and r.json()["code"] == "user_locked"
    r = dev.signed("POST", "/v1/sessions", {"user_id": "alice"})
    assert r.status_code == 423 and r.json()["code"] == "user_locked"
    assert client.post("/v1/admin/users/alice/unlock", headers=ADMIN).status_code == 200
    r = client.post(f"/v1/transactions/{pending['transaction_id']}/step-up", json={"success": True}, headers=BANK)
    assert r.status_code == 200 and r.json()["status"] == "approved_after_step_up"


def test_plain_enrolment_closes_with_the_first_transaction(client: TestClient, windows) -> None:
    """Whoever holds the device key must not enrol their own behaviour over the owner's template."""
    dev = _enrol(client, windows)
    dev.enrol(windows["owner"]["touch"][5:8])  # still open: the enrolment may come in several uploads
    dev.signed("POST", "/v1/transactions/authorize", _payload(dev, windows, "t1", i=9))
    r = dev.signed("POST", "/v1/users/alice/enrolment", {"windows": [w.to_dict() for w in windows["other"]["gait"][:5]]})
    assert r.status_code == 409 and r.json()["code"] == "enrolment_closed", r.text
    assert client.post("/v1/admin/users/alice/enrolment/reopen", headers=BANK).status_code == 403
    assert client.post("/v1/admin/users/alice/enrolment/reopen", headers=ADMIN).json()["enrolment_open"] is True
    r = dev.signed("POST", "/v1/users/alice/enrolment", {"windows": [w.to_dict() for w in windows["other"]["gait"][:5]]})
    assert r.status_code == 200, r.text
    entries = client.get("/v1/admin/users/alice/export", headers=ADMIN).json()["data"]["audit"]["entries"]
    assert any(e["event"] == "enrolment.reopened" for e in entries)


def test_bot_like_windows_are_not_enrolled(client: TestClient, windows) -> None:
    dev = new_device(client, "bot")
    dev.grant_consent("keystroke")
    ws = [w.to_dict() for w in windows["owner"]["keystroke"][:5]]
    ws[2] = dict(ws[2], n_events=100_000)  # 100,000 key events in a few seconds
    r = dev.signed("POST", "/v1/users/bot/enrolment", {"windows": ws})
    assert r.status_code == 422 and r.json()["code"] == "implausible_input" and "windows[2]" in r.json()["detail"]


def test_replayed_windows_stay_refused_after_consent_is_revoked_and_granted(client: TestClient, windows) -> None:
    dev = _enrol(client, windows)
    dev.grant_consent("gait")
    revoked = dev.signed("POST", "/v1/users/alice/consents", {"modality": "gait", "granted": False}).json()
    assert revoked["recorded"] is True and revoked["erased"]["server.templates"] == 1
    granted = dev.grant_consent("gait")
    assert granted["recorded"] is True and granted["erased"] == {}  # one shape for both answers
    r = dev.signed("POST", "/v1/users/alice/enrolment", {"windows": [w.to_dict() for w in windows["owner"]["gait"][:5]]})
    assert r.status_code == 409 and r.json()["code"] == "evidence_replay"


def test_nul_characters_get_422_on_both_backends(backend, windows) -> None:  # type: ignore[no-untyped-def]
    client, _ = backend
    dev = _enrol(client, windows, "nul")
    r = dev.signed("POST", "/v1/transactions/authorize", _payload(dev, windows, "n1", payee="a\u0000b"))
    assert r.status_code == 422 and r.json()["detail"].startswith("payee:"), r.text
    other = DeviceClient("http://testserver", user_id="nul2", http=client)
    r = client.post("/v1/devices", headers=BANK, json={"device_id": "d-nul", "user_id": "nul2", "platform": "io\u0000s",
                                                       "public_key": "A" * 43, "proof": "A" * 86})
    assert r.status_code == 422 and "platform" in r.json()["detail"], r.text
    other.register()  # the connection is still good after the refusals
    r = client.post("/v1/transactions/x%00y/step-up", json={"success": True}, headers=BANK)
    assert r.status_code == 422


def test_a_stranger_cannot_use_up_another_device_rate(tmp_path: Path, windows) -> None:  # type: ignore[no-untyped-def]
    with built_app(make_settings(tmp_path, device_rate_per_s=2.0)) as app:
        with TestClient(app) as victim_side, TestClient(app, client=("203.0.113.9", 4000)) as stranger:
            dev = new_device(victim_side, "vic")
            flood = [stranger.get("/v1/users/vic/consents", headers={"X-Cadence-Device": dev.device_id}).status_code
                     for _ in range(12)]
            assert flood[:4] == [401] * 4 and flood[-1] == 429  # the stranger's own address runs out
            assert dev.signed("GET", "/v1/users/vic/consents").status_code == 200


def test_the_banks_session_read_is_not_charged_to_its_address_refused_device_budget(tmp_path: Path) -> None:
    """Behind one proxy address the bank shares the devices' budget of refused requests: it got 429."""
    with built_app(make_settings(tmp_path, device_rate_per_s=2.0)) as app:
        with TestClient(app, client=("203.0.113.9", 4000)) as shared:
            flood = [shared.post("/v1/sessions", json={"user_id": "x"}, headers={"X-Cadence-Device": "nobody"}).status_code
                     for _ in range(12)]
            assert flood[-1] == 429  # the address is out of its budget
            bank = shared.get("/v1/sessions/no-such-session", headers=BANK)
            assert bank.status_code == 404, bank.text  # the bank's read is answered, not throttled
            fake = shared.get("/v1/sessions/no-such-session", headers={"X-API-Key": "not-a-key-of-this-server"})
            assert fake.status_code == 429, fake.text  # an unknown key does not escape the budget


def test_chunked_oversize_body_gets_413(client: TestClient) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(40):
            yield b"x" * 10_000

    r = client.post("/v1/devices", content=chunks(), headers={**BANK, "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


def test_errors_below_the_routes_keep_the_error_shape(client: TestClient) -> None:
    missing = client.get("/v1/nowhere")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found" and "/v1/nowhere" in missing.json()["detail"]
    wrong = client.delete("/v1/health")
    assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"


def test_a_body_that_is_not_json_says_so(client: TestClient) -> None:
    """It said "0: JSON decode error": the character position read as a field name."""
    r = client.post("/v1/devices", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("body: not valid JSON at character "), r.text


def test_step_up_outcome_must_be_a_real_boolean(client: TestClient, windows) -> None:
    dev = _enrol(client, windows)
    pending = dev.signed("POST", "/v1/transactions/authorize", _payload(dev, windows, "b1", ev=False)).json()
    r = client.post(f"/v1/transactions/{pending['transaction_id']}/step-up", json={"success": "yes"}, headers=BANK)
    assert r.status_code == 422


def test_idempotent_retries_are_not_counted_as_decisions(client: TestClient, windows) -> None:
    dev = _enrol(client, windows)

    def decisions() -> float:
        lines = [ln for ln in client.get("/metrics").text.splitlines() if ln.startswith("cadence_decisions_total{")]
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)

    before = decisions()
    payload = _payload(dev, windows, "once", i=11)
    for _ in range(3):
        assert dev.signed("POST", "/v1/transactions/authorize", payload).status_code == 200
    assert decisions() == before + 1


def test_erasure_leaves_no_device_id_in_the_audit_log(backend, windows) -> None:  # type: ignore[no-untyped-def]
    """Device ids are chosen by the client (often name-like): the log holds their keyed pseudonyms only."""
    client, app = backend
    dev = _enrol(client, windows, "zoe")
    dev.signed("POST", "/v1/transactions/authorize", _payload(dev, windows, "z1", i=12))
    assert client.delete("/v1/admin/users/zoe", headers=ADMIN).status_code == 200
    with app.state.engine.connect() as conn:
        rows = conn.execute(text("SELECT actor, payload FROM compliance_audit")).all()
    assert rows and any(r[0].startswith("device:") for r in rows)
    assert not [r for r in rows if dev.device_id in f"{r[0]} {r[1]}"]


def test_adaptation_cannot_build_a_new_template_once_enrolment_closed(client: TestClient, windows) -> None:
    """Revoke a modality (its template goes), pay without it, pass the step-up, re-send the windows: refused."""
    dev = _enrol(client, windows)
    dev.signed("POST", "/v1/transactions/authorize", _payload(dev, windows, "c1", i=13))  # closes enrolment
    dev.signed("POST", "/v1/users/alice/consents", {"modality": "keystroke", "granted": False})
    dev.grant_consent("keystroke")
    theirs = [windows["other"]["keystroke"][i].to_dict() for i in range(20, 25)]
    tx = dev.signed("POST", "/v1/transactions/authorize",
                    dict(_payload(dev, windows, "c2", ev=False), evidence=theirs)).json()
    if tx["decision"] == "step_up":
        done = client.post(f"/v1/transactions/{tx['transaction_id']}/step-up", json={"success": True}, headers=BANK)
        assert done.status_code == 200
    r = dev.signed("POST", "/v1/users/alice/enrolment",
                   {"windows": theirs, "confirmed_transaction_id": tx["transaction_id"]})
    assert r.status_code == 409 and r.json()["code"] == "enrolment_closed", r.text


def test_a_template_of_an_old_feature_version_asks_for_reenrolment(client: TestClient, windows) -> None:
    """After a model upgrade: the modality is left out (not a 422), and its fresh enrolment is accepted."""
    dev = _enrol(client, windows)
    dev.signed("POST", "/v1/transactions/authorize", _payload(dev, windows, "u1", i=14))  # closes enrolment
    with client.app.state.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(text("UPDATE server_template SET feature_version = 'gait-old', model_id = 'old-model' "
                          "WHERE modality = 'gait'"))
        conn.execute(text("UPDATE server_enrolment_window SET feature_version = 'gait-old' WHERE modality = 'gait'"))
    r = dev.signed("POST", "/v1/transactions/authorize", _payload(dev, windows, "u2", i=15))
    assert r.status_code == 200, r.text
    assert {"modality": "gait", "code": "reenrolment_required", "contribution": None} in r.json()["reasons"]
    fresh = dev.signed("POST", "/v1/users/alice/enrolment",
                       {"windows": [w.to_dict() for w in windows["owner"]["gait"][16:21]]})
    assert fresh.status_code == 200, fresh.text
    again = dev.signed("POST", "/v1/users/alice/enrolment",  # current again: closed as before
                       {"windows": [w.to_dict() for w in windows["owner"]["gait"][21:24]]})
    assert again.status_code == 409 and again.json()["code"] == "enrolment_closed"


def test_forwarded_headers_are_believed_only_from_named_proxies(tmp_path: Path) -> None:
    import httpx

    from server.runner import running_server

    def flood(url: str) -> list[int]:
        with httpx.Client(base_url=url) as http:
            return [http.get("/v1/users/x/consents", headers={"X-Cadence-Device": "nobody",
                                                              "X-Forwarded-For": f"198.51.100.{i}"}).status_code
                    for i in range(12)]

    with running_server(make_settings(tmp_path, device_rate_per_s=2.0)) as url:
        codes = flood(url)  # the TCP peer is charged, whatever the header says
    assert codes[:4] == [401] * 4 and codes[-1] == 429, codes
    with running_server(make_settings(tmp_path, device_rate_per_s=2.0, forwarded_allow_ips="127.0.0.1")) as url:
        assert 429 not in flood(url)  # behind a named proxy each client has its own budget


def test_a_flooder_on_the_same_address_does_not_stop_a_known_device(tmp_path: Path) -> None:
    with built_app(make_settings(tmp_path, device_rate_per_s=2.0)) as app:
        with TestClient(app) as client:
            dev = new_device(client, "nat")
            assert dev.signed("GET", "/v1/users/nat/consents").status_code == 200
            time_left = [client.get("/v1/users/nat/consents", headers={"X-Cadence-Device": "forged"}).status_code
                         for _ in range(8)]
            assert time_left[-1] == 429  # the flooder's requests are refused by address
            assert dev.signed("GET", "/v1/users/nat/consents").status_code == 200  # the known device is not
            posing = [client.get("/v1/users/nat/consents", headers={"X-Cadence-Device": dev.device_id}).status_code
                      for _ in range(8)]
            assert posing[-1] == 429  # naming the known device does not get a flooder past the address budget


def test_a_stranger_naming_a_known_device_is_throttled_by_address(tmp_path: Path) -> None:
    with built_app(make_settings(tmp_path, device_rate_per_s=2.0)) as app:
        with TestClient(app) as client, TestClient(app, client=("203.0.113.9", 4000)) as stranger:
            dev = new_device(client, "kim")
            assert dev.signed("GET", "/v1/users/kim/consents").status_code == 200
            codes = [stranger.get("/v1/users/kim/consents", headers={"X-Cadence-Device": dev.device_id}).status_code
                     for _ in range(10)]
            assert codes[:4] == [401] * 4 and codes[-1] == 429, codes
            assert dev.signed("GET", "/v1/users/kim/consents").status_code == 200  # from its own address


def test_replays_of_a_captured_request_do_not_use_up_the_device_rate(tmp_path: Path) -> None:
    from server.signing import sign_request

    with built_app(make_settings(tmp_path, device_rate_per_s=2.0)) as app:
        with TestClient(app) as client, TestClient(app, client=("203.0.113.7", 4000)) as attacker:
            dev = new_device(client, "rep")
            headers = sign_request(dev.key, dev.device_id, "GET", "/v1/users/rep/consents", b"")
            assert client.get("/v1/users/rep/consents", headers=headers).status_code == 200
            replays = [attacker.get("/v1/users/rep/consents", headers=headers).status_code for _ in range(3)]
            assert replays == [401] * 3
            assert dev.signed("GET", "/v1/users/rep/consents").status_code == 200
            assert dev.signed("GET", "/v1/users/rep/consents").status_code == 200


def test_the_app_can_ask_for_its_own_erasure(client: TestClient, windows) -> None:
    dev = _enrol(client, windows)
    other = _enrol(client, windows, "olga")
    assert other.signed("DELETE", "/v1/users/alice").status_code == 403  # only one's own
    r = dev.signed("DELETE", "/v1/users/alice")
    assert r.status_code == 200 and r.json()["erased"]["server.server_template"] == 3, r.text
    assert dev.signed("GET", "/v1/users/alice/consents").status_code == 401  # its key went with it


def test_a_locked_user_cannot_erase_themselves_to_start_unlocked(client: TestClient, windows) -> None:
    """Self-erasure, then a new registration, gave a clean unlocked user: past the lockout only an admin lifts."""
    from server.models import User

    dev = _enrol(client, windows)
    with client.app.state.cadence.sessions() as db, db.begin():  # type: ignore[attr-defined]
        db.get(User, "alice").locked = True
    r = dev.signed("DELETE", "/v1/users/alice")
    assert r.status_code == 423 and r.json()["code"] == "user_locked", r.text
    assert dev.signed("GET", "/v1/users/alice/consents").status_code == 200  # nothing was erased
    r = client.delete("/v1/admin/users/alice", headers={"X-API-Key": "dev-admin-key"})  # the bank can
    assert r.status_code == 200 and r.json()["erased"]["server.server_template"] == 3, r.text


@pytest.mark.parametrize("payee", ["ACME\u202eLIAM", "AC\u200bME", "   ", "A\u2028B"])
def test_payee_refuses_invisible_and_blank_text(client: TestClient, windows, payee: str) -> None:
    dev = _enrol(client, windows)
    r = dev.signed("POST", "/v1/transactions/authorize", _payload(dev, windows, "p1", payee=payee))
    assert r.status_code == 422 and r.json()["detail"].startswith("payee:"), r.text
    ok = dev.signed("POST", "/v1/transactions/authorize", _payload(dev, windows, "p2", payee="Café Zoë 東京"))
    assert ok.status_code == 200
    joined = dev.signed("POST", "/v1/transactions/authorize",  # Persian needs the zero-width non-joiner
                        _payload(dev, windows, "p3", i=6, payee="کتاب\u200cفروشی"))
    assert joined.status_code == 200, joined.text


def test_feature_values_beyond_any_real_feature_get_422(client: TestClient, windows) -> None:
    """1e160 is finite, but the scorers' distances overflow on it (inf, NaN): refused at the edge."""
    dev = _enrol(client, windows)
    payload = _payload(dev, windows, "h1")
    payload["evidence"][1]["values"] = [1e160] * len(payload["evidence"][1]["values"])
    r = dev.signed("POST", "/v1/transactions/authorize", payload)
    assert r.status_code == 422 and r.json()["detail"].startswith("evidence.1.values"), r.text


@pytest.mark.parametrize(("field", "value"), [("values", ["1"]), ("start", "0"), ("quality", "1"), ("n_events", "5")])
def test_numbers_sent_as_strings_get_422(client: TestClient, windows, field: str, value: object) -> None:  # type: ignore[no-untyped-def]
    """"1" was read as 1.0: a client quoting its numbers has a bug the server must not paper over."""
    dev = _enrol(client, windows)
    payload = _payload(dev, windows, "s1")
    w = payload["evidence"][0]
    w[field] = value * len(w["values"]) if isinstance(value, list) else value
    r = dev.signed("POST", "/v1/transactions/authorize", payload)
    assert r.status_code == 422 and r.json()["detail"].startswith(f"evidence.0.{field}"), r.text
    payload["evidence"][0] = {**w, field: 1 if field != "values" else [1] * len(w["values"])}  # a JSON integer is a number
    assert dev.signed("POST", "/v1/transactions/authorize", payload).status_code != 422


def test_a_failed_step_up_of_a_locked_user_is_still_recorded(client: TestClient, windows) -> None:
    dev = _enrol(client, windows)
    pending = dev.signed("POST", "/v1/transactions/authorize", _payload(dev, windows, "f0", ev=False)).json()
    for i in range(5):
        dev.signed("POST", "/v1/transactions/authorize",
                   _payload(dev, windows, f"imp{i}", who="other", i=5 + i, amount="5000.00"))
    r = client.post(f"/v1/transactions/{pending['transaction_id']}/step-up", json={"success": False}, headers=BANK)
    assert r.status_code == 200 and r.json()["status"] == "denied_after_step_up"


def test_migration_0004_goes_back_after_step_ups(db_url: str) -> None:  # noqa: F811
    """The old VARCHAR(16) cannot hold 'approved_after_step_up': going back maps it (PostgreSQL enforces it)."""
    from datetime import UTC, datetime

    from cadence.db import make_engine
    from server.migrate import downgrade, upgrade

    engine = make_engine(db_url)
    try:
        upgrade(engine)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO server_user (id, locked, consecutive_failures, created_at) "
                              "VALUES ('m', false, 0, :t)"), {"t": datetime.now(UTC)})
            conn.execute(text(
                "INSERT INTO server_transaction (id, user_id, idempotency_key, request_hash, amount, currency, payee, "
                "channel, outcome, status, risk, tier, response, created_at) VALUES ('t1', 'm', 'k', 'h', '1.00', "
                "'EUR', 'P', 'app', 'approve', 'approved_after_step_up', 0.1, 'low', '{}', :t)"), {"t": datetime.now(UTC)})
        downgrade(engine, "0003")
        with engine.begin() as conn:
            assert conn.execute(text("SELECT status FROM server_transaction")).scalar() == "approved"
        upgrade(engine)
    finally:
        downgrade(engine)
        engine.dispose()


def _as_tap(w: Any) -> dict[str, Any]:
    """A touch window marked as a tap (the synthetic people only swipe)."""
    from modalities.touch.features import IDX

    d = w.to_dict()
    d["values"] = list(d["values"])
    d["values"][IDX["is_tap"]] = 1.0
    return d


def test_touch_taps_are_neither_enrolled_nor_scored(client: TestClient, windows) -> None:
    """Touch models are trained and calibrated on swipes: a tap scored by them read as the strongest match."""
    dev = new_device(client, "tap")
    dev.grant_consent("touch")
    mixed = [_as_tap(w) for w in windows["owner"]["touch"][:3]] + [w.to_dict() for w in windows["owner"]["touch"][3:5]]
    r = dev.signed("POST", "/v1/users/tap/enrolment", {"windows": mixed})
    assert r.status_code == 422 and "taps are not enrolled" in r.json()["detail"] and "(have 2)" in r.json()["detail"]
    dev.enrol(windows["owner"]["touch"][5:10])
    taps = [_as_tap(w) for w in windows["other"]["touch"][40:45]]
    tx = dev.signed("POST", "/v1/transactions/authorize", dict(_payload(dev, windows, "t1", ev=False), evidence=taps))
    assert tx.status_code == 200, tx.text
    reasons = {(x["modality"], x["code"]) for x in tx.json()["reasons"]}
    assert ("touch", "not_scored") in reasons and tx.json()["decision"] == "step_up"
    assert not any(m == "touch" and c.endswith("match") for m, c in reasons)


def test_touch_evidence_of_fewer_swipes_than_a_decision_reads_is_left_out(client: TestClient, windows) -> None:
    """Touch is calibrated on the mean of 5 swipes: one or two read on that scale would overstate the evidence."""
    dev = new_device(client, "few")
    dev.grant_consent("touch")
    dev.enrol(windows["owner"]["touch"][:20])
    own = windows["owner"]["touch"]
    four_and_a_tap = [w.to_dict() for w in own[30:34]] + [_as_tap(own[34])]
    tx = dev.signed("POST", "/v1/transactions/authorize",
                    dict(_payload(dev, windows, "f1", ev=False), evidence=four_and_a_tap))
    assert tx.status_code == 200, tx.text
    codes = {x["code"] for x in tx.json()["reasons"] if x["modality"] == "touch"}
    assert codes == {"too_few_for_decision"} and tx.json()["decision"] == "step_up"
    stored = client.get(f"/v1/transactions/{tx.json()['transaction_id']}", headers=BANK).json()
    assert {(x["modality"], x["code"], x["contribution"]) for x in stored["reasons"]} >= {("touch", "too_few_for_decision", 0.0)}
    five = [w.to_dict() for w in own[40:45]]
    tx = dev.signed("POST", "/v1/transactions/authorize", dict(_payload(dev, windows, "f2", ev=False), evidence=five))
    codes = {x["code"] for x in tx.json()["reasons"] if x["modality"] == "touch"}
    assert tx.status_code == 200 and codes and codes <= {"match", "strong_match", "mismatch", "strong_mismatch"}


def test_a_decision_token_approves_only_its_own_users_transaction(client: TestClient, windows) -> None:
    """Alice's approval, presented in Bob's session for the same amount and payee, is refused."""
    alice = _enrol(client, windows)
    _enrol(client, windows, "bob")
    tx = alice.signed("POST", "/v1/transactions/authorize", _payload(alice, windows, "a1", i=16)).json()
    assert tx["decision"] == "approve", tx
    payment = {"token": tx["token"], "user_id": "bob", "transaction_id": tx["transaction_id"], "amount": "25.00",
               "currency": "EUR", "payee": "ACME"}
    r = client.post("/v1/transactions/verify-token", headers=BANK, json=payment).json()
    assert r["valid"] is False and r["reason"].startswith("user_id:")
    r = client.post("/v1/transactions/verify-token", headers=BANK,
                    json={**payment, "user_id": "alice", "transaction_id": "another-transaction"}).json()
    assert r["valid"] is False and r["reason"].startswith("transaction_id:")
    r = client.post("/v1/transactions/verify-token", headers=BANK, json={**payment, "user_id": "alice"}).json()
    assert r["valid"] is True
    entries = client.get("/v1/admin/users/alice/export", headers=ADMIN).json()["data"]["audit"]["entries"]
    assert any(e["event"] == "token.redeemed" for e in entries)


def test_an_added_query_string_fails_the_signature(client: TestClient, windows) -> None:
    from server.signing import sign_request

    dev = _enrol(client, windows)
    body = b'{"modality":"gait","granted":false}'
    headers = {**sign_request(dev.key, dev.device_id, "POST", "/v1/users/alice/consents", body),
               "content-type": "application/json"}
    r = client.post("/v1/users/alice/consents?evil=1", content=body, headers=headers)
    assert r.status_code == 401, r.text


def test_production_refuses_unsigned_device_requests(tmp_path: Path) -> None:
    from cadence.settings import Settings
    from server.app import check_settings

    settings = Settings(environment="production", require_signed_requests=False,  # type: ignore[call-arg]
                        api_keys={"bank-key-of-32-characters-length": ["bank"]}, audit_hmac_key="ab" * 32,
                        audit_signing_key="cd" * 32, server_signing_key="A" * 43, _env_file=None)
    with pytest.raises(ValueError, match="require_signed_requests"):
        check_settings(settings)


def test_an_authorize_body_that_is_not_json_says_so(client: TestClient, windows) -> None:
    dev = _enrol(client, windows)
    from server.signing import sign_request

    body = b'{"user_id": "alice", '
    headers = sign_request(dev.key, dev.device_id, "POST", "/v1/transactions/authorize", body)
    r = client.post("/v1/transactions/authorize", content=body, headers={**headers, "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("body: not valid JSON"), r.text


def test_a_consent_withdrawn_between_scoring_and_commit_refuses_the_decision(client: TestClient, enrolled, windows,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Withdrawal takes effect at once: a decision resting on the withdrawn modality is not committed."""
    from cadence.db import transaction
    from server.services import compliance_hooks as hooks
    from server.services import transactions as tx_service
    from tests.server.conftest import decision_evidence

    real = tx_service.plan_authorize

    def plan_then_revoke(*a: Any, **kw: Any) -> Any:
        plan = real(*a, **kw)
        with transaction(client.app.state.cadence.sessions) as s:  # type: ignore[attr-defined]
            hooks.revoke_consent(s, user_id=enrolled.user_id, modality="keystroke", purpose="authentication")
        return plan

    monkeypatch.setattr(tx_service, "plan_authorize", plan_then_revoke)
    payload = dict(_payload(enrolled, windows, "w1", ev=False),
                   evidence=[w.to_dict() for w in decision_evidence(windows, "owner", 7)])
    r = enrolled.signed("POST", "/v1/transactions/authorize", payload)
    assert r.status_code == 403 and r.json()["code"] == "consent_required" and "keystroke" in r.json()["detail"], r.text
    assert r.json()["detail"].startswith("modality: no consent for authentication"), r.text  # "<field>: <reason>"
    with client.app.state.cadence.sessions() as s:  # type: ignore[attr-defined]
        assert s.execute(text("SELECT count(*) FROM server_transaction")).scalar() == 0


def test_a_retry_that_raced_its_committed_twin_gets_the_twins_answer_after_a_withdrawal(
        client: TestClient, enrolled, windows, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same key and body decided before the withdrawal: the retry's answer is that decision, not a 403."""
    from cadence.db import transaction
    from server.services import compliance_hooks as hooks
    from server.services import transactions as tx_service
    from tests.server.conftest import decision_evidence

    payload = dict(_payload(enrolled, windows, "race-1", ev=False),
                   evidence=[w.to_dict() for w in decision_evidence(windows, "owner", 8)])
    real = tx_service.plan_authorize
    twin: dict[str, Any] = {}

    def twin_commits_then_revoke(session: Any, provider: Any, body: Any, **kw: Any) -> Any:
        plan = real(session, provider, body, **kw)  # this call's read phase is done: its twin runs to the end
        factory = client.app.state.cadence.sessions  # type: ignore[attr-defined]
        with transaction(factory) as s:  # the twin: the same signed body, read and written before this call's write
            twin_plan = real(s, provider, body, **kw)
            twin.update(tx_service.commit_authorize(s, twin_plan, kw["signing_key"], body, device_id=enrolled.device_id,
                                                    lockout_failures=5, actor="device"))
        with transaction(factory) as s:
            hooks.revoke_consent(s, user_id=enrolled.user_id, modality="keystroke", purpose="authentication")
        return plan

    monkeypatch.setattr(tx_service, "plan_authorize", twin_commits_then_revoke)
    r = enrolled.signed("POST", "/v1/transactions/authorize", payload)
    assert r.status_code == 200, r.text
    assert r.json()["transaction_id"] == twin["transaction_id"] and r.json()["decision"] == twin["decision"]


@pytest.mark.parametrize("values, flagged", [
    ([0.25] * 40, True), ([0.0, -0.0, 0.0], True), ([1, 1.0], True),  # -0.0 == 0.0, a JSON integer == its float
    ([0.25] * 39 + [0.2500001], False), ([3.0], False),  # one differing value; a single value proves nothing
])
def test_a_window_of_identical_features_is_flagged_as_implausible(values: list[float], flagged: bool) -> None:
    from server.schemas import FeatureWindowIn
    from server.services.evidence import implausible

    w = FeatureWindowIn(modality="gait", feature_version="v", start=0.0, end=10.0, n_events=50, quality=1.0,
                        values=values)
    assert (implausible(w) == "all features identical") is flagged


def test_ascii_control_characters_and_only_those_are_refused_in_text() -> None:
    from server.schemas import _printable

    for code in range(128):
        text = f"pay{chr(code)}ee"
        if code < 32 or code == 127:
            with pytest.raises(ValueError, match="control characters"):
                _printable(text)
        else:
            assert _printable(text) == text


def test_an_address_past_its_budget_gets_429_before_its_body_is_parsed(tmp_path: Path) -> None:
    """It was parsed first on every route but authorize: a flood of bodies cost JSON parsing, answered 422."""
    with built_app(make_settings(tmp_path, device_rate_per_s=2.0)) as app:
        with TestClient(app, client=("203.0.113.5", 4000)) as stranger:
            flood = [stranger.get("/v1/users/x/consents", headers={"X-Cadence-Device": "nobody"}).status_code
                     for _ in range(8)]
            assert flood[-1] == 429, flood
            for path in ("/v1/users/x/enrolment", "/v1/users/x/consents", "/v1/sessions"):
                r = stranger.post(path, content=b'{"not json', headers={"X-Cadence-Device": "nobody",
                                                                        "content-type": "application/json"})
                assert r.status_code == 429 and r.json()["code"] == "rate_limited", (path, r.text)


@pytest.mark.parametrize("start,end", [(-1.7e308, 1.7e308), (0.0, 8 * 86_400.0)])
def test_a_window_spanning_more_than_a_week_is_refused_naming_end(start: float, end: float) -> None:
    """Finite bounds whose span overflows to inf read as 0 events/s: the rate check passed them."""
    from pydantic import ValidationError

    from server.schemas import MAX_WINDOW_S, FeatureWindowIn

    with pytest.raises(ValidationError, match="end: the window lasts") as info:
        FeatureWindowIn(modality="keystroke", feature_version="v", start=start, end=end, n_events=50, quality=1.0,
                        values=[0.1, 0.2])
    assert "7 days" in str(info.value)
    week = FeatureWindowIn(modality="keystroke", feature_version="v", start=0.0, end=MAX_WINDOW_S, n_events=50,
                           quality=1.0, values=[0.1, 0.2])
    assert week.end - week.start == MAX_WINDOW_S  # a week is still a window



def test_a_padded_public_key_is_refused_so_a_repeat_registration_stays_a_repeat(client: TestClient) -> None:
    """A key registered as `...=` made the same key in `b64e`'s spelling "another key" (409)."""
    from server.signing import b64e, public_key_b64, registration_message

    dev = DeviceClient("http://testserver", user_id="alice", http=client)
    payload = {"device_id": dev.device_id, "user_id": "alice", "public_key": public_key_b64(dev.key) + "=",
               "platform": "demo", "proof": b64e(dev.key.sign(registration_message(dev.device_id, "alice")))}
    r = client.post("/v1/devices", json=payload, headers={"X-API-Key": dev.bank_api_key})
    assert r.status_code == 422 and "public_key" in r.json()["detail"], r.text
    assert client.post("/v1/devices", json={**payload, "public_key": public_key_b64(dev.key)},
                       headers={"X-API-Key": dev.bank_api_key}).status_code == 201


def test_an_optional_text_too_long_is_worded_in_characters() -> None:
    """`Text | None` with bounds said "at most 32 items after validation" of a string."""
    from pydantic import ValidationError

    from server.schemas import ConsentIn, EnrolRequest

    window = {"modality": "gait", "feature_version": "v", "start": 0.0, "end": 1.0, "n_events": 3, "quality": 1.0,
              "values": [0.1, 0.2]}
    for model, field, limit, body in ((ConsentIn, "policy_version", 32, {"modality": "gait"}),
                                      (EnrolRequest, "confirmed_transaction_id", 36, {"windows": [window]})):
        with pytest.raises(ValidationError) as info:
            model.model_validate({**body, field: "x" * (limit + 1)})
        assert info.value.errors()[0]["msg"] == f"String should have at most {limit} characters"
        assert getattr(model.model_validate({**body, field: "x" * limit}), field) == "x" * limit
        assert getattr(model.model_validate(body), field) is None
        with pytest.raises(ValidationError, match="control characters"):
            model.model_validate({**body, field: "a\x00b"})
