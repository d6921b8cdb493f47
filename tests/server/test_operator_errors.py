"""Operator mistakes give one line and exit 2, and change nothing: no traceback, no silent state.

Model activation with an unusable audit database, a database schema behind or ahead of the
code, a production server without audit keys.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from cadence.cli import app as cli
from cadence.db import make_engine
from cadence.settings import Settings, get_settings
from compliance.models import AuditEntry
from modalities.base import ScaledManhattan
from modalities.registry import ModelRegistry
from server.app import create_app
from server.migrate import head_revision, upgrade

runner = CliRunner(env={"COLUMNS": "400"})


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("CADENCE_DATABASE_URL", "CADENCE_ENVIRONMENT", "CADENCE_AUDIT_HMAC_KEY", "CADENCE_AUDIT_SIGNING_KEY"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def audit_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, revision: str = "head") -> str:
    """A SQLite database migrated to `revision`, as the CLI's CADENCE_DATABASE_URL."""
    url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    engine = make_engine(url)
    upgrade(engine, revision)
    engine.dispose()
    monkeypatch.setenv("CADENCE_DATABASE_URL", url)
    get_settings.cache_clear()
    return url


def audit_events(url: str) -> list[tuple[str, dict[str, Any]]]:
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(AuditEntry.event, AuditEntry.payload).order_by(AuditEntry.seq)).all()
    engine.dispose()
    return [(event, json.loads(payload)) for event, payload in rows]


def _registry(tmp_path: Path) -> ModelRegistry:
    """A registry with touch v0001 active and v0002 published."""
    reg = ModelRegistry(tmp_path / "registry")
    for scale in (0.01, 0.02):
        reg.publish("touch", ScaledManhattan(min_scale=scale), metrics={}, card="# card", source="test")
    reg.activate("touch", "v0001")
    return reg


def _activate(reg: ModelRegistry, version: str = "v0002") -> Any:
    return runner.invoke(cli, ["models", "activate", "touch", version, "--registry", str(reg.root)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ item: activation is audited


def test_activation_with_an_unreachable_database_switches_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = _registry(tmp_path)
    monkeypatch.setenv("CADENCE_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/cadence")
    r = _activate(reg)
    assert r.exit_code == 2 and "cannot open database" in r.output and "Traceback" not in r.output, r.output
    active = reg.active("touch")
    assert active is not None and active.version == "v0001"  # not switched without its audit entry


def test_activation_on_a_fresh_machine_says_where_it_audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like `cadence serve`, the first command creates the embedded database, and says so."""
    reg = _registry(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)  # the default URL is ./cadence.sqlite
    monkeypatch.delenv("CADENCE_DATABASE_URL", raising=False)
    r = _activate(reg)
    assert r.exit_code == 0 and "created the database" in r.output and "cadence.sqlite" in r.output, r.output
    assert audit_events(f"sqlite:///{empty / 'cadence.sqlite'}")[-1][0] == "model.activated"
    active = reg.active("touch")
    assert active is not None and active.version == "v0002"


def test_activation_is_audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = _registry(tmp_path)
    url = audit_db(tmp_path, monkeypatch)
    r = _activate(reg)
    assert r.exit_code == 0, r.output
    active = reg.active("touch")
    assert active is not None and active.version == "v0002"
    assert audit_events(url)[-1] == ("model.activated", {"modality": "touch", "version": "v0002", "scorer": "manhattan-scaled"})
    assert "no fusion calibrator yet" in r.output  # says decisions leave it out until calibrated


def test_a_refused_activation_is_not_audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modalities.gait.scorers import GaitManhattan

    reg = _registry(tmp_path)
    url = audit_db(tmp_path, monkeypatch)
    gait = ModelRegistry(tmp_path / "registry").publish("gait", GaitManhattan(), metrics={}, card="# c", source="t")
    (reg.root / "touch" / "v0003").symlink_to(reg.root / "gait" / gait)  # a gait model in touch's folder
    r = _activate(reg, "v0003")
    assert r.exit_code == 2 and "gait" in r.output and "Traceback" not in r.output, r.output
    assert audit_events(url) == []


# ------------------------------------------------------------------ item: schema behind / ahead


def _previous_revision() -> str:
    from alembic.script import ScriptDirectory

    from server.migrate import alembic_config

    prev = ScriptDirectory.from_config(alembic_config()).get_revision(head_revision()).down_revision
    assert isinstance(prev, str)
    return prev


@pytest.mark.parametrize("command", [["compliance", "export", "alice"], ["compliance", "erase", "alice", "--yes"],
                                     ["compliance", "purge", "--dry-run"]])
def test_a_database_one_migration_behind_is_named(command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audit_db(tmp_path, monkeypatch, _previous_revision())
    monkeypatch.setenv("CADENCE_HOLDER_MODULES", '["server.holders"]')
    get_settings.cache_clear()
    r = runner.invoke(cli, command)
    assert r.exit_code == 2, r.output
    assert f"is at {_previous_revision()}, this code needs {head_revision()}" in r.output and "cadence serve" in r.output
    assert "Traceback" not in r.output


def test_the_audit_log_of_an_older_schema_still_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audit_db(tmp_path, monkeypatch, _previous_revision())
    r = runner.invoke(cli, ["audit", "verify"])
    assert r.exit_code == 0 and "audit chain OK" in r.output, r.output


def test_a_database_newer_than_the_code_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = audit_db(tmp_path, monkeypatch)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("update alembic_version set version_num='0999'"))
    engine.dispose()
    for command in (["serve"], ["compliance", "export", "alice"]):
        r = runner.invoke(cli, command)
        assert r.exit_code == 2, r.output
        assert "at revision 0999, newer than this code" in r.output and "Traceback" not in r.output, r.output


# ------------------------------------------------------------------ item: production needs audit keys


def _production(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(environment="production", database_url=f"sqlite:///{tmp_path / 'prod.sqlite'}",  # type: ignore[call-arg]
                    api_keys={"bank-key-of-32-characters-length": ["bank"]}, model_registry=tmp_path / "none",
                    server_signing_key=base64.urlsafe_b64encode(os.urandom(32)).decode(), _env_file=None, **kw)


def test_production_refuses_to_start_without_the_audit_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="audit_hmac_key"):
        create_app(_production(tmp_path))
    with pytest.raises(ValueError, match="audit_signing_key"):  # the purge signs a checkpoint when it prunes
        create_app(_production(tmp_path, audit_hmac_key="ab" * 32))
    app = create_app(_production(tmp_path, audit_hmac_key="ab" * 32, audit_signing_key="cd" * 32))
    app.state.engine.dispose()


@pytest.mark.parametrize("keys,why", [({"short": ["bank"]}, "guessable"),
                                      ({"bank-key-of-32-characters-length": ["superuser"]}, "unknown scope")])
def test_production_refuses_weak_or_unknown_api_keys(tmp_path: Path, keys: dict[str, list[str]], why: str) -> None:
    settings = _production(tmp_path, audit_hmac_key="ab" * 32, audit_signing_key="cd" * 32)
    with pytest.raises(ValueError, match=why):
        create_app(settings.model_copy(update={"api_keys": keys}))


def test_serve_with_workers_checks_the_settings_before_starting_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of several workers would fail on its own and be restarted forever: one line, exit 2."""
    from cadence.settings import get_settings

    monkeypatch.setenv("CADENCE_ENVIRONMENT", "production")
    monkeypatch.setenv("CADENCE_DATABASE_URL", f"sqlite:///{tmp_path / 'w.sqlite'}")
    get_settings.cache_clear()
    try:
        r = runner.invoke(cli, ["serve", "--workers", "2", "--port", str(_free_port())])
    finally:
        get_settings.cache_clear()
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output, r.output


def test_audit_verify_leaves_an_empty_file_as_it_was(tmp_path: Path) -> None:
    """A 0-byte file is no database: reading it must not turn it into one (SQLite writes a header and a WAL)."""
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    r = runner.invoke(cli, ["audit", "verify", "--database-url", f"sqlite:///{empty}"])
    assert r.exit_code == 2 and "no database at" in r.output and "Traceback" not in r.output, r.output
    assert empty.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["empty.sqlite"]


def test_an_empty_database_url_option_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """'' must not quietly mean CADENCE_DATABASE_URL (another database than the one named)."""
    monkeypatch.setenv("CADENCE_DATABASE_URL", f"sqlite:///{tmp_path / 'other.sqlite'}")
    r = runner.invoke(cli, ["audit", "verify", "--database-url", ""])
    assert r.exit_code == 2 and "--database-url" in r.output and "empty database URL" in r.output, r.output
