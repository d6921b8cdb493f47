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
