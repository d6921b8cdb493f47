"""`cadence serve` refuses impossible options before it migrates or binds anything."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from cadence.cli import app


def test_port_out_of_range_is_refused() -> None:
    for port in ("0", "99999"):
        r = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["serve", "--port", port])
        assert r.exit_code == 2 and "--port" in r.output and "65535" in r.output, r.output


def test_bad_setting_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad CADENCE_* value stops every command with the variable's name, not a traceback."""
    from cadence import cli
    from cadence.settings import get_settings

    monkeypatch.setenv("CADENCE_PORT", "0")
    monkeypatch.setattr(sys, "argv", ["cadence", "serve"])
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exc:
            cli.main()
    finally:
        get_settings.cache_clear()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid setting CADENCE_PORT='0'") and "Traceback" not in err


@pytest.mark.parametrize("url, says", [
    ("nonsense", "database URL 'nonsense'"),
    ("postgresql+psycopg://cadence:s3cret@127.0.0.1:{port}/test", "cannot open database postgresql+psycopg://cadence:***@127.0.0.1"),
    ("mysql://x@127.0.0.1/y", "no driver for it here"),
])
def test_an_unusable_database_is_one_line_without_its_password(url: str, says: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from cadence.settings import get_settings

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("CADENCE_DATABASE_URL", url.format(port=port))
    get_settings.cache_clear()
    try:
        r = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["serve"])
    finally:
        get_settings.cache_clear()
    assert r.exit_code == 2 and says in r.output and "s3cret" not in r.output, r.output
