"""Refusals found by a review of the API: each was a security gap, a 500 or a misleading answer.

A device's own erasure cleared the user's failed authentications (a fresh set of attempts per
erasure); a short touch window posted to a session was a 500; requests naming no device were
never charged to their address; a replayed authorize window was named `windows[i]`, a field
authorize does not have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from server.models import SecurityFlag
from tests.server.conftest import built_app, decision_evidence, make_settings, new_device
from tests.server.test_security_rules import _enrol, _payload

ADMIN = {"X-API-Key": "dev-admin-key"}
AUTHORIZE = "/v1/transactions/authorize"


def _failures(client: TestClient, user_id: str) -> Any:
    with client.app.state.engine.connect() as conn:  # type: ignore[attr-defined]
        return conn.execute(text("SELECT locked, consecutive_failures FROM server_user WHERE id = :u"),
                            {"u": user_id}).first()


def _flags(client: TestClient, kind: str) -> list[str]:
    with client.app.state.cadence.sessions() as db:  # type: ignore[attr-defined]
        return list(db.scalars(select(SecurityFlag.detail).where(SecurityFlag.kind == kind)))


# --------------------------------------------------------------------- self-erasure and failures


def test_a_device_cannot_erase_its_user_while_failed_authentications_are_on_record(client: TestClient,
                                                                                   windows) -> None:  # type: ignore[no-untyped-def]
    """Erasing cleared the count: registered again, the user had a fresh set of attempts and enrolment open."""
    dev = _enrol(client, windows)
    denied = dev.signed("POST", AUTHORIZE, {**_payload(dev, windows, "imp0", amount="5000.00"),
                                            "evidence": [w.to_dict() for w in decision_evidence(windows, "other", 5)]})
    assert denied.status_code == 200 and denied.json()["decision"] == "deny", denied.text
    assert tuple(_failures(client, "alice")) == (False, 1)
    r = dev.signed("DELETE", "/v1/users/alice")
    assert r.status_code == 423 and r.json()["code"] == "failed_authentications", r.text
    assert "1 consecutive failed" in r.json()["detail"] and r.json()["detail"].startswith("user_id:")
    assert tuple(_failures(client, "alice")) == (False, 1)  # nothing was erased, the count stands
    assert dev.signed("GET", "/v1/users/alice/consents").status_code == 200  # the device key too
    r = client.delete("/v1/admin/users/alice", headers=ADMIN)  # the bank's erasure stays open
    assert r.status_code == 200 and r.json()["erased"]["server.server_template"] == 3, r.text


def test_a_device_can_erase_its_user_once_no_failure_is_on_record(client: TestClient, windows) -> None:  # type: ignore[no-untyped-def]
    dev = _enrol(client, windows)
    assert tuple(_failures(client, "alice")) == (False, 0)
    r = dev.signed("DELETE", "/v1/users/alice")
    assert r.status_code == 200 and r.json()["erased"]["server.server_template"] == 3, r.text


# --------------------------------------------------------------------- session evidence checks


SHORT_TOUCH = {"modality": "touch", "feature_version": "touch-stroke-1", "start": 0.0, "end": 0.5, "n_events": 5,
               "quality": 0.9, "values": [0.1]}


@pytest.mark.parametrize("window, code, detail", [
    (SHORT_TOUCH, "feature_dim_mismatch", "windows[0].values: touch expects 45 features, got 1"),
    ({**SHORT_TOUCH, "feature_version": "touch-stroke-0"}, "feature_version_mismatch",
     "windows[0].feature_version: touch expects 'touch-stroke-1', got 'touch-stroke-0'"),
])
def test_session_evidence_of_the_wrong_version_or_dimension_is_a_field_named_422(
        client: TestClient, windows, window: dict[str, Any], code: str, detail: str) -> None:  # type: ignore[no-untyped-def]
    """A one-value touch window was hashed before any check: the touch package read past its end (500)."""
    dev = _enrol(client, windows)
    s = dev.signed("POST", "/v1/sessions", {"user_id": "alice"}).json()
    r = dev.signed("POST", f"/v1/sessions/{s['session_id']}/evidence", {"windows": [window]})
    assert r.status_code == 422 and r.json() == {"code": code, "detail": detail}, r.text
    r = dev.signed("POST", AUTHORIZE, {**_payload(dev, windows, "q1"), "evidence": [window]})  # as authorize answers
    assert r.status_code == 422 and r.json() == {"code": code, "detail": detail.replace("windows[", "evidence[")}, r.text


# --------------------------------------------------------------------- address budget


def test_requests_naming_no_device_are_charged_to_the_sending_address(tmp_path: Path, windows) -> None:  # type: ignore[no-untyped-def]
    """Parsed in full, then 401 `device_required`: they never counted, so an address could send them without end."""
    with built_app(make_settings(tmp_path, device_rate_per_s=2.0)) as app:
        with TestClient(app) as bank_side, TestClient(app, client=("203.0.113.11", 4000)) as stranger:
            body = {"user_id": "alice", "amount": "1.00", "currency": "EUR", "payee": "A", "idempotency_key": "x",
                    "evidence": [w.to_dict() for w in windows["owner"]["gait"][:3]]}
            answers = [stranger.post(AUTHORIZE, json=body) for _ in range(8)]
            assert answers[0].status_code == 401 and answers[0].json()["code"] == "device_required", answers[0].text
            assert answers[-1].status_code == 429, [a.status_code for a in answers]
            dev = new_device(bank_side, "rita")  # another address is not affected
            assert dev.signed("GET", "/v1/users/rita/consents").status_code == 200


# --------------------------------------------------------------------- replay field names


def test_a_replayed_authorize_window_is_named_by_the_evidence_field(client: TestClient, windows) -> None:  # type: ignore[no-untyped-def]
    dev = _enrol(client, windows)
    assert dev.signed("POST", AUTHORIZE, _payload(dev, windows, "r1", i=10)).status_code == 200
    r = dev.signed("POST", AUTHORIZE, _payload(dev, windows, "r2", i=10))
    assert r.status_code == 409 and r.json()["code"] == "evidence_replay", r.text
    assert r.json()["detail"].startswith("evidence[0]: this keystroke feature window was already received"), r.text
    assert [d.split(":")[0] for d in _flags(client, "evidence_replay")] == ["evidence[0]"]  # the stored flag too


def test_a_replayed_session_window_is_named_by_the_windows_field(client: TestClient, windows) -> None:  # type: ignore[no-untyped-def]
    dev = _enrol(client, windows)
    assert dev.signed("POST", AUTHORIZE, _payload(dev, windows, "r1", i=10)).status_code == 200
    s = dev.signed("POST", "/v1/sessions", {"user_id": "alice"}).json()
    r = dev.signed("POST", f"/v1/sessions/{s['session_id']}/evidence",
                   {"windows": [windows["owner"]["gait"][11].to_dict(), windows["owner"]["keystroke"][10].to_dict()]})
    assert r.status_code == 409 and r.json()["detail"].startswith("windows[1]: this keystroke"), r.text


def test_an_authorize_window_that_lost_a_race_is_named_by_the_evidence_field(
        client: TestClient, windows, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A window stored by another request between the read phase's check and the insert (IntegrityError)."""
    from server.services import evidence as ev
    from server.services import transactions as tx

    dev = _enrol(client, windows)
    assert dev.signed("POST", AUTHORIZE, _payload(dev, windows, "r1", i=10)).status_code == 200

    def unchecked(session: Any, user_id: str, items: list[Any], digests: Any = None, **_: Any) -> list[str]:
        """`check_unseen` as if it had run before the other request committed."""
        return ev.window_hashes([w for _, w in items])

    monkeypatch.setattr(tx, "check_unseen", unchecked)
    r = dev.signed("POST", AUTHORIZE, _payload(dev, windows, "r2", i=10))
    assert r.status_code == 409 and r.json()["code"] == "evidence_replay", r.text
    assert r.json()["detail"].startswith("evidence[0]: "), r.text
    assert [d.split(":")[0] for d in _flags(client, "evidence_replay")] == ["evidence[0]"]
