"""A database that cannot be used while serving: 503 `database_unavailable`, not a bare 500.

PostgreSQL unreachable (a TCP proxy in front of it is stopped), SQLite's "database or disk is
full": an API-style JSON error with Retry-After, one log line per failure (no traceback), nothing
partly written, and /v1/ready at 503. A programming error stays a 500.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from modalities.events import MODALITIES
from server.api.routes import health
from server.app import create_app
from server.client.api import ApiCallError, DeviceClient
from server.services import transactions as tx_service
from tests.pg import pg_schema_url
from tests.server.conftest import evidence, make_settings, new_device


def _sqlite_error(setup: str, statement: str) -> sqlite3.Error:
    """A real sqlite3 error (with its result code), as the driver raises it."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(setup)
        conn.execute(statement)
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError("no error")


def disk_full() -> sa_exc.OperationalError:
    orig = _sqlite_error("CREATE TABLE t (x BLOB); PRAGMA max_page_count = 2;",
                         "INSERT INTO t VALUES (zeroblob(100000))")
    assert "full" in str(orig) and orig.sqlite_errorcode == sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    return sa_exc.OperationalError("COMMIT", None, orig)


def no_such_table() -> sa_exc.OperationalError:
    orig = _sqlite_error("", "SELECT * FROM missing")
    return sa_exc.OperationalError("SELECT * FROM missing", None, orig)


def _counts(client: TestClient, dev: DeviceClient) -> dict[str, int]:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        return {
            "transactions": conn.execute(text("SELECT count(*) FROM server_transaction WHERE user_id = :u"),
                                         {"u": dev.user_id}).scalar_one(),
            "nonces": conn.execute(text("SELECT count(*) FROM server_nonce WHERE device_id = :d"),
                                   {"d": dev.device_id}).scalar_one(),
            "evidence": conn.execute(text("SELECT count(*) FROM server_evidence_seen WHERE user_id = :u"),
                                     {"u": dev.user_id}).scalar_one(),
            "audit": conn.execute(text("SELECT count(*) FROM compliance_audit")).scalar_one(),
        }


def _unavailable(r: Any) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["retry-after"].isdigit()
    body = r.json()
    assert body["code"] == "database_unavailable" and body["detail"].startswith("database: unavailable"), body


def _failure_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    return [r for r in caplog.records if r.name == "server.app" and r.levelno >= logging.ERROR]


def test_a_full_disk_during_authorize_is_a_503_and_writes_nothing(
        tmp_path: Path, calibration_file: Path, windows: dict, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The lean hot path: its write transaction fails at the end; nothing of it stays."""
    app = create_app(make_settings(tmp_path, fusion_calibration=calibration_file))
    with TestClient(app, raise_server_exceptions=False) as client:
        dev = new_device(client)
        for m in MODALITIES:
            dev.grant_consent(m)
            dev.enrol(windows["owner"][m][:5])
        before = _counts(client, dev)
        real = tx_service.commit_authorize

        def commit_then_disk_full(*a: Any, **kw: Any) -> Any:
            real(*a, **kw)  # every row of the decision is written in the transaction, then it fails
            raise disk_full()

        monkeypatch.setattr(tx_service, "commit_authorize", commit_then_disk_full)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            r = dev.signed("POST", "/v1/transactions/authorize", {
                "user_id": dev.user_id, "amount": "20.00", "currency": "EUR", "payee": "shop", "channel": "app",
                "idempotency_key": "k1", "evidence": [w.to_dict() for w in evidence(windows)]})
        _unavailable(r)
        assert "disk full" in r.json()["detail"]
        assert _counts(client, dev) == before  # rolled back: no decision, nonce, evidence hash or audit entry
        lines = _failure_lines(caplog)
        assert len(lines) == 1
        line = lines[0].getMessage()
        assert "sqlite3.OperationalError" in line and "database or disk is full" in line and "\n" not in line
        assert "/v1/transactions/authorize" in line

        # readiness reports it (SELECT 1 still answers on a full disk) ...
        _unavailable(client.get("/v1/ready"))
        # ... until the failure is old news
        monkeypatch.setattr(health, "RECENT_FAILURE_S", 0.0)
        assert client.get("/v1/ready").status_code == 200
        # and the client's retry goes through once the disk has room again
        monkeypatch.setattr(tx_service, "commit_authorize", real)
        out = dev.authorize(amount="20.00", payee="shop", evidence=evidence(windows), idempotency_key="k1")
        assert out["decision"] in ("approve", "step_up", "deny")
    app.state.engine.dispose()


def test_a_programming_error_stays_a_500(tmp_path: Path, windows: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite reports a missing table as an OperationalError too: that is the code's fault, a 500."""
    app = create_app(make_settings(tmp_path))
    with TestClient(app, raise_server_exceptions=False) as client:
        dev = new_device(client)
        dev.grant_consent("gait")
        dev.enrol(windows["owner"]["gait"][:5])

        def broken(*a: Any, **kw: Any) -> Any:
            raise no_such_table()

        monkeypatch.setattr(tx_service, "commit_authorize", broken)
        r = dev.signed("POST", "/v1/transactions/authorize", {
            "user_id": dev.user_id, "amount": "20.00", "currency": "EUR", "payee": "shop", "channel": "app",
            "idempotency_key": "k1", "evidence": [windows["owner"]["gait"][6].to_dict()]})
        assert r.status_code == 500
        monkeypatch.setattr(health, "text", broken)  # the readiness probe's statement
        assert client.get("/v1/ready").status_code == 500
    app.state.engine.dispose()


def test_ready_is_503_when_the_disk_holding_sqlite_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(make_settings(tmp_path))
    with TestClient(app) as client:
        assert client.get("/v1/ready").status_code == 200
        monkeypatch.setattr(health, "MIN_FREE_BYTES", 1 << 62, raising=False)  # more than any disk has free
        r = client.get("/v1/ready")
        _unavailable(r)
        assert "disk full" in r.json()["detail"]
    app.state.engine.dispose()


class _Proxy:
    """A TCP proxy to PostgreSQL that can be stopped (connections cut) and started again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                c, _ = listener.accept()
            except OSError:
                return
            u = socket.create_connection(self.target)
            self._socks += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self._listener is not None:
            try:  # wakes the accepting thread (a plain close would leave it accepting on Linux)
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        for s in self._socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self._socks = []


@pytest.fixture()
def pg_behind_proxy() -> Iterator[tuple[str, _Proxy]]:
    with pg_schema_url("cadence_down") as url:
        proxy = _Proxy(("127.0.0.1", 5432))
        proxy.start()
        try:
            yield url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"), proxy
        finally:
            proxy.stop()


@pytest.mark.postgres
def test_postgresql_unreachable_is_a_503_with_one_line_per_failure(
        pg_behind_proxy: tuple[str, _Proxy], tmp_path: Path, windows: dict, caplog: pytest.LogCaptureFixture) -> None:
    url, proxy = pg_behind_proxy
    app = create_app(make_settings(tmp_path, database_url=url))
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            dev = new_device(client, "pg-down")
            dev.grant_consent("gait")
            assert client.get("/v1/ready").status_code == 200
            proxy.stop()
            caplog.clear()
            with caplog.at_level(logging.INFO):
                late = DeviceClient("http://testserver", user_id="pg-late", http=client)
                with pytest.raises(ApiCallError) as refused:
                    late.register()
                assert refused.value.status == 503 and refused.value.body["code"] == "database_unavailable"
                _unavailable(dev.signed("GET", f"/v1/users/{dev.user_id}/consents"))  # a signed route
                _unavailable(dev.signed("POST", "/v1/transactions/authorize", {  # the lean hot path
                    "user_id": dev.user_id, "amount": "20.00", "currency": "EUR", "payee": "shop", "channel": "app",
                    "idempotency_key": "k1", "evidence": [w.to_dict() for w in evidence(windows)]}))
                ready = client.get("/v1/ready")
                _unavailable(ready)
                assert "not reachable" in ready.json()["detail"] or "connection lost" in ready.json()["detail"]
            lines = _failure_lines(caplog)
            assert len(lines) == 4, [r.getMessage() for r in lines]
            assert all("psycopg.OperationalError" in r.getMessage() and "\n" not in r.getMessage() for r in lines)
            proxy.start()  # the database is back: ready again, and requests go through
            assert client.get("/v1/ready").status_code == 200
            assert dev.signed("GET", f"/v1/users/{dev.user_id}/consents").status_code == 200
    finally:
        proxy.stop()
        app.state.engine.dispose()


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(("sqlstate", "reason", "held"), [
    ("40P01", "transaction conflict", False),  # a deadlock: retry, the worker is fine
    ("40001", "transaction conflict", False),
    ("57014", "statement timed out", False),
    ("55P03", "busy", False),
    ("08006", "not reachable", False),  # the probe sees an outage itself
    ("53100", "disk full", True),
    ("54000", None, False),  # a program limit: the code's own failure, a 500
])
def test_only_failures_a_probe_cannot_see_hold_readiness_down(sqlstate: str, reason: str | None, held: bool) -> None:
    from server.errors import database_unavailable

    exc = sa_exc.OperationalError("SELECT 1", {}, _PgError(sqlstate))
    assert database_unavailable(exc) == reason
    h = health.DatabaseHealth()
    if reason is not None:
        h.failed(reason)
    assert (h.recent() is not None) is held


def test_ready_answers_while_another_writer_holds_the_sqlite_write_lock(tmp_path: Path) -> None:
    """A probe must not queue for the write lock: one long writer would fail every worker's probe."""
    import time

    settings = make_settings(tmp_path)
    app = create_app(settings)
    with TestClient(app) as client:
        assert client.get("/v1/ready").status_code == 200
        database = app.state.engine.url.database
        other = sqlite3.connect(database, isolation_level=None, timeout=0.1)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process's long write transaction
            t0 = time.monotonic()
            r = client.get("/v1/ready")
            waited = time.monotonic() - t0
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert r.status_code == 200, r.text
        assert waited < 5.0  # the old probe waited out the 30 s busy timeout, then said 503
    app.state.engine.dispose()
