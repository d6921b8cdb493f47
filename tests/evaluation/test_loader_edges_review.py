"""Loader edge cases found in review: each damaged file is a clear `DatasetError` naming it, or loads right.

Every test builds its own small file in the dataset's layout (nothing here reads the shared datasets).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation.bench import BenchContext, run_bench
from evaluation.datasets import (
    DATA_LOGGER,
    DatasetError,
    load_bbmas_gait,
    load_bbmas_keystrokes,
    load_bbmas_touch,
)
from tests.evaluation.test_bad_data import CMU_HEADER, _keys_csv, _write_gz
from tests.evaluation.test_bench_guards import (  # noqa: F401  (_own_cache: autouse, a cache of each test's own)
    _gait_csv,
    _own_cache,
    _touch_csv,
    _touch_file,
    _touch_rows,
)


def _one_line_naming(err: pytest.ExceptionInfo[DatasetError], path: Path) -> str:
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg, msg
    return msg


def _gait_epoch(seconds: float = 60.0, rate: float = 50.0, scale: float = 1.0, ms: bool = True) -> pd.DataFrame:
    """A walk-like recording in the 'new phone' layout: epoch milliseconds (or seconds), x/y/z in m/s^2."""
    rng = np.random.default_rng(0)
    t = 1.49e9 + np.arange(int(seconds * rate)) / rate
    xyz = (rng.normal(0, 1, (t.size, 3)) + [0, 9.8, 0]) * scale
    stamp = np.round(t * 1000).astype(np.int64) if ms else np.round(t, 3)
    return pd.DataFrame({"timestamp": stamp, "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]})


# --------------------------------------------------------------------------- 1. gait time unit, skipped subject


def test_gait_rows_in_reverse_time_order_keep_their_unit(tmp_path: Path) -> None:
    df = _gait_epoch(60.0, ms=False).iloc[::-1]  # epoch seconds, newest row first: every difference is negative
    folder = tmp_path / "g"
    folder.mkdir()
    df.to_csv(folder / "3_PocketPhone_Accelerometer_(Pixel).csv", index=False)
    rec = load_bbmas_gait(folder)[3]  # was: seconds read as ms, 60 s as 0.06 s, subject dropped
    assert rec.duration == pytest.approx(60.0 - 1 / 50.0, abs=0.01)


def test_gait_subject_without_a_long_segment_is_a_data_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write_gz(tmp_path / "g" / "4_PocketPhone_Accelerometer_(X).csv.gz", _gait_csv(100))  # 2 s at 50 Hz
    with caplog.at_level(logging.WARNING):
        assert load_bbmas_gait(path.parent) == {}
    notes = [r.getMessage() for r in caplog.records if r.name == DATA_LOGGER]
    assert any(str(path) in n and "no gait segment of 5 s or more" in n and "skipped" in n for n in notes), notes


# --------------------------------------------------------------------------- 2. CMU subject ids


def _cmu_file(folder: Path, names: list[str], reps: int = 400) -> Path:
    rng = np.random.default_rng(0)
    rows = [f"{s},{1 + r // 50},{1 + r % 50},{rng.uniform(0.05, 0.15):.4f},{rng.uniform(0.1, 0.4):.4f},"
            f"{rng.uniform(0.0, 0.3):.4f},{rng.uniform(0.05, 0.15):.4f}\n" for s in names for r in range(reps)]
    return _write_gz(folder / "DSL-StrongPasswordData.csv.gz", CMU_HEADER + "".join(rows))


def test_cmu_names_with_the_same_digits_are_refused(tmp_path: Path) -> None:
    import evaluation.benches.keystroke  # noqa: F401  (registers the bench)

    path = _cmu_file(tmp_path / "cmu", ["s002", "s003", "s004", "s005", "t002"])
    with pytest.raises(DatasetError, match=r"subjects 's002' and 't002' both map to subject id 2") as err:
        run_bench("keystroke-cmu", BenchContext(data_dir=path.parent, out=tmp_path / "o", progress=False),
                  print_table=False)
    _one_line_naming(err, path)


def test_cmu_file_with_one_subject_is_refused(tmp_path: Path) -> None:
    import evaluation.benches.keystroke  # noqa: F401  (registers the bench)

    path = _cmu_file(tmp_path / "cmu", ["s002"])
    with pytest.raises(DatasetError, match=r"1 subject \(s002\); keystroke-cmu needs at least 6") as err:
        run_bench("keystroke-cmu", BenchContext(data_dir=path.parent, out=tmp_path / "o", progress=False),
                  print_table=False)
    _one_line_naming(err, path)


# --------------------------------------------------------------------------- 3. BB-MAS keystroke values


def _damaged_keys(tmp_path: Path, row: int, col: int, value: str, also_empty_time: bool = True) -> Path:
    lines = _keys_csv(40).splitlines(keepends=True)
    if also_empty_time:  # an empty time_since_beginning: press times are rebuilt from hold_time
        f = lines[3].split(",")
        lines[3] = ",".join([f[0], "", *f[2:]])
    f = lines[row].split(",")
    f[col] = value
    lines[row] = ",".join(f)
    if not lines[row].endswith("\n"):
        lines[row] += "\n"
    return _write_gz(tmp_path / "k" / "5_processed.csv.gz", "".join(lines))


@pytest.mark.parametrize(("col", "name"), [(3, "hold_time"), (2, "press_to_press")])
def test_keystroke_absurd_interval_names_file_column_and_row(tmp_path: Path, col: int, name: str) -> None:
    path = _damaged_keys(tmp_path, 10, col, "1e308")
    with pytest.raises(DatasetError, match=rf"column {name}, data row 10: 1e\+308 s is not a plausible") as err:
        load_bbmas_keystrokes(path.parent)
    _one_line_naming(err, path)


def test_keystroke_absurd_jump_of_time_since_beginning_is_refused(tmp_path: Path) -> None:
    path = _damaged_keys(tmp_path, 40, 1, "1e308", also_empty_time=False)  # the last key, so nothing goes back
    with pytest.raises(DatasetError, match=r"column time_since_beginning, data row 40: 1e\+308 is more than 3600 s"):
        load_bbmas_keystrokes(path.parent)


# --------------------------------------------------------------------------- 4. touch epoch times


@pytest.mark.parametrize("unit", [1.0, 1e3])
def test_touch_epoch_numbers_are_read_as_times(tmp_path: Path, unit: float) -> None:
    rows = _touch_rows(8)
    ref = load_bbmas_touch(_touch_file(tmp_path / "ref", 1, _touch_csv(rows)).parent)[1]
    lines = _touch_csv(rows).splitlines(keepends=True)
    out = [lines[0]]
    for line, (t, *_rest) in zip(lines[1:], rows):
        f = line.rstrip("\n").split(",")
        out.append(",".join([*f[:-1], f"{round(t * 1000) * unit / 1000:.3f}"]) + "\n")
    stream = load_bbmas_touch(_touch_file(tmp_path / "epoch", 1, "".join(out)).parent)[1]
    assert np.allclose(stream.time, ref.time, atol=1e-3) and len(stream) == len(ref)


def test_touch_times_all_unreadable_say_how_many(tmp_path: Path) -> None:
    lines = _touch_csv(_touch_rows(3)).splitlines(keepends=True)
    out = [lines[0]] + [",".join([*ln.split(",")[:-1], "noon\n"]) for ln in lines[1:]]
    path = _touch_file(tmp_path / "t", 1, "".join(out))
    with pytest.raises(DatasetError, match=r"column time: 18 of 18 times unreadable \(expected .*epoch"):
        load_bbmas_touch(path.parent)


# --------------------------------------------------------------------------- 5, 6. touch values


def _touch_with(tmp_path: Path, col: int, value: str, row: int = 5) -> Path:
    lines = _touch_csv(_touch_rows(5)).splitlines(keepends=True)
    f = lines[row].split(",")
    f[col] = value
    lines[row] = ",".join(f)
    return _touch_file(tmp_path / "t", 2, "".join(lines))


def test_touch_pointer_id_beyond_int16_names_file_column_and_row(tmp_path: Path) -> None:
    path = _touch_with(tmp_path, 6, "1e10")
    with pytest.raises(DatasetError, match=r"column pointerID, data row 5: 1e\+10 is not a pointer id") as err:
        load_bbmas_touch(path.parent)
    _one_line_naming(err, path)


@pytest.mark.parametrize("value", ["-1e308", "inf", "2e6"])
def test_touch_absurd_coordinate_names_file_column_and_row(tmp_path: Path, value: str) -> None:
    path = _touch_with(tmp_path, 1, value)
    with pytest.raises(DatasetError, match=r"column Xvalue, data row 5: .* is not a screen coordinate") as err:
        load_bbmas_touch(path.parent)
    _one_line_naming(err, path)


@pytest.mark.parametrize("scale", [1e300, 0.0], ids=["x1e300", "zeros"])
def test_gait_values_no_phone_reads_name_the_file(tmp_path: Path, scale: float) -> None:
    folder = tmp_path / "g"
    folder.mkdir()
    path = folder / "6_PocketPhone_Accelerometer_(Pixel).csv"
    _gait_epoch(20.0, scale=scale).to_csv(path, index=False)
    with pytest.raises(DatasetError, match=r"median \|a\| is") as err:
        load_bbmas_gait(folder)
    _one_line_naming(err, path)
