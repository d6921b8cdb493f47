"""The real PostgreSQL that storage tests run against: a throw-away schema per test.

The schema is chosen through the URL (``options=-csearch_path=...``), so a server or CLI
started in another process, which only sees ``CADENCE_DATABASE_URL``, uses it too. Without
a reachable server the test is skipped, and the skip says why.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def pg_unreachable() -> str | None:
    """Why PostgreSQL at 127.0.0.1:5432/test cannot be used, or None when it can."""
    try:
        import psycopg

        with psycopg.connect(_DSN, connect_timeout=3) as conn:
            conn.execute("select 1")
    except Exception as exc:  # noqa: BLE001 - any failure means "skip, and say why"
        return f"PostgreSQL at 127.0.0.1:5432/test not reachable ({type(exc).__name__}: {str(exc).strip()[:120]})"
    return None


@contextmanager
def pg_schema_url(prefix: str) -> Iterator[str]:
    """URL of a new empty schema named `prefix_<random>`, dropped (with everything in it) afterwards."""
    why = pg_unreachable()
    if why:
        pytest.skip(why)
    import psycopg

    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_DSN, connect_timeout=3, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}?options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(_DSN, connect_timeout=3, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


#: fixture params of a storage test that runs on both backends (PostgreSQL marked `postgres`)
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@contextmanager
def backend_url(backend: str, tmp_path: Path, prefix: str) -> Iterator[str]:
    """URL of a fresh database: a SQLite file `prefix.sqlite` in `tmp_path`, or a throw-away PostgreSQL schema."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / f'{prefix}.sqlite'}"
        return
    with pg_schema_url(prefix) as url:
        yield url
