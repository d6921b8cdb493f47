"""Review D: `python -m cadence`, the demo's server and errors, user paths as text, one-line usage errors.

The demo's own server runs on development settings and its registry calibration must cover every
modality; user paths are printed as they are (not read as Rich markup).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from typer.testing import CliRunner

from cadence.cli import app

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    from cadence.settings import get_settings

    for var in ("CADENCE_MODEL_REGISTRY", "CADENCE_DATABASE_URL", "CADENCE_DATA_DIR", "CADENCE_ENVIRONMENT",
                "CADENCE_AUDIT_HMAC_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CADENCE_MODEL_REGISTRY", str(tmp_path / "no-registry"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env={"COLUMNS": "80", **(env or {})}).invoke(app, list(args))


def _one_error_line(r: Result, *needles: str, code: int = 2) -> str:
    assert r.exit_code == code, (r.exit_code, r.output, r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --- 1. python -m -------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["cadence", "cadence.cli"])
def test_python_dash_m_runs_the_cli(module: str) -> None:
    ok = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert ok.returncode == 0 and "demo" in ok.stdout and "serve" in ok.stdout, (ok.stdout, ok.stderr)
    bad = subprocess.run([sys.executable, "-m", module, "bench", "sessions", "--seed", "-1"], cwd=ROOT,
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "--seed" in bad.stderr, bad.stderr


# --- 2. the demo's private server: development settings; refused calls are one line ----------------


def test_demo_server_ignores_the_operators_policy_and_security_settings(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of these turned the demo into a traceback: api_keys refused, 401, 422, 423, 429."""
    from cadence.settings import get_settings

    monkeypatch.chdir(tmp_path)  # a .env here is read too
    (tmp_path / ".env").write_text('CADENCE_TIER_CURRENCY_RATES={"GBP": 1.2}\n')
    for var, value in {"CADENCE_ENVIRONMENT": "production", "CADENCE_AUDIT_HMAC_KEY": "ab" * 32,
                       "CADENCE_API_KEYS": '{"k1": ["admin"]}', "CADENCE_LOCKOUT_FAILURES": "1",
                       "CADENCE_DEVICE_RATE_PER_S": "0.5"}.items():
        monkeypatch.setenv(var, value)
    get_settings.cache_clear()
    r = _cli("demo", "--json", str(tmp_path / "demo.json"))
    assert r.exit_code == 0, (r.output, r.exception)
    assert "genuine: " in r.output and "impostor: 0/4 approved" in r.output
    assert not (tmp_path / "cadence.sqlite").exists()  # its database is in its temporary folder


def test_demo_settings_read_nothing_but_what_they_are_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from server.demo import DemoSettings

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("CADENCE_LOCKOUT_FAILURES=1\n")
    monkeypatch.setenv("CADENCE_ENVIRONMENT", "production")
    monkeypatch.setenv("CADENCE_DEVICE_RATE_PER_S", "0.5")
    s = DemoSettings(model_registry=tmp_path / "reg")
    assert (s.environment, s.lockout_failures, s.device_rate_per_s) == ("development", 5, 50.0)
    assert s.model_registry == tmp_path / "reg"


@pytest.mark.parametrize(("exc", "code", "says"), [
    ("api", 1, "the demo's server: HTTP 401"),
    ("value", 2, "fusion-calibration.json: unsupported"),
    ("start", 1, "the demo's server: the API did not start"),
])
def test_demo_failures_are_one_line(exc: str, code: int, says: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import server.demo
    from server.client.api import ApiCallError

    error = {"api": ApiCallError(401, {"detail": "X-API-Key: missing\nor unknown", "code": "api_key_required"}),
             "value": ValueError("reg/fusion-calibration.json: unsupported fusion calibration version 7"),
             "start": RuntimeError("the API did not start on 127.0.0.1:1")}[exc]

    def refused(*a: object, **kw: object) -> None:
        raise error

    monkeypatch.setattr(server.demo, "run_demo", refused)
    _one_error_line(_cli("demo"), says, code=code)


# --- 3. a registry calibration that lacks a modality is not "their own calibration" -------------------


def _keystroke_only(path: Path) -> None:
    from fusion.engine import FusionEngine

    rng = np.random.default_rng(0)
    FusionEngine().fit_modality("keystroke", genuine=rng.normal(2, 1, 200), impostor=rng.normal(-2, 1, 200)).save(path)


def test_a_calibration_without_a_modality_does_not_apply_to_it(tmp_path: Path) -> None:
    from fusion.engine import FusionEngine

    _keystroke_only(tmp_path / "fusion-calibration.json")
    engine = FusionEngine.load(tmp_path / "fusion-calibration.json")
    assert engine.applies("keystroke", "default:any:1")
    assert not engine.applies("touch", "default:any:1") and not engine.applies("gait", "")


def test_demo_calibrates_itself_when_the_registry_file_lacks_a_modality(tmp_path: Path) -> None:
    from server.demo import served_models

    reg = tmp_path / "registry"
    reg.mkdir()
    _keystroke_only(reg / "fusion-calibration.json")
    assert served_models(reg)[1] is None  # was the file: touch and gait then 'uncalibrated' on every row


# --- 4. user paths are printed as they are, not read as markup ---------------------------------------


@pytest.mark.parametrize("name", ["d[/]e", "bbmas [v2]", "x[bold]y"])
def test_demo_prints_the_data_folder_as_it_is(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import server.demo
    from server.demo import DemoRow

    folder = tmp_path / name
    folder.mkdir(parents=True)  # "d[/]e" is the folder "]e" in "d["
    label = f"REAL BB-MAS data from {folder}: BB-MAS subject 1 is the owner"
    rows = [DemoRow("alice", "BB-MAS subject 1 (genuine)", True, "25.00", "approve", 0.1, "gait match +1.0", 1)]
    monkeypatch.setattr(server.demo, "run_demo", lambda data_dir, seed=0: (label, rows))
    r = CliRunner(env={"COLUMNS": "1000"}).invoke(app, ["demo", "--data-dir", str(folder)])
    assert r.exit_code == 0, (r.output, r.exception)
    assert f"Data: {label}" in r.output


def test_models_list_prints_the_registry_folder_as_it_is(tmp_path: Path) -> None:
    reg = tmp_path / "reg [v2]"
    reg.mkdir()
    r = CliRunner(env={"COLUMNS": "1000"}).invoke(app, ["models", "list", "--registry", str(reg)])
    assert r.exit_code == 0, (r.output, r.exception)
    assert f"models in {reg}" in r.output


# --- 5. usage errors: one `error:` line naming the option, exit 2; help and exits unchanged -------------


@pytest.mark.parametrize(("args", "says"), [
    (["demo", "--data-dir", "/nonexistent"], "--data-dir"),
    (["bench", "sessions", "--seed", "-1"], "--seed"),
    (["models", "train"], "--data-dir"),
    (["serve", "--port", "0"], "--port"),
    (["compliance", "export"], "USER"),
    (["demo", "--bogus"], "--bogus"),
    (["--bogus"], "--bogus"),
    (["nosuch"], "nosuch"),
])
def test_usage_errors_are_one_line(args: list[str], says: str) -> None:
    _one_error_line(_cli(*args), says)


def test_help_exits_and_interrupts_are_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    import server.demo

    assert _cli("--help").exit_code == 0 and "Usage" in _cli("--help").output
    assert _cli("models", "-h").exit_code == 0
    bare = _cli()  # no command: the help, exit 2 (click's no_args_is_help)
    assert bare.exit_code == 2 and "Usage" in bare.output and "error:" not in bare.output
    _one_error_line(_cli("bench", "nosuch"), "unknown bench")  # the command's own typer.Exit(2)

    def interrupted(*a: object, **kw: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(server.demo, "run_demo", interrupted)
    assert _cli("demo").exit_code == 130
