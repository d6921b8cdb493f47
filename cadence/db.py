"""The one SQLAlchemy declarative base and engine/session factories.

Server and compliance tables both derive from `Base`, so one Alembic history covers them.
SQLite (the embedded default) runs in WAL mode with foreign keys on; PostgreSQL is used as is.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker


class Base(DeclarativeBase):
    """Declarative base for every table of Cadence."""


def make_engine(url: str, **kw: object) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and enforced foreign keys."""
    if url.startswith("sqlite"):
        kw.setdefault("connect_args", {"check_same_thread": False, "timeout": 30})
        engine = create_engine(url, **kw)  # type: ignore[arg-type]

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _rec):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            if ":memory:" not in url:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    kw.setdefault("pool_pre_ping", True)
    return create_engine(url, **kw)  # type: ignore[arg-type]


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error (no partial writes)."""
    with factory() as session, session.begin():
        yield session


#: `Session.info` key of a held connection's open unit of work: (DBAPI connection, dialect)
RAW_UNIT = "cadence_raw_unit"


def _raw(dbapi: Any, dialect: Any, sql: str) -> None:
    """Run a transaction statement on the DBAPI connection; errors wrapped as SQLAlchemy's."""
    try:
        dbapi.execute(sql)
    except dialect.loaded_dbapi.Error as e:
        raise sa_exc.DBAPIError.instance(sql, None, e, dialect.loaded_dbapi.Error, dialect=dialect) from e


def begin_sqlite(conn: Connection) -> None:
    """Begin the SQLite transaction on `conn`'s DBAPI connection, unless one is open.

    BEGIN IMMEDIATE: the write lock is taken up front, waiting out the busy timeout. A deferred
    transaction that reads and then writes fails at once ("database is locked", no busy wait)
    when another connection committed in between. With the `cadence_read_only` execution
    option, a plain BEGIN: a snapshot that blocks no writer. The server's engine begins every
    transaction so (`server.sqlite_writers.serialize_sqlite_writers`); `begin_write` the others.
    """
    dbapi: Any = conn.connection.driver_connection
    if dbapi is None or dbapi.in_transaction:
        return
    _raw(dbapi, conn.dialect, "BEGIN" if conn.get_execution_options().get("cadence_read_only") else "BEGIN IMMEDIATE")


def begin_write(session: Session) -> None:
    """Begin `session`'s transaction as a writer's: on SQLite it holds the write lock from its first statement.

    Why: on an engine without the server's BEGIN IMMEDIATE (the CLI's), pysqlite runs SELECTs
    outside any transaction until the first INSERT, UPDATE or DELETE, so a unit of work that
    checks, then writes (the purge's audit check, the erasure's counts) acted on what another
    process may have changed meanwhile. PostgreSQL: nothing to do (its writers lock rows).
    Call it before the session's first statement.
    """
    conn = session.connection()
    if conn.dialect.name == "sqlite":
        begin_sqlite(conn)


class HeldConnections:
    """The event loop thread's own long-lived connections to an embedded database (read and write).

    Why: checking a connection out of the pool, and back in, for every unit of work cost about
    60 µs per transaction on SQLite (two per authorize call), as much as three statements. A
    held connection skips that (and `transaction` skips the session's transaction machinery). SQLite
    connections are files and never go stale, so holding them is safe; a network database
    (PostgreSQL) keeps the pool, whose pre-ping replaces dropped connections.

    Only the thread that `claim`s it holds connections: the event loop, which runs the hot
    handlers inline and lives as long as the server. Thread-pool workers come and go (anyio
    retires one after 10 s idle), and connections held by each would never go back to the pool.
    """

    def __init__(self, engine: Engine) -> None:
        self.engines = {False: engine, True: engine.execution_options(cadence_read_only=True)}
        self.owner: int | None = None
        self._held: dict[bool, Connection] = {}
        self._sessions: dict[bool, tuple[Connection, Session]] = {}

    def claim(self) -> None:
        """Make the calling thread (the event loop's) the one that holds connections."""
        self.owner = threading.get_ident()

    def here(self) -> bool:
        """Whether the calling thread holds connections (else it should use the pool)."""
        return self.owner is not None and self.owner == threading.get_ident()

    def connection(self, read_only: bool) -> Connection:
        if not self.here():
            raise RuntimeError("HeldConnections: only the claiming thread holds connections")
        conn = self._held.get(read_only)
        if conn is None or conn.closed or conn.invalidated:
            conn = self._held[read_only] = self.engines[read_only].connect()
        return conn

    @contextmanager
    def transaction(self, *, read_only: bool = False) -> Iterator[Session]:
        """Like `transaction`: commit on success, roll back on any error.

        The session object is reused from one transaction to the next on the same held
        connection (building and closing one cost ~60 µs, two per authorize call); its
        identity map is emptied after each, so no object outlives its unit of work.

        The transaction itself is begun and ended on the DBAPI connection (`BEGIN` or
        `BEGIN IMMEDIATE`, `COMMIT` / `ROLLBACK`), and `cadence.prepared` runs its statements
        there. The session's own transaction machinery (SessionTransaction, connection
        transaction, events) cost ~90 µs per unit of work, more than the hot path's statements
        together; it still joins in when a unit uses the ORM or `Session.execute` (its begin
        finds the transaction open: `serialize_sqlite_writers`), and then commits or rolls back
        the one transaction itself. SQLite only (pysqlite's `in_transaction`), as the class is.
        """
        conn = self.connection(read_only)
        held = self._sessions.get(read_only)
        if held is None or held[0] is not conn:
            held = self._sessions[read_only] = (conn, Session(bind=conn, expire_on_commit=False))
        session = held[1]
        if RAW_UNIT in session.info:  # nested on the same connection (not expected): part of the open unit
            yield session
            return
        if session.in_transaction():  # the session was begun outside a unit (not expected): one of its own
            with Session(bind=conn, expire_on_commit=False) as own, own.begin():
                yield own
            return
        dbapi: Any = conn.connection.driver_connection
        dialect = conn.dialect
        _raw(dbapi, dialect, "BEGIN" if read_only else "BEGIN IMMEDIATE")
        session.info[RAW_UNIT] = (dbapi, dialect)
        try:
            yield session
            if session.in_transaction():  # the ORM joined in: it flushes and commits the transaction
                session.commit()
            elif dbapi.in_transaction:
                _raw(dbapi, dialect, "COMMIT")
        except BaseException:
            if session.in_transaction():
                session.rollback()
            elif dbapi.in_transaction:
                _raw(dbapi, dialect, "ROLLBACK")
            raise
        finally:
            del session.info[RAW_UNIT]
            session.expunge_all()

    def close(self) -> None:
        held, self._held = self._held, {}
        for _, session in self._sessions.values():
            session.close()
        self._sessions = {}
        self.owner = None
        for conn in held.values():
            conn.close()
