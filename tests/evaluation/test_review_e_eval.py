"""Review E of evaluation/: defects a demanding user would meet, each with the test that shows it."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from evaluation.datasets import DatasetError, load_cmu

CMU_HEADER = "subject,sessionIndex,rep,H.a,DD.a.b,UD.a.b,H.b\n"  # the CMU layout of a 2-key text


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADENCE_CACHE_DIR", str(tmp_path / "cache"))


def _write_gz(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()))
    return path


def _cmu_rows(cells: dict[tuple[int, int], str] | None = None) -> str:
    """Two subjects, 12 repetitions each; `cells` replaces the (row, column) cell of those data rows."""
    rows = []
    for s in (2, 3):
        for r in range(1, 13):
            rows.append([f"s00{s}", "1", str(r), "0.1", "0.2", "0.1", "0.1"])
    for (i, c), v in (cells or {}).items():
        rows[i][c] = v
    return CMU_HEADER + "".join(",".join(r) + "\n" for r in rows)


# --------------------------------------------------------------------------- 1. CMU order columns


@pytest.mark.parametrize(("cell", "value", "named"), [
    ((4, 2), "x", r"column rep, data row 5: 'x' is not a number"),
    ((4, 2), "", r"column rep, data row 5: empty"),
    ((4, 1), "", r"column sessionIndex, data row 5: empty"),
    ((4, 2), "2.5", r"column rep, data row 5: 2\.5 is not a whole number"),
    ((4, 0), "", r"column subject, data row 5: empty"),
])
def test_cmu_session_and_rep_that_are_no_whole_numbers_are_refused(tmp_path: Path, cell: tuple[int, int], value: str,
                                                                  named: str) -> None:
    """A (sessionIndex, rep) cell that is no whole number, or an empty subject, is refused naming it.

    keystroke-cmu enrols on the first 200 rows ordered by (sessionIndex, rep): one text cell made the
    column text, sorted 1, 10, 11, ..., 2 (another enrolment set, no word said); an empty one sorted last.
    """
    path = _write_gz(tmp_path / "DSL-StrongPasswordData.csv.gz", _cmu_rows({cell: value}))
    with pytest.raises(DatasetError, match=rf"^{path}: {named}"):
        load_cmu(tmp_path)


def test_cmu_session_and_rep_are_read_as_numbers(tmp_path: Path) -> None:
    _write_gz(tmp_path / "DSL-StrongPasswordData.csv.gz", _cmu_rows())
    df = load_cmu(tmp_path)
    rows = df[df["subject"] == "s002"].sort_values(["sessionIndex", "rep"])
    assert rows["rep"].tolist() == list(range(1, 13))
