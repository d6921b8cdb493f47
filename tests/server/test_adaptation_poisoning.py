"""Controlled adaptation cannot be used to enrol someone else's behaviour over the owner's.

A tester held the owner's phone: his swipes stepped up (touch strong_mismatch), he passed the
bank's one-time code, re-sent his 64 swipes as confirmed evidence, and after three such
step-ups the owner's touch template was mostly his (approved at every tier). And past the
window cap the original enrolment went first. Now only a modality that matched in the
decision adapts, with at most `ADAPT_MAX_WINDOWS` windows per transaction, and adapted windows
hold at most `MAX_ADAPTED_WINDOWS` (half the cap), so the plain enrolment keeps the other half
and an adaptation always has room. Concurrent calls (PostgreSQL) neither adapt with the
same windows twice nor answer a 500.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from cadence.db import make_engine
from modalities.events import MODALITIES, FeatureWindow
from modalities.touch import IDX
from server.app import create_app
from server.client.api import DeviceClient
from server.migrate import downgrade, upgrade
from server.models import EnrolmentWindow
from server.services import enrolment
from server.signing import sign_request
from tests.pg import BACKENDS, backend_url
from tests.server.conftest import evidence, make_settings, new_device

BANK = {"X-API-Key": "dev-bank-key"}


def _touch(client: TestClient, user_id: str = "alice") -> list[list[float]]:
    """The values of the user's stored touch enrolment windows, oldest first."""
    with client.app.state.engine.connect() as conn:  # type: ignore[attr-defined]
        return [list(v) for v in conn.scalars(select(EnrolmentWindow.values).where(
            EnrolmentWindow.user_id == user_id, EnrolmentWindow.modality == "touch").order_by(EnrolmentWindow.id))]


def _adapt(dev: DeviceClient, ws: list[FeatureWindow], tx_id: str) -> Any:
    return dev.signed("POST", f"/v1/users/{dev.user_id}/enrolment",
                      {"windows": [w.to_dict() for w in ws], "confirmed_transaction_id": tx_id})


def _approved(client: TestClient, dev: DeviceClient, ws: list[FeatureWindow], amount: str = "25.00") -> dict[str, Any]:
    """An authorize call with `ws`, approved at once or through a passed step-up."""
    tx: dict[str, Any] = dev.authorize(amount=amount, payee="ACME", evidence=ws)
    if tx["decision"] == "step_up":
        r = client.post(f"/v1/transactions/{tx['transaction_id']}/step-up", json={"success": True}, headers=BANK)
        assert r.status_code == 200, r.text
    assert tx["decision"] != "deny", tx
    return tx


def test_an_impostor_who_passed_the_step_up_does_not_adapt_the_template(client: TestClient, enrolled,
                                                                       windows) -> None:  # type: ignore[no-untyped-def]
    """p2c: his swipes strong-mismatch, the step-up passes, he re-sends them: refused, the template unchanged."""
    before = _touch(client)
    theirs = windows["other"]["touch"][:12]
    tx = enrolled.authorize(amount="50.00", payee="ACME", evidence=theirs)
    assert tx["decision"] == "step_up" and {"modality": "touch", "code": "strong_mismatch"}.items() <= \
        tx["reasons"][0].items(), tx["reasons"]
    r = client.post(f"/v1/transactions/{tx['transaction_id']}/step-up", json={"success": True}, headers=BANK)
    assert r.json()["status"] == "approved_after_step_up"
    refused = _adapt(enrolled, theirs, tx["transaction_id"])
    assert refused.status_code == 409 and refused.json()["code"] == "not_matched_evidence", refused.text
    detail = refused.json()["detail"]
    assert "windows[0]" in detail and "touch" in detail and "strong_mismatch" in detail and tx["transaction_id"] in detail
    assert _touch(client) == before


def test_only_the_modalities_that_matched_adapt(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    """Approved on keystroke and gait while touch did not count (one swipe): touch's window is refused, the rest adapt."""
    ev = evidence(windows, "owner", 6)
    tx = _approved(client, enrolled, ev)
    codes = {r["modality"]: r["code"] for r in tx["reasons"]}
    assert codes == {"keystroke": "match", "touch": "too_few_for_decision", "gait": "strong_match"}, codes
    refused = _adapt(enrolled, ev, tx["transaction_id"])
    assert refused.status_code == 409 and refused.json()["code"] == "not_matched_evidence"
    assert refused.json()["detail"].startswith("windows[1]: touch did not match"), refused.text
    ok = _adapt(enrolled, [w for w in ev if w.modality != "touch"], tx["transaction_id"])  # nothing was claimed
    assert ok.status_code == 200, ok.text
    assert {m["modality"]: m["n_windows"] for m in ok.json()["modalities"]} == {"keystroke": 6, "gait": 6}


def test_a_transaction_adapts_at_most_the_limit_per_modality(client: TestClient, enrolled,
                                                             windows) -> None:  # type: ignore[no-untyped-def]
    """More than ADAPT_MAX_WINDOWS in one call is a 422; going past it over several calls a 409."""
    assert enrolment.ADAPT_MAX_WINDOWS == 8
    own = windows["owner"]
    swipes = own["touch"][20:32]
    tx = _approved(client, enrolled, swipes + [own["keystroke"][20], own["gait"][20]])
    assert {r["modality"]: r["code"] for r in tx["reasons"]}["touch"] in ("match", "strong_match"), tx["reasons"]
    tx_id = tx["transaction_id"]
    many = _adapt(enrolled, swipes, tx_id)
    assert many.status_code == 422 and many.json()["code"] == "adaptation_limit", many.text
    assert "12 touch windows" in many.json()["detail"] and "at most 8" in many.json()["detail"]
    assert _adapt(enrolled, swipes[:5], tx_id).status_code == 200
    over = _adapt(enrolled, swipes[5:9], tx_id)  # 5 + 4 > 8
    assert over.status_code == 409 and over.json()["code"] == "adaptation_limit", over.text
    assert "already adapted 5 touch windows" in over.json()["detail"] and "3 more" in over.json()["detail"]
    done = _adapt(enrolled, swipes[5:8], tx_id)
    assert done.status_code == 200 and done.json()["modalities"][0]["n_windows"] == 5 + 8, done.text


def _vals(ws: list[FeatureWindow]) -> list[list[float]]:
    return [[float(v) for v in w.values] for w in ws]


def test_the_eviction_policy() -> None:
    """Adapted windows hold at most their share of the cap; the plain enrolment the rest, newest kept."""
    A, P = True, False
    assert enrolment.MAX_ADAPTED_WINDOWS == enrolment.MAX_ENROL_WINDOWS // 2 == 100
    assert enrolment.evicted([P] * 200 + [A] * 8) == list(range(8))  # the plain enrolment's oldest make room
    assert enrolment.evicted([P] * 250) == list(range(50))  # plain alone past the cap: its newest kept
    assert enrolment.evicted([P] * 150 + [A] * 101) == [*range(50), 150]  # each side its share, oldest out
    assert enrolment.evicted([P] * 50 + [A] * 160) == list(range(50, 110))  # a small enrolment is all kept
    assert enrolment.evicted([P] * 10 + [A] * 120) == list(range(10, 30))  # the share holds below the cap too
    assert enrolment.evicted([A, P, A, P, A, A, P], cap=5, adapted_cap=2) == [0, 2]  # order kept, oldest first
    assert enrolment.evicted([P, P, P, A, A, A], cap=3, adapted_cap=1) == [0, 3, 4]
    assert enrolment.evicted([P] * 3 + [A] * 2, cap=7, adapted_cap=3) == []
    assert enrolment.evicted([P] * 6 + [A] * 4, cap=4, adapted_cap=9) == list(range(6))  # the share is at most the cap


def test_adaptation_has_room_when_the_plain_enrolment_fills_the_cap(client: TestClient, enrolled, windows,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The plain enrolment alone at the cap: the adapted windows are kept, the enrolment's oldest make room.

    Before, the adaptation was answered 200 with skipped 0, its windows claimed, and nothing
    adapted (the windows it had just stored were the ones dropped).
    """
    monkeypatch.setattr(enrolment, "MAX_ENROL_WINDOWS", 5)  # the 5 enrolled windows stand for 200
    monkeypatch.setattr(enrolment, "MAX_ADAPTED_WINDOWS", 2)
    own = windows["owner"]
    plain = _vals(own["touch"][:5])
    assert _touch(client) == plain
    swipes = own["touch"][20:28]
    tx = _approved(client, enrolled, swipes + [own["keystroke"][20], own["gait"][20]])
    assert {r["modality"]: r["code"] for r in tx["reasons"]}["touch"] in ("match", "strong_match"), tx["reasons"]
    r = _adapt(enrolled, swipes[:2], tx["transaction_id"])
    assert r.status_code == 200, r.text
    (touch,) = r.json()["modalities"]
    assert (touch["n_windows"], touch["skipped"], touch["skipped_reasons"]) == (5, 0, {}), touch
    assert _touch(client) == plain[2:] + _vals(swipes[:2])


def test_eviction_keeps_adapted_windows_to_their_share(client: TestClient, enrolled, windows,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Past their share the oldest adapted windows go, below the cap too; the plain enrolment stays."""
    monkeypatch.setattr(enrolment, "MAX_ENROL_WINDOWS", 10)
    monkeypatch.setattr(enrolment, "MAX_ADAPTED_WINDOWS", 3)
    own = windows["owner"]
    plain = _vals(own["touch"][:5])
    first, second = own["touch"][20:28], own["touch"][28:36]
    tx1 = _approved(client, enrolled, first + [own["keystroke"][20], own["gait"][20]])
    r = _adapt(enrolled, first[:2], tx1["transaction_id"])
    assert r.status_code == 200 and r.json()["modalities"][0]["n_windows"] == 7, r.text
    assert _touch(client) == plain + _vals(first[:2])  # within both limits: nothing goes
    tx2 = _approved(client, enrolled, second + [own["keystroke"][21], own["gait"][21]])
    assert {r["modality"]: r["code"] for r in tx2["reasons"]}["touch"] in ("match", "strong_match"), tx2["reasons"]
    r = _adapt(enrolled, second[:3], tx2["transaction_id"])
    assert r.status_code == 200, r.text
    (touch,) = r.json()["modalities"]
    assert (touch["n_windows"], touch["skipped"]) == (8, 0), touch
    # 5 adapted windows, 3 kept (the newest), though the 10 windows in all were within the cap
    assert _touch(client) == plain + _vals(second[:3])
    # the first transaction's adapted windows were dropped: its unclaimed evidence adapts nothing more
    late = _adapt(enrolled, first[2:4], tx1["transaction_id"])
    assert late.status_code == 409 and late.json()["code"] == "not_confirmed_evidence", late.text


def test_plain_enrolment_past_the_cap_says_what_it_dropped(client: TestClient, enrolled, windows,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Plain enrolment alone past the cap keeps its newest windows; this call's dropped ones are `evicted`."""
    monkeypatch.setattr(enrolment, "MAX_ENROL_WINDOWS", 7)
    monkeypatch.setattr(enrolment, "MAX_ADAPTED_WINDOWS", 3)
    own = windows["owner"]["touch"]
    r = enrolled.signed("POST", "/v1/users/alice/enrolment", {"windows": [w.to_dict() for w in own[5:9]]})
    assert r.status_code == 200, r.text
    (touch,) = r.json()["modalities"]
    assert (touch["n_windows"], touch["skipped"], touch["skipped_reasons"]) == (7, 0, {}), touch  # earlier ones went
    assert _touch(client) == _vals(own[2:9])
    r = enrolled.signed("POST", "/v1/users/alice/enrolment", {"windows": [w.to_dict() for w in own[9:17]]})
    assert r.status_code == 200, r.text
    (touch,) = r.json()["modalities"]
    assert (touch["n_windows"], touch["skipped"], touch["skipped_reasons"]) == (7, 1, {"evicted": 1}), touch
    assert _touch(client) == _vals(own[10:17])


def test_skipped_windows_are_reported(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    """Low-quality windows and taps are accepted (and now seen) but not enrolled: the answer says so."""
    own = windows["owner"]["touch"]
    low = [dict(w.to_dict(), quality=0.01) for w in own[5:7]]
    tap = own[7].to_dict()
    tap["values"] = list(tap["values"])
    tap["values"][IDX["is_tap"]] = 1.0
    r = enrolled.signed("POST", "/v1/users/alice/enrolment", {"windows": low + [tap] + [own[8].to_dict()]})
    assert r.status_code == 200, r.text
    (touch,) = r.json()["modalities"]
    assert (touch["n_windows"], touch["skipped"], touch["skipped_reasons"]) == (6, 3, {"low_quality": 2, "not_scored": 1})
    again = enrolled.signed("POST", "/v1/users/alice/enrolment", {"windows": low[:1]})  # a seen window stays seen
    assert again.status_code == 409 and again.json()["code"] == "evidence_replay"
    fine = enrolled.signed("POST", "/v1/users/alice/enrolment", {"windows": [own[9].to_dict()]})
    assert fine.json()["modalities"][0]["skipped"] == 0 and fine.json()["modalities"][0]["skipped_reasons"] == {}


def test_a_concurrent_insert_is_answered_as_the_replay_it_is(client: TestClient, enrolled, windows,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A window stored by another request between the check and the insert (IntegrityError): 409, flagged, no 500."""
    from server.services import evidence as ev

    ws = windows["owner"]["gait"][5:8]
    assert enrolled.signed("POST", "/v1/users/alice/enrolment", {"windows": [w.to_dict() for w in ws]}).status_code == 200
    def unchecked(session: Any, user_id: str, items: list[Any]) -> list[str]:
        """`claim_hashes` as if its check had run before the other request committed."""
        digests = [ev.window_hash(w) for _, w in items]
        ev.insert_hashes(session, user_id, items, digests)
        return digests

    monkeypatch.setattr(enrolment, "claim_hashes", unchecked)
    r = enrolled.signed("POST", "/v1/users/alice/enrolment", {"windows": [w.to_dict() for w in ws]})
    assert r.status_code == 409 and r.json() == {
        "code": "evidence_replay",
        "detail": "windows[0]: this gait feature window was already received; replayed evidence is refused"}, r.text
    flags = client.get("/v1/admin/users/alice/export", headers={"X-API-Key": "dev-admin-key"}).json()
    assert "evidence_replay" in str(flags["data"]["data"]["server"])


# ----------------------------------------------------------------------------- both backends


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with backend_url(request.param, tmp_path, "cadence_adapt") as url:
        yield url


@pytest.fixture()
def backend_client(db_url: str, tmp_path: Path, calibration_file: Path) -> Iterator[TestClient]:
    app = create_app(make_settings(tmp_path, database_url=db_url, fusion_calibration=calibration_file,
                                   device_rate_per_s=0))
    try:
        with TestClient(app, raise_server_exceptions=False) as c:  # a 500 is an answer to count
            yield c
    finally:
        app.state.engine.dispose()


def _at_once(client: TestClient, dev: DeviceClient, body: dict[str, Any], n: int) -> list[tuple[int, str]]:
    """`n` signed copies of one enrolment call (each its own nonce), sent together from threads."""
    import json

    raw = json.dumps(body, separators=(",", ":")).encode()
    path = f"/v1/users/{dev.user_id}/enrolment"
    headers = [dict(sign_request(dev.key, dev.device_id, "POST", path, raw), **{"content-type": "application/json"})
               for _ in range(n)]
    out: list[tuple[int, str]] = []
    start = threading.Barrier(n)

    def send(h: dict[str, str]) -> None:
        start.wait()
        r = client.post(path, content=raw, headers=h)
        out.append((r.status_code, r.json().get("code", "ok") if r.status_code != 500 else r.text[:80]))

    threads = [threading.Thread(target=send, args=(h,)) for h in headers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(out)


def test_concurrent_adaptations_use_each_window_once(backend_client: TestClient, windows) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL enrolled the same confirmed windows several times (one per concurrent call)."""
    own = windows["owner"]
    dev = new_device(backend_client, "rita")
    for m in MODALITIES:
        dev.grant_consent(m)
        dev.enrol(own[m][:5])
    for trial, a in enumerate((20, 25)):
        swipes = own["touch"][a:a + 5]
        tx = _approved(backend_client, dev, swipes + [own["keystroke"][a], own["gait"][a]])
        assert {r["modality"]: r["code"] for r in tx["reasons"]}["touch"] in ("match", "strong_match"), tx["reasons"]
        body = {"windows": [w.to_dict() for w in swipes], "confirmed_transaction_id": tx["transaction_id"]}
        got = _at_once(backend_client, dev, body, 6)
        assert got == [(200, "ok")] + [(409, "not_confirmed_evidence")] * 5, got
        with backend_client.app.state.engine.connect() as conn:  # type: ignore[attr-defined]
            n = conn.scalar(text("SELECT count(*) FROM server_enrolment_window WHERE user_id = 'rita' "
                                 "AND modality = 'touch'"))
        assert n == 5 + 5 * (trial + 1)


def test_concurrent_identical_enrolments_are_one_enrolment_and_replays(backend_client: TestClient,
                                                                       windows) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL answered one 200 and three 500s (the evidence hash's primary key): now 409s, as in sequence."""
    dev = new_device(backend_client, "vera")
    dev.grant_consent("keystroke")
    for trial in range(2):
        body = {"windows": [w.to_dict() for w in windows["owner"]["keystroke"][5 * trial:5 * trial + 5]]}
        assert _at_once(backend_client, dev, body, 4) == [(200, "ok")] + [(409, "evidence_replay")] * 3


@pytest.mark.parametrize("db_url", [p for p in BACKENDS if p != "sqlite"], indirect=True)
def test_adaptation_locks_the_user_then_the_evidence(backend_client: TestClient, windows) -> None:  # type: ignore[no-untyped-def]
    """The user row first, as authorize, sessions and erasure take it; the claim is conditional on the transaction."""
    from sqlalchemy import event

    dev = new_device(backend_client, "lena")
    for m in MODALITIES:
        dev.grant_consent(m)
        dev.enrol(windows["owner"][m][:5])
    ev = evidence(windows, "owner", 7)
    tx = _approved(backend_client, dev, ev)
    seen: list[str] = []

    def record(conn, cursor, statement, *a):  # type: ignore[no-untyped-def]
        seen.append(" ".join(statement.split()).upper())

    engine = backend_client.app.state.engine  # type: ignore[attr-defined]
    event.listen(engine, "before_cursor_execute", record)
    try:
        # one swipe is too few for touch to count (`too_few_for_decision`): keystroke and gait matched and adapt
        assert _adapt(dev, [w for w in ev if w.modality != "touch"], tx["transaction_id"]).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", record)
    locks = [s for s in seen if "FOR UPDATE" in s and ("SERVER_USER" in s or "SERVER_EVIDENCE_SEEN" in s)]
    assert locks and "FROM SERVER_USER" in locks[0] and any("SERVER_EVIDENCE_SEEN" in s for s in locks[1:]), locks
    claims = [s for s in seen if s.startswith("UPDATE SERVER_EVIDENCE_SEEN")]
    assert claims and all("SERVER_EVIDENCE_SEEN.TRANSACTION_ID =" in s for s in claims), claims


def test_migration_0006_treats_existing_windows_as_plain_enrolment(db_url: str) -> None:
    """Rows from before 0006 get no transaction (plain enrolment, kept past the cap); down and up again keeps them."""
    from datetime import UTC, datetime

    engine = make_engine(db_url)
    now = {"t": datetime.now(UTC)}
    try:
        upgrade(engine, "0005")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO server_user (id, locked, consecutive_failures, created_at, enrolment_open) "
                              "VALUES ('a', false, 0, :t, true)"), now)
            conn.execute(text("INSERT INTO server_enrolment_window (user_id, modality, feature_version, quality, "
                              "\"values\", created_at) VALUES ('a', 'gait', 'v', 1.0, '[0.0, 1.0]', :t)"), now)
        upgrade(engine)
        with engine.begin() as conn:
            assert conn.execute(text("SELECT user_id, transaction_id FROM server_enrolment_window")).all() == [("a", None)]
        downgrade(engine, "0005")
        with engine.begin() as conn:
            assert conn.execute(text("SELECT user_id, modality FROM server_enrolment_window")).all() == [("a", "gait")]
        upgrade(engine)
    finally:
        downgrade(engine)
        engine.dispose()
