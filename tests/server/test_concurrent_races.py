"""Requests that race another one writing the same rows, on SQLite and on PostgreSQL.

Device registration read, then inserted: a registration of the same user, or of the same
device, committing in between made the insert fail on its primary key (a 500 on PostgreSQL).
An authorize call whose windows a concurrent call stored first lost on the digest's primary key
and was refused without the flag and audit entry a later replay gets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from compliance.models import AuditEntry
from server.app import create_app
from server.client.api import DeviceClient
from server.models import Device, SecurityFlag, User
from server.services import transactions as tx_service
from server.signing import b64e, public_key_b64, registration_message
from tests.pg import BACKENDS, backend_url
from tests.server.conftest import make_settings, new_device

BANK = {"X-API-Key": "dev-bank-key"}


@pytest.fixture(params=BACKENDS)
def app_client(request: pytest.FixtureRequest, tmp_path: Path, calibration_file: Path) -> Iterator[tuple[Any, TestClient]]:
    """An app on each backend, its handlers in the thread pool.

    SQLite's default runs them on the event loop, where two requests held at one point would
    wait for each other for ever.
    """
    with backend_url(request.param, tmp_path, "cadence_races") as url:
        app = create_app(make_settings(tmp_path, database_url=url, fusion_calibration=calibration_file,
                                       api_inline_handlers=False))
        try:
            with TestClient(app, raise_server_exceptions=False) as client:
                yield app, client
        finally:
            app.state.engine.dispose()


def _registration(dev: DeviceClient) -> dict[str, Any]:
    """What `DeviceClient.register` posts, to be sent by a test thread."""
    return {"device_id": dev.device_id, "user_id": dev.user_id, "public_key": public_key_b64(dev.key),
            "platform": "demo", "proof": b64e(dev.key.sign(registration_message(dev.device_id, dev.user_id)))}


def _wait_until_blocked(engine: Any) -> None:
    """Until a statement waits on a row lock (PostgreSQL); SQLite's waiter cannot be seen: a short pause."""
    if engine.dialect.name != "postgresql":
        time.sleep(0.3)
        return
    deadline = time.monotonic() + 10
    with engine.connect() as conn:
        while conn.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar_one() == 0:
            assert time.monotonic() < deadline, "the request never waited on the uncommitted row"
            time.sleep(0.02)


def _while_uncommitted(app: Any, rows: list[Any], request: Callable[[], Any]) -> Any:
    """Answer of `request`, sent while another transaction has inserted `rows` and not yet committed."""
    answer: list[Any] = []
    with app.state.cadence.sessions() as db, db.begin():
        for row in rows:  # in order: a device's user first
            db.add(row)
            db.flush()
        worker = threading.Thread(target=lambda: answer.append(request()))
        worker.start()
        _wait_until_blocked(app.state.engine)
    worker.join(timeout=30)
    assert answer, "the request did not finish"
    return answer[0]


def test_a_registration_racing_another_device_of_the_same_new_user_is_no_500(app_client: tuple[Any, TestClient]) -> None:
    app, client = app_client
    dev = DeviceClient("http://testserver", user_id="nina", http=client)
    r = _while_uncommitted(app, [User(id="nina")],  # another device of hers being registered
                           lambda: client.post("/v1/devices", json=_registration(dev), headers=BANK))
    assert r.status_code == 201, r.text
    assert dev.signed("GET", "/v1/users/nina/consents").status_code == 200


@pytest.mark.parametrize("same_key", [True, False], ids=["retry", "another-key"])
def test_a_registration_racing_one_of_the_same_device_id_gets_a_repeats_answer(app_client: tuple[Any, TestClient],
                                                                                 same_key: bool) -> None:
    """A retry of the same registration is answered as registered (201); another key, 409 as ever."""
    app, client = app_client
    dev = DeviceClient("http://testserver", user_id="omar", http=client)
    first = DeviceClient("http://testserver", user_id="omar", device_id=dev.device_id,
                         key=dev.key if same_key else None, http=client)
    row = _registration(first)
    r = _while_uncommitted(app, [User(id="omar"), Device(id=row["device_id"], user_id="omar", public_key=row["public_key"],
                                                         platform="demo", attestation={})],
                           lambda: client.post("/v1/devices", json=_registration(dev), headers=BANK))
    if same_key:
        assert r.status_code == 201 and r.json()["device_id"] == dev.device_id, r.text
    else:
        assert r.status_code == 409 and r.json()["code"] == "device_exists", r.text


def test_concurrent_registrations_of_one_new_user_all_succeed(app_client: tuple[Any, TestClient]) -> None:
    app, client = app_client
    devs = [DeviceClient("http://testserver", user_id="pia", http=client) for _ in range(6)]
    bodies = [_registration(d) for d in devs] + [_registration(devs[0])] * 2  # and two retries of one
    start = threading.Barrier(len(bodies))
    codes: list[int] = []

    def register(body: dict[str, Any]) -> None:
        start.wait()
        codes.append(client.post("/v1/devices", json=body, headers=BANK).status_code)

    threads = [threading.Thread(target=register, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [201] * len(bodies)
    with app.state.cadence.sessions() as db:
        assert db.scalar(select(func.count()).select_from(Device).where(Device.user_id == "pia")) == 6
        assert db.scalar(select(func.count()).where(AuditEntry.event == "device.registered")) == 6


def test_a_racing_evidence_replay_is_flagged_and_audited(app_client: tuple[Any, TestClient], windows: dict,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Two authorize calls (two idempotency keys) with the same window: the loser is the flagged replay.

    Both read phases finish before either commits (a barrier), so the second to write fails on
    the window digest's primary key, as concurrent calls do. It was refused (409) without the
    security flag and audit entry a replay sent afterwards gets.
    """
    app, client = app_client
    dev = new_device(client, "quin")
    dev.grant_consent("gait")
    dev.enrol(windows["owner"]["gait"][:5])
    both_planned = threading.Barrier(2, timeout=10)
    real_plan = tx_service.plan_authorize

    def plan_then_wait(*a: Any, **kw: Any) -> Any:
        plan = real_plan(*a, **kw)
        both_planned.wait()
        return plan

    monkeypatch.setattr(tx_service, "plan_authorize", plan_then_wait)
    window = windows["owner"]["gait"][6].to_dict()
    answers: list[Any] = []

    def pay(key: str) -> None:
        answers.append(dev.signed("POST", "/v1/transactions/authorize", {
            "user_id": "quin", "amount": "20.00", "currency": "EUR", "payee": "ACME", "channel": "app",
            "idempotency_key": key, "evidence": [window]}))

    threads = [threading.Thread(target=pay, args=(k,)) for k in ("k1", "k2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
    refused = next(r for r in answers if r.status_code == 409)
    assert refused.json()["code"] == "evidence_replay" and "already received" in refused.json()["detail"], refused.text
    with app.state.cadence.sessions() as db:
        assert db.scalars(select(SecurityFlag.kind).where(SecurityFlag.user_id == "quin")).all() == ["evidence_replay"]
        assert db.scalar(select(func.count()).where(AuditEntry.event == "security.evidence_replay")) == 1
    assert 'cadence_security_flags_total{kind="evidence_replay"} 1.0' in client.get("/metrics").text
