"""Bench guards found by testing: leaks by content, unwritable results, ambiguous folders, silent repairs.

Each test builds its own small BB-MAS-like folders (nothing here reads the shared datasets).
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import Result
from typer.testing import CliRunner

from evaluation import datasets
from evaluation.bench import BenchContext, BenchError, BenchOutput, register, run_bench
from evaluation.datasets import (
    DatasetError,
    load_bbmas_gait,
    load_bbmas_keystrokes,
    load_bbmas_touch,
    modality_dir,
    same_file,
)
from evaluation.protocols import ScoreTable, resolve_folds
from tests.evaluation.test_bad_data import GAIT_HEADER, TOUCH_HEADER, _keys_csv, _keys_folder, _write_gz


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADENCE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CADENCE_DATA_DIR", raising=False)


def _cli(*args: str, env: dict[str, str] | None = None) -> Result:
    from cadence.cli import app

    return CliRunner().invoke(app, list(args), env=env)


def _gait_csv(n: int = 600, seed: int = 0, rate: float = 50.0) -> str:
    rng = np.random.default_rng(seed)
    t = pd.to_datetime(1.49e9 + np.arange(n) / rate, unit="s").strftime("%Y-%m-%d %H:%M:%S.%f").str[:-3]
    xyz = rng.normal(0, 1, (n, 3)) + [0, 9.8, 0]
    return GAIT_HEADER + "".join(f"{i},{a:.5f},{b:.5f},{c:.5f},{ti}\n" for i, ((a, b, c), ti) in enumerate(zip(xyz, t)))


def _touch_rows(n_strokes: int = 30, seed: int = 0, taps: int = 0) -> list[tuple[float, float, float, int]]:
    """(time s, x, y, action) rows: `n_strokes` swipes of 6 samples, then `taps` taps."""
    rng = np.random.default_rng(seed)
    rows, t = [], 1.49e9
    ang = rng.uniform(0, np.pi)
    for _ in range(n_strokes):
        x0, y0 = rng.uniform(200, 800), rng.uniform(400, 1500)
        a = ang + rng.normal(0, 0.2)
        length = rng.uniform(300, 500)
        for j in range(6):
            act = 0 if j == 0 else 1 if j == 5 else 2
            rows.append((t + 0.02 * j, x0 + np.cos(a) * length * j / 5, y0 + np.sin(a) * length * j / 5, act))
        t += rng.uniform(0.5, 1.5)
    for _ in range(taps):
        x0, y0 = rng.uniform(200, 800), rng.uniform(400, 1500)
        rows += [(t, x0, y0, 0), (t + 0.01, x0 + 1, y0, 2), (t + 0.08, x0 + 1, y0 + 1, 1)]
        t += rng.uniform(0.5, 1.5)
    return rows


def _touch_csv(rows: list[tuple[float, float, float, int]], seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    p0 = rng.uniform(0.3, 0.9)
    out = []
    for i, (t, x, y, a) in enumerate(rows):
        dt = pd.Timestamp(t, unit="s")
        stamp = f"{dt:%Y-%m-%d %H:%M:%S}:{dt.microsecond // 1000:03d}"
        out.append(f"{i},{x:.3f},{y:.3f},{p0 + rng.normal(0, 0.02):.4f},{5 + rng.normal(0, 0.3):.3f},4.0,0,0.0,{a},{stamp}\n")
    return TOUCH_HEADER + "".join(out)


def _touch_file(folder: Path, sid: int, text: str, phone: str = "HTC_One") -> Path:
    return _write_gz(folder / f"{sid}_HandPhone_TouchEvent_({phone}).csv.gz", text)


def _three_modalities(root: Path, ids: list[int], seed: int = 0) -> Path:
    """Files of all three modalities per subject (distinct content per subject and modality)."""
    for i in ids:
        _write_gz(root / "keys" / f"{i}_processed.csv.gz", _keys_csv(60, seed=seed + i))
        _touch_file(root / "touch", i, _touch_csv(_touch_rows(4, seed=seed + i), seed=seed + i))
        _write_gz(root / "gait" / f"{i}_PocketPhone_Accelerometer_(HTC_One).csv.gz", _gait_csv(50, seed=seed + i))
    return root


# --------------------------------------------------------------------------- 1. fusion refuses leaks


@pytest.mark.parametrize("leaked", ["keys", "touch", "gait"])
def test_fusion_refuses_eval_files_linked_from_the_training_folder(tmp_path: Path, leaked: str) -> None:
    a = _three_modalities(tmp_path / "A", [1, 2, 3, 4, 5, 6])
    b = _three_modalities(tmp_path / "B", [1, 2, 3, 4, 11, 12], seed=100)
    for i in (1, 2, 3, 4):  # B's subjects 1-4 of one modality are A's own files
        (src,) = (a / leaked).glob(f"{i}_*")
        (b / leaked / src.name).unlink()
        (b / leaked / src.name).symlink_to(src)
    kind = {"keys": "keystroke", "touch": "touch", "gait": "gait"}[leaked]
    res = _cli("bench", "fusion", "--train-dir", str(a), "--eval-dir", str(b), "--out", str(tmp_path / "o"), "--quick")
    assert res.exit_code == 2, res.output
    assert f"hold the same {kind} file for subjects 1, 2, 3, 4:" in " ".join(res.output.split())


# --------------------------------------------------------------------------- 2. leaks by content


def test_a_training_file_under_another_id_or_compression_is_refused(tmp_path: Path) -> None:
    a = _keys_folder(tmp_path / "a", [1, 2, 3])
    b = _keys_folder(tmp_path / "b", [7, 8], seed=100)
    shutil.copy(a / "2_processed.csv.gz", b / "9_processed.csv.gz")  # subject 2 copied as 9
    (b / "6_processed.csv").write_bytes(gzip.decompress((a / "3_processed.csv.gz").read_bytes()))  # 3, unzipped, as 6
    assert datasets.shared_content("keystroke", a, b) == [(3, 6), (2, 9)]
    with pytest.raises(DatasetError, match=r"same keystroke file for subjects 6 \(training subject 3\), "
                                           r"9 \(training subject 2\):"):
        resolve_folds("keystroke", train_dir=a, eval_dir=b)


def test_same_id_zipped_and_unzipped_is_the_same_file(tmp_path: Path) -> None:
    a = _keys_folder(tmp_path / "a", [1, 2, 3])
    b = _keys_folder(tmp_path / "b", [7, 8], seed=100)
    (b / "2_processed.csv").write_bytes(gzip.decompress((a / "2_processed.csv.gz").read_bytes()))
    assert same_file(a / "2_processed.csv.gz", b / "2_processed.csv")
    with pytest.raises(DatasetError, match="same keystroke file for subjects 2:"):
        resolve_folds("keystroke", train_dir=a, eval_dir=b)


def test_content_beyond_the_fingerprint_is_compared_whole(tmp_path: Path) -> None:
    text = _keys_csv(60_000)  # > 1 MiB: the fingerprint covers only its start
    assert len(text) > datasets.FINGERPRINT_BYTES
    a, b = tmp_path / "a", tmp_path / "b"
    _write_gz(a / "1_processed.csv.gz", text)
    _write_gz(a / "2_processed.csv.gz", _keys_csv(100, seed=5))
    b.mkdir()
    (b / "4_processed.csv").write_text(text)  # same data, other id, not compressed
    (b / "5_processed.csv").write_text(text[:-3] + "9.9\n")  # same first MiB, other last row
    assert datasets.content_fingerprint(b / "4_processed.csv") == datasets.content_fingerprint(b / "5_processed.csv")
    assert datasets.content_fingerprint(a / "1_processed.csv.gz")[0] is None
    assert datasets.shared_content("keystroke", a, b) == [(1, 4)]


def test_a_training_file_saved_again_with_windows_line_ends_is_the_same_data(tmp_path: Path) -> None:
    """Compared byte for byte, a CRLF copy of a training subject's file was evaluated as a new person."""
    text = _keys_csv(60_000)  # > 1 MiB: both the fingerprint and the whole comparison must read CRLF as LF
    a, b = tmp_path / "a", tmp_path / "b"
    _write_gz(a / "1_processed.csv.gz", text)
    _write_gz(a / "2_processed.csv.gz", _keys_csv(100, seed=5))
    b.mkdir()
    (b / "4_processed.csv").write_bytes(text.replace("\n", "\r\n").encode())
    (b / "5_processed.csv").write_bytes((text[:-3] + "9.9\n").replace("\n", "\r\n").encode())  # one row differs
    assert datasets.shared_content("keystroke", a, b) == [(1, 4)]
    with pytest.raises(DatasetError, match=r"same keystroke file for subjects 4 \(training subject 1\)"):
        resolve_folds("keystroke", train_dir=a, eval_dir=b)


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_crlf_split_across_chunks_reads_as_one_lf(size: int) -> None:
    import io

    raw = b"a,1\r\nb,2\r\n\r\nc\rd\r"
    assert b"".join(datasets._lines_as_lf(io.BytesIO(raw), size)) == b"a,1\nb,2\n\nc\rd\r"


def test_different_files_are_not_shared(tmp_path: Path) -> None:
    a = _keys_folder(tmp_path / "a", [1, 2, 3])
    b = _keys_folder(tmp_path / "b", [1, 2, 3], seed=100)
    assert datasets.shared_content("keystroke", a, b) == []
    assert not same_file(a / "1_processed.csv.gz", b / "1_processed.csv.gz")


# --------------------------------------------------------------------------- 3. result files


_RAN: list[str] = []


@register("selftest-write", "writes toy scores (tests only)")
def _toy(ctx: BenchContext) -> BenchOutput:
    _RAN.append("ran")
    t = ScoreTable()
    rng = np.random.default_rng(0)
    for s in (1, 2):
        t.add(method="m", window="w", modality="x", template_subject=s, probe_subject=s, scores=rng.normal(1, 1, 20))
        t.add(method="m", window="w", modality="x", template_subject=s, probe_subject=3 - s, scores=rng.normal(-1, 1, 20))
    return BenchOutput(protocol={}, train_subjects=[], eval_subjects=[1, 2], scores=t)


@pytest.mark.parametrize("name", ["selftest-write.json", "selftest-write-scores.csv", "selftest-write-det.png"])
def test_a_result_file_that_is_a_folder_is_refused_before_the_run(tmp_path: Path, name: str) -> None:
    (tmp_path / name).mkdir()
    _RAN.clear()
    with pytest.raises(BenchError, match=f"cannot write {tmp_path / name}: it is a folder"):
        run_bench("selftest-write", BenchContext(out=tmp_path), print_table=False)
    assert not _RAN


def test_a_failed_write_is_a_bench_error_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: ScoreTable, path: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ScoreTable, "to_csv", full)
    with pytest.raises(BenchError, match=r"cannot write .*selftest-write-scores.csv: No space left on device"):
        run_bench("selftest-write", BenchContext(out=tmp_path), print_table=False)


def test_cli_refuses_an_unwritable_result_before_reading_data(tmp_path: Path) -> None:
    (tmp_path / "O" / "gait.json").mkdir(parents=True)
    res = _cli("bench", "gait", "--data-dir", str(tmp_path), "--out", str(tmp_path / "O"), "--quick")
    assert res.exit_code == 2
    out = " ".join(res.output.split())
    assert out.startswith(f"error: cannot write {tmp_path / 'O' / 'gait.json'}: it is a folder"), out


# --------------------------------------------------------------------------- 4. ambiguous folders


def test_several_dataset_folders_for_a_modality_are_an_error_listing_them(tmp_path: Path) -> None:
    for phone in ("phone_a", "phone_b"):
        _write_gz(tmp_path / "P3" / phone / "1_PocketPhone_Accelerometer_(X).csv.gz", _gait_csv(20))
    with pytest.raises(DatasetError, match="2 subfolders with gait files: phone_a, phone_b"):
        modality_dir(tmp_path / "P3", "gait")
    assert modality_dir(tmp_path / "P3" / "phone_a", "gait") == tmp_path / "P3" / "phone_a"
    root = tmp_path / "root"  # the normal layout: one folder per modality
    _write_gz(root / "bbmas_phone_gait" / "1_PocketPhone_Accelerometer_(X).csv.gz", _gait_csv(20))
    _keys_folder(root / "bbmas_desktop_keystroke_processed", [1])
    assert modality_dir(root, "gait") == root / "bbmas_phone_gait"
    assert modality_dir(root, "keystroke") == root / "bbmas_desktop_keystroke_processed"


# --------------------------------------------------------------------------- 5. touch time going back


def test_touch_rounding_is_tolerated_but_a_reversed_file_is_refused(tmp_path: Path) -> None:
    rows = _touch_rows(5)
    rows[3] = (rows[2][0] - 0.0005, *rows[3][1:])  # half a millisecond back: rounding
    _touch_file(tmp_path / "ok", 1, _touch_csv(rows))
    assert len(load_bbmas_touch(tmp_path / "ok")[1].time) == len(rows)
    path = _touch_file(tmp_path / "rev", 1, _touch_csv(rows[::-1]))
    with pytest.raises(DatasetError, match=r"time goes back by more than 1 ms at 28 rows") as err:
        load_bbmas_touch(path.parent)
    assert str(path) in str(err.value)
    stepped = [(t - 600 if i >= 15 else t, x, y, a) for i, (t, x, y, a) in enumerate(rows)]  # clock set back 10 min
    path = _touch_file(tmp_path / "clock", 1, _touch_csv(stepped))
    with pytest.raises(DatasetError, match=r"at 1 rows \(by up to 60\d s; first at data row 16\)"):
        load_bbmas_touch(path.parent)


# --------------------------------------------------------------------------- 6. repairs are reported


def _data_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("evaluation.datasets")]


def test_gait_rows_dropped_are_reported_per_file_even_from_the_cache(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = _gait_csv(400).splitlines(keepends=True)
    lines[5] = "4,nan,1,2,2017-06-06 15:01:51.869\n"
    lines[9] = "8,1,inf,2,2017-06-06 15:01:51.969\n"
    lines[12] = "11,1,2,3,not a time\n"
    path = _write_gz(tmp_path / "g" / "3_PocketPhone_Accelerometer_(X).csv.gz", "".join(lines))
    for _ in range(2):  # parsed, then from the parse cache
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            load_bbmas_gait(path.parent)
        assert _data_warnings(caplog) == [f"{path}: 1 row with an empty or unreadable time dropped",
                                          f"{path}: 2 rows with an empty or non-finite Xvalue, Yvalue or Zvalue dropped"]
    assert datasets.loader_warnings(path.parent, "gait") == _data_warnings(caplog)


def test_gait_rows_at_a_time_already_read_are_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Rows repeating a time were dropped silently; repeats and rows going back to an earlier time are told apart."""
    lines = _gait_csv(400).splitlines(keepends=True)  # lines[i + 1] is data row i, 20 ms apart
    time_of = {i: lines[i].rsplit(",", 1)[1] for i in (10, 50, 100, 120, 150)}
    extra = {k: f"9{k},0.5,0.5,0.5,{time_of[k]}" for k in (50, 100, 150)}  # right after the row with that time
    extra |= {200: f"9200,0.5,0.5,0.5,{time_of[120]}", 300: f"9300,0.5,0.5,0.5,{time_of[10]}"}  # back to an earlier one
    text = "".join(line + extra.get(k, "") for k, line in enumerate(lines))
    path = _write_gz(tmp_path / "g" / "6_PocketPhone_Accelerometer_(X).csv.gz", text)
    for _ in range(2):  # parsed, then from the parse cache
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            rec = load_bbmas_gait(path.parent)[6]
        assert _data_warnings(caplog) == [f"{path}: time goes back at 2 rows: rows sorted by time",
                                          f"{path}: 3 rows with the same time as the row before them dropped "
                                          "(the first kept)",
                                          f"{path}: 2 rows going back to the time of an earlier row dropped "
                                          "(the first kept)"]
    t = np.concatenate([s.t for s in rec.segments])
    xyz = np.concatenate([s.xyz for s in rec.segments])
    assert t.size == 400 and np.all(np.diff(t) > 0)
    assert not np.any(np.all(xyz == 0.5, axis=1))  # the first row of each time is the one kept
    assert datasets.loader_warnings(path.parent, "gait") == _data_warnings(caplog)


def test_touch_rows_dropped_or_interpolated_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = _touch_csv(_touch_rows(20)).splitlines(keepends=True)
    for i in (3, 4, 10):
        f = lines[i].split(",")
        lines[i] = ",".join([f[0], "", *f[2:]])  # no Xvalue
    f = lines[20].split(",")
    lines[20] = ",".join([*f[:-1], "yesterday\n"])
    path = _touch_file(tmp_path / "t", 2, "".join(lines))
    with caplog.at_level(logging.WARNING):
        load_bbmas_touch(path.parent)
    assert _data_warnings(caplog) == [
        f"{path}: 1 row with a time that is not readable: their times interpolated",
        f"{path}: 3 rows with an empty or non-finite Xvalue, Yvalue, pressure, touchMajor or touchMinor dropped"]


def test_keystroke_rows_dropped_or_rebuilt_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = _keys_csv(50).splitlines(keepends=True)
    lines[4] = lines[4].rsplit(",", 3)[0] + ",0.1,,0.1\n"  # no hold_time
    f = lines[8].split(",")
    lines[8] = ",".join([f[0], "", *f[2:]])  # no time_since_beginning
    path = _write_gz(tmp_path / "k" / "5_processed.csv.gz", "".join(lines))
    with caplog.at_level(logging.WARNING):
        seq = load_bbmas_keystrokes(path.parent)[5]
    assert len(seq) == 49
    assert _data_warnings(caplog) == [
        f"{path}: 1 row with an empty key, press_to_press or hold_time dropped",
        f"{path}: time_since_beginning empty in 1 rows: press times rebuilt by adding up hold_time (the down-down latency)"]


def test_loader_warnings_reach_the_bench_json(tmp_path: Path) -> None:
    import evaluation.benches.keystroke  # noqa: F401  (registers the bench)

    train = _keys_folder(tmp_path / "train", [1, 2, 3], n=450)
    ev = _keys_folder(tmp_path / "eval", [4, 5], n=450)
    lines = _keys_csv(450, seed=6).splitlines(keepends=True)
    lines[7] = lines[7].rsplit(",", 3)[0] + ",0.1,,0.1\n"
    bad = _write_gz(ev / "6_processed.csv.gz", "".join(lines))
    doc = run_bench("keystroke", BenchContext(train_dir=train, eval_dir=ev, out=tmp_path / "o", progress=False),
                    print_table=False)
    assert f"{bad}: 1 row with an empty key, press_to_press or hold_time dropped" in doc["protocol"]["warnings"]


# --------------------------------------------------------------------------- 7. smaller


def test_touch_bench_lists_only_scored_people_and_notes_the_skipped(tmp_path: Path) -> None:
    import evaluation.benches.touch  # noqa: F401

    for i in (1, 2, 3, 4):
        _touch_file(tmp_path / "A", i, _touch_csv(_touch_rows(40, seed=i, taps=30), seed=i))
    for i in (11, 12, 13):
        _touch_file(tmp_path / "B", i, _touch_csv(_touch_rows(40, seed=i, taps=30), seed=i))
    _touch_file(tmp_path / "B", 14, _touch_csv(_touch_rows(3, seed=14, taps=2), seed=14))  # too few to enrol
    doc = run_bench("touch", BenchContext(train_dir=tmp_path / "A", eval_dir=tmp_path / "B", out=tmp_path / "o",
                                          progress=False), print_table=False)
    assert doc["eval_subjects"] == [11, 12, 13] and doc["protocol"]["skipped_subjects"] == [14]
    assert any("skipped" in w and "[14]" in w for w in doc["protocol"]["warnings"])
    # 4 training people are too few to calibrate touch on an inner split: no adapted rows, and a note says so
    assert not any(r["window"] == "5 swipes, adapted" for r in doc["results"])
    assert any("calibrating touch needs at least 5 training subjects" in w and "adapted rows are left out" in w
               for w in doc["protocol"]["warnings"]), doc["protocol"]["warnings"]


def test_touch_bench_with_one_training_subject_names_the_folder(tmp_path: Path) -> None:
    import evaluation.benches.touch  # noqa: F401

    _touch_file(tmp_path / "A", 1, _touch_csv(_touch_rows(40, seed=1, taps=30), seed=1))
    for i in (11, 12):
        _touch_file(tmp_path / "B", i, _touch_csv(_touch_rows(40, seed=i, taps=30), seed=i))
    with pytest.raises(BenchError, match=f"swipes of at least 3 training subjects; 1 in {tmp_path / 'A'}"):
        run_bench("touch", BenchContext(train_dir=tmp_path / "A", eval_dir=tmp_path / "B", out=tmp_path / "o",
                                        progress=False), print_table=False)


def test_too_few_subjects_names_the_folder_and_modality(tmp_path: Path) -> None:
    one = _keys_folder(tmp_path / "one", [1])
    with pytest.raises(ValueError, match=f"need at least 4 subjects for 2-fold, got 1 \\(keystroke subjects in {one}\\)"):
        resolve_folds("keystroke", data_dir=one)


def test_keystroke_infinite_value_names_the_column_and_row(tmp_path: Path) -> None:
    lines = _keys_csv(40).splitlines(keepends=True)
    f = lines[470 % 40].split(",")
    lines[470 % 40] = ",".join([f[0], f[1], "inf", *f[3:]])  # press_to_press of data row 30
    path = _write_gz(tmp_path / "k" / "5_processed.csv.gz", "".join(lines))
    with pytest.raises(DatasetError, match=r"column press_to_press, data row 30: inf is not a finite time") as err:
        load_bbmas_keystrokes(path.parent)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("kind", ["gait", "touch"])
def test_a_value_that_is_no_number_names_file_column_and_row(tmp_path: Path, kind: str) -> None:
    load: Callable[[Path], Any]
    if kind == "gait":
        lines = _gait_csv(30).splitlines(keepends=True)
        lines[3] = "2,abc,1,2,2017-06-06 15:01:51.869\n"
        path = _write_gz(tmp_path / "g" / "3_PocketPhone_Accelerometer_(X).csv.gz", "".join(lines))
        load, col = load_bbmas_gait, "Xvalue"
    else:
        lines = _touch_csv(_touch_rows(5)).splitlines(keepends=True)
        f = lines[3].split(",")
        lines[3] = ",".join([*f[:3], "abc", *f[4:]])
        path = _touch_file(tmp_path / "t", 3, "".join(lines))
        load, col = load_bbmas_touch, "pressure"
    with pytest.raises(DatasetError, match=f"column {col}, data row 3: 'abc' is not a number") as err:
        load(path.parent)
    assert str(path) in str(err.value)


def test_explicit_folders_win_over_cadence_data_dir(tmp_path: Path) -> None:
    a = _keys_folder(tmp_path / "a", [1, 2, 3], n=450)
    b = _keys_folder(tmp_path / "b", [4, 5], seed=100, n=450)
    cmu = tmp_path / "cmu"
    cmu.mkdir()
    out = str(tmp_path / "o")
    # keystroke-cmu splits one folder itself: --train-dir/--eval-dir are refused, not replaced by the variable
    res = _cli("bench", "keystroke-cmu", "--train-dir", str(a), "--eval-dir", str(b), "--out", out,
               env={"CADENCE_DATA_DIR": str(cmu)})
    assert res.exit_code == 2 and "runs on one folder" in res.output, res.output
    # a stale variable that the explicit folders make unneeded is not checked
    res = _cli("bench", "keystroke", "--train-dir", str(a), "--eval-dir", str(b), "--out", out,
               env={"CADENCE_DATA_DIR": str(tmp_path / "gone")})
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "keystroke.json").read_text())["eval_subjects"] == [4, 5]
    # an explicit --data-dir with them is a conflict
    res = _cli("bench", "keystroke", "--data-dir", str(a), "--train-dir", str(a), "--eval-dir", str(b), "--out", out)
    assert res.exit_code == 2 and "not both" in res.output, res.output


def test_gait_bench_reports_dropped_rows_also_when_windows_come_from_its_cache(tmp_path: Path) -> None:
    import evaluation.benches.gait  # noqa: F401
    from tests.evaluation.test_bench_gait import _write_phone_folder

    train, ev = tmp_path / "A", tmp_path / "B"
    _write_phone_folder(train, range(1, 5), rate=50.0, phone="X", units_g=False, epoch_ms=False)
    _write_phone_folder(ev, range(101, 104), rate=50.0, phone="X", units_g=False, epoch_ms=False)
    bad = ev / "102_PocketPhone_Accelerometer_(X).csv"
    lines = bad.read_text().splitlines(keepends=True)
    bad.write_text("".join(lines[:50] + ["49,nan,nan,nan,2017-01-01 00:00:00.000\n"] * 3 + lines[50:]))
    for run in ("parsed", "from the feature cache"):
        doc = run_bench("gait", BenchContext(train_dir=train, eval_dir=ev, out=tmp_path / run, progress=False),
                        print_table=False)
        assert f"{bad}: 3 rows with an empty or non-finite Xvalue, Yvalue or Zvalue dropped" in doc["protocol"]["warnings"], run


def test_the_federated_bench_reports_the_gait_loaders_caveats_from_a_warm_cache(tmp_path: Path) -> None:
    """Its gait windows come from the cache, which skips the loader: the notes appeared only when it was cold."""
    from evaluation.benches.federated import data_caveats
    from evaluation.protocols import Fold

    lines = _gait_csv(400).splitlines(keepends=True)
    repeat = f"9050,0.5,0.5,0.5,{lines[50].rsplit(',', 1)[1]}"
    path = _write_gz(tmp_path / "e" / "7_PocketPhone_Accelerometer_(X).csv.gz",
                     "".join(line + (repeat if k == 50 else "") for k, line in enumerate(lines)))
    clean = _write_gz(tmp_path / "t" / "8_PocketPhone_Accelerometer_(X).csv.gz", _gait_csv(400, seed=1))
    fold = Fold(0, clean.parent, (8,), path.parent, (7,))
    load_bbmas_gait(path.parent)  # the parse cache is warm now
    want = [f"{path}: 1 row with the same time as the row before them dropped (the first kept)"]
    assert data_caveats("gait", fold) == want
    assert data_caveats("keystroke", fold) == []  # read through the loader, which logs its own
