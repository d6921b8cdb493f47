"""Bad input to the CLI is one `error:` line naming the problem and exit 2: no traceback, hang or wrong result."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cadence.cli import app
from cadence.settings import SettingsError, get_settings

WIDE = {"COLUMNS": "400"}


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("var", ["CADENCE_API_KEYS", "CADENCE_HOLDER_MODULES"])
def test_malformed_json_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch, fresh_settings: None,
                                                   var: str) -> None:
    monkeypatch.setenv(var, "notjson")
    with pytest.raises(SettingsError, match=f"{var} .*not valid JSON"):
        get_settings()


@pytest.mark.parametrize("var,value", [("CADENCE_MAX_BODY_BYTES", "0"), ("CADENCE_LOCKOUT_FAILURES", "0"),
                                       ("CADENCE_DEVICE_RATE_PER_S", "-1"), ("CADENCE_API_WORKERS", "0"),
                                       ("CADENCE_ENROL_MIN_WINDOWS", "0"), ("CADENCE_ENROL_MIN_QUALITY", "2"),
                                       ("CADENCE_SIGNATURE_MAX_SKEW_S", "0"), ("CADENCE_DEVICE_RATE_PER_S", "nan")])
def test_out_of_range_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch, fresh_settings: None,
                                                 var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=var):
        get_settings()


def test_device_rate_zero_still_means_no_limit(monkeypatch: pytest.MonkeyPatch, fresh_settings: None) -> None:
    from server.services.devices import RateLimiter

    monkeypatch.setenv("CADENCE_DEVICE_RATE_PER_S", "0")
    limiter = RateLimiter(get_settings().device_rate_per_s)
    assert all(limiter.allow("k") for _ in range(1000))


# --------------------------------------------------------------------------- database, demo


def test_file_that_is_not_a_database(tmp_path: Path) -> None:
    bad = tmp_path / "notdb.sqlite"
    bad.write_text("garbage\n" * 100)
    r = CliRunner(env=WIDE).invoke(app, ["audit", "verify", "--database-url", f"sqlite:///{bad}"])
    assert r.exit_code == 2 and "is not usable: file is not a database" in r.output, r.output
    assert isinstance(r.exception, SystemExit)


@pytest.mark.parametrize("target", ["missing/d.json", "."])
def test_demo_json_path_checked_before_the_demo(tmp_path: Path, target: str) -> None:
    r = CliRunner(env=WIDE).invoke(app, ["demo", "--json", str(tmp_path / target)])
    assert r.exit_code == 2 and "--json" in r.output and "Data:" not in r.output, r.output


# --------------------------------------------------------------------------- bench options


def test_unknown_bench_makes_no_folder(tmp_path: Path) -> None:
    r = CliRunner(env=WIDE).invoke(app, ["bench", "nosuch", "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "unknown bench 'nosuch'" in r.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("opt", ["--data-dir", "--train-dir", "--eval-dir", "--out"])
def test_empty_path_is_refused_not_read_as_the_current_folder(tmp_path: Path, opt: str) -> None:
    r = CliRunner(env=WIDE).invoke(app, ["bench", "keystroke", opt, "", "--out" if opt != "--out" else "--quick",
                                         *([str(tmp_path)] if opt != "--out" else [])])
    assert r.exit_code == 2 and "empty path" in r.output and opt in r.output, r.output


def test_bench_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "1_processed.csv.gz").write_bytes(b"key,time\n")  # not gzip
    (tmp_path / "k" / "2_processed.csv.gz").write_bytes(gzip.compress(b"key,time\na,1\n"))
    r = CliRunner(env={"COLUMNS": "40"}).invoke(app, ["bench", "keystroke", "--data-dir", str(tmp_path / "k"),
                                                      "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith("error: ") and "need at least 4 subjects" in r.output


@pytest.mark.parametrize("var,value,says", [("CADENCE_BENCH_API_RATE", "0", "must be between"),
                                            ("CADENCE_BENCH_API_RATE", "abc", "not a number"),
                                            ("CADENCE_BENCH_API_WORKERS", "abc", "not an integer"),
                                            ("CADENCE_BENCH_API_WORKERS", "0", "must be between"),
                                            ("CADENCE_BENCH_API_PIN", "maybe", "expected 1 or 0"),
                                            ("CADENCE_BENCH_API_SECONDS", "0.1", "must be between"),
                                            ("CADENCE_BENCH_API_SECONDS", "nan", "must be between")])
def test_api_bench_settings_are_checked_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              var: str, value: str, says: str) -> None:
    monkeypatch.setenv(var, value)
    r = CliRunner(env=WIDE).invoke(app, ["bench", "api", "--quick", "--out", str(tmp_path)])
    assert r.exit_code == 2 and f"{var}={value!r}: {says}" in r.output, r.output
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- SIGTERM

_SERVER_UNDER_SIGTERM = textwrap.dedent("""
    import tempfile, time
    from pathlib import Path
    from evaluation.host_stalls import HostStallProbe
    from server.loadgen import server_process, sigterm_unwinds

    with sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="cadence-bench-api-") as tmp:
        env = {"CADENCE_API_WORKERS": "2", "CADENCE_API_PIN_WORKERS": "1"}
        with server_process(Path(tmp), env=env) as srv, HostStallProbe(Path(tmp) / "stalls.txt"):
            print(tmp, flush=True)
            time.sleep(60)
""")


def _descendants(pid: int) -> set[int]:
    from server.loadgen import _proc_table

    children, _ = _proc_table()
    out, stack = set(), [pid]
    while stack:
        for kid in children.get(stack.pop(), []):
            out.add(kid)
            stack.append(kid)
    return out


def _running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (Linux)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the server's processes")
def test_sigterm_stops_server_probe_and_removes_files(tmp_path: Path) -> None:
    """What `cadence bench api` runs: SIGTERM (timeout, a CI cancel) must clean up as Ctrl-C does."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "CADENCE_MODEL_REGISTRY": str(tmp_path / "registry")}
    proc = subprocess.Popen([sys.executable, "-c", _SERVER_UNDER_SIGTERM], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        work = Path(proc.stdout.readline().strip())
        assert work.is_dir(), "the server did not start"
        pinned = 2 if len(os.sched_getaffinity(0)) >= 2 else 0  # workers claim CPUs through lock files
        deadline = time.monotonic() + 10
        while len(list(tmp_path.glob("cadence-cpu-*.lock"))) < pinned and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(list(tmp_path.glob("cadence-cpu-*.lock"))) == pinned
        kids = _descendants(proc.pid)
        assert len(kids) >= 3  # the server, its workers, the stall probe
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not _still_running(kids), f"left running: {_still_running(kids)}"
    assert not work.exists()
    assert not list(tmp_path.glob("cadence-cpu-*.lock"))


def _still_running(pids: set[int], deadline_s: float = 10.0) -> list[int]:
    """Those of `pids` still running once they all stopped or `deadline_s` passed (exits take a moment)."""
    deadline = time.monotonic() + deadline_s
    while (alive := [k for k in pids if _running(k)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the server's processes")
def test_kill_takes_the_server_workers_down_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash (`ServerProcess.kill`) must not leave uvicorn workers running on CPUs whose claims are deleted."""
    from server.loadgen import start_server

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the workers' CPU claim files
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setenv("CADENCE_MODEL_REGISTRY", str(tmp_path / "registry"))
    srv = start_server(tmp_path, env={"CADENCE_API_WORKERS": "2"})
    try:
        workers = _descendants(srv.proc.pid)
        assert len(workers) >= 2, "the server started no workers"
        srv.kill()
        assert srv.proc.poll() is not None
        assert not _still_running(workers), f"workers left running: {_still_running(workers)}"
    finally:
        srv.stop()
    assert not list(tmp_path.glob("cadence-cpu-*.lock"))


def test_nested_sigterm_blocks_ignore_a_second_sigterm_until_all_cleaned_up() -> None:
    """`bench api` nests `server_process` in its own block: the outer clean-up must finish too."""
    from server.loadgen import Terminated, sigterm_unwinds

    before = signal.getsignal(signal.SIGTERM)
    cleaned: list[str] = []
    with pytest.raises(Terminated) as err:
        with sigterm_unwinds():
            try:
                with sigterm_unwinds():
                    try:
                        signal.raise_signal(signal.SIGTERM)
                        pytest.fail("SIGTERM did not unwind")
                    finally:
                        signal.raise_signal(signal.SIGTERM)  # during the inner clean-up
                        cleaned.append("inner")
            finally:
                signal.raise_signal(signal.SIGTERM)  # during the outer clean-up (stall probe, temp folder)
                cleaned.append("outer")
    assert cleaned == ["inner", "outer"] and err.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(Terminated), sigterm_unwinds():  # once left, a new block unwinds again
        signal.raise_signal(signal.SIGTERM)


# --------------------------------------------------------------------------- operator commands


def test_compliance_export_and_erase_refuse_an_empty_user(tmp_path: Path) -> None:
    for args in (["compliance", "export", ""], ["compliance", "erase", " ", "-y"]):
        r = CliRunner().invoke(app, [*args, "--database-url", f"sqlite:///{tmp_path / 'none.sqlite'}"], env=WIDE)
        assert r.exit_code == 2 and "non-empty user id" in r.output and "Traceback" not in r.output, r.output
    # an id pasted with a space around it read "no data held for dave": an erasure request closed wrongly
    for args in (["compliance", "export", "dave "], ["compliance", "erase", " dave", "-y"]):
        r = CliRunner().invoke(app, [*args, "--database-url", f"sqlite:///{tmp_path / 'none.sqlite'}"], env=WIDE)
        said = " ".join(r.output.split())
        assert r.exit_code == 2 and "white space" in said and "did you mean 'dave'?" in said, r.output
        assert "no data held" not in said
    # a Latin-1 byte on a UTF-8 command line arrives as a lone surrogate: it raised UnicodeEncodeError
    for args in (["compliance", "export", "al\udcffice"], ["compliance", "erase", "al\udcffice", "-y"]):
        r = CliRunner().invoke(app, [*args, "--database-url", f"sqlite:///{tmp_path / 'none.sqlite'}"], env=WIDE)
        assert r.exit_code == 2 and "not UTF-8 text" in r.output and "Traceback" not in r.output, r.output


def test_compliance_export_checks_out_before_the_export(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["compliance", "export", "bob", "--out", str(tmp_path / "no" / "x.json"),
                                 "--database-url", f"sqlite:///{tmp_path / 'none.sqlite'}"], env=WIDE)
    assert r.exit_code == 2 and "does not exist" in r.output, r.output


def test_serve_refuses_an_unknown_log_level() -> None:
    r = CliRunner().invoke(app, ["serve", "--log-level", "bogus"], env=WIDE)
    assert r.exit_code == 2 and "'bogus' is not one of" in r.output, r.output


def test_models_list_names_a_damaged_version_and_keeps_the_others(tmp_path: Path) -> None:
    from modalities.registry import ModelRegistry
    from modalities.touch.scorers import TouchManhattan

    reg = ModelRegistry(tmp_path / "reg")
    for _ in range(2):
        reg.publish("touch", TouchManhattan(), metrics={}, card="# c", source="t")
    (reg.root / "touch" / "v0001" / "meta.json").write_text("{bad")
    r = CliRunner().invoke(app, ["models", "list", "--registry", str(reg.root)], env=WIDE)
    assert r.exit_code == 0 and "v0002" in r.output and "Traceback" not in r.output, r.output
    assert "left out" in r.output and "v0001/meta.json: not readable JSON" in r.output


def test_models_calibrate_on_a_folder_without_data_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("CADENCE_DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    r = CliRunner().invoke(app, ["models", "calibrate", "keystroke", "--data-dir", str(tmp_path / "empty"),
                                 "--registry", str(tmp_path / "reg")], env=WIDE)
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output, r.output
    # nothing to calibrate: refused before the audit database is made
    assert "no active keystroke model" in r.output and not (tmp_path / "db.sqlite").exists(), r.output


def test_a_damaged_fusion_calibration_file_is_named(tmp_path: Path) -> None:
    from fusion.engine import FusionEngine

    bad = tmp_path / "fusion-calibration.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="fusion-calibration.json: not a fusion calibration file"):
        FusionEngine.load(bad)


def test_fusion_calibration_saves_from_threads_do_not_collide(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from fusion.engine import FusionEngine

    path = tmp_path / "fusion-calibration.json"
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: FusionEngine().save(path), range(64)))
    assert FusionEngine.load(path).calibrators == {} and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_compliance_commands_refuse_a_missing_data_holder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          fresh_settings: None) -> None:
    """An erasure that silently skipped a holder would leave that holder's personal data behind."""
    monkeypatch.setenv("CADENCE_HOLDER_MODULES", '["server.holderz"]')
    r = CliRunner().invoke(app, ["compliance", "erase", "bob", "-y", "--database-url", f"sqlite:///{tmp_path / 'x.sqlite'}"],
                           env=WIDE)
    assert r.exit_code == 2 and "server.holderz" in r.output and "left out" in r.output, r.output


def test_federated_ports_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["federated", "superlink", "--workdir", str(tmp_path / "fw"), "--port", "99999"], env=WIDE)
    assert r.exit_code == 2 and not (tmp_path / "fw").exists(), r.output


def test_models_list_piped_keeps_every_value_whole(tmp_path: Path) -> None:
    """Off a terminal rich used 80 columns and cut values ("modal…"): output read by scripts must be whole."""
    from modalities.registry import ModelRegistry
    from modalities.touch.scorers import TouchManhattan

    reg = ModelRegistry(tmp_path / "a-registry-folder-with-a-rather-long-name")
    reg.publish("touch", TouchManhattan(), metrics={"eer": 0.1234, "subjects": 46}, card="# c",
                source="federated run 123")
    r = CliRunner().invoke(app, ["models", "list", "--registry", str(reg.root)], env={"COLUMNS": None})
    assert r.exit_code == 0, r.output
    assert "…" not in r.output, r.output
    for whole in ("modality", "version", "calibrated", "feature version", "touch-manhattan", "federated run 123",
                  "eer=0.1234", str(reg.root)):
        assert whole in r.output, (whole, r.output)
