"""Fixtures: a compliance database on SQLite and (when reachable) PostgreSQL, a fake data holder.

PostgreSQL tests run in a throw-away schema (`tests.pg`): the CLI, which only sees
``CADENCE_DATABASE_URL``, uses it too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, Integer, String, delete, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from cadence.db import Base, make_engine, make_sessionmaker
from cadence.settings import get_settings
from compliance import subjects
from compliance.models import TABLES, UTCDateTime
from tests.pg import pg_schema_url


class FakeBase(DeclarativeBase):
    """Tables of a stand-in data holder (kept off cadence.db.Base so no migration sees them)."""


class FakeTemplate(FakeBase):
    __tablename__ = "fake_template"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128))
    modality: Mapped[str] = mapped_column(String(32))
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime())


class FakeEvidence(FakeBase):
    __tablename__ = "fake_evidence"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128))
    modality: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())




@dataclass
class FakeHolder:
    """A holder like the server's: templates per modality and evidence windows."""

    name: str = "fake"

    def export(self, session: Session, user_id: str) -> dict[str, Any]:
        t = session.scalars(select(FakeTemplate).where(FakeTemplate.user_id == user_id)).all()
        e = session.scalars(select(FakeEvidence).where(FakeEvidence.user_id == user_id)).all()
        return {
            "templates": [{"modality": r.modality, "last_used_at": r.last_used_at.isoformat()} for r in t],
            "evidence": [{"modality": r.modality, "created_at": r.created_at.isoformat()} for r in e],
        }

    def erase(self, session: Session, user_id: str) -> dict[str, int]:
        out = {}
        for name, model in (("templates", FakeTemplate), ("evidence", FakeEvidence)):
            out[name] = session.execute(delete(model).where(model.user_id == user_id)).rowcount
        return out

    def erase_modality(self, session: Session, user_id: str, modality: str) -> int:
        q = delete(FakeTemplate).where(FakeTemplate.user_id == user_id, FakeTemplate.modality == modality)
        return session.execute(q).rowcount

    def purge(self, session: Session, policy: Any, *, now: datetime, dry_run: bool) -> dict[str, int]:
        out = {}
        for name, model, cond in (
            ("evidence", FakeEvidence, FakeEvidence.created_at < policy.evidence_cutoff(now)),
            ("templates", FakeTemplate, FakeTemplate.last_used_at < policy.template_cutoff(now)),
        ):
            out[name] = session.scalar(select(func.count()).select_from(model).where(cond)) or 0
            if not dry_run:
                session.execute(delete(model).where(cond))
        return out


def _create_tables(url: str) -> None:
    engine = make_engine(url)
    Base.metadata.create_all(engine, tables=list(TABLES))
    FakeBase.metadata.create_all(engine)
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty database with the compliance and fake-holder tables created."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'compliance.sqlite'}"
        _create_tables(url)
        yield url
        return
    with pg_schema_url("cadence_compliance") as url:
        _create_tables(url)
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture
def sqlite_factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """SQLite only, for tests of logic that does not depend on the database."""
    eng = make_engine(f"sqlite:///{tmp_path / 'c.sqlite'}")
    Base.metadata.create_all(eng, tables=list(TABLES))
    FakeBase.metadata.create_all(eng)
    yield make_sessionmaker(eng)
    eng.dispose()


@contextmanager
def isolated_holders(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Development keys, no holder modules imported, and the holder registry restored after."""
    for var in ("CADENCE_ENVIRONMENT", "CADENCE_AUDIT_HMAC_KEY", "CADENCE_AUDIT_SIGNING_KEY", "CADENCE_AUDIT_PUBLIC_KEYS", "CADENCE_RETENTION_POLICY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CADENCE_HOLDER_MODULES", "[]")
    saved = dict(subjects._HOLDERS)
    subjects._HOLDERS.clear()
    get_settings.cache_clear()
    yield
    subjects._HOLDERS.clear()
    subjects._HOLDERS.update(saved)
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _isolated_compliance(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with isolated_holders(monkeypatch):
        yield


@pytest.fixture
def fake_holder() -> FakeHolder:
    return subjects.register_holder(FakeHolder())  # type: ignore[return-value]


@pytest.fixture
def server_api(tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """(app, TestClient) of a development server on its own SQLite file, the server holder registered.

    This folder's autouse fixture empties the holder registry that importing `server.holders`
    filled, so erasure and export need the server's holder put back.
    """
    from fastapi.testclient import TestClient

    from cadence.settings import Settings
    from server.app import create_app
    from server.holders import ServerHolder

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'api.sqlite'}", model_registry=tmp_path / "registry",  # type: ignore[call-arg]
                        environment="development", _env_file=None)
    api = create_app(settings)
    subjects.register_holder(ServerHolder())
    try:
        with TestClient(api) as client:
            yield api, client
    finally:
        api.state.engine.dispose()
