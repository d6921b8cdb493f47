"""A signed request is accepted once, whatever it was answered: a refused one's nonce is spent too.

The nonce was stored only with a request that committed, so the captured bytes of a refused
request (enrolment after it closed, 409) could be sent again inside the skew window: each send
used up the device's rate (the owner then got 429), and once the bank reopened enrolment the
same bytes were accepted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from server.signing import sign_request
from tests.server.conftest import built_app, make_settings, new_device
from tests.server.test_security_rules import _enrol, _payload

ADMIN = {"X-API-Key": "dev-admin-key"}


def _captured(dev: Any, method: str, path: str, payload: Any = None) -> tuple[bytes, dict[str, str]]:
    """The bytes and headers of one signed request, to be sent (and sent again) as they are."""
    body = b"" if payload is None else json.dumps(payload).encode()
    headers = sign_request(dev.key, dev.device_id, method, path, body)
    if payload is not None:
        headers["content-type"] = "application/json"
    return body, headers


def test_a_refused_enrolment_cannot_be_sent_again_even_once_enrolment_reopens(client: TestClient, windows) -> None:  # type: ignore[no-untyped-def]
    dev = _enrol(client, windows)
    dev.signed("POST", "/v1/transactions/authorize", _payload(dev, windows, "t1", i=9))  # closes plain enrolment
    path = "/v1/users/alice/enrolment"
    body, headers = _captured(dev, "POST", path, {"windows": [w.to_dict() for w in windows["other"]["gait"][:5]]})
    r = client.post(path, content=body, headers=headers)
    assert r.status_code == 409 and r.json()["code"] == "enrolment_closed", r.text
    again = client.post(path, content=body, headers=headers)
    assert again.status_code == 401 and again.json()["code"] == "replayed_request", again.text
    assert client.post("/v1/admin/users/alice/enrolment/reopen", headers=ADMIN).json()["enrolment_open"] is True
    later = client.post(path, content=body, headers=headers)  # the captured bytes: still a replay
    assert later.status_code == 401 and later.json()["code"] == "replayed_request", later.text
    fresh = dev.signed("POST", path, json.loads(body))  # the owner's own request, signed afresh
    assert fresh.status_code == 200, fresh.text


def test_a_refused_authorize_is_accepted_once_too(client: TestClient, windows) -> None:  # type: ignore[no-untyped-def]
    """The lean authorize handler: refused in its read phase (a currency the tiers are not priced in)."""
    dev = _enrol(client, windows)
    path = "/v1/transactions/authorize"
    body, headers = _captured(dev, "POST", path, {**_payload(dev, windows, "jpy", i=9), "currency": "JPY"})
    r = client.post(path, content=body, headers=headers)
    assert r.status_code == 422 and r.json()["code"] == "unsupported_currency", r.text
    again = client.post(path, content=body, headers=headers)
    assert again.status_code == 401 and again.json()["code"] == "replayed_request", again.text


def test_resending_a_refused_request_does_not_use_up_the_devices_rate(tmp_path: Path, calibration_file: Path) -> None:
    with built_app(make_settings(tmp_path, device_rate_per_s=2.0, fusion_calibration=calibration_file)) as app:
        with TestClient(app) as owner_side, TestClient(app, client=("203.0.113.9", 4000)) as attacker:
            dev = new_device(owner_side, "rita")
            new_device(owner_side, "sam")
            body, headers = _captured(dev, "GET", "/v1/users/sam/consents")  # another user's: 403
            r = owner_side.get("/v1/users/sam/consents", headers=headers)
            assert r.status_code == 403 and r.json()["code"] == "wrong_user", r.text
            resent = [attacker.get("/v1/users/sam/consents", headers=headers).status_code for _ in range(8)]
            assert resent[:4] == [401] * 4  # replays (then the attacker's own address runs out: 429)
            assert [dev.signed("GET", "/v1/users/rita/consents").status_code for _ in range(3)] == [200] * 3


def test_a_request_refused_before_its_signature_verified_records_nothing(client: TestClient, windows) -> None:  # type: ignore[no-untyped-def]
    """Nothing to spend for a request whose signature did not verify: its nonce is no device's."""
    from sqlalchemy import func, select

    from server.models import RequestNonce

    dev = _enrol(client, windows)
    body, headers = _captured(dev, "POST", "/v1/transactions/authorize", _payload(dev, windows, "x", i=9))
    headers["X-Cadence-Signature"] = headers["X-Cadence-Signature"][::-1]
    with client.app.state.cadence.sessions() as db:  # type: ignore[attr-defined]
        before = db.scalar(select(func.count()).select_from(RequestNonce))
    r = client.post("/v1/transactions/authorize", content=body, headers=headers)
    assert r.status_code == 401 and r.json()["code"] == "bad_signature", r.text
    with client.app.state.cadence.sessions() as db:  # type: ignore[attr-defined]
        assert db.scalar(select(func.count()).select_from(RequestNonce)) == before
