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


def _serve_with(var: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[object, str]:
    """`cadence serve` as the console script runs it, with `var=value`: (exit code, stderr). Refused before it binds."""
    from cadence import cli
    from cadence.settings import get_settings

    monkeypatch.setenv(var, value)
    monkeypatch.setattr(sys, "argv", ["cadence", "serve"])
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exc:
            cli.main()
    finally:
        get_settings.cache_clear()
    return exc.value.code, capsys.readouterr().err


def test_bad_setting_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad CADENCE_* value stops every command with the variable's name, not a traceback."""
    code, err = _serve_with("CADENCE_PORT", "0", monkeypatch, capsys)
    assert code == 2
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


def test_settings_that_would_fail_later_are_refused_at_start() -> None:
    """Checked before the server starts (`check_settings`, which `cadence serve` runs first)."""
    from cadence.settings import Settings
    from server.app import check_settings

    # a typo used to be accepted: forwarded headers then trusted nobody, or the wrong host
    with pytest.raises(ValueError, match="'proxy.internal' is not an IP address or network"):
        Settings(forwarded_allow_ips="10.0.0.5, proxy.internal")
    # the scheduled purge found a missing policy file only at its first run, a day after start-up
    with pytest.raises(ValueError, match="retention_policy: policy: cannot read"):
        check_settings(Settings(retention_policy="/nonexistent/retention.yaml"))
    check_settings(Settings(retention_policy="/nonexistent/retention.yaml", purge_interval_s=0))  # purge from cron


def test_a_bad_proxy_address_stops_serve_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _serve_with("CADENCE_FORWARDED_ALLOW_IPS", "proxy.internal", monkeypatch, capsys)
    assert code == 2 and "CADENCE_FORWARDED_ALLOW_IPS" in err and "Traceback" not in err, err


def test_proxy_addresses_and_networks_are_accepted() -> None:
    from cadence.settings import Settings

    assert Settings(forwarded_allow_ips="10.0.0.5, 192.168.0.0/16,::1,*").forwarded_allow_ips


def test_a_worker_building_the_app_logs_with_level_and_logger(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With --workers N each worker builds the app before anything set up logging: its warnings came bare."""
    import os
    import subprocess

    env = {**os.environ, "CADENCE_DATABASE_URL": f"sqlite:///{tmp_path / 'w.sqlite'}",
           "CADENCE_MODEL_REGISTRY": str(tmp_path / "registry")}
    env.pop("CADENCE_FUSION_CALIBRATION", None)
    out = subprocess.run([sys.executable, "-c", "from server.app import create_app; create_app()"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "WARNING server.fusion_source: fusion: no calibration file" in out.stderr, out.stderr
