"""Review of the CLI's signals and paths.

* SIGTERM during `cadence demo` unwinds like Ctrl-C: its temporary folder (a database of
  enrolled templates, a calibration) and its server go;
* `cadence demo --seed` out of numpy's range is refused at once, by name;
* '' (the current folder, as a Path) and a missing folder are refused by the option's name:
  `federated prepare --out/--data-dir`, `--workdir` of superlink/supernode/run/status,
  `app --data-dir`, `demo --json`;
* `federated status` exits non-zero when there is no status to show, and names a damaged file;
* `federated supernode --data <a folder>` says it is a folder, before anything starts.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cadence.cli import app
from tests.processes import sigterm_when

CADENCE = Path(sys.executable).with_name("cadence")


def _cli(*args: str) -> tuple[int, str]:
    r = CliRunner(env={"COLUMNS": "400"}).invoke(app, list(args))
    return r.exit_code, r.output


# ----------------------------------------------------------------------------- 1. demo and SIGTERM


def test_sigterm_during_the_demo_removes_its_temporary_folder(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp), CADENCE_MODEL_REGISTRY=str(tmp_path / "registry"),
               CADENCE_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}")
    env.pop("CADENCE_DATA_DIR", None)  # the synthetic demo
    rc, _, err = sigterm_when([str(CADENCE), "demo"], lambda: bool(list(tmp.glob("cadence-demo-*/demo.sqlite"))),
                              env=env, what="the demo")  # its server is up (it made its database): half-way
    assert rc == 143, err[-2000:]  # 128 + SIGTERM, as any program stopped by it
    assert not list(tmp.glob("cadence-demo-*")), "SIGTERM left the demo's folder (enrolled templates) behind"
    assert "Traceback" not in err, err[-2000:]


# ----------------------------------------------------------------------------- 3. demo --seed


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_demo_refuses_a_seed_out_of_range_by_name_at_once(seed: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[object] = []
    monkeypatch.setattr("server.demo.run_demo", lambda *a, **k: ran.append(a) or ("x", []))
    code, out = _cli("demo", "--seed", seed)
    assert code == 2 and "--seed" in out and not ran, out


# ----------------------------------------------------------------------------- 4. '' and missing folders


@pytest.fixture()
def no_flower(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Nothing of Flower starts: the commands it would run, and no run submitted."""
    from federated import deployment as d
    from tests.federated.conftest import flower_commands

    cmds = flower_commands(monkeypatch)
    monkeypatch.setattr(d, "submit_run", lambda *a, **k: (_ for _ in ()).throw(d.DeploymentError("no SuperLink")))
    monkeypatch.setattr(d, "check_port_free", lambda *a, **k: None)
    return cmds


def _refused(res: tuple[int, str], option: str, what: str) -> None:
    code, out = res
    assert code == 2, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and option in errors[0] and what in errors[0], out


@pytest.mark.parametrize("args", [
    ("federated", "prepare", "--modality", "gait", "--data-dir", "{data}", "--out", ""),
    ("federated", "prepare", "--modality", "gait", "--data-dir", "", "--out", "{tmp}/o"),
    ("federated", "superlink", "--workdir", ""),
    ("federated", "supernode", "--workdir", "", "--data", "{data}/device-1.npz", "--insecure"),
    ("federated", "run", "--workdir", "", "--registry", "{tmp}/registry"),
    ("federated", "status", "--workdir", ""),
    ("demo", "--json", ""),
])
def test_an_empty_path_is_refused_by_name_and_nothing_is_written_here(args: tuple[str, ...], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       no_flower: list[list[str]]) -> None:
    data, here = tmp_path / "data", tmp_path / "here"
    data.mkdir()
    (data / "device-1.npz").write_bytes(b"")
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setattr("server.demo.run_demo", lambda *a, **k: ("x", []))
    argv = [a.format(data=data, tmp=tmp_path) for a in args]
    option = args[args.index("") - 1]
    _refused(_cli(*argv), option, "empty path")
    assert not list(here.iterdir()), "written into the current folder"
    assert not no_flower, "a Flower command was started"


def test_app_refuses_a_data_dir_that_is_not_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mobile_client import tour

    toured: list[list[str]] = []
    monkeypatch.setattr(tour, "main", lambda argv: toured.append(argv) or 0)
    _refused(_cli("app", "--screenshots", str(tmp_path / "O"), "--data-dir", str(tmp_path / "missing")),
             "--data-dir", "is not a folder")
    assert not toured  # not a synthetic walk after a warning


# ----------------------------------------------------------------------------- 5. federated status


def test_status_of_a_workdir_that_is_not_a_folder_is_a_usage_error(tmp_path: Path) -> None:
    _refused(_cli("federated", "status", "--workdir", str(tmp_path / "typo")), "--workdir", "is not a folder")
    (tmp_path / "f").write_text("")
    _refused(_cli("federated", "status", "--workdir", str(tmp_path / "f"), "--run-id", "42"), "--workdir",
             "is not a folder")
    _refused(_cli("federated", "status", "--workdir", str(tmp_path), "--run-id", "../x"), "--run-id", "number")


def test_status_without_a_status_file_exits_1(tmp_path: Path) -> None:
    wd = tmp_path / "fw"
    wd.mkdir()
    code, out = _cli("federated", "status", "--workdir", str(wd))
    assert code == 1 and "error: no run submitted from" in out, out
    (wd / "latest-run.json").write_text('{"run_id": "5"}')
    (wd / "status-5.json").write_text('{"state": "running", "round": 1}')
    code, out = _cli("federated", "status", "--workdir", str(wd))
    assert code == 0 and json.loads(out)["state"] == "running", out
    code, out = _cli("federated", "status", "--workdir", str(wd), "--run-id", "42")  # a typo
    assert code == 1 and "no status of run 42" in out, out
    (wd / "status-5.json").unlink()  # submitted, its ServerApp not started yet
    code, out = _cli("federated", "status", "--workdir", str(wd))
    assert code == 1 and "run 5" in out and "has written no status yet" in out, out


def test_status_names_a_damaged_status_file(tmp_path: Path) -> None:
    wd = tmp_path / "fw"
    wd.mkdir()
    (wd / "latest-run.json").write_text('{"run_id": "5"}')
    (wd / "status-5.json").write_text('{"state": "runn')
    code, out = _cli("federated", "status", "--workdir", str(wd))
    assert code == 2 and "damaged: not readable JSON" in out and "being written" not in out, out


def test_a_status_file_caught_mid_write_is_read_again(tmp_path: Path) -> None:
    from federated.deployment import load_status

    path = tmp_path / "status-5.json"
    path.write_text('{"state": "runn')
    threading.Timer(0.2, lambda: path.write_text('{"state": "running"}')).start()
    assert load_status(path, settle_s=5.0, poll=0.02) == {"state": "running"}


# ----------------------------------------------------------------------------- 6. supernode --data <a folder>


def test_supernode_says_a_data_folder_is_a_folder_before_starting(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from federated import deployment as d

    started: list[object] = []
    monkeypatch.setattr(d, "run_foreground", lambda *a, **k: started.append(a) or 0)
    monkeypatch.chdir(tmp_path)
    _refused(_cli("federated", "supernode", "--data", str(tmp_path), "--insecure", "--port", str(d.free_port())),
             "--data", "is a folder, not a device file")
    assert not started and not (tmp_path / "federated-work").exists()
