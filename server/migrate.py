"""Bring a database to the current schema with Alembic (server/migrations).

`upgrade(engine)` runs at app start-up. A database made before migrations existed (tables
present, no ``alembic_version``) is stamped at the first revision and then upgraded. A
database at a revision this code does not know (made by a newer release), or one of another
application (tables but none of Cadence's, or another Alembic history), is refused with
`SchemaError` rather than Alembic's traceback; `schema_problem` tells commands that only
read and write rows (they never migrate) when the schema is behind or ahead.

The whole upgrade is one transaction on both backends, whatever engine it is given: on SQLite
it begins one itself (pysqlite would commit each DDL statement on its own), so a failed step
(a full disk) leaves the database as it was and names its cause (`MigrationError`). Concurrent
upgrades take turns: SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's transaction advisory lock.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy import exc as sa_exc

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
FIRST_REVISION = "0001"
#: Cadence's revision ids (server/migrations/versions): four digits, in order
_CADENCE_REVISION = re.compile(r"\d{4}")
#: a table that every Cadence database has had since the first revision (and before migrations)
_CADENCE_TABLE = "server_user"
#: PostgreSQL advisory-lock class of the migration ("migr" in ASCII; the purge's is "cade"); the second
#: key is the schema's hash, as the purge's: deployments in different schemas migrate independently
MIGRATION_LOCK_KEY = 0x6D696772
_MIGRATION_LOCK = text("SELECT pg_advisory_xact_lock(:k, hashtext(coalesce(current_schema(), '')))")


def import_tables() -> None:
    """Import every module that defines tables on `cadence.db.Base`."""
    import server.models  # noqa: F401

    try:
        import compliance.models  # noqa: F401
    except ImportError:
        log.info("compliance.models not available: its tables are not created")


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url)
    return cfg


class SchemaError(RuntimeError):
    """The database schema is not the one this code needs, and cannot be brought to it here."""


class MigrationError(SchemaError):
    """A migration step failed; the upgrade's one transaction was rolled back (the database is as it was)."""


def head_revision() -> str:
    """The newest revision this code knows."""
    return str(ScriptDirectory.from_config(alembic_config()).get_current_head())


def _newer_than_code(conn: Connection) -> str | None:
    """The database's revision when this code does not know it (a newer release, or another application)."""
    known = {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    unknown = [r for r in MigrationContext.configure(conn).get_current_heads() if r not in known]
    return unknown[0] if unknown else None


def _newer_message(revision: str, tables: set[str] | None = None) -> str:
    """Why a revision this code does not know is refused: a newer Cadence, or not Cadence's at all."""
    head = head_revision()
    newer = (_CADENCE_REVISION.fullmatch(revision) is not None and revision > head
             and (tables is None or _CADENCE_TABLE in tables))
    if not newer:
        return (f"not a Cadence database: its Alembic revision {revision} is not a Cadence revision (Cadence's are "
                f"0001..{head}); point CADENCE_DATABASE_URL at Cadence's database, or at an empty one")
    return (f"database schema is at revision {revision}, newer than this code (which knows up to {head}): "
            "run the Cadence release that migrated it, or a database made by this one")


def _foreign_message(tables: set[str]) -> str:
    names = sorted(tables)
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (f"not a Cadence database: it has tables ({shown}) but no Cadence migration history (alembic_version) "
            "and none of Cadence's tables; point CADENCE_DATABASE_URL at Cadence's database, or at an empty one")


def schema_problem(engine: Engine) -> str | None:
    """Why the schema does not match this code (None: it does, or it has no migration history)."""
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        if "alembic_version" not in tables:
            return None  # tables made without migrations (tests' create_all): nothing to compare
        newer = _newer_than_code(conn)
        if newer is not None:
            return _newer_message(newer, tables)
        current = MigrationContext.configure(conn).get_current_heads()
    head = head_revision()
    if tuple(current) != (head,):
        at = ", ".join(current) or "no revision"
        return f"database schema is at {at}, this code needs {head}: start `cadence serve` once to migrate it"
    return None


@contextmanager
def _one_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in one transaction that covers DDL too, whatever `engine` was set up with.

    SQLite: pysqlite (its default transaction handling) opens a transaction only before an
    INSERT, UPDATE or DELETE, so DDL before the first one was committed at once. An upgrade
    that failed in 0004 had committed 0003's ADD COLUMN with alembic_version still at 0002,
    and every later start failed on the duplicate column. Here pysqlite's handling is off on
    this connection while it migrates, and the transaction is begun explicitly, IMMEDIATE:
    a second process migrating the same file waits (busy timeout) for this one to finish.
    (An engine with `server.sqlite_writers.serialize_sqlite_writers` begins it so itself.)

    PostgreSQL: DDL is transactional; concurrent upgrades (several `cadence serve` starting on
    one database) queue on a transaction advisory lock scoped to the schema, so the later
    ones find the database migrated instead of failing on each other's half-made tables.
    """
    from cadence.db import _raw

    with engine.connect() as conn:
        dbapi: Any = None
        isolation: Any = None
        if conn.dialect.name == "sqlite":
            dbapi = conn.connection.driver_connection
            isolation = dbapi.isolation_level
            dbapi.isolation_level = None  # no transaction is open on a fresh checkout: this commits nothing
        try:
            with conn.begin():
                if dbapi is not None and not dbapi.in_transaction:
                    _raw(dbapi, conn.dialect, "BEGIN IMMEDIATE")
                elif conn.dialect.name == "postgresql":
                    if conn.execute(text("SELECT current_schema()")).scalar() is None:
                        path = conn.execute(text("SHOW search_path")).scalar()
                        raise SchemaError(f"no schema to create Cadence's tables in: search_path is {path!r} and none "
                                          "of it exists; create the schema first (CREATE SCHEMA ...) or name one "
                                          "that exists")
                    conn.execute(_MIGRATION_LOCK, {"k": MIGRATION_LOCK_KEY})
                yield conn
        finally:
            if dbapi is not None and not conn.invalidated:
                dbapi.isolation_level = isolation  # the pooled connection as the engine made it


def _first_error(exc: sa_exc.DBAPIError) -> sa_exc.DBAPIError:
    """The database error that started it all: a later one raised while handling it hides it.

    SQLite rolls a transaction back itself on SQLITE_FULL; Alembic's batch copy then tries to
    drop its temporary table, and "no such table: _alembic_tmp_..." replaced "database or
    disk is full".
    """
    first, seen = exc, {id(exc)}
    cause = exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, sa_exc.DBAPIError):
            first = cause
        cause = cause.__context__
    return first


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate to `revision` in one transaction (all or nothing).

    `SchemaError` when the database is at a revision this code does not know or is not
    Cadence's; `MigrationError` (a `SchemaError`) when a step fails: nothing was changed.
    """
    cfg = alembic_config()
    with _one_transaction(engine) as conn:
        cfg.attributes["connection"] = conn
        tables = set(inspect(conn).get_table_names())
        newer = _newer_than_code(conn) if "alembic_version" in tables else None
        if newer is not None:
            raise SchemaError(_newer_message(newer, tables))
        if "alembic_version" not in tables and tables:
            if _CADENCE_TABLE not in tables:
                raise SchemaError(_foreign_message(tables))
            log.warning("database has tables but no migration history: stamping %s", FIRST_REVISION)
            command.stamp(cfg, FIRST_REVISION)
        start = ", ".join(MigrationContext.configure(conn).get_current_heads()) or "an empty database"
        try:
            command.upgrade(cfg, revision)
        except sa_exc.DBAPIError as exc:
            first = _first_error(exc)
            reason = " ".join(str(first.orig if first.orig is not None else first).split())
            raise MigrationError(f"migrating the database schema from {start} to {revision} failed, and was rolled "
                                 f"back (the database is as it was): {reason}") from first


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Migrate back to `revision`, in one transaction as `upgrade`."""
    cfg = alembic_config()
    with _one_transaction(engine) as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
