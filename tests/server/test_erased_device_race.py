"""A request racing the erasure of its device: the device is unknown (401 unknown_device), not a replay.

`authorize` verifies the device in its read phase and stores the nonce in its write
transaction; an erasure committed in between makes the nonce's insert fail on its foreign key.
That is the answer an unknown device gets, not `replayed_request`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from cadence.db import transaction
from modalities.events import MODALITIES
from server.app import create_app
from server.services import compliance_hooks as hooks
from server.services import transactions as tx_service
from tests.pg import BACKENDS, backend_url
from tests.server.conftest import evidence, make_settings, new_device


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with backend_url(request.param, tmp_path, "cadence_erased") as url:
        yield url


def test_a_request_racing_its_devices_erasure_is_an_unknown_device(
        db_url: str, tmp_path: Path, calibration_file: Path, windows: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(make_settings(tmp_path, database_url=db_url, fusion_calibration=calibration_file))
    try:
        with TestClient(app) as client:
            dev = new_device(client, "racing-erasure")
            for m in MODALITIES:
                dev.grant_consent(m)
                dev.enrol(windows["owner"][m][:5])
            real_plan = tx_service.plan_authorize

            def plan_then_erased(*a: Any, **kw: Any) -> Any:
                plan = real_plan(*a, **kw)  # the device verified in the read phase ...
                with transaction(app.state.cadence.sessions) as session:  # ... and is erased before the write
                    hooks.erase_user(session, dev.user_id)
                return plan

            monkeypatch.setattr(tx_service, "plan_authorize", plan_then_erased)
            r = dev.signed("POST", "/v1/transactions/authorize", {
                "user_id": dev.user_id, "amount": "20.00", "currency": "EUR", "payee": "shop", "channel": "app",
                "idempotency_key": "k1", "evidence": [w.to_dict() for w in evidence(windows)]})
            assert r.status_code == 401, r.text
            assert r.json()["code"] == "unknown_device"  # as for any unknown device; not "replayed_request"
            with app.state.engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM server_transaction WHERE user_id = :u"),
                                    {"u": dev.user_id}).scalar_one() == 0
                assert conn.execute(text("SELECT count(*) FROM server_device WHERE user_id = :u"),
                                    {"u": dev.user_id}).scalar_one() == 0
            # an actual replay of a request of a device that exists is still a replay
            monkeypatch.setattr(tx_service, "plan_authorize", real_plan)
            other = new_device(client, "replayer")
            headers_body = other.signed("GET", f"/v1/users/{other.user_id}/consents")
            assert headers_body.status_code == 200
            again = client.request("GET", f"/v1/users/{other.user_id}/consents",
                                   headers={k: v for k, v in headers_body.request.headers.items()
                                            if k.lower().startswith("x-cadence")})
            assert again.status_code == 401 and again.json()["code"] == "replayed_request"
    finally:
        app.state.engine.dispose()
