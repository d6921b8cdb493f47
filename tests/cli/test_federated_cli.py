"""`cadence federated prepare` refuses bad input with the option's name, and never writes nothing silently."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cadence.cli import app


def _prepare(*args: str) -> tuple[int, str]:
    r = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["federated", "prepare", "--modality", "touch", *args])
    return r.exit_code, r.output


def test_prepare_refuses_bad_options(tmp_path: Path) -> None:
    code, out = _prepare("--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--subjects", "a,b")
    assert code == 2 and "--subjects" in out and "comma-separated subject ids" in out
    code, out = _prepare("--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert code == 2 and "not a folder" in out
    (tmp_path / "f").write_text("")
    code, out = _prepare("--data-dir", str(tmp_path), "--out", str(tmp_path / "f" / "o"))
    assert code == 2 and "cannot write to" in out


def test_prepare_names_subjects_without_data(data_dir: Path, tmp_path: Path) -> None:
    code, out = _prepare("--data-dir", str(data_dir), "--out", str(tmp_path / "o"), "--subjects", "999")
    assert code == 2 and "no touch subject among 999" in out and not list((tmp_path / "o").glob("*.npz"))
    code, out = _prepare("--data-dir", str(data_dir), "--out", str(tmp_path / "o"), "--subjects", "1,999")
    assert code == 0 and "wrote 1 device files" in out and "left out" in out and "999" in out
