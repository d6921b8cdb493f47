"""Storage on both backends: SQLite (WAL) and the real PostgreSQL at 127.0.0.1:5432.

Alembic migrations and the API's writes; PostgreSQL tests skip, saying why, when it is not
reachable. Each PostgreSQL test works in its own schema (search_path), dropped afterwards,
so it never touches other tables in the shared `test` database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text

from cadence.db import Base, make_engine
from modalities.events import MODALITIES
from server.app import create_app
from server.migrate import downgrade, import_tables, upgrade
from tests.pg import BACKENDS, backend_url, pg_schema_url
from tests.server.conftest import decision_evidence, evidence, make_settings, new_device


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with backend_url(request.param, tmp_path, "cadence_server") as url:
        yield url


def test_migrations_match_models_and_downgrade(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        import_tables()
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == [], \
                "models changed without a migration: add one under server/migrations/versions"
            if conn.dialect.name == "sqlite":
                assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        downgrade(engine)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()


def test_migration_0002_keeps_evidence_hashes_both_ways(db_url: str) -> None:
    """Re-keying `server_evidence_seen` by user copies every hash; going back keeps one row per hash."""
    from datetime import UTC, datetime

    engine = make_engine(db_url)
    now = {"t": datetime.now(UTC)}
    seen = text("SELECT user_id, window_hash FROM server_evidence_seen ORDER BY user_id, window_hash")
    add = text("INSERT INTO server_evidence_seen (window_hash, user_id, modality, seen_at) VALUES (:h, :u, 'gait', :t)")
    try:
        upgrade(engine, "0001")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO server_user (id, locked, consecutive_failures, created_at) "
                              "VALUES ('a', false, 0, :t), ('b', false, 0, :t)"), now)
            conn.execute(add, [{"h": "h1", "u": "a", **now}, {"h": "h2", "u": "b", **now}])
        upgrade(engine)
        with engine.begin() as conn:
            assert conn.execute(seen).all() == [("a", "h1"), ("b", "h2")]
            conn.execute(add, {"h": "h1", "u": "b", **now})  # per user now: the same window for another user
        downgrade(engine, "0001")
        with engine.begin() as conn:
            assert conn.execute(seen).all() == [("a", "h1"), ("b", "h2")]
        upgrade(engine)
    finally:
        downgrade(engine)
        engine.dispose()


def test_api_round_trip_on_backend(db_url: str, tmp_path: Path, calibration_file: Path, windows) -> None:  # type: ignore[no-untyped-def]
    app = create_app(make_settings(tmp_path, database_url=db_url, fusion_calibration=calibration_file))
    try:
        with TestClient(app) as client:
            dev = new_device(client, "carol")
            for m in MODALITIES:
                dev.grant_consent(m)
                dev.enrol(windows["owner"][m][:5])
            payload = {"user_id": "carol", "amount": "25.00", "currency": "EUR", "payee": "ACME", "channel": "app",
                       "idempotency_key": "pg-1", "evidence": [w.to_dict() for w in decision_evidence(windows, "owner", 7)]}
            first = dev.signed("POST", "/v1/transactions/authorize", payload)
            again = dev.signed("POST", "/v1/transactions/authorize", payload)
            assert first.status_code == again.status_code == 200 and first.json() == again.json()
            payload["idempotency_key"] = "pg-2"
            dup = dev.signed("POST", "/v1/transactions/authorize", payload)
            assert dup.status_code == 409 and dup.json()["code"] == "evidence_replay"
            bad = dict(payload, idempotency_key="pg-3", evidence=[w.to_dict() for w in evidence(windows, "owner", 9)])
            bad["evidence"][1]["values"] = bad["evidence"][1]["values"][:-1]
            assert dev.signed("POST", "/v1/transactions/authorize", bad).status_code == 422
            tx = first.json()  # controlled adaptation with the confirmed call's windows
            if tx["decision"] == "step_up":
                assert client.post(f"/v1/transactions/{tx['transaction_id']}/step-up", json={"success": True},
                                   headers={"X-API-Key": "dev-bank-key"}).status_code == 200
            adapt = {"windows": payload["evidence"], "confirmed_transaction_id": tx["transaction_id"]}
            ok = dev.signed("POST", "/v1/users/carol/enrolment", adapt)
            assert ok.status_code == 200 and {m["modality"]: m["n_windows"] for m in ok.json()["modalities"]} == {"keystroke": 6, "touch": 10,
                                                                                        "gait": 6}, ok.text
            assert dev.signed("POST", "/v1/users/carol/enrolment", adapt).status_code == 409  # once only
            erased = client.delete("/v1/admin/users/carol", headers={"X-API-Key": "dev-admin-key"})
            assert erased.status_code == 200
        with app.state.engine.connect() as conn:
            for table in ("server_user", "server_device", "server_template", "server_transaction",
                          "server_evidence_seen", "server_enrolment_window", "server_nonce"):
                assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 0, table
    finally:
        app.state.engine.dispose()


def test_concurrent_windows_into_one_session_all_count(db_url: str, tmp_path: Path, calibration_file: Path,
                                                       windows) -> None:  # type: ignore[no-untyped-def]
    """On PostgreSQL the session row was read unlocked: of 18 windows answered 200, 7 were kept."""
    import threading

    app = create_app(make_settings(tmp_path, database_url=db_url, fusion_calibration=calibration_file))
    try:
        with TestClient(app) as client:
            dev = new_device(client, "dora")
            dev.grant_consent("keystroke")
            dev.enrol(windows["owner"]["keystroke"][:5])
            sid = dev.signed("POST", "/v1/sessions", {"user_id": "dora"}).json()["session_id"]
            codes: list[int] = []
            start = threading.Barrier(3)

            def stream(first: int) -> None:
                start.wait()
                for i in range(first, first + 6):
                    w = windows["owner"]["keystroke"][i].to_dict()
                    codes.append(dev.signed("POST", f"/v1/sessions/{sid}/evidence", {"windows": [w]}).status_code)

            threads = [threading.Thread(target=stream, args=(a,)) for a in (5, 11, 17)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert codes == [200] * 18
            got = dev.signed("GET", f"/v1/sessions/{sid}").json()
            assert (got["windows"], got["scored_windows"]) == (18, 18), got
    finally:
        app.state.engine.dispose()


@contextmanager
def _pg_app(tmp_path: Path, calibration_file: Path, prefix: str) -> Iterator[tuple[Any, TestClient]]:
    """A server app on a throw-away PostgreSQL schema, and its test client."""
    with pg_schema_url(prefix) as url:
        app = create_app(make_settings(tmp_path, database_url=url, fusion_calibration=calibration_file))
        try:
            with TestClient(app) as client:
                yield app, client
        finally:
            app.state.engine.dispose()


@contextmanager
def _statements(engine: Any) -> Iterator[list[str]]:
    """The SQL the engine sends inside the block, upper-cased, whitespace folded."""
    from sqlalchemy import event

    seen: list[str] = []

    def record(conn, cursor, statement, *a):  # type: ignore[no-untyped-def]
        seen.append(" ".join(statement.split()).upper())

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


@pytest.mark.postgres
def test_erasure_locks_rows_in_the_order_device_requests_do(tmp_path: Path, calibration_file: Path) -> None:
    """Device, then user, before any delete: it deleted sessions first and deadlocked with a session post."""
    with _pg_app(tmp_path, calibration_file, "cadence_erase_order") as (app, client):
        new_device(client, "erin").grant_consent("keystroke")
        with _statements(app.state.engine) as seen:
            r = client.delete("/v1/admin/users/erin", headers={"X-API-Key": "dev-admin-key"})
        assert r.status_code == 200, r.text
    # every delete (consents included: a consent change holds the device row, then the consent's)
    writes = [s for s in seen if s.startswith("DELETE") or ("FOR UPDATE" in s and "SERVER_" in s)]
    first_delete = next(i for i, s in enumerate(writes) if s.startswith("DELETE"))
    locks = [s for s in writes[:first_delete] if "FOR UPDATE" in s]
    assert [("SERVER_DEVICE" in s, "SERVER_USER" in s) for s in locks[:2]] == [(True, False), (False, True)], writes


@pytest.mark.postgres
def test_step_up_locks_the_user_before_the_transaction(tmp_path: Path, calibration_file: Path,
                                                       windows) -> None:  # type: ignore[no-untyped-def]
    """As erasure does: it locked the transaction first and deadlocked with an erasure of the same person."""
    from server.models import Transaction

    with _pg_app(tmp_path, calibration_file, "cadence_stepup_order") as (app, client):
        dev = new_device(client, "sam")
        for m in MODALITIES:
            dev.grant_consent(m)
            dev.enrol(windows["owner"][m][:5])
        tx = dev.authorize(amount="20.00", payee="ACME", evidence=evidence(windows, "owner", 6))
        with app.state.cadence.sessions() as db, db.begin():  # a pending step-up, whatever was decided
            row = db.get(Transaction, tx["transaction_id"])
            row.status, row.outcome = "step_up_pending", "step_up"
        with _statements(app.state.engine) as seen:
            r = client.post(f"/v1/transactions/{tx['transaction_id']}/step-up", json={"success": True},
                            headers={"X-API-Key": "dev-bank-key"})
        assert r.status_code == 200 and r.json()["status"] == "approved_after_step_up", r.text
    locks = [s for s in seen if "FOR UPDATE" in s]
    assert [("FROM SERVER_USER" in s, "FROM SERVER_TRANSACTION" in s) for s in locks] == [(True, False), (False, True)], locks
