"""A signed request captured before an erasure is not accepted again after the app registers anew.

Erasure deleted the device's nonces (`server_nonce`). The app registers again with the same
device id and key (`DeviceClient.register`), so any request signed in the last
`signature_max_skew_s` verified again: a replayed self-erasure wiped the new account, a
replayed `authorize` got a fresh decision and token. Erasure now keeps each nonce as a digest
naming no one (`server_retired_nonce`) for twice the skew window, and a device registered
that recently is refused a request whose digest is there (401 `replayed_request`).

SQLite and the real PostgreSQL (`tests/pg.py`: skipped, saying why, when it is not reachable).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text

from cadence.db import make_engine
from modalities.events import MODALITIES
from server.app import create_app
from server.client.api import DeviceClient
from server.migrate import downgrade, upgrade
from server.signing import sign_request
from tests.server.conftest import decision_evidence, make_settings, new_device
from tests.server.test_storage import db_url  # noqa: F401  (the SQLite / PostgreSQL fixture)

ADMIN = {"X-API-Key": "dev-admin-key"}
RETIRED = "server_retired_nonce"


@pytest.fixture()
def backend_client(db_url: str, tmp_path: Path, calibration_file: Path) -> Iterator[TestClient]:  # noqa: F811
    """The API on SQLite or PostgreSQL (the app migrates its database at start-up)."""
    app = create_app(make_settings(tmp_path, database_url=db_url, fusion_calibration=calibration_file))
    try:
        with TestClient(app) as c:
            yield c
    finally:
        app.state.engine.dispose()


def _enrol(dev: DeviceClient, windows: dict) -> None:  # type: ignore[type-arg]
    for m in MODALITIES:
        dev.grant_consent(m)
        dev.enrol(windows["owner"][m][:5])


def _captured(dev: DeviceClient, method: str, path: str, payload: Any | None = None) -> tuple[bytes, dict[str, str]]:
    """A signed request as an eavesdropper (a proxy, a log) keeps it: its bytes and headers."""
    import json

    body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
    headers = sign_request(dev.key, dev.device_id, method, path, body)
    headers["content-type"] = "application/json"
    return body, headers


def _send(client: TestClient, method: str, path: str, captured: tuple[bytes, dict[str, str]]) -> Any:
    body, headers = captured
    return client.request(method, path, content=body, headers=headers)


def _authorize_payload(user_id: str, key: str, windows: dict, i: int = 7) -> dict[str, Any]:  # type: ignore[type-arg]
    return {"user_id": user_id, "amount": "25.00", "currency": "EUR", "payee": "ACME", "channel": "app",
            "idempotency_key": key, "evidence": [w.to_dict() for w in decision_evidence(windows, "owner", i)]}


def _refused_as_replay(r: Any) -> None:
    assert r.status_code == 401, r.text
    assert r.json()["code"] == "replayed_request", r.text


def _rows(client: TestClient, sql: str, **params: Any) -> list[Any]:
    with client.app.state.engine.connect() as conn:  # type: ignore[attr-defined]
        return list(conn.execute(text(sql), params).all())


def test_captured_request_replays_after_erasure_and_reregistration(client: TestClient, enrolled: DeviceClient) -> None:
    """The tester's repro: a captured self-erasure, replayed after re-registration, erased the new account."""
    dev = enrolled
    path = f"/v1/users/{dev.user_id}"
    h = sign_request(dev.key, dev.device_id, "DELETE", path, b"")
    assert client.request("DELETE", path, headers=h).status_code == 200
    dev.register()
    dev.grant_consent("gait")
    r = client.request("DELETE", path, headers=h)
    _refused_as_replay(r)
    # the new account is untouched: its consent is still there
    export = client.get(f"/v1/admin/users/{dev.user_id}/export", headers=ADMIN)
    assert export.status_code == 200, export.text
    assert [c["modality"] for c in export.json()["data"]["consents"] if c["active"]] == ["gait"]


def test_replayed_self_erasure_refused_on_backend(backend_client: TestClient, windows: dict) -> None:  # type: ignore[type-arg]
    client = backend_client
    dev = new_device(client, "erin")
    _enrol(dev, windows)
    path = "/v1/users/erin"
    erase = _captured(dev, "DELETE", path)
    assert _send(client, "DELETE", path, erase).status_code == 200
    dev.register()
    dev.grant_consent("gait")
    _refused_as_replay(_send(client, "DELETE", path, erase))
    assert _rows(client, "SELECT id FROM server_user") == [("erin",)]
    assert _rows(client, "SELECT id FROM server_device") == [(dev.device_id,)]


def test_replayed_authorize_refused_after_erasure_and_reregistration(backend_client: TestClient,
                                                                     windows: dict) -> None:  # type: ignore[type-arg]
    """A captured `authorize` gets no fresh decision (and token) once its records went with the erasure."""
    client = backend_client
    dev = new_device(client, "fred")
    _enrol(dev, windows)
    path = "/v1/transactions/authorize"
    pay = _captured(dev, "POST", path, _authorize_payload("fred", "replay-1", windows))
    first = _send(client, "POST", path, pay)
    assert first.status_code == 200, first.text
    assert client.delete("/v1/admin/users/fred", headers=ADMIN).status_code == 200
    dev.register()
    _enrol(dev, windows)
    _refused_as_replay(_send(client, "POST", path, pay))
    assert _rows(client, "SELECT id FROM server_transaction") == []  # no decision was made for it
    # the owner's own payment, signed now, is decided as usual
    honest = dev.signed("POST", path, _authorize_payload("fred", "honest-1", windows, i=9))
    assert honest.status_code == 200, honest.text
    assert [r[0] for r in _rows(client, "SELECT idempotency_key FROM server_transaction")] == ["honest-1"]


def test_honest_requests_after_reregistration_are_accepted(backend_client: TestClient) -> None:
    """Only the retired nonces are refused: the same calls freshly signed by the new registration go through."""
    client = backend_client
    dev = new_device(client, "gina")
    consent_path = "/v1/users/gina/consents"
    grant = _captured(dev, "POST", consent_path, {"modality": "gait", "purpose": "authentication"})
    assert _send(client, "POST", consent_path, grant).status_code == 201
    assert client.delete("/v1/admin/users/gina", headers=ADMIN).status_code == 200
    dev.register()
    _refused_as_replay(_send(client, "POST", consent_path, grant))
    assert dev.grant_consent("gait")  # the same call, signed now: accepted
    again = dev.signed("DELETE", "/v1/users/gina")  # and the person's own erasure, signed now
    assert again.status_code == 200, again.text
    assert _rows(client, "SELECT id FROM server_user") == []


def test_retired_nonces_name_no_one_and_are_purged_after_the_window(backend_client: TestClient) -> None:
    from server.services.devices import prune_nonces

    client = backend_client
    dev = new_device(client, "hugo")
    nonces = []
    for modality in ("gait", "touch"):
        body, headers = _captured(dev, "POST", "/v1/users/hugo/consents", {"modality": modality})
        nonces.append(headers["X-Cadence-Nonce"])
        assert _send(client, "POST", "/v1/users/hugo/consents", (body, headers)).status_code == 201
    assert client.delete("/v1/admin/users/hugo", headers=ADMIN).status_code == 200
    assert _rows(client, "SELECT count(*) FROM server_nonce") == [(0,)]
    with client.app.state.engine.connect() as conn:  # type: ignore[attr-defined]
        columns = {c["name"] for c in inspect(conn).get_columns(RETIRED)}
    assert columns == {"digest", "seen_at"}  # no device id, no user id
    rows = _rows(client, f"SELECT digest, seen_at FROM {RETIRED}")
    expected = {hashlib.sha256(f"{dev.device_id}\0{n}".encode()).hexdigest() for n in nonces}
    assert {r[0] for r in rows} == expected
    assert all(dev.device_id not in str(r) and "hugo" not in str(r) for r in rows)
    oldest, newest = min(r[1] for r in rows), max(r[1] for r in rows)  # seconds apart on a slow host
    maker = client.app.state.cadence.sessions  # type: ignore[attr-defined]
    with maker() as session, session.begin():  # inside the window of both: kept
        prune_nonces(session, max_skew_s=300, now=oldest + 600)
    assert len(_rows(client, f"SELECT digest FROM {RETIRED}")) == 2
    with maker() as session, session.begin():  # past twice the skew window: gone
        prune_nonces(session, max_skew_s=300, now=newest + 601)
    assert _rows(client, f"SELECT digest FROM {RETIRED}") == []


def test_a_device_id_erased_twice_inside_the_window(backend_client: TestClient) -> None:
    """A nonce already retired is retired again without a duplicate-key failure (both backends)."""
    client = backend_client
    dev = new_device(client, "iris")
    path = "/v1/users/iris/consents"
    grant = _captured(dev, "POST", path, {"modality": "gait"})
    assert _send(client, "POST", path, grant).status_code == 201
    assert client.delete("/v1/admin/users/iris", headers=ADMIN).status_code == 200
    dev.register()
    # the nonce on record again for the new registration (as a request verified before the
    # first erasure committed would leave it), then the person is erased once more
    with client.app.state.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(text("INSERT INTO server_nonce (device_id, nonce, seen_at) VALUES (:d, :n, :t)"),
                     {"d": dev.device_id, "n": grant[1]["X-Cadence-Nonce"], "t": time.time()})
    assert dev.signed("POST", path, {"modality": "touch"}).status_code == 201
    second = client.delete("/v1/admin/users/iris", headers=ADMIN)
    assert second.status_code == 200, second.text
    assert len(_rows(client, f"SELECT digest FROM {RETIRED}")) == 2
    dev.register()
    _refused_as_replay(_send(client, "POST", path, grant))


def test_devices_older_than_the_window_skip_the_lookup(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hot path: only a device registered within 2 x `signature_max_skew_s` looks up retired nonces."""
    import server.services.devices as devices

    asked: list[str] = []
    real = devices.retired_nonce

    def spy(session: Any, device_id: str, nonce: str) -> bool:
        asked.append(nonce)
        return bool(real(session, device_id, nonce))

    monkeypatch.setattr(devices, "retired_nonce", spy)
    dev = new_device(client, "jack")
    assert dev.grant_consent("gait")
    assert len(asked) == 1  # registered just now: looked up
    maker = client.app.state.cadence.sessions  # type: ignore[attr-defined]
    later = time.time() + 2 * 300 + 5
    body = b'{"modality":"touch"}'
    path = "/v1/users/jack/consents"
    h = sign_request(dev.key, dev.device_id, "POST", path, body, timestamp=later)
    with maker() as session:
        devices.verify_device_request(session, device_id=dev.device_id, timestamp=h["X-Cadence-Timestamp"],
                                      nonce=h["X-Cadence-Nonce"], signature=h["X-Cadence-Signature"], method="POST",
                                      path=path, body=body, max_skew_s=300, now=later)
    assert len(asked) == 1  # registered more than twice the window ago: no lookup


def test_migration_0007_adds_and_removes_the_retired_nonces(db_url: str) -> None:  # noqa: F811
    engine = make_engine(db_url)
    try:
        upgrade(engine, "0006")
        assert RETIRED not in inspect(engine).get_table_names()
        upgrade(engine)
        assert RETIRED in inspect(engine).get_table_names()
        assert {i["name"] for i in inspect(engine).get_indexes(RETIRED)} == {"ix_server_retired_nonce_seen_at"}
        downgrade(engine, "0006")
        assert RETIRED not in inspect(engine).get_table_names()
        upgrade(engine)
    finally:
        downgrade(engine)
        engine.dispose()


def test_replay_racing_an_erasure_and_a_new_registration_between_its_phases(
        backend_client: TestClient, db_url: str, tmp_path: Path, calibration_file: Path, windows: dict,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[type-arg]
    """The erasure and the new registration land between a replayed `authorize`'s read and write phases.

    Its read phase verified against the old registration, before the nonce was retired; the
    write phase, where the nonce is consumed under the write lock, must still find it retired.
    """
    import server.services.transactions as svc

    client = backend_client
    dev = new_device(client, "hana")
    _enrol(dev, windows)
    path = "/v1/transactions/authorize"
    pay = _captured(dev, "POST", path, _authorize_payload("hana", "race-1", windows))
    assert _send(client, "POST", path, pay).status_code == 200
    # a second API process on the same database: it erases and registers while the first is mid-call
    other_app = create_app(make_settings(tmp_path / "other", database_url=db_url, fusion_calibration=calibration_file))
    real, armed = svc.plan_authorize, [True]

    def between_phases(*args: Any, **kw: Any) -> Any:
        plan = real(*args, **kw)
        if armed:
            armed.clear()
            again = DeviceClient("http://testserver", user_id="hana", device_id=dev.device_id, key=dev.key, http=other)
            assert other.delete("/v1/admin/users/hana", headers=ADMIN).status_code == 200
            again.register()
            for m in MODALITIES:
                again.grant_consent(m)
        return plan

    monkeypatch.setattr(svc, "plan_authorize", between_phases)
    try:
        with TestClient(other_app) as other:
            _refused_as_replay(_send(client, "POST", path, pay))
            assert not armed  # the erasure and registration did land between the phases
    finally:
        other_app.state.engine.dispose()
    assert _rows(client, "SELECT id FROM server_transaction") == []  # nothing was decided for the replay
    replayed = pay[1]["X-Cadence-Nonce"]
    assert _rows(client, "SELECT nonce FROM server_nonce WHERE nonce = :n", n=replayed) == []  # refused: not consumed
