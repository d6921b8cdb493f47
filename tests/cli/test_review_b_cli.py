"""Review B: `cadence serve` refuses a database it cannot write, and bad database URLs are one line.

The read-only cases: at the schema's head start-up writes nothing, so the server started on a
read-only database and then answered 503 "retry later" to every request.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from typer.testing import CliRunner

from cadence.cli import app

narrow = CliRunner(env={"COLUMNS": "80"})


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    from cadence.settings import get_settings

    monkeypatch.setenv("CADENCE_MODEL_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("CADENCE_ENVIRONMENT", "development")
    for var in ("CADENCE_DATABASE_URL", "CADENCE_RETENTION_POLICY", "CADENCE_AUDIT_SIGNING_KEY", "CADENCE_AUDIT_HMAC_KEY"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _serve(url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[str]]:
    """`cadence serve` on `url`, uvicorn replaced: (result, [what would have been served])."""
    from cadence.settings import get_settings

    ran: list[str] = []
    monkeypatch.setattr("cadence.commands.serve._run", lambda *a, **k: ran.append("served"))
    monkeypatch.setenv("CADENCE_DATABASE_URL", url)
    get_settings.cache_clear()
    return narrow.invoke(app, ["serve"]), ran


def _one_line(output: str) -> str:
    lines = [x for x in output.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and output.rstrip().endswith(lines[0]), output
    return lines[0]


def _migrated(url: str) -> None:
    from cadence.db import make_engine
    from server.migrate import upgrade

    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()


def test_serve_refuses_a_sqlite_file_it_cannot_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine opens the file read-only (as on a read-only mount): `serve` stops before any worker."""
    import cadence.db

    path = tmp_path / "ro.sqlite"
    url = f"sqlite:///{path}"
    _migrated(url)
    real = cadence.db.make_engine
    monkeypatch.setattr(cadence.db, "make_engine",
                        lambda u, **kw: real(f"sqlite:///file:{path}?mode=ro&uri=true" if u == url else u, **kw))
    res, ran = _serve(url, monkeypatch)
    assert res.exit_code == 2 and not ran, (res.output, ran)
    line = _one_line(res.output)
    assert f"database {url} cannot be written (attempt to write a readonly database)" in line, line
    monkeypatch.setattr(cadence.db, "make_engine", real)
    res, ran = _serve(url, monkeypatch)  # writable: served
    assert res.exit_code == 0 and ran == ["served"], res.output


def test_serve_refuses_a_read_only_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.pg import pg_schema_url

    with pg_schema_url("cadence_ro") as url:
        _migrated(url)
        options = url.split("options=", 1)[1]
        ro = url.replace(options, options + quote(" -cdefault_transaction_read_only=on"))
        res, ran = _serve(ro, monkeypatch)
        assert res.exit_code == 2 and not ran, (res.output, ran)
        assert "transaction_read_only is on" in _one_line(res.output)


@pytest.mark.parametrize("url, says", [
    ("postgresql://u:s3cret@127.0.0.1:notaport/db",
     "database URL 'postgresql://u:***@127.0.0.1:notaport/db' (CADENCE_DATABASE_URL): not a database URL"),
    ("postgresql+nodriver://u:s3cret@127.0.0.1/db", "postgresql+nodriver://u:***@127.0.0.1/db: no driver for it here"),
    ("foo[/x]://y", "database URL 'foo[/x]://y' (CADENCE_DATABASE_URL)"),
    ("sqlite:////nonexistent-cadence-dir/[/x]/a.sqlite", "cannot open database sqlite:////nonexistent-cadence-dir/[/x]/a.sqlite"),
])
def test_serve_names_a_bad_database_url_in_one_line(url: str, says: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad port was a bare `invalid literal for int()`; brackets crashed the printer; a bad dialect showed the password."""
    res, ran = _serve(url, monkeypatch)
    assert res.exit_code == 2 and not ran, res.output
    assert says in _one_line(res.output) and "s3cret" not in res.output and "Traceback" not in res.output, res.output



@pytest.mark.parametrize("url", ["postgresql://app:Zx9/k+Qw==@db.internal:54x2/cadence",
                                 "postgresql://app:Zx9#k+Qw==@db.internal:54x2/cadence"])
def test_a_password_with_url_characters_is_masked_whole(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Masking stopped at the password's first `/` or `@` and printed the rest of it."""
    res, ran = _serve(url, monkeypatch)
    assert res.exit_code == 2 and not ran, res.output
    line = _one_line(res.output)
    assert "***@" in line and not any(part in line for part in ("Zx9", "k+Qw", "se@", "cret")), line


def test_the_write_probe_does_not_take_a_busy_sqlite_file_for_a_read_only_one(tmp_path: Path) -> None:
    """The probe waited out SQLite's 30 s busy timeout behind another writer, then refused a writable file."""
    import sqlite3
    import time

    from cadence.commands.serve import _read_only
    from cadence.db import make_engine

    path = tmp_path / "busy.sqlite"
    _migrated(f"sqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None)
    engine = make_engine(f"sqlite:///{path}")
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock meanwhile
        t0 = time.monotonic()
        assert _read_only(engine) is None
        assert time.monotonic() - t0 < 5.0
    finally:
        other.execute("ROLLBACK")
        other.close()
        engine.dispose()


def test_a_bad_metrics_folder_is_refused_before_the_database_is_touched(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from cadence.settings import get_settings

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    monkeypatch.setenv("CADENCE_DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    get_settings.cache_clear()
    ran: list[str] = []
    monkeypatch.setattr("cadence.commands.serve._run", lambda *a, **k: ran.append("served"))
    res = narrow.invoke(app, ["serve", "--workers", "2"])
    assert res.exit_code == 2 and not ran, res.output
    assert "PROMETHEUS_MULTIPROC_DIR" in _one_line(res.output)
    assert not (tmp_path / "db.sqlite").exists(), "the database was created before the settings were refused"
