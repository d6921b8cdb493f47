"""Bad paths and options are one error line and a non-zero exit, never a traceback; nothing is created first."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from cadence.cli import app


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from cadence.settings import get_settings

    for var in ("CADENCE_MODEL_REGISTRY", "CADENCE_DATABASE_URL", "CADENCE_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env={"COLUMNS": "400", **(env or {})}).invoke(app, list(args))


def _one_line_error(r: Result, *needles: str, code: int = 2) -> None:
    assert r.exit_code == code, (r.exit_code, r.output, r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    for needle in needles:
        assert needle in r.output, r.output


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    f = tmp_path / "a-file"
    f.write_text("not a folder\n")
    return f


not_root = pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")


# --- 1. federated workdirs, app data folders, the model registry of `serve` ---------------------------


def test_federated_superlink_workdir_that_is_a_file(a_file: Path) -> None:
    _one_line_error(_cli("federated", "superlink", "--workdir", str(a_file), "--port", "9399"), "is not a folder",
                    "--workdir")


@not_root
def test_federated_superlink_unwritable_workdir(tmp_path: Path) -> None:
    wd = tmp_path / "ro"
    wd.mkdir()
    wd.chmod(0o500)
    try:
        _one_line_error(_cli("federated", "superlink", "--workdir", str(wd), "--port", "9399"), "cannot write", "--workdir")
    finally:
        wd.chmod(0o700)


def test_federated_supernode_workdir_that_is_a_file(a_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import federated.features

    monkeypatch.setattr(federated.features, "read_device_file", lambda path, **kw: None)  # a valid device file
    monkeypatch.setattr("federated.deployment.run_foreground", lambda cmd, workdir: 0)  # never start Flower here
    _one_line_error(_cli("federated", "supernode", "--data", str(a_file), "--workdir", str(a_file), "--port", "9498"),
                    "is not a folder", "--workdir")


def test_federated_run_workdir_that_is_a_file(a_file: Path, tmp_path: Path) -> None:
    _one_line_error(_cli("federated", "run", "--workdir", str(a_file), "--registry", str(tmp_path / "reg")),
                    "is not a folder", "--workdir")


def test_write_connection_names_the_file_it_cannot_write(a_file: Path) -> None:
    from federated.deployment import DeploymentError, write_connection

    with pytest.raises(DeploymentError, match="cannot write"):
        write_connection(a_file, "127.0.0.1:9300")


@pytest.mark.parametrize("extra", [[], ["--screenshots", "shots"]])
def test_app_data_that_is_a_file(extra: list[str], a_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _one_line_error(_cli("app", "--app-data", str(a_file), *extra), "is not a folder", "--app-data")


def test_app_screenshots_empty_path_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _one_line_error(_cli("app", "--screenshots", ""), "empty path", "--screenshots")
    assert list(tmp_path.iterdir()) == []


def test_app_tour_that_cannot_reach_the_server_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mobile_client import tour

    def unreachable(argv: list[str]) -> int:
        raise RuntimeError("consent refused: Could not reach your bank. Check your connection and try again.")

    monkeypatch.setattr(tour, "main", unreachable)
    r = _cli("app", "--screenshots", str(tmp_path / "shots"), "--server", "http://127.0.0.1:1")
    _one_line_error(r, "could not reach the server at http://127.0.0.1:1", code=1)


def test_serve_refuses_a_model_registry_that_is_a_file(a_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cadence.settings import get_settings

    monkeypatch.setenv("CADENCE_MODEL_REGISTRY", str(a_file))
    monkeypatch.setenv("CADENCE_DATABASE_URL", f"sqlite:///{a_file.parent / 'db.sqlite'}")
    get_settings.cache_clear()
    monkeypatch.setattr("uvicorn.run", lambda *a, **kw: None)
    _one_line_error(_cli("serve", "--port", "8799"), f"model registry {a_file} is not a folder")


def test_demo_refuses_a_model_registry_that_is_a_file(a_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As `serve` does: the demo ran on the package's default scorers and said nothing."""
    from cadence.settings import get_settings

    monkeypatch.setenv("CADENCE_MODEL_REGISTRY", str(a_file))
    get_settings.cache_clear()
    _one_line_error(_cli("demo"), f"model registry {a_file} is not a folder")


def test_fusion_source_under_a_file_is_uncalibrated_not_a_crash(a_file: Path) -> None:
    from server.fusion_source import FusionSource

    assert FusionSource(a_file / "fusion-calibration.json").current() is None


# --- 3. models list/activate on a registry that is a file ------------------------------------------------


@pytest.mark.parametrize("command", [["models", "list"], ["models", "activate", "keystroke", "v0001"]])
def test_models_registry_that_is_a_file(command: list[str], a_file: Path) -> None:
    _one_line_error(_cli(*command, "--registry", str(a_file)), f"model registry {a_file} is not a folder")


# --- 4. serve --workers / --keep-alive --------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--workers", "0"], ["--workers", "-1"], ["--keep-alive", "0"], ["--keep-alive", "-1"]])
def test_serve_refuses_non_positive_workers_and_keep_alive(args: list[str], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    def started(*a: object, **kw: object) -> None:
        raise AssertionError("the server was started")

    monkeypatch.setattr(uvicorn, "run", started)
    monkeypatch.chdir(tmp_path)
    _one_line_error(_cli("serve", *args), args[0])


# --- 5. models train checks the data before creating anything --------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--max-subjects", "3"]])
def test_models_train_creates_nothing_before_refusing(extra: list[str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    empty, cwd = tmp_path / "empty", tmp_path / "cwd"
    empty.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    r = _cli("models", "train", "--data-dir", str(empty), "-m", "keystroke", *extra)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert list(cwd.iterdir()) == [], "created before refusing: " + ", ".join(p.name for p in cwd.iterdir())


def test_models_train_max_subjects_says_training_needs_six() -> None:
    r = _cli("models", "train", "--data-dir", ".", "--max-subjects", "5")
    _one_line_error(r, "--max-subjects", "6")


# --- 2. calibrate compares with the people a model was trained on, not the whole folder ---------------


def _keystroke_folder(path: Path, subjects: range) -> Path:
    path.mkdir()
    for s in subjects:
        (path / f"{s}_processed.csv").write_text(f"key,time_since_beginning,press_to_press,hold_time\na,{s},0.1,0.2\n")
    return path


def test_calibration_people_are_the_ones_trained_on(tmp_path: Path) -> None:
    from server.training import _refuse_training_people

    folder = _keystroke_folder(tmp_path / "people", range(1, 9))
    # trained on 1..4 of the folder: its other people are strangers to the model
    _refuse_training_people("keystroke", "v0002", f"central:{folder}", folder, [5, 6, 7, 8], trained_subjects=[1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"holds 1 of the people .*subjects 4\b"):
        _refuse_training_people("keystroke", "v0002", f"central:{folder}", folder, [4, 5, 6], trained_subjects=[1, 2, 3, 4])
    with pytest.raises(ValueError, match="holds 3 of the people"):  # ids not recorded (older model): the folder
        _refuse_training_people("keystroke", "v0002", f"central:{folder}", folder, [4, 5, 6])


def test_training_records_the_subjects_it_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    import evaluation.datasets
    import evaluation.pair_scores
    from modalities.base import ScaledManhattan
    from server.training import TRAINING_SUBJECTS_FILE, _training_subjects, train_and_publish

    rng = np.random.default_rng(0)
    monkeypatch.setattr(evaluation.datasets, "available_subjects", lambda data_dir, m: list(range(1, 21)))
    monkeypatch.setattr(evaluation.pair_scores, "pair_scores", lambda m, *a, **kw: m)
    monkeypatch.setattr(evaluation.pair_scores, "genuine_impostor",
                        lambda m: (rng.normal(1.0, 1.0, 200), rng.normal(-1.0, 1.0, 200)))
    monkeypatch.setattr("modalities.keystroke.train_scorer", lambda data_dir, subjects: ScaledManhattan(min_scale=0.5))
    rep = train_and_publish(tmp_path, tmp_path / "reg", modalities=["keystroke"], activate=False, max_subjects=7)
    version_dir = tmp_path / "reg" / "keystroke" / rep.versions["keystroke"]
    ids = json.loads((version_dir / TRAINING_SUBJECTS_FILE).read_text())
    assert len(ids) == 7 and set(ids) <= set(range(1, 21))
    assert _training_subjects(version_dir) == ids


def test_every_command_takes_dash_h_for_help() -> None:
    """`-h` worked only for `cadence bench`; every other command answered "No such option '-h'"."""
    from typer.testing import CliRunner

    from cadence.cli import app

    for command in ([], ["serve"], ["models", "list"], ["audit", "verify"], ["compliance", "purge"],
                    ["federated", "superlink"], ["app"], ["demo"], ["bench"]):
        out = CliRunner().invoke(app, [*command, "-h"])
        assert out.exit_code == 0 and "Usage" in out.output, (command, out.output)


@pytest.mark.parametrize("args", [("models", "list", "--registry", ""), ("models", "list", "--registry", " "),
                                  ("models", "activate", "keystroke", "v0001", "--registry", "")])
def test_an_empty_registry_is_not_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     args: tuple[str, ...]) -> None:
    monkeypatch.chdir(tmp_path)
    _one_line_error(_cli(*args), "--registry", "empty path")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_registry_setting_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cadence.cli.main` prints a SettingsError as one `error:` line (exit 2)."""
    from cadence.settings import SettingsError, get_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CADENCE_MODEL_REGISTRY", "")
    with pytest.raises(SettingsError, match="CADENCE_MODEL_REGISTRY.*empty path"):
        get_settings()
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_file_in_a_folder_that_cannot_be_written_is_named_with_the_read_only_form(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backup on a read-only mount read "unable to open database file" of a file that is there."""
    import os

    from cadence.commands import database

    db = tmp_path / "backup.sqlite"
    db.write_bytes(b"")
    url = f"sqlite:///{db}"
    assert database._read_only_hint(url, "unable to open database file") == ""  # a writable folder: no hint
    monkeypatch.setattr(database, "_read_only_mount", lambda folder: folder == str(tmp_path))
    hint = database._read_only_hint(url, "unable to open database file")
    assert f"its folder {tmp_path} cannot be written" in hint
    assert f"'sqlite:///file:{db}?mode=ro&immutable=1&uri=true'" in hint
    assert database._read_only_hint(url, "database is locked") == ""  # another failure: no hint
    assert database._read_only_hint(f"sqlite:///{tmp_path / 'missing.sqlite'}", "unable to open database file") == ""
    assert os.path.isfile(db)
