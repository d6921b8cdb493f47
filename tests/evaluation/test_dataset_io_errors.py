"""A data folder that cannot be listed, or odd entries in it, are a `DatasetError` or a warning, never a traceback.

chmod does not stop root (the test machines run as root), so unreadable folders are simulated by
making `Path.iterdir` raise PermissionError for them, as the OS does for a folder without read access.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from evaluation import datasets
from evaluation.datasets import (
    DatasetError,
    available_subjects,
    data_folder,
    find_subject_files,
    load_cmu,
    modality_dir,
)
from tests.evaluation.test_bad_data import _keys_csv, _write_gz


def _keys_folder(root: Path, ids: list[int]) -> Path:
    for i in ids:
        _write_gz(root / f"{i}_processed.csv.gz", _keys_csv(seed=i))
    return root


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CADENCE_CACHE_DIR", str(tmp_path / "cache"))
    datasets._warned_unread.clear()  # each test sees its own warnings
    yield
    datasets._warned_unread.clear()


def _refuse_listing(monkeypatch: pytest.MonkeyPatch, *blocked: Path) -> None:
    """`Path.iterdir` raises PermissionError for `blocked` folders (what the OS does for mode 000)."""
    real = Path.iterdir
    shut = {p.resolve() for p in blocked}

    def iterdir(self: Path) -> Iterator[Path]:
        if self.resolve() in shut:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)


# --------------------------------------------------------------------------- unreadable folders


@pytest.mark.parametrize("call", ["modality_dir", "find_subject_files", "available_subjects", "resolve_folds"])
def test_an_unreadable_data_folder_is_a_dataset_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      call: str) -> None:
    from evaluation.protocols import resolve_folds

    folder = _keys_folder(tmp_path / "k", [1, 2, 3, 4])
    _refuse_listing(monkeypatch, folder)
    calls = {
        "modality_dir": lambda: modality_dir(folder, "keystroke"),
        "find_subject_files": lambda: find_subject_files(folder, "keystroke"),
        "available_subjects": lambda: available_subjects(folder, "keystroke"),  # not "no subjects"
        "resolve_folds": lambda: resolve_folds("keystroke", data_dir=folder),
    }
    with pytest.raises(DatasetError, match=f"{folder}: cannot list: Permission denied"):
        calls[call]()


def test_an_unreadable_cmu_folder_is_a_dataset_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cmu"
    folder.mkdir()
    (folder / "DSL-StrongPasswordData.csv").write_text("subject,sessionIndex,rep,H.a\ns002,1,1,0.1\n")
    _refuse_listing(monkeypatch, folder)
    with pytest.raises(DatasetError, match="cannot list: Permission denied"):
        load_cmu(folder)


def test_an_unreadable_subfolder_is_named_when_no_other_holds_the_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "root" / "other").mkdir(parents=True)
    shut = _keys_folder(tmp_path / "root" / "shut", [1, 2])
    _refuse_listing(monkeypatch, shut)
    with pytest.raises(DatasetError, match=r"readable subfolders; cannot list: shut$"):
        available_subjects(tmp_path / "root", "keystroke")
    # an unreadable folder beside the one with the files does not matter
    _keys_folder(tmp_path / "root" / "other", [3, 4])
    assert available_subjects(tmp_path / "root", "keystroke") == [3, 4]


def test_a_data_folder_that_cannot_be_checked_is_a_dataset_error(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def is_dir(self: Path) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_dir", is_dir)  # a parent folder without search (x) permission
    with pytest.raises(DatasetError, match="cannot read: Permission denied"):
        data_folder(tmp_path / "x")


def test_cli_unreadable_data_folder_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import evaluation.benches.keystroke  # noqa: F401  (registers the bench)
    from cadence.cli import app
    from cadence.settings import get_settings

    for var in ("CADENCE_MODEL_REGISTRY", "CADENCE_DATABASE_URL", "CADENCE_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    folder = _keys_folder(tmp_path / "k", [1, 2, 3, 4])
    _refuse_listing(monkeypatch, folder)
    try:
        r: Result = CliRunner(env={"COLUMNS": "400"}).invoke(
            app, ["bench", "keystroke", "--quick", "--data-dir", str(folder), "--out", str(tmp_path / "out")])
    finally:
        get_settings.cache_clear()
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    assert "error:" in r.output and "cannot list: Permission denied" in r.output, r.output


# --------------------------------------------------------------------------- files not read are named


def test_upper_case_names_and_dangling_links_are_named_not_silently_skipped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = _keys_folder(tmp_path / "k", [1, 2])
    _write_gz(folder / "12_processed.CSV.gz", _keys_csv(seed=12))
    _write_gz(folder / "13_processed.csv.GZ", _keys_csv(seed=13))
    (folder / "14_processed.csv.gz").symlink_to(tmp_path / "nonexistent.csv.gz")  # matches, links to nothing
    (folder / "S15_Processed.CSV").symlink_to(tmp_path / "nonexistent.csv")  # neither matches nor exists
    (folder / "16_processed.csv").mkdir()  # a folder with a data name: no data, not named
    (folder / "notes.csv").write_text("not data\n")
    with caplog.at_level("WARNING", logger=datasets.DATA_LOGGER):
        assert list(find_subject_files(folder, "keystroke")) == [1, 2]
    said = sorted(r.getMessage() for r in caplog.records)
    assert len(said) == 4, said
    for name in ("12_processed.CSV.gz", "13_processed.csv.GZ", "S15_Processed.CSV"):
        assert any(m.startswith(f"{folder / name}: not read: files named like") for m in said), (name, said)
    assert any(m.startswith(f"{folder / '14_processed.csv.gz'}: not read: a link to") and "does not exist" in m
               for m in said), said


# --------------------------------------------------------------------------- available_subjects


def test_available_subjects_is_empty_only_when_there_are_no_files(tmp_path: Path) -> None:
    assert available_subjects(tmp_path / "missing", "touch") == []
    (tmp_path / "empty").mkdir()
    assert available_subjects(tmp_path / "empty", "touch") == []
    _keys_folder(tmp_path / "empty", [1])  # other kinds' files: still no touch subjects
    assert available_subjects(tmp_path / "empty", "touch") == []


def test_available_subjects_does_not_hide_several_candidate_subfolders(tmp_path: Path) -> None:
    _keys_folder(tmp_path / "root" / "phone_a", [1, 2])
    _keys_folder(tmp_path / "root" / "phone_b", [3, 4])
    with pytest.raises(DatasetError, match="2 subfolders with keystroke files: phone_a, phone_b"):
        available_subjects(tmp_path / "root", "keystroke")
