"""Review E of evaluation/: defects a demanding user would meet, each with the test that shows it."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from evaluation.datasets import DatasetError, load_bbmas_gait, load_bbmas_touch, load_cmu

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


# --------------------------------------------------------------------------- 2. ISO 8601 times with a zone


def _iso(start_ms: int, step_ms: int, n: int, zone: str) -> list[str]:
    """`n` ISO 8601 times `step_ms` apart from 2017-06-06 13:00 UTC, written in `zone` ("Z" or "+02:00")."""
    hours = 0 if zone == "Z" else int(zone[:3])
    t0 = np.datetime64("2017-06-06T13:00:00.000") + np.timedelta64(hours, "h") + np.timedelta64(start_ms, "ms")
    return [f"{(t0 + np.timedelta64(step_ms * k, 'ms')).astype(str)}{zone}" for k in range(n)]


@pytest.mark.parametrize("zone", ["Z", "+02:00"])
def test_gait_iso_times_with_a_zone_are_read(tmp_path: Path, zone: str) -> None:
    """ISO 8601 times with a zone ("...Z", "...+02:00") were a TypeError traceback (tz-aware minus naive)."""
    times = _iso(0, 10, 1500, zone)  # 100 Hz, 15 s
    rows = [f"{k},{0.5 * np.sin(k / 8):.4f},9.81,{0.1 * np.cos(k / 8):.4f},{t}" for k, t in enumerate(times)]
    _write_gz(tmp_path / "7_PocketPhone_Accelerometer_(Pixel_7).csv.gz", "EID,Xvalue,Yvalue,Zvalue,time\n"
              + "\n".join(rows) + "\n")
    rec = load_bbmas_gait(tmp_path)[7]
    t = rec.segments[0].t
    assert t[0] == pytest.approx(np.datetime64("2017-06-06T13:00:00", "s").astype(np.int64))  # the same instant
    assert np.median(np.diff(t)) == pytest.approx(0.01)


def test_touch_iso_times_with_zones_are_read_as_instants(tmp_path: Path) -> None:
    """Rows written in two zones (a phone that changed zone) are one clock: no traceback, no jump."""
    times = _iso(0, 10, 4, "+02:00") + _iso(40, 10, 4, "Z")
    actions = [0, 2, 2, 1, 0, 2, 2, 1]
    rows = [f"{k},{100 + k},{200 + 5 * k},0.5,3,2,0,0,{a},{t}" for k, (a, t) in enumerate(zip(actions, times))]
    _write_gz(tmp_path / "7_HandPhone_TouchEvent_(Pixel_7).csv.gz",
              "EID,Xvalue,Yvalue,pressure,touchMajor,touchMinor,pointerID,fingerOrientation,actionType,time\n"
              + "\n".join(rows) + "\n")
    s = load_bbmas_touch(tmp_path)[7]
    np.testing.assert_allclose(np.diff(s.time), 0.01, atol=1e-6)


# --------------------------------------------------------------------------- 3. bad CADENCE_* values


def test_bench_sessions_names_a_bad_cadence_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad CADENCE_SESSION_WINDOW is the one line naming the variable that every other command gives.

    It was pydantic's "1 validation error for Settings session_window ...": not the variable to fix.
    """
    from typer.testing import CliRunner

    from cadence.cli import app
    from cadence.settings import get_settings

    monkeypatch.setenv("CADENCE_SESSION_WINDOW", "abc")
    get_settings.cache_clear()
    try:
        res = CliRunner().invoke(app, ["bench", "sessions", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    finally:
        monkeypatch.delenv("CADENCE_SESSION_WINDOW")
        get_settings.cache_clear()
    assert res.exit_code == 2, res.output
    assert "CADENCE_SESSION_WINDOW='abc'" in res.output
    assert "Traceback" not in res.output
