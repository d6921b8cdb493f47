"""Start-up migration safety: all-or-nothing upgrades, refused databases and URLs, concurrent starts.

- A failed SQLite upgrade used to leave a half-migrated database (0003's ADD COLUMN committed,
  alembic_version still at 0002) that no later start could migrate; the real cause (disk full)
  was hidden behind Alembic's cleanup error.
- In-memory, URI-form and read-only SQLite URLs are refused by `check_settings`.
- Concurrent `cadence serve` start-ups on PostgreSQL take turns on an advisory lock.
- Databases of other applications are refused, not migrated beside.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import event, inspect, text
from sqlalchemy import exc as sa_exc

from cadence.db import make_engine
from cadence.settings import Settings
from server.migrate import SchemaError, head_revision, schema_problem, upgrade
from tests.pg import pg_schema_url

# -- SQLite: the whole upgrade is one transaction --------------------------------------------


def _sqlite_at(tmp_path: Path, revision: str, rows: int = 0) -> str:
    """A SQLite file migrated to `revision`, with `rows` transactions (~1 KB each)."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = make_engine(url)
    try:
        upgrade(engine, revision)
        if rows:
            t = {"t": datetime.now(UTC)}
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO server_user (id, locked, consecutive_failures, created_at) "
                                  "VALUES ('u', false, 0, :t)"), t)
                conn.execute(text(
                    "INSERT INTO server_transaction (id, user_id, idempotency_key, request_hash, amount, currency, "
                    "payee, channel, outcome, status, risk, tier, response, created_at) VALUES (:id, 'u', :id, 'h', "
                    "'1.00', 'EUR', 'P', 'app', 'approve', 'approved', 0.1, 'low', :r, :t)"),
                    [{"id": f"tx{i}", "r": '{"pad": "' + "x" * 1000 + '"}', **t} for i in range(rows)])
    finally:
        engine.dispose()
    return url


def _schema(url: str) -> tuple[list[tuple[str, str]], list[tuple[str, ...]]]:
    """Every object's SQL and the alembic_version rows, read with sqlite3 (no engine of ours)."""
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        objects = conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
        return objects, conn.execute("SELECT version_num FROM alembic_version").fetchall()
    finally:
        conn.close()


def _at_head(url: str) -> None:
    engine = make_engine(url)
    try:
        assert schema_problem(engine) is None
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head_revision()
    finally:
        engine.dispose()


def test_a_failing_step_leaves_the_sqlite_database_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """0003's ADD COLUMN was committed before 0004 failed: every later start then failed "duplicate column"."""
    from alembic.operations import Operations

    url = _sqlite_at(tmp_path, "0002")
    before = _schema(url)

    def fail(*_a: object, **_k: object) -> None:
        """0004's first step, after 0003's DDL ran, failing as Alembic's batch copy did on a full disk.

        SQLite had rolled the transaction back itself; dropping the temporary table then failed, and
        that error hid the first.
        """
        try:
            raise sa_exc.OperationalError("INSERT INTO _alembic_tmp_server_transaction ...", None,
                                          sqlite3.OperationalError("simulated: database or disk is full"))
        except sa_exc.OperationalError:  # as Alembic's cleanup: the first error only as the context
            raise sa_exc.OperationalError(  # noqa: B904
                "DROP TABLE _alembic_tmp_server_transaction", None,
                sqlite3.OperationalError("no such table: _alembic_tmp_server_transaction"))

    monkeypatch.setattr(Operations, "batch_alter_table", fail)
    engine = make_engine(url)  # a plain engine, as `cadence serve` makes it
    try:
        with pytest.raises(Exception, match="simulated: database or disk is full") as err:
            upgrade(engine)
    finally:
        engine.dispose()
    assert isinstance(err.value, SchemaError) and "_alembic_tmp" not in str(err.value), repr(err.value)
    assert _schema(url) == before  # no transaction_id column, still at 0002
    monkeypatch.undo()
    engine = make_engine(url)
    try:
        upgrade(engine)  # the rerun (space freed) migrates
    finally:
        engine.dispose()
    _at_head(url)


@pytest.mark.parametrize("serialized", [False, True], ids=["plain-engine", "begin-immediate-engine"])
def test_a_full_disk_during_the_table_copy_is_reported_and_rolled_back(serialized: bool, tmp_path: Path) -> None:
    """The tester's case: 0004's table copy ran out of space. The error named Alembic's temporary table."""
    from server.sqlite_writers import serialize_sqlite_writers

    url = _sqlite_at(tmp_path, "0002", rows=400)
    before = _schema(url)
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    engine = make_engine(url)
    if serialized:  # as `create_app` makes it
        serialize_sqlite_writers(engine)

    @event.listens_for(engine, "connect")
    def _small_disk(dbapi_conn, _rec):  # type: ignore[no-untyped-def]
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages + 20}")  # room for 0003, not for copying 400 KB

    try:
        with pytest.raises(Exception) as err:  # noqa: B017, PT011 - the message is what matters
            upgrade(engine)
    finally:
        engine.dispose()
    assert isinstance(err.value, SchemaError), repr(err.value)  # one line from `cadence serve`, not a traceback
    message = str(err.value)
    assert "database or disk is full" in message and "_alembic_tmp" not in message, message
    assert "rolled back" in message and "0002" in message, message
    assert _schema(url) == before
    engine = make_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    _at_head(url)


_MIGRATE = """
import os, sys, time
from cadence.db import make_engine
from server.migrate import import_tables, upgrade
import alembic.command
import_tables()
url, ready, go = sys.argv[1:4]
engine = make_engine(url)
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
upgrade(engine)
"""


def _upgrade_at_once(url: str, n: int, tmp_path: Path) -> list[str]:
    """`upgrade` in `n` processes released at the same moment (as `cadence serve` started n times): their errors.

    Processes, not threads: Alembic's `context` and `op` are process-wide proxies.
    """
    root = Path(__file__).resolve().parents[2]
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _MIGRATE, url, str(tmp_path / f"ready{i}"), str(go)], cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready{i}").exists() for i in range(n)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a migrating process did not start"
            time.sleep(0.01)
        go.touch()
        errors = []
        for p in procs:
            _, err = p.communicate(timeout=120)
            if p.returncode:
                lines = [line for line in err.splitlines() if "Error" in line] or [f"exit {p.returncode}"]
                errors.append(lines[-1])
        return errors
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_concurrent_sqlite_upgrades_take_turns(tmp_path: Path) -> None:
    url = _sqlite_at(tmp_path, "0002", rows=50)
    assert _upgrade_at_once(url, 3, tmp_path) == []
    _at_head(url)


# -- PostgreSQL: concurrent start-ups take turns ----------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("start_at", [None, "0002"])
def test_concurrent_postgresql_upgrades_wait_for_each_other(start_at: str | None, tmp_path: Path) -> None:
    """Several `cadence serve` at once: all but one failed (duplicate pg_type / column already exists)."""
    with pg_schema_url("cadence_migrate") as url:
        if start_at:
            engine = make_engine(url)
            upgrade(engine, start_at)
            engine.dispose()
        assert _upgrade_at_once(url, 4, tmp_path) == []
        _at_head(url)


# -- databases that are not Cadence's -----------------------------------------------------------


def _foreign(tmp_path: Path, version: str | None) -> str:
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total TEXT)")
    if version is not None:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES (?)", (version,))
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


def test_another_applications_alembic_database_is_not_called_newer(tmp_path: Path) -> None:
    url = _foreign(tmp_path, "ae1027a6acf")
    engine = make_engine(url)
    try:
        with pytest.raises(SchemaError) as err:
            upgrade(engine)
        assert "not a Cadence" in str(err.value) and "ae1027a6acf" in str(err.value), str(err.value)
        assert "newer" not in str(err.value)
        problem = schema_problem(engine)
        assert problem is not None and "not a Cadence" in problem and "newer" not in problem, problem
        assert set(inspect(engine).get_table_names()) == {"invoices", "alembic_version"}
    finally:
        engine.dispose()


def test_a_newer_cadence_revision_is_still_called_newer(tmp_path: Path) -> None:
    url = _sqlite_at(tmp_path, "head")
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    conn.close()
    engine = make_engine(url)
    try:
        with pytest.raises(SchemaError, match="at revision 0099, newer than this code"):
            upgrade(engine)
    finally:
        engine.dispose()


def test_a_database_of_unrelated_tables_gets_no_cadence_tables(tmp_path: Path) -> None:
    url = _foreign(tmp_path, None)
    engine = make_engine(url)
    try:
        with pytest.raises(SchemaError, match="not a Cadence database") as err:
            upgrade(engine)
        assert "invoices" in str(err.value)
        assert set(inspect(engine).get_table_names()) == {"invoices"}
    finally:
        engine.dispose()


def test_an_empty_database_and_one_from_before_migrations_are_still_migrated(tmp_path: Path) -> None:
    empty = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    sqlite3.connect(tmp_path / "empty.sqlite").close()  # an existing, empty file
    legacy = _sqlite_at(tmp_path, "0001")
    with sqlite3.connect(legacy.removeprefix("sqlite:///")) as conn:
        conn.execute("DROP TABLE alembic_version")  # tables made before migrations existed
    conn.close()
    for url in (empty, legacy):
        engine = make_engine(url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        _at_head(url)


# -- SQLite URLs the server cannot run on ----------------------------------------------------------


@pytest.mark.parametrize("url, says", [
    ("sqlite://", "in-memory"),
    ("sqlite:///", "in-memory"),
    ("sqlite:///:memory:", "in-memory"),
    ("sqlite:///file::memory:?uri=true", "in-memory"),
    ("sqlite:///file:mem1?mode=memory&cache=shared&uri=true", "in-memory"),
    ("sqlite:///file:/srv/x.sqlite?mode=ro&uri=true", "read-only"),
    ("sqlite:////srv/x.sqlite?mode=ro", "read-only"),
    ("sqlite:///file:/srv/x.sqlite?uri=true", "URI filename"),
    ("sqlite:///file:x.sqlite?uri=true", "URI filename"),
])
def test_check_settings_refuses_sqlite_urls_the_server_cannot_use(url: str, says: str) -> None:
    from server.app import check_settings

    with pytest.raises(ValueError, match="database_url") as err:
        check_settings(Settings(database_url=url))
    assert says in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("url", ["sqlite:///./cadence.sqlite", "sqlite:////srv/cadence.sqlite",
                                 "postgresql+psycopg://u@db/cadence", "nonsense"])
def test_check_settings_accepts_file_and_network_urls(url: str) -> None:
    from server.app import check_settings

    check_settings(Settings(database_url=url))  # an unparsable URL is reported where the engine is made


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?uri=true",
                                 "sqlite:///file:{tmp}/x.sqlite?uri=true"])
def test_serve_refuses_them_in_one_line_before_anything_starts(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import uvicorn

    from cadence import cli
    from cadence.settings import get_settings

    def started(*_a: object, **_k: object) -> None:
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn, "run", started)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CADENCE_DATABASE_URL", url.format(tmp=tmp_path))
    monkeypatch.setenv("CADENCE_ENVIRONMENT", "development")
    monkeypatch.setattr(sys, "argv", ["cadence", "serve", "--port", "1"])
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exc:
            cli.main()
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: database_url") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == [], "nothing is created before the refusal"


def test_lock_files_never_take_a_uri_or_memory_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """file::memory: left `file::memory:.checkpointer`, `.purge` and `.write-lock` in the working directory."""
    from server.retention_schedule import RetentionScheduler
    from server.sqlite_writers import SQLiteWriteLock, WalCheckpointer, sqlite_file, write_lock

    monkeypatch.chdir(tmp_path)
    assert sqlite_file(make_engine(f"sqlite:///{tmp_path / 'a.sqlite'}").url) == str(tmp_path / "a.sqlite")
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?uri=true",
                f"sqlite:///file:{tmp_path}/b.sqlite?uri=true"):
        engine = make_engine(url)
        assert sqlite_file(engine.url) is None, url
        assert not isinstance(write_lock(engine), SQLiteWriteLock), url
        assert not WalCheckpointer(engine).enabled, url
        scheduler = RetentionScheduler(None, engine, 60)  # type: ignore[arg-type]
        assert scheduler.claim(), url
        scheduler.stop()
        engine.dispose()
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no lock file in the working directory"


@pytest.mark.postgres
def test_a_search_path_naming_no_existing_schema_says_to_create_it() -> None:
    """The likeliest slip of `?options=-csearch_path=...`: the schema was never created."""
    from urllib.parse import quote

    from tests.pg import PG_URL, pg_unreachable

    why = pg_unreachable()
    if why:
        pytest.skip(why)
    engine = make_engine(f"{PG_URL}?options={quote('-csearch_path=cadence_never_created_x')}")
    try:
        with pytest.raises(SchemaError, match=r"cadence_never_created_x.*CREATE SCHEMA"):
            upgrade(engine)
    finally:
        engine.dispose()

