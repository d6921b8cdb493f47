"""The authorize hot path's plumbing.

WAL checkpointing, the cross-process write lock, the load generator's HTTP client and the
request-body parser.
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

import server.sqlite_writers as sw
from cadence.db import make_engine
from server.api.routes.health import INSTANCE_ID
from server.app import create_app
from server.loadgen import run_phase
from server.rawhttp import ConnectionPool, new_event_loop, raw_request
from server.runner import free_port
from server.sqlite_writers import SQLiteWriteLock, WalCheckpointer, write_lock

from .conftest import make_settings


def _wal_frames(db: Path) -> int:
    with sqlite3.connect(db, isolation_level=None) as c:
        return int(c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


def _table_db(db: Path):  # type: ignore[no-untyped-def]
    """A SQLite file (WAL) with one table `t` to write rows into, and its engine."""
    engine = make_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x TEXT)"))
    return db, engine


def _write_rows(engine, n: int) -> None:  # type: ignore[no-untyped-def]
    for i in range(n):
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t (x) VALUES (:x)"), {"x": "y" * 200 + str(i)})


class _RecordedLock:
    """The server's write lock, noting "lock" in `events` each time it is taken."""

    def __init__(self, lock, events: list[str]) -> None:  # type: ignore[no-untyped-def]
        self.lock, self.events = lock, events

    def __enter__(self) -> None:
        self.events.append("lock")
        self.lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.lock.__exit__(*exc)


def test_checkpointer_turns_off_auto_checkpoint_and_restarts_the_log(tmp_path: Path) -> None:
    db, engine = _table_db(tmp_path / "w.sqlite")
    ck = WalCheckpointer(engine, write_lock(engine), interval_s=3600)
    ck.start(engine)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        _write_rows(engine, 1500)  # ~1500 frames: past SQLite's 1000-page default, never checkpointed
        assert _wal_frames(db) >= 1500
        ck.tick(restart=True)
        _write_rows(engine, 1)
        assert _wal_frames(db) <= 4  # the next writer restarted the log
    finally:
        ck.stop()
        engine.dispose()
    with engine.connect() as conn:  # once stopped, new connections get SQLite's default again
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000
    engine.dispose()


def test_restart_waits_for_readers_on_the_old_log_and_then_starts_it_over(tmp_path: Path) -> None:
    db, engine = _table_db(tmp_path / "r.sqlite")
    ck = WalCheckpointer(engine, write_lock(engine), interval_s=3600, restart_busy_s=0.05)
    ck.start(engine)
    reader = sqlite3.connect(db, isolation_level=None)
    try:
        _write_rows(engine, 50)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM t").fetchone()  # a read snapshot that uses the log
        _write_rows(engine, 50)
        assert ck.tick(restart=True) is False  # the reader kept the log from starting over
        reader.execute("COMMIT")
        assert ck.tick(restart=True) is True
        _write_rows(engine, 1)
        assert _wal_frames(db) <= 4
    finally:
        reader.close()
        ck.stop()
        engine.dispose()


def test_checkpointer_starts_writeback_between_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, engine = _table_db(tmp_path / "w.sqlite")
    ck = WalCheckpointer(engine, write_lock(engine), interval_s=0.25, restart_s=3600, writeback_s=0.02)
    try:
        _write_rows(engine, 50)
        if sys.platform.startswith("linux"):
            assert ck.start_writeback()  # the log exists and the kernel took the request
        calls = {"writeback": 0, "tick": 0}

        def count(kind: str, result: bool | None = None):  # type: ignore[no-untyped-def]
            def fn(*_a, **_k):  # type: ignore[no-untyped-def]
                calls[kind] += 1
                return result
            return fn

        monkeypatch.setattr(ck, "start_writeback", count("writeback", True))
        monkeypatch.setattr(ck, "tick", count("tick"))
        ck.start(engine)
        time.sleep(1.0)
    finally:
        ck.stop()
        engine.dispose()
    assert calls["tick"] >= 2  # checkpoints still come every interval_s
    if ck.writeback_s:
        assert calls["writeback"] > 3 * calls["tick"]  # and writeback requests in between
    assert not WalCheckpointer(make_engine(f"sqlite:///{tmp_path / 'none.sqlite'}")).start_writeback()  # no log yet


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only")
def test_passive_rounds_run_at_idle_priority_and_the_restart_under_the_lock_does_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, engine = _table_db(tmp_path / "p.sqlite")
    ck = WalCheckpointer(engine, write_lock(engine), interval_s=3600)
    seen: dict[str, list[tuple[str, int]]] = {"passive": [], "catch-up": [], "restart": []}
    checkpoint, restart, catch_up = ck.checkpoint, ck._restart, ck._catch_up

    def spy(kind: str, fn):  # type: ignore[no-untyped-def]
        def wrapped(*a, **k):  # type: ignore[no-untyped-def]
            seen[kind].append((threading.current_thread().name, os.sched_getscheduler(0)))
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(ck, "checkpoint", spy("passive", checkpoint))
    monkeypatch.setattr(ck, "_restart", spy("restart", restart))
    monkeypatch.setattr(ck, "_catch_up", spy("catch-up", catch_up))
    try:
        _write_rows(engine, 300)
        assert ck.tick(restart=True) is True
        _write_rows(engine, 1)
        assert _wal_frames(db) <= 4  # still a real checkpoint: the next writer started the log over
    finally:
        ck.stop()
        engine.dispose()
    me = (threading.current_thread().name, os.SCHED_OTHER)
    # the bulk round: a thread of its own, idle class; the short catch-up round before the lock
    # and the RESTART under it (every writer waits for those): the normal class
    assert seen["passive"] == [("cadence-wal-passive", os.SCHED_IDLE)]
    assert seen["catch-up"] == seen["restart"] == [me]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's own class is untouched


def test_restart_flushes_the_log_before_the_write_lock_and_keeps_one_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, engine = _table_db(tmp_path / "s.sqlite")
    events: list[str] = []
    ck = WalCheckpointer(engine, _RecordedLock(write_lock(engine), events), interval_s=3600)
    sync_log = ck.sync_log
    monkeypatch.setattr(ck, "sync_log", lambda: events.append(f"sync:{sync_log()}") or True)
    made: list[sqlite3.Connection] = []
    connect = sqlite3.connect

    def counting(*a, **k):  # type: ignore[no-untyped-def]
        c = connect(*a, **k)
        if k.get("timeout") == 0:  # the RESTART's (a PASSIVE round's own connection waits 50 ms)
            made.append(c)
        return c

    monkeypatch.setattr("server.sqlite_writers.sqlite3.connect", counting)
    try:
        for _ in range(2):
            _write_rows(engine, 100)
            assert ck.tick(restart=True) is True
    finally:
        ck.stop()
        engine.dispose()
    assert events == ["sync:True", "lock"] * 2  # the log is flushed before writers are made to wait
    assert len(made) == 1  # the RESTART's connection is made once, and kept
    with pytest.raises(sqlite3.ProgrammingError):
        made[0].execute("SELECT 1")  # and closed by stop()


@pytest.mark.skipif(not hasattr(os, "fdatasync"), reason="fdatasync is POSIX-only")
def test_database_file_is_synced_after_each_passive_round_and_before_the_restart_takes_the_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite syncs the database file only after a checkpoint that reached the end of the log:
    # under steady writes the PASSIVE rounds never do, and the RESTART's sync flushed all they had
    # copied with every writer waiting on the lock
    db, engine = _table_db(tmp_path / "d.sqlite")
    events: list[str] = []
    ck = WalCheckpointer(engine, _RecordedLock(write_lock(engine), events), interval_s=3600)
    fdatasync, checkpoint, catch_up = os.fdatasync, ck.checkpoint, ck._catch_up

    def recorded_sync(fd: int) -> None:
        ino = os.fstat(fd).st_ino
        events.append({db.stat().st_ino: "sync:db", Path(f"{db}-wal").stat().st_ino: "sync:wal"}.get(ino, "sync:?"))
        fdatasync(fd)

    def recorded_checkpoint(mode: str = "PASSIVE", **kw):  # type: ignore[no-untyped-def]
        events.append(mode)
        return checkpoint(mode, **kw)

    monkeypatch.setattr(os, "fdatasync", recorded_sync)
    monkeypatch.setattr(ck, "checkpoint", recorded_checkpoint)
    monkeypatch.setattr(ck, "_catch_up", lambda: events.append("catch-up") or catch_up())
    try:
        _write_rows(engine, 100)
        assert ck.tick(restart=False) is True
        assert events == ["PASSIVE", "sync:db"]  # the idle-priority round syncs what it copied
        events.clear()
        _write_rows(engine, 100)
        assert ck.tick(restart=True) is True
        # then a catch-up round, and both files on disk, before writers must wait
        assert events == ["PASSIVE", "sync:db", "catch-up", "sync:db", "sync:wal", "lock"]
        _write_rows(engine, 1)
        assert _wal_frames(db) <= 4  # still a real RESTART: the next writer started the log over
    finally:
        ck.stop()
        engine.dispose()
    none = tmp_path / "none.sqlite"
    assert not WalCheckpointer(make_engine(f"sqlite:///{none}")).sync_database() and not none.exists()  # nor made


#: a child process asks for SQLite's EXCLUSIVE lock on a database file (the unix VFS's shared
#: range: 510 bytes from PENDING_BYTE + 2), as a closing connection does before it deletes the log
_TAKE_EXCLUSIVE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 510, 0x40000002, 0)
except OSError:
    print("held")
else:
    print("taken")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX record locks as Linux keeps them")
def test_checkpointing_keeps_this_process_sqlite_locks_on_the_database(tmp_path: Path) -> None:
    # closing any descriptor of a file drops every POSIX lock the process holds on it: a sync of
    # the database through a descriptor of its own dropped SQLite's, and another process's last
    # connection could then take the database as unused and delete the log under this one's
    db, engine = _table_db(tmp_path / "k.sqlite")
    ck = WalCheckpointer(engine, write_lock(engine), interval_s=3600)
    reader = sqlite3.connect(db, isolation_level=None)

    def other_process() -> str:
        out = subprocess.run([sys.executable, "-c", _TAKE_EXCLUSIVE, str(db)], capture_output=True, text=True,
                             timeout=60)
        return out.stdout.strip()

    try:
        reader.execute("SELECT count(*) FROM t").fetchone()  # in WAL mode it keeps a SHARED lock from here
        assert other_process() == "held"
        _write_rows(engine, 100)
        assert ck.tick(restart=False) and ck.sync_database()
        assert other_process() == "held"
        _write_rows(engine, 100)
        assert ck.tick(restart=True) is True
        assert other_process() == "held"
    finally:
        reader.close()
        ck.stop()
        engine.dispose()


def test_only_one_process_checkpoints_a_database(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'w.sqlite'}")
    a, b = WalCheckpointer(engine), WalCheckpointer(engine)
    try:
        assert a._own() and not b._own()
    finally:
        a.stop(), b.stop()
        engine.dispose()


def test_a_standing_by_checkpointer_asks_once_a_round_and_takes_over_when_the_owner_goes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'w.sqlite'}")
    asks: list[float] = []
    real = sw.try_flock

    def counted(path: str) -> int | None:
        asks.append(time.monotonic())
        return real(path)

    owner = WalCheckpointer(engine)
    standby = WalCheckpointer(engine, interval_s=0.2, writeback_s=0.01)
    try:
        assert owner._own()
        monkeypatch.setattr(sw, "try_flock", counted)
        standby.start(engine)
        time.sleep(1.0)
        # every `writeback_s` (10 ms here) before: ~100 wake-ups a second of the standby worker's thread
        assert 2 <= len(asks) <= 7, asks
        owner.stop()  # gone: closing its descriptor releases the flock
        deadline = time.monotonic() + 3
        while standby._owner_fd is None:
            assert time.monotonic() < deadline, "the standby did not take over"
            time.sleep(0.05)
    finally:
        owner.stop()
        standby.stop()
        engine.dispose()


def _try_flock(path: str, q: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    import fcntl
    import os

    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        q.put("acquired")
    except OSError:
        q.put("blocked")
    finally:
        os.close(fd)


def test_write_lock_excludes_other_processes(tmp_path: Path) -> None:
    db = tmp_path / "w.sqlite"
    lock = SQLiteWriteLock(str(db))
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    with lock:
        p = ctx.Process(target=_try_flock, args=(f"{db}.write-lock", q))
        p.start()
        p.join(60)
        assert q.get(timeout=10) == "blocked"
    p = ctx.Process(target=_try_flock, args=(f"{db}.write-lock", q))
    p.start()
    p.join(60)
    assert q.get(timeout=10) == "acquired"


def test_write_lock_is_a_no_op_off_sqlite_and_a_thread_lock_in_memory() -> None:
    engine = make_engine("sqlite:///:memory:")
    assert not isinstance(write_lock(engine), SQLiteWriteLock)
    with write_lock(engine):
        pass
    engine.dispose()


def test_raw_http_pool_talks_to_a_real_server_and_reports_a_dead_one(tmp_path: Path) -> None:
    import threading

    import uvicorn

    app = create_app(make_settings(tmp_path))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        async def go() -> list[tuple[int, bytes]]:
            for _ in range(200):
                if server.started:
                    break
                await asyncio.sleep(0.05)
            pool = ConnectionPool(url, 3)
            await pool.warm(raw_request("GET", url, "/v1/health"))
            assert pool.instances() == {INSTANCE_ID: 3}  # each connection knows its server process
            out = await asyncio.gather(*(pool.request(raw_request("GET", url, "/v1/health")) for _ in range(10)))
            bad = await pool.request(raw_request("POST", url, "/v1/transactions/authorize", b"{not json",
                                                 {"content-type": "application/json"}))
            pool.close()
            return [*out, bad]

        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            answers = runner.run(go())
        phase = run_phase(url, None, rate=200.0, n=20)  # the trivial endpoint, open loop
        assert phase.n == 20 and phase.errors == 0
        assert gc.isenabled() and gc.get_freeze_count() == 0  # the generator's GC pause is undone
        assert all(status == 200 and json.loads(body) == {"status": "ok"} for status, body in answers[:10])
        assert answers[10][0] in (401, 422)  # refused with a reason, never a crash
    finally:
        server.should_exit = True
        thread.join(timeout=30)

    async def dead() -> None:
        pool = ConnectionPool(url, 1)
        await pool.request(raw_request("GET", url, "/v1/health"))

    with asyncio.Runner(loop_factory=new_event_loop) as runner, pytest.raises(OSError):
        runner.run(dead())


def test_a_request_the_generators_timer_sent_early_is_timed_from_its_send(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # uvloop's timers have 1 ms resolution and fired up to 0.9 ms early; timed from the schedule,
    # a third of the no-op's latencies read below zero on 2026-12-07 (BENCHMARKS.md, API, round 28)
    import uvicorn

    app = create_app(make_settings(tmp_path))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    real_sleep = asyncio.sleep

    async def early(delay: float, *a: object) -> None:  # a timer that always fires 3 ms early
        await real_sleep(max(0.0, delay - 0.003))

    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        monkeypatch.setattr(asyncio, "sleep", early)
        phase = run_phase(f"http://127.0.0.1:{port}", None, rate=100.0, n=40)
        monkeypatch.undo()
        assert phase.n == 40 and phase.errors == 0
        assert min(phase.send_lateness_ms) < -2.0  # it did send early
        assert min(phase.latencies_ms) > 0.0  # and no answer came before its request left
    finally:
        monkeypatch.undo()
        server.should_exit = True
        thread.join(timeout=30)


def test_pool_sends_each_request_to_the_least_busy_server_process() -> None:
    from server.rawhttp import _Connection

    loop = asyncio.new_event_loop()
    try:
        pool = ConnectionPool("http://127.0.0.1:1", 4)
        conns = []
        for name in ("a", "a", "a", "b"):  # an uneven accept: three connections on one worker
            conn = _Connection(loop)
            conn.instance = name
            pool._park(conn)
            conns.append(conn)
        pool.open = 4
        assert pool.instances() == {"a": 3, "b": 1}
        pool.sent["a"] += 1
        assert pool._take_idle() is conns[3]  # a tie goes to the process sent fewer requests so far
        pool._park(conns[3])
        pool.sent["b"] += 2
        assert pool._take_idle() is conns[0]  # ... which is now "a"
        pool.in_flight["a"] += 1
        assert pool._take_idle() is conns[3]  # "a" is busy: the idle worker gets the next one, whatever it was sent
        pool.in_flight["b"] += 1
        pool.in_flight["a"] += 1
        assert pool._take_idle() is conns[1]  # only "a" has idle connections left
        conns[2].closed = True
        assert pool._take_idle() is None and pool.open == 3  # a closed connection is dropped
    finally:
        loop.close()


def test_invalid_json_body_is_a_field_named_422(client: TestClient) -> None:
    r = client.post("/v1/transactions/authorize", content=b'{"user_id": "u", ', headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["code"] == "validation_error" and "JSON" in r.json()["detail"]


def test_nan_in_a_feature_is_parsed_and_then_refused_by_validation(client: TestClient) -> None:
    """pydantic-core's parser keeps NaN (like json.loads) so validation names the field."""
    body = b'{"user_id": "u", "amount": "1.00", "currency": "EUR", "payee": "p", "channel": "app", ' \
           b'"idempotency_key": "k", "evidence": [{"modality": "keystroke", "features": [NaN], ' \
           b'"feature_version": "1", "start": 0, "end": 1}]}'
    r = client.post("/v1/transactions/authorize", content=body, headers={"content-type": "application/json"})
    assert r.status_code in (401, 422), r.text


def test_only_the_event_loop_holds_connections_and_short_lived_threads_return_theirs(tmp_path: Path) -> None:
    """Thread-pool workers come and go: a connection held per thread would never go back to the pool."""
    import threading

    app = create_app(make_settings(tmp_path))
    state = app.state.cadence
    engine = app.state.engine
    with TestClient(app) as client:
        assert state.held is not None and state.held.owner is not None  # claimed by the event loop at start-up
        for _ in range(3):
            assert client.get("/v1/ready").status_code == 200

        def unit_of_work() -> None:
            assert not state.held.here()
            with state.write() as session:
                session.execute(text("SELECT 1"))
            with state.read() as session:
                session.execute(text("SELECT 1"))

        for _ in range(30):  # more short-lived threads than the pool has connections
            t = threading.Thread(target=unit_of_work)
            t.start()
            t.join(timeout=10)
            assert not t.is_alive()
        assert engine.pool.checkedout() <= 2  # at most the event loop's two held connections
        held = state.held
    assert held.owner is None and engine.pool.checkedout() == 0  # shutdown closed them
    engine.dispose()


def test_held_connections_serve_the_event_loop_across_transactions(tmp_path: Path) -> None:
    from cadence.db import HeldConnections

    engine = make_engine(f"sqlite:///{tmp_path / 'h.sqlite'}")
    held = HeldConnections(engine)
    with pytest.raises(RuntimeError):
        held.connection(False)  # not claimed: the caller must use the pool
    held.claim()
    with held.transaction() as s:
        s.execute(text("CREATE TABLE t (x INTEGER)"))
        s.execute(text("INSERT INTO t VALUES (1)"))
    first = held.connection(False)
    with pytest.raises(ZeroDivisionError), held.transaction() as s:
        s.execute(text("INSERT INTO t VALUES (2)"))
        raise ZeroDivisionError  # rolled back, nothing half-written
    with held.transaction(read_only=True) as s:
        assert s.execute(text("SELECT x FROM t")).scalars().all() == [1]
    assert held.connection(False) is first and engine.pool.checkedout() == 2
    held.close()
    assert engine.pool.checkedout() == 0
    engine.dispose()


def _held_store(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A held-connection store as the server builds one (BEGIN IMMEDIATE writers), with one table."""
    from cadence.db import HeldConnections
    from server.sqlite_writers import serialize_sqlite_writers

    engine = make_engine(f"sqlite:///{tmp_path / 'raw.sqlite'}")
    serialize_sqlite_writers(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER PRIMARY KEY)"))
    held = HeldConnections(engine)
    held.claim()
    return engine, held


def test_held_unit_of_work_runs_fast_path_statements_in_one_raw_transaction(tmp_path: Path) -> None:
    """The hot path's statements run in a transaction begun on the DBAPI connection, not the ORM's."""
    from sqlalchemy import Column, Integer, MetaData, Table, select
    from sqlalchemy.exc import IntegrityError

    from cadence import prepared

    engine, held = _held_store(tmp_path)
    t = Table("t", MetaData(), Column("x", Integer, primary_key=True))
    ins, sel = t.insert(), select(t.c.x).order_by(t.c.x)
    with held.transaction() as s:
        prepared.execute(s, ins, {"x": 1})
        assert not s.in_transaction()  # the session's machinery never started
        assert held.connection(False).connection.driver_connection.in_transaction
    with pytest.raises(IntegrityError), held.transaction() as s:
        prepared.execute(s, ins, {"x": 2})
        prepared.execute(s, ins, {"x": 1})  # duplicate key: the whole unit rolls back, x=2 too
    with held.transaction(read_only=True) as s:
        assert prepared.execute(s, sel).scalars().all() == [1]
    dbapi = held.connection(False).connection.driver_connection
    assert not dbapi.in_transaction  # nothing left open between units
    held.close()
    engine.dispose()


def test_held_unit_of_work_lets_the_orm_join_the_same_transaction(tmp_path: Path) -> None:
    """A unit that also uses `Session.execute` (rare branches) commits or rolls back both together."""
    from sqlalchemy import Column, Integer, MetaData, Table, select

    from cadence import prepared

    engine, held = _held_store(tmp_path)
    t = Table("t", MetaData(), Column("x", Integer, primary_key=True))
    with held.transaction() as s:
        prepared.execute(s, t.insert(), {"x": 1})
        s.execute(text("INSERT INTO t VALUES (2)"))  # the ORM joins the open transaction
        assert s.in_transaction()
        prepared.execute(s, t.insert(), {"x": 3})
    with pytest.raises(ZeroDivisionError), held.transaction() as s:
        prepared.execute(s, t.insert(), {"x": 4})
        s.execute(text("INSERT INTO t VALUES (5)"))
        raise ZeroDivisionError
    with held.transaction(read_only=True) as s:
        assert prepared.execute(s, select(t.c.x).order_by(t.c.x)).scalars().all() == [1, 2, 3]
    # nested use on the same connection is part of the open unit: it neither commits early...
    with pytest.raises(ZeroDivisionError), held.transaction() as s:
        with held.transaction() as inner:
            assert inner is s
            prepared.execute(inner, t.insert(), {"x": 7})
        raise ZeroDivisionError  # ...nor survives the outer unit's rollback
    with held.transaction(read_only=True) as s:
        assert prepared.execute(s, select(t.c.x).order_by(t.c.x)).scalars().all() == [1, 2, 3]
    # a read-only unit takes no write lock: another connection can write meanwhile
    with held.transaction(read_only=True) as s:
        prepared.execute(s, select(t.c.x)).all()
        other = sqlite3.connect(str(tmp_path / "raw.sqlite"), timeout=0)
        other.execute("INSERT INTO t VALUES (6)")
        other.commit()
        other.close()
    held.close()
    engine.dispose()


def _plan(client: TestClient, dev, ev: list, key: str, amount: str):  # type: ignore[no-untyped-def]
    """A read phase of authorize through the service layer, as the route runs it."""
    from server.schemas import AuthorizeRequest
    from server.services import transactions as svc

    state = client.app.state.cadence  # type: ignore[attr-defined]
    body = AuthorizeRequest.model_validate({"user_id": dev.user_id, "amount": amount, "currency": "EUR",
                                            "payee": "ACME", "channel": "app", "idempotency_key": key,
                                            "evidence": [w.to_dict() for w in ev]})
    with state.read() as session:
        plan = svc.plan_authorize(session, state.provider, body, lockout_failures=5, decider=state.decide,
                                  signing_key=state.signing_key, actor=f"device:{dev.device_id}")
    return state, body, plan


def _commit(state, body, plan, dev):  # type: ignore[no-untyped-def]
    from server.services import transactions as svc

    with state.write() as session:
        return svc.commit_authorize(session, plan, state.signing_key, body, device_id=dev.device_id,
                                    lockout_failures=5, actor=f"device:{dev.device_id}")


def _audit_reasons(client: TestClient, tx_id: str) -> list[str]:
    state = client.app.state.cadence  # type: ignore[attr-defined]
    with state.read() as session:
        payloads = session.execute(text("SELECT payload FROM compliance_audit WHERE event = 'decision'")).scalars()
        (entry,) = [json.loads(p) for p in payloads if json.loads(p)["transaction_id"] == tx_id]
    return list(entry["reasons"])


def test_write_phase_stores_the_answer_built_before_the_lock(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    """The response and audit entry are serialised in the read phase; the write phase stores them as built."""
    from tests.server.conftest import evidence

    state, body, plan = _plan(client, enrolled, evidence(windows, "owner", 6), "pre-1", "25.00")
    assert plan.outcome is not None and plan.outcome.failures == 0
    built = plan.outcome.response
    stored = _commit(state, body, plan, enrolled)
    assert stored is built and stored["transaction_id"] == plan.tx_id
    assert _audit_reasons(client, plan.tx_id) == [r["code"] for r in stored["reasons"]]


def test_write_phase_rebuilds_the_answer_when_failures_changed_meanwhile(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    """A deny planned at 3 failures but committed after a 4th one lands locks the user and says so."""
    from tests.server.conftest import evidence

    state = client.app.state.cadence  # type: ignore[attr-defined]
    with state.write() as session:
        session.execute(text("UPDATE server_user SET consecutive_failures = 3 WHERE id = :u"), {"u": enrolled.user_id})
    state, body, plan = _plan(client, enrolled, evidence(windows, "other", 7), "pre-2", "5000.00")
    assert plan.decision.outcome == "deny" and plan.outcome is not None and plan.outcome.failures == 3
    assert "locked" not in [r["code"] for r in plan.outcome.response["reasons"]]
    with state.write() as session:  # a concurrent deny committed between the two phases
        session.execute(text("UPDATE server_user SET consecutive_failures = 4 WHERE id = :u"), {"u": enrolled.user_id})
    stored = _commit(state, body, plan, enrolled)
    assert [r["code"] for r in stored["reasons"]][-1] == "locked"
    assert _audit_reasons(client, plan.tx_id)[-1] == "locked"
    with state.read() as session:
        locked, failures = session.execute(text("SELECT locked, consecutive_failures FROM server_user WHERE id = :u"),
                                           {"u": enrolled.user_id}).one()
    assert locked and failures == 5


def test_authorize_hashes_the_signed_body_once(client: TestClient, enrolled, windows, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The signature check and the idempotency record share one digest of the ~20 KB body."""
    import hashlib

    import server.signing as signing
    from tests.server.conftest import evidence

    calls: list[int] = []
    real = signing.body_digest

    def counting(body: bytes) -> str:
        calls.append(len(body))
        return real(body)

    payload = {"user_id": enrolled.user_id, "amount": "25.00", "currency": "EUR", "payee": "ACME", "channel": "app",
               "idempotency_key": "once", "evidence": [w.to_dict() for w in evidence(windows, "owner", 6)]}
    body = json.dumps(payload).encode()
    headers = signing.sign_request(enrolled.key, enrolled.device_id, "POST", "/v1/transactions/authorize", body)
    monkeypatch.setattr(signing, "body_digest", counting)  # from here on, only the server hashes
    monkeypatch.setattr("server.api.deps.body_digest", counting)
    monkeypatch.setattr("server.services.transactions.body_digest", counting)
    r = client.post("/v1/transactions/authorize", content=body, headers=headers | {"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert calls == [len(body)]
    state = client.app.state.cadence  # type: ignore[attr-defined]
    with state.read() as session:
        stored = session.execute(text("SELECT request_hash FROM server_transaction WHERE idempotency_key = 'once'")).scalar()
    assert stored == hashlib.sha256(r.request.content).hexdigest()


def test_window_hash_is_the_documented_digest() -> None:
    """Replay digests are as docs/api.md says: a read window by its rounded values, a tap by every field."""
    import hashlib

    import numpy as np

    from modalities.touch import FEATURE_VERSION, IDX
    from server.schemas import FeatureWindowIn
    from server.services.evidence import window_hash

    w = FeatureWindowIn(modality="gait", feature_version="gait-v3", start=1.5, end=9.25, n_events=250, quality=0.75,
                        values=[0.1, -2.0, 3.5e-7])
    # values rounded to nearest, keeping the top 20 of the 52 mantissa bits (about 6 digits)
    bits = np.asarray([0.1, -2.0, 3.5e-7], dtype="<f8").view("<u8")
    kept = (bits + np.uint64(1 << 31)) & np.uint64(0xFFFFFFFF00000000)
    h = hashlib.sha256(json.dumps(["gait", "gait-v3", "features"]).encode())
    h.update(kept.tobytes())
    assert window_hash(w) == h.hexdigest()
    # the same evidence, however its other fields or float noise differ
    def like(x: FeatureWindowIn, **changes: object) -> FeatureWindowIn:  # validated anew (no cached array)
        return FeatureWindowIn(**{**x.model_dump(), **changes})

    same = [like(w, **u) for u in ({"start": 99.0, "end": 100.0}, {"n_events": 251}, {"quality": 0.5},
                                   {"values": [0.1 + 1e-12, -2.0 * (1 + 1e-9), 3.5e-7 - 1e-20]})]
    assert {window_hash(x) for x in same} == {window_hash(w)}
    assert window_hash(like(w, values=[0.1, -2.0, 3.6e-7])) != window_hash(w)
    assert window_hash(like(w, values=[0.0, 1.0, 2.0])) == window_hash(like(w, values=[-0.0, 1.0, 2.0]))
    # a tap: every field, exact (taps honestly repeat their few features)
    tap_values = [0.0] * len(IDX)
    tap_values[IDX["is_tap"]] = 1.0
    tap = FeatureWindowIn(modality="touch", feature_version=FEATURE_VERSION, start=1.5, end=1.6, n_events=3,
                          quality=1.0, values=tap_values)
    h = hashlib.sha256(json.dumps(["touch", FEATURE_VERSION, 3]).encode())
    h.update(np.asarray([1.5, 1.6, 1.0], dtype="<f8").tobytes())
    h.update(np.asarray(tap_values, dtype="<f8").tobytes())
    assert window_hash(tap) == h.hexdigest()
    assert window_hash(like(tap, start=2.5, end=2.6)) != window_hash(tap)


def test_the_restart_s_hold_of_the_write_lock_is_a_metric(tmp_path: Path) -> None:
    # how long every writer waited on a RESTART: 14-46 ms under load before 2026-12-07, 4-9 ms since
    db = tmp_path / "api.sqlite"
    app = create_app(make_settings(tmp_path))

    def holds(client: TestClient) -> float:
        lines = client.get("/metrics").text.splitlines()
        return float(next(ln for ln in lines if ln.startswith("cadence_sqlite_wal_restart_hold_seconds_count")).split()[1])

    with TestClient(app) as client:
        ck = app.state.checkpointer
        assert ck is not None and ck.running
        ck.stop()  # its own rounds come by the clock: these come when the test says
        before = holds(client)
        with sqlite3.connect(db, isolation_level=None) as c:
            c.execute("CREATE TABLE t (x TEXT)")
            c.executemany("INSERT INTO t VALUES (?)", [("y" * 200,)] * 200)
        assert ck.tick(restart=False) is True
        assert holds(client) == before  # a PASSIVE round holds no lock
        assert ck.tick(restart=True) is True
        assert holds(client) == before + 1
        scraped = client.get("/metrics").text
    assert 'cadence_sqlite_wal_restart_hold_seconds_bucket{le="1.0"} ' + f"{before + 1}" in scraped


def test_warm_spreads_connections_over_the_processes_when_one_accepts_them_all_first() -> None:
    """On a loaded host one worker, descheduled, let the other accept all 32 connections in turn."""
    from server.rawhttp import ConnectionPool, raw_request

    accepted = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        instance = "a" if accepted <= 6 else "ab"[accepted % 2]  # "a" wakes first for the first six
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-cadence-instance: " + instance.encode()
                             + b"\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def spread_of(spread: int) -> dict[str, int]:
        nonlocal accepted
        accepted = 0
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = ConnectionPool(f"http://127.0.0.1:{port}", 4)
        try:
            await pool.warm(raw_request("GET", f"http://127.0.0.1:{port}", "/v1/health"), spread=spread)
            return dict(pool.instances())
        finally:
            pool.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(spread_of(1)) == {"a": 4}  # what it did before: every connection on one process
    assert asyncio.run(spread_of(2)) == {"a": 2, "b": 2}
