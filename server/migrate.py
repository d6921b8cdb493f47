"""Bring a database to the current schema with Alembic (server/migrations).

`upgrade(engine)` runs at app start-up. A database made before migrations existed (tables
present, no ``alembic_version``) is stamped at the first revision and then upgraded. A
database at a revision this code does not know (made by a newer release) is refused with
`SchemaError` rather than Alembic's traceback; `schema_problem` tells commands that only
read and write rows (they never migrate) when the schema is behind or ahead.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
FIRST_REVISION = "0001"


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


def head_revision() -> str:
    """The newest revision this code knows."""
    return str(ScriptDirectory.from_config(alembic_config()).get_current_head())


def _newer_than_code(conn: Connection) -> str | None:
    """The database's revision when this code does not know it (a newer release migrated it)."""
    known = {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    unknown = [r for r in MigrationContext.configure(conn).get_current_heads() if r not in known]
    return unknown[0] if unknown else None


def _newer_message(revision: str) -> str:
    return (f"database schema is at revision {revision}, newer than this code (which knows up to {head_revision()}): "
            "run the Cadence release that migrated it, or a database made by this one")


def schema_problem(engine: Engine) -> str | None:
    """Why the schema does not match this code (None: it does, or it has no migration history)."""
    with engine.connect() as conn:
        if "alembic_version" not in inspect(conn).get_table_names():
            return None  # tables made without migrations (tests' create_all): nothing to compare
        newer = _newer_than_code(conn)
        if newer is not None:
            return _newer_message(newer)
        current = MigrationContext.configure(conn).get_current_heads()
    head = head_revision()
    if tuple(current) != (head,):
        at = ", ".join(current) or "no revision"
        return f"database schema is at {at}, this code needs {head}: start `cadence serve` once to migrate it"
    return None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate to `revision`; `SchemaError` when the database is at a revision this code does not know."""
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        tables = set(inspect(conn).get_table_names())
        newer = _newer_than_code(conn) if "alembic_version" in tables else None
        if newer is not None:
            raise SchemaError(_newer_message(newer))
        if "alembic_version" not in tables and "server_user" in tables:
            log.warning("database has tables but no migration history: stamping %s", FIRST_REVISION)
            command.stamp(cfg, FIRST_REVISION)
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
