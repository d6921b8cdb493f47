"""The /v1 API through HTTP: signed devices, idempotency, validation, replay, lockout, erasure."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from cadence.db import Base
from modalities.events import MODALITIES
from server.client.api import ApiCallError
from server.signing import sign_request, verify_token
from tests.server.conftest import decision_evidence, evidence, new_device

BANK = {"X-API-Key": "dev-bank-key"}
ADMIN = {"X-API-Key": "dev-admin-key"}


def _authorize_payload(dev, windows, key="k1", amount="25.00", payee="ACME", i=5, who="owner",  # type: ignore[no-untyped-def]
                       unit=evidence):
    return {"user_id": dev.user_id, "amount": amount, "currency": "EUR", "payee": payee, "channel": "app",
            "idempotency_key": key, "evidence": [w.to_dict() for w in unit(windows, who, i)]}


def test_owner_approved_impostor_not(enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    own = enrolled.authorize(amount="25.00", payee="ACME", evidence=evidence(windows, "owner", 6))
    other = enrolled.authorize(amount="25.00", payee="ACME", evidence=evidence(windows, "other", 6))
    assert own["decision"] != "deny" and other["decision"] != "approve"
    assert own["risk"] < other["risk"]
    assert {r["modality"] for r in own["reasons"]} >= set(MODALITIES)
    assert set(own["model_versions"]) == set(MODALITIES)


def test_replayed_signed_request_refused(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(_authorize_payload(enrolled, windows)).encode()
    headers = sign_request(enrolled.key, enrolled.device_id, "POST", "/v1/transactions/authorize", body)
    headers["content-type"] = "application/json"
    first = client.post("/v1/transactions/authorize", content=body, headers=headers)
    assert first.status_code == 200, first.text
    again = client.post("/v1/transactions/authorize", content=body, headers=headers)
    assert again.status_code == 401 and again.json()["code"] == "replayed_request"


def test_stale_and_forged_requests_refused(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(_authorize_payload(enrolled, windows)).encode()
    old = sign_request(enrolled.key, enrolled.device_id, "POST", "/v1/transactions/authorize", body,
                       timestamp=time.time() - 3600)
    r = client.post("/v1/transactions/authorize", content=body, headers=old | {"content-type": "application/json"})
    assert r.status_code == 401 and r.json()["code"] == "stale_request"
    good = sign_request(enrolled.key, enrolled.device_id, "POST", "/v1/transactions/authorize", body)
    tampered = body.replace(b'"25.00"', b'"9999.00"')
    r = client.post("/v1/transactions/authorize", content=tampered, headers=good | {"content-type": "application/json"})
    assert r.status_code == 401 and r.json()["code"] == "bad_signature"
    r = client.post("/v1/transactions/authorize", json=json.loads(body))
    assert r.status_code == 401


def test_idempotency_same_decision_and_conflict(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    a = enrolled.signed("POST", "/v1/transactions/authorize", _authorize_payload(enrolled, windows, key="pay-1"))
    b = enrolled.signed("POST", "/v1/transactions/authorize", _authorize_payload(enrolled, windows, key="pay-1"))
    assert a.status_code == b.status_code == 200
    assert a.json() == b.json()
    c = enrolled.signed("POST", "/v1/transactions/authorize", _authorize_payload(enrolled, windows, key="pay-1", amount="26.00"))
    assert c.status_code == 409 and c.json()["code"] == "idempotency_conflict"


def _miss_idempotency_once(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The read phase's idempotency lookup misses once, as when the winner commits just after it."""
    import server.services.transactions as svc

    real, missed = svc.find_idempotent, []

    def racing(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not missed:
            missed.append(True)
            return None
        return real(*args, **kwargs)

    monkeypatch.setattr(svc, "find_idempotent", racing)
    return missed


def test_a_twin_that_lost_the_race_gets_the_winners_decision_not_a_replay_flag(
        client: TestClient, enrolled, windows, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A concurrent twin (same key, same body) whose idempotency lookup ran before the winner committed.

    Its replay check then finds the winner's windows: on PostgreSQL with two workers such twins
    were refused as replayed evidence and the owner flagged. Replayed here by making the read
    phase's lookup miss once, as it does in that interleaving.
    """
    payload = _authorize_payload(enrolled, windows, key="pay-twin")
    first = enrolled.signed("POST", "/v1/transactions/authorize", payload)
    assert first.status_code == 200, first.text
    missed = _miss_idempotency_once(monkeypatch)
    twin = enrolled.signed("POST", "/v1/transactions/authorize", payload)
    assert missed and twin.status_code == 200, twin.text
    assert twin.json() == first.json()
    export = client.get(f"/v1/admin/users/{enrolled.user_id}/export", headers=ADMIN).json()
    assert "evidence_replay" not in json.dumps(export)
    # a key reused for another body with the same windows stays a flagged replay
    missed.clear()
    other = enrolled.signed("POST", "/v1/transactions/authorize", dict(payload, amount="26.00"))
    assert other.status_code == 409 and other.json()["code"] == "evidence_replay", other.text
    export = client.get(f"/v1/admin/users/{enrolled.user_id}/export", headers=ADMIN).json()
    assert "evidence_replay" in json.dumps(export)


def test_a_signed_request_replayed_in_the_twin_race_is_refused_not_answered(
        client: TestClient, enrolled, windows, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The winner's exact signed bytes sent again while it commits (a captured request replayed).

    On PostgreSQL, 20 concurrent copies of one signed request got up to three 200s with the
    decision token: the copy whose idempotency lookup ran before the winner committed took
    the twin path, which never consumed its nonce. Replayed here as in the twin test above.
    """
    body = json.dumps(_authorize_payload(enrolled, windows, key="pay-replay")).encode()
    headers = sign_request(enrolled.key, enrolled.device_id, "POST", "/v1/transactions/authorize", body)
    headers["content-type"] = "application/json"
    first = client.post("/v1/transactions/authorize", content=body, headers=headers)
    assert first.status_code == 200, first.text
    missed = _miss_idempotency_once(monkeypatch)
    again = client.post("/v1/transactions/authorize", content=body, headers=headers)
    assert missed and again.status_code == 401 and again.json()["code"] == "replayed_request", again.text
    assert "token" not in again.text


def test_duplicated_evidence_window_refused_and_flagged(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    ok = enrolled.signed("POST", "/v1/transactions/authorize", _authorize_payload(enrolled, windows, key="a"))
    assert ok.status_code == 200
    dup = enrolled.signed("POST", "/v1/transactions/authorize", _authorize_payload(enrolled, windows, key="b"))
    assert dup.status_code == 409 and dup.json()["code"] == "evidence_replay", dup.text
    assert "already received" in dup.json()["detail"]
    # an enrolment window replayed as a probe is refused too
    enrol_win = enrolled.signed("POST", "/v1/transactions/authorize",
                                _authorize_payload(enrolled, windows, key="c", i=0))
    assert enrol_win.status_code == 409, enrol_win.text
    export = client.get(f"/v1/admin/users/{enrolled.user_id}/export", headers=ADMIN).json()
    assert "evidence_replay" in json.dumps(export)
    assert 'cadence_security_flags_total{kind="evidence_replay"} 2.0' in client.get("/metrics").text


@pytest.mark.parametrize("nudge", [
    lambda w: w.update(values=[v + 1e-12 for v in w["values"]]),
    lambda w: w.update(values=[v * (1 + 1e-12) for v in w["values"]]),
    lambda w: w.update(start=w["start"] + 5.0, end=w["end"] + 5.0),
    lambda w: w.update(n_events=w["n_events"] + 1, quality=max(0.0, w["quality"] - 1e-9)),
], ids=["values+1e-12", "values*(1+1e-12)", "later", "events+quality"])
@pytest.mark.parametrize("modality", MODALITIES)
def test_evidence_nudged_below_its_precision_is_still_a_replay(client: TestClient, enrolled, windows, nudge,  # type: ignore[no-untyped-def]
                                                               modality) -> None:
    """A captured window with float noise or other times/counts is the same evidence: refused.

    One modality's window at a time: sent all together, gait alone refused the request, while
    keystroke and touch windows with an exact 0.0 feature nudged to 1e-12 hashed anew. The
    relative nudge was 1e-9: it refused only because the three went together, for about half of
    the gait windows cross a rounding boundary at that size (docs/api.md, "Replay protection").
    """
    payload = _authorize_payload(enrolled, windows, key="orig")
    assert enrolled.signed("POST", "/v1/transactions/authorize", payload).status_code == 200
    again = json.loads(json.dumps(payload))
    again["idempotency_key"] = "nudged"
    again["evidence"] = [w for w in again["evidence"] if w["modality"] == modality]
    assert len(again["evidence"]) == 1
    for w in again["evidence"]:
        nudge(w)
    r = enrolled.signed("POST", "/v1/transactions/authorize", again)
    assert r.status_code == 409 and r.json()["code"] == "evidence_replay", r.text


def test_digests_of_windows_without_near_zero_values_are_unchanged(windows) -> None:  # type: ignore[no-untyped-def]
    """The zero floor changes no digest of a window without values within it of zero: stored ones stay valid.

    Pinned against the digests of the rule before the floor (20 mantissa bits, -0.0 as 0.0).
    """
    import hashlib

    import numpy as np

    from server.schemas import FeatureWindowIn
    from server.services.evidence import ZERO_FLOOR, _features_prefix, window_hash

    for m in MODALITIES:
        for fw in windows["owner"][m][:10]:
            w = FeatureWindowIn(**fw.to_dict())
            a = w.array()
            if (np.abs(a[a != 0]) < ZERO_FLOOR).any():
                continue
            bits = (a + 0.0).view("<u8")
            before = hashlib.sha256(_features_prefix(w.modality, w.feature_version))
            before.update(((bits + np.uint64(1 << 31)) & np.uint64(0xFFFFFFFF00000000)).tobytes())
            assert window_hash(w) == before.hexdigest(), m


def test_digests_of_a_request_are_those_of_its_windows_one_by_one(windows) -> None:  # type: ignore[no-untyped-def]
    """`window_hashes` (all of a request's windows rounded in one pass) gives each window's own digest.

    Mixed on purpose: every modality, touch taps (hashed by all their fields, exact), and values
    at and near zero (-0.0, under the zero floor), in any order and batch size.
    """
    import hashlib

    import numpy as np

    from modalities.touch import IDX
    from server.schemas import FeatureWindowIn
    from server.services.evidence import _KEEP, _ROUND, ZERO_FLOOR, _features_prefix, scored, window_hashes

    def one_by_one(w: FeatureWindowIn) -> str:  # the rule written out, one window at a time
        if not scored(w):
            return window_hashes([w])[0]
        a = np.asarray(w.values, dtype="<f8")
        bits = np.where(np.abs(a) < ZERO_FLOOR, 0.0, a).view("<u8")
        h = hashlib.sha256(_features_prefix(w.modality, w.feature_version))
        h.update(((bits + _ROUND) & _KEEP).tobytes())
        return h.hexdigest()

    ws = []
    for m in MODALITIES:
        for fw in windows["owner"][m][:3]:
            d = fw.to_dict()
            ws.append(FeatureWindowIn(**d))
            values = list(d["values"])
            values[:3] = [-0.0, ZERO_FLOOR / 2, 0.0]
            ws.append(FeatureWindowIn(**{**d, "values": values}))
            if m == "touch":
                values = list(d["values"])
                values[IDX["is_tap"]] = 1.0
                ws.append(FeatureWindowIn(**{**d, "values": values}))
    assert any(not scored(w) for w in ws) and sum(map(scored, ws)) > len(MODALITIES)
    expect = [one_by_one(w) for w in ws]
    rng = np.random.default_rng(0)
    assert window_hashes(ws) == expect
    for _ in range(30):
        pick = rng.choice(len(ws), size=int(rng.integers(1, len(ws) + 1)), replace=False)
        assert window_hashes([ws[i] for i in pick]) == [expect[i] for i in pick]
    assert window_hashes([]) == []


@pytest.mark.parametrize("mutate, field", [
    (lambda w: w.update(values=[float("nan")] + w["values"][1:]), "values"),
    (lambda w: w.update(values=w["values"][:-1]), "values"),
    (lambda w: w.update(modality="mouse"), "modality"),
    (lambda w: w.update(feature_version="other-9"), "feature_version"),
    (lambda w: w.update(events=[[0.0, 0.1]]), "raw events"),
    (lambda w: w.update(quality=1.5), "quality"),
])
def test_bad_evidence_gets_4xx_naming_field(client: TestClient, enrolled, windows, mutate, field) -> None:  # type: ignore[no-untyped-def]
    payload = _authorize_payload(enrolled, windows, key="bad", i=7)
    mutate(payload["evidence"][0])
    body = json.dumps(payload).encode()  # json.dumps writes NaN literally, as a careless client would
    headers = sign_request(enrolled.key, enrolled.device_id, "POST", "/v1/transactions/authorize", body)
    r = client.post("/v1/transactions/authorize", content=body, headers=headers | {"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert field in r.json()["detail"]


def test_no_partial_write_on_refusal(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    payload = _authorize_payload(enrolled, windows, key="partial", i=8)
    payload["evidence"][2]["values"] = payload["evidence"][2]["values"][:-1]  # gait window malformed
    r = enrolled.signed("POST", "/v1/transactions/authorize", payload)
    assert r.status_code == 422
    # the valid keystroke and touch windows of that request were not recorded as seen
    payload = _authorize_payload(enrolled, windows, key="partial", i=8)
    assert enrolled.signed("POST", "/v1/transactions/authorize", payload).status_code == 200


def test_payload_limit(client: TestClient, enrolled) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/v1/transactions/authorize", content=b"x" * 300_000, headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_lockout_after_five_failures(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    outcomes = []
    for i in range(7):
        r = enrolled.signed("POST", "/v1/transactions/authorize",
                            _authorize_payload(enrolled, windows, key=f"imp{i}", who="other", i=i, amount="5000.00"))
        outcomes.append((r.status_code, r.json().get("decision") or r.json().get("code")))
    denies = [o for o in outcomes if o == (200, "deny")]
    assert len(denies) == 5 and outcomes[5:] == [(423, "user_locked")] * 2
    assert client.post(f"/v1/admin/users/{enrolled.user_id}/unlock", headers=BANK).status_code == 403
    assert client.post(f"/v1/admin/users/{enrolled.user_id}/unlock", headers=ADMIN).status_code == 200
    r = enrolled.signed("POST", "/v1/transactions/authorize", _authorize_payload(enrolled, windows, key="after", i=9))
    assert r.status_code == 200


def test_token_bound_to_amount_and_payee(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    resp = enrolled.authorize(amount="25.00", payee="ACME", evidence=evidence(windows, "owner", 10))
    assert resp["decision"] == "approve", resp
    pub = client.get("/v1/transactions/signing-key/public").json()["public_key"]
    from server.signing import load_public_key

    claims = verify_token(load_public_key(pub), resp["token"])
    assert claims["amount"] == "25.00" and claims["payee"] == "ACME"
    payment = {"token": resp["token"], "user_id": enrolled.user_id, "transaction_id": resp["transaction_id"],
               "amount": "25.00", "currency": "EUR", "payee": "ACME"}
    bad = client.post("/v1/transactions/verify-token", headers=BANK, json={**payment, "payee": "MALLORY"}).json()
    assert bad["valid"] is False and "payee" in bad["reason"]
    checked = client.post("/v1/transactions/verify-token", headers=BANK, json={**payment, "redeem": False}).json()
    assert checked["valid"] is True and checked["redeemed"] is False
    ok = client.post("/v1/transactions/verify-token", headers=BANK, json=payment).json()
    assert ok["valid"] is True and ok["redeemed"] is True
    again = client.post("/v1/transactions/verify-token", headers=BANK, json=payment).json()
    assert again["valid"] is False and "already redeemed" in again["reason"]  # one approval, one payment


def test_a_check_only_verification_reads_the_transaction_too(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    """`"redeem": false` said a spent token, or one whose transaction was erased, was valid."""
    resp = enrolled.authorize(amount="25.00", payee="ACME", evidence=evidence(windows, "owner", 10))
    assert resp["decision"] == "approve", resp
    payment = {"token": resp["token"], "user_id": enrolled.user_id, "transaction_id": resp["transaction_id"],
               "amount": "25.00", "currency": "EUR", "payee": "ACME"}

    def check() -> dict:  # type: ignore[type-arg]
        return client.post("/v1/transactions/verify-token", headers=BANK, json={**payment, "redeem": False}).json()

    assert check()["valid"] is True
    assert client.post("/v1/transactions/verify-token", headers=BANK, json=payment).json()["redeemed"] is True
    spent = check()
    assert spent["valid"] is False and "already redeemed" in spent["reason"], spent
    assert client.delete(f"/v1/admin/users/{enrolled.user_id}", headers=ADMIN).status_code == 200
    erased = check()
    assert erased["valid"] is False and erased["reason"] == "transaction_id: no such transaction of this user", erased


def test_step_up_completion(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    resp = enrolled.authorize(amount="25.00", payee="ACME", evidence=[])
    assert resp["decision"] == "step_up"
    r = client.post(f"/v1/transactions/{resp['transaction_id']}/step-up", json={"success": True}, headers=BANK)
    assert r.status_code == 200 and r.json()["status"] == "approved_after_step_up"
    again = client.post(f"/v1/transactions/{resp['transaction_id']}/step-up", json={"success": True}, headers=BANK)
    assert again.status_code == 409


def test_confirmed_evidence_adapts_the_template_once(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    """Controlled adaptation: only an approved transaction's own windows re-enrol, once each."""
    own = decision_evidence(windows, "owner", 7)  # all three modalities match (touch: swipes 35-39)
    tx = enrolled.authorize(amount="25.00", payee="ACME", evidence=own)
    if tx["decision"] == "step_up":  # confirmed by the second factor instead
        r = client.post(f"/v1/transactions/{tx['transaction_id']}/step-up", json={"success": True}, headers=BANK)
        assert r.status_code == 200
    assert tx["decision"] != "deny"
    tx_id = tx["transaction_id"]
    with pytest.raises(ApiCallError) as exc:  # windows this call did not carry
        enrolled.enrol(evidence(windows, "owner", 9), confirmed_transaction_id=tx_id)
    assert exc.value.status == 409 and exc.value.body["code"] == "not_confirmed_evidence"
    assert "windows[0]" in exc.value.body["detail"]
    (done,) = enrolled.enrol(own, confirmed_transaction_id=tx_id)
    assert {m["modality"]: m["n_windows"] for m in done["modalities"]} == {"keystroke": 6, "touch": 10, "gait": 6}
    with pytest.raises(ApiCallError) as exc:  # once only
        enrolled.enrol(own, confirmed_transaction_id=tx_id)
    assert exc.value.status == 409 and exc.value.body["code"] == "not_confirmed_evidence"
    with pytest.raises(ApiCallError) as exc:  # and still no replay as a probe
        enrolled.authorize(amount="25.00", payee="ACME", evidence=own)
    assert exc.value.body["code"] == "evidence_replay"
    # a transaction that was not approved adapts nothing; another user's is unknown here
    pending = enrolled.authorize(amount="25.00", payee="ACME", evidence=[])
    assert pending["decision"] == "step_up"
    with pytest.raises(ApiCallError) as exc:
        enrolled.enrol(evidence(windows, "owner", 8), confirmed_transaction_id=pending["transaction_id"])
    assert exc.value.status == 409 and exc.value.body["code"] == "not_confirmed"
    bob = new_device(client, "bob")
    bob.grant_consent("gait")
    with pytest.raises(ApiCallError) as exc:
        bob.enrol([windows["other"]["gait"][0]], confirmed_transaction_id=tx_id)
    assert exc.value.status == 404 and exc.value.body["code"] == "unknown_transaction"
    export = client.get(f"/v1/admin/users/{enrolled.user_id}/export", headers=ADMIN).json()
    entries = export["data"]["audit"]["entries"]  # the audit trail names the confirming transaction
    assert any(e["event"] == "enrolment" and tx_id in json.dumps(e) for e in entries), entries[-3:]


def test_api_keys_and_scopes(client: TestClient) -> None:
    assert client.post("/v1/devices", json={}).status_code in (401, 422)
    r = client.get("/v1/admin/users/alice/export", headers={"X-API-Key": "nope"})
    assert r.status_code == 401
    assert client.get("/v1/admin/users/alice/export", headers=BANK).status_code == 403


def test_consent_required(client: TestClient, windows) -> None:  # type: ignore[no-untyped-def]
    dev = new_device(client, "bob")
    with pytest.raises(ApiCallError) as exc:
        dev.enrol(windows["owner"]["gait"][:5])
    assert exc.value.status == 403 and "consent" in exc.value.body["detail"]
    dev.grant_consent("gait")
    dev.enrol(windows["owner"]["gait"][:5])
    with pytest.raises(ApiCallError) as exc:  # touch and keystroke evidence without their consent
        dev.authorize(amount="10.00", payee="ACME", evidence=evidence(windows, "owner", 6))
    assert exc.value.status == 403 and "keystroke" in exc.value.body["detail"]
    revoked = dev.signed("POST", "/v1/users/bob/consents", {"modality": "gait", "granted": False})
    assert revoked.status_code == 201
    with pytest.raises(ApiCallError) as exc:
        dev.authorize(amount="10.00", payee="ACME", evidence=[windows["owner"]["gait"][7]])
    assert exc.value.status == 403 and "gait" in exc.value.body["detail"]


def test_erasure_removes_every_row(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    enrolled.authorize(amount="25.00", payee="ACME", evidence=evidence(windows, "owner", 11))
    s = enrolled.signed("POST", "/v1/sessions", {"user_id": enrolled.user_id})
    assert s.status_code == 201
    r = client.delete(f"/v1/admin/users/{enrolled.user_id}", headers=ADMIN)
    assert r.status_code == 200, r.text
    engine = client.app.state.engine
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            cols = [c.name for c in table.columns if c.name == "user_id"]
            if table.name.startswith("server_") and cols:
                n = conn.execute(select(table).where(table.c.user_id == enrolled.user_id)).all()
                assert n == [], table.name
        assert conn.execute(text("SELECT count(*) FROM server_user")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM server_nonce")).scalar() == 0


def test_continuous_session(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    """The device is told the status, never the risk (an oracle to hill-climb on); the bank reads the risk."""
    s = enrolled.signed("POST", "/v1/sessions", {"user_id": enrolled.user_id}).json()
    assert s["status"] == "pending"  # nothing scored yet: verifies nobody
    own = enrolled.signed("POST", f"/v1/sessions/{s['session_id']}/evidence",
                          {"windows": [w.to_dict() for w in evidence(windows, "owner", 12)]}).json()
    assert own["status"] == "ok" and "risk" not in own and "engine" not in own
    own_view = client.get(f"/v1/sessions/{s['session_id']}", headers=BANK).json()
    assert own_view["engine"] == "continuous.session" and own_view["status"] == "ok"
    for i in range(13, 21):
        other = enrolled.signed("POST", f"/v1/sessions/{s['session_id']}/evidence",
                                {"windows": [w.to_dict() for w in evidence(windows, "other", i)]}).json()
        if other["status"] == "terminate":
            break
    assert other["status"] == "terminate" and "risk" not in other
    read = client.get(f"/v1/sessions/{s['session_id']}", headers=BANK).json()
    assert read["risk"] > own_view["risk"] and read["status"] == "terminate"
    assert "risk" not in enrolled.signed("GET", f"/v1/sessions/{s['session_id']}").json()
    after = enrolled.signed("POST", f"/v1/sessions/{s['session_id']}/evidence",
                            {"windows": [w.to_dict() for w in evidence(windows, "owner", 22)]})
    assert after.status_code == 409 and after.json()["code"] == "session_terminated"


def test_health_metrics_models(client: TestClient) -> None:
    assert client.get("/v1/health").json() == {"status": "ok"}
    assert client.get("/v1/ready").status_code == 200
    scraped = client.get("/metrics")
    assert "cadence_http_requests_total" in scraped.text
    # counters are per worker: a scraper tells the workers apart by the instance header, as on /v1/health
    assert scraped.headers["X-Cadence-Instance"] == client.get("/v1/health").headers["X-Cadence-Instance"]
    assert client.get("/v1/models").json() == []
    assert client.get("/v1/models/gait/active").json()["model_id"]


def test_rate_limit_per_device(tmp_path, windows) -> None:  # type: ignore[no-untyped-def]
    from server.app import create_app
    from tests.server.conftest import make_settings

    app = create_app(make_settings(tmp_path, device_rate_per_s=2.0))
    with TestClient(app) as client:
        dev = new_device(client, "dora")
        codes = [dev.signed("GET", "/v1/users/dora/consents").status_code for _ in range(8)]
    app.state.engine.dispose()
    assert codes[:4] == [200] * 4 and 429 in codes[4:]


def test_rate_limit_comes_before_body_validation_on_authorize(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The lean authorize handler keeps the `Signed` dependency's order: 429 before parsing."""
    from server.app import create_app
    from tests.server.conftest import make_settings

    app = create_app(make_settings(tmp_path, device_rate_per_s=2.0))
    with TestClient(app) as client:
        dev = new_device(client, "erin")
        codes = [dev.signed("POST", "/v1/transactions/authorize", {"user_id": "erin"}).status_code for _ in range(8)]
    app.state.engine.dispose()
    assert codes[:4] == [422] * 4 and codes[-1] == 429


def test_holder_purge_and_export(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime, timedelta

    from server.holders import ServerHolder

    enrolled.authorize(amount="25.00", payee="ACME", evidence=evidence(windows, "owner", 23))
    factory = client.app.state.cadence.sessions
    holder = ServerHolder()
    with factory() as session, session.begin():
        exported = holder.export(session, enrolled.user_id)
        assert len(exported["transactions"]) == 1 and len(exported["templates"]) == 3
        (tx,) = exported["transactions"]  # Art. 20: the whole record, not only the answer given
        assert tx["channel"] == "app" and tx["device_id"] == enrolled.device_id and tx["idempotency_key"]
        assert tx["decision"]["payee"] == "ACME"
        sent = exported["evidence_hashes"]  # 5 enrolment windows per modality and the call's 3
        assert len(sent) == 18 and {len(e["sha256"]) for e in sent} == {64}
        later = datetime.now(UTC) + timedelta(days=31)
        dry = holder.purge(session, {"evidence": 30, "transactions": 400}, now=later, dry_run=True)
        assert dry["server_evidence_seen"] > 0 and dry["server_transaction"] == 0
        done = holder.purge(session, {"evidence": 30}, now=later, dry_run=False)
        assert done["server_evidence_seen"] == dry["server_evidence_seen"]


def test_without_a_calibration_every_decision_steps_up_and_no_owner_is_locked_out(
        tmp_path, windows, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """A fresh `cadence serve` (no calibration file): raw scores say nothing, so nothing approves or denies.

    A fixed score map used to stand in for the calibrator; it read every owner of the
    keystroke default (scores near -300) as an impostor: denials, then a locked-out owner.
    """
    import logging

    from server.app import create_app
    from tests.server.conftest import make_settings

    with caplog.at_level(logging.WARNING, logger="server.app"), \
            TestClient(create_app(make_settings(tmp_path, fusion_calibration=None))) as fresh:
        dev = new_device(fresh, "owner")
        for m in MODALITIES:
            dev.grant_consent(m)
            dev.enrol(windows["owner"][m][:5])
        for i in range(6):
            r = dev.signed("POST", "/v1/transactions/authorize",
                           _authorize_payload(dev, windows, key=f"fresh{i}", i=6 + i, amount="5000.00",
                                              unit=decision_evidence))
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["decision"] == "step_up", body
            assert {x["modality"] for x in body["reasons"] if x["code"] == "uncalibrated"} == set(MODALITIES)
    assert "no fusion calibration for the served" in caplog.text
