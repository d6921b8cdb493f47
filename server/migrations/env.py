"""Alembic environment: one history for every table on `cadence.db.Base` (server + compliance).

Run through `server.migrate.upgrade(engine)` (the app does at start-up), which hands the
connection in via ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from cadence.db import Base
from server.migrate import import_tables

import_tables()
target_metadata = Base.metadata
config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        from cadence.db import make_engine

        url = config.get_main_option("sqlalchemy.url")
        if not url:
            raise RuntimeError("sqlalchemy.url or a connection is required")
        with make_engine(url).connect() as conn:
            _run(conn)
        return
    _run(connection)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
