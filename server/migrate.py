"""Bring a database to the current schema with Alembic (server/migrations).

`upgrade(engine)` runs at app start-up. A database made before migrations existed (tables
present, no ``alembic_version``) is stamped at the first revision and then upgraded.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, inspect

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


def upgrade(engine: Engine, revision: str = "head") -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        tables = set(inspect(conn).get_table_names())
        if "alembic_version" not in tables and "server_user" in tables:
            log.warning("database has tables but no migration history: stamping %s", FIRST_REVISION)
            command.stamp(cfg, FIRST_REVISION)
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
