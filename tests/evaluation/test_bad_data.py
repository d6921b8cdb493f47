"""Corrupt, empty, duplicated or leaking data is a `DatasetError` naming the file, never a traceback."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

from evaluation import datasets
from evaluation.bench import BenchContext, BenchError, BenchOutput, register, run_bench
from evaluation.datasets import (
    DatasetError,
    available_subjects,
    cache_dir,
    find_subject_files,
    load_bbmas_gait,
    load_bbmas_keystrokes,
    load_bbmas_touch,
    load_cmu,
)
from evaluation.protocols import ScoreTable, resolve_folds

KEYS_HEADER = "key,time_since_beginning,press_to_press,hold_time,release_to_press\n"
GAIT_HEADER = "EID,Xvalue,Yvalue,Zvalue,time\n"
TOUCH_HEADER = "EID,Xvalue,Yvalue,pressure,touchMajor,touchMinor,pointerID,fingerOrientation,actionType,time\n"


def _keys_csv(n: int = 40, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.uniform(0.1, 0.3, n))
    return KEYS_HEADER + "".join(f"{'abcde'[i % 5]},{ti:.3f},{rng.uniform(0.05, 0.15):.3f},0.2,0.1\n"
                                 for i, ti in enumerate(t))


def _write_gz(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()))
    return path


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADENCE_CACHE_DIR", str(tmp_path / "cache"))


# --------------------------------------------------------------------------- corrupt files

CORRUPT = {
    "truncated gzip": lambda: gzip.compress(_keys_csv(400).encode())[:300],
    "not gzip": lambda: _keys_csv().encode(),
    "binary": lambda: gzip.compress(bytes(range(256)) * 8),
    "empty": lambda: b"",
    "header only": lambda: gzip.compress(KEYS_HEADER.encode()),
    "non-numeric": lambda: gzip.compress(_keys_csv().replace("0.", "x.").encode()),
}


@pytest.mark.parametrize("what", list(CORRUPT))
def test_corrupt_keystroke_file_is_a_dataset_error_naming_it(tmp_path: Path, what: str) -> None:
    path = tmp_path / "d" / "7_processed.csv.gz"
    path.parent.mkdir()
    path.write_bytes(CORRUPT[what]())
    with pytest.raises(DatasetError) as err:
        load_bbmas_keystrokes(path.parent)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("body", ["", "NaN,NaN,NaN,NaN,NaN\n" * 20], ids=["header only", "all NaN"])
def test_gait_file_without_usable_rows_names_it(tmp_path: Path, body: str) -> None:
    path = _write_gz(tmp_path / "g" / "3_PocketPhone_Accelerometer_(X).csv.gz", GAIT_HEADER + body)
    with pytest.raises(DatasetError, match="no rows with a valid time") as err:
        load_bbmas_gait(path.parent)
    assert str(path) in str(err.value)


def test_touch_header_only_names_the_file(tmp_path: Path) -> None:
    path = _write_gz(tmp_path / "t" / "3_HandPhone_TouchEvent_(X).csv.gz", TOUCH_HEADER)
    with pytest.raises(DatasetError, match="3_HandPhone"):
        load_bbmas_touch(path.parent)


def test_unreadable_file_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_gz(tmp_path / "k" / "5_processed.csv.gz", _keys_csv())

    def refuse(*args: object, **kw: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(datasets, "open", refuse, raising=False)  # chmod does not stop root
    with pytest.raises(DatasetError, match="cannot read: Permission denied") as err:
        load_bbmas_keystrokes(path.parent)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("kind", ["file", "missing parent"])
def test_bad_cache_dir_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad = blocker if kind == "file" else blocker / "sub"
    monkeypatch.setenv("CADENCE_CACHE_DIR", str(bad))
    with pytest.raises(DatasetError, match=f"CADENCE_CACHE_DIR={bad}"):
        cache_dir()


def test_unreadable_cache_entry_is_parsed_again(tmp_path: Path) -> None:
    folder = tmp_path / "k"
    _write_gz(folder / "5_processed.csv.gz", _keys_csv())
    first = load_bbmas_keystrokes(folder)[5]
    for entry in (tmp_path / "cache" / "keystroke").glob("*.npz"):
        entry.write_bytes(entry.read_bytes()[:50])  # truncated zip
    assert len(load_bbmas_keystrokes(folder)[5]) == len(first)


# --------------------------------------------------------------------------- duplicates


def test_two_files_for_one_subject_is_an_error_naming_both(tmp_path: Path) -> None:
    _write_gz(tmp_path / "1_HandPhone_TouchEvent_(HTC_One).csv.gz", TOUCH_HEADER)
    _write_gz(tmp_path / "1_HandPhone_TouchEvent_(Samsung_S6).csv.gz", TOUCH_HEADER)
    with pytest.raises(DatasetError, match=r"subject 1 has two touch files.*HTC_One.*Samsung_S6"):
        find_subject_files(tmp_path, "touch")
    with pytest.raises(DatasetError, match="two touch files"):  # not silently 'no subjects'
        available_subjects(tmp_path, "touch")


def test_plain_csv_still_wins_over_its_gz(tmp_path: Path) -> None:
    (tmp_path / "4_processed.csv").write_text(_keys_csv())
    _write_gz(tmp_path / "4_processed.csv.gz", _keys_csv())
    assert find_subject_files(tmp_path, "keystroke") == {4: tmp_path / "4_processed.csv"}


CMU_HEADER = "subject,sessionIndex,rep,H.a,DD.a.b,UD.a.b,H.b\n"  # the CMU layout of a 2-key text


def test_cmu_exact_duplicate_rows_dropped_and_conflicts_refused(tmp_path: Path) -> None:
    rows = [f"s00{s},1,{r},0.1,0.2,0.1,0.1\n" for s in (2, 3) for r in (1, 2)]
    path = _write_gz(tmp_path / "dup" / "DSL-StrongPasswordData.csv.gz", CMU_HEADER + "".join(rows + rows[:2]))
    assert len(load_cmu(path.parent)) == 4
    clash = CMU_HEADER + "".join(rows) + "s002,1,1,0.5,0.2,0.1,0.1\n"
    path = _write_gz(tmp_path / "clash" / "DSL-StrongPasswordData.csv.gz", clash)
    with pytest.raises(DatasetError, match="share \\(subject, sessionIndex, rep\\)"):
        load_cmu(path.parent)
    path = _write_gz(tmp_path / "nan" / "DSL-StrongPasswordData.csv.gz", CMU_HEADER + "s002,1,1,,0.2,0.1,0.1\n")
    with pytest.raises(DatasetError, match=r"non-finite values in columns \['H.a'\]"):
        load_cmu(path.parent)


def test_cmu_timings_in_milliseconds_are_refused_naming_the_unit(tmp_path: Path) -> None:
    """CMU's columns are seconds; the loader never builds a `KeySequence`, so it checks them itself."""
    rows = [f"s00{s},1,{r},{h},{dd},{dd - h},{h}\n" for s in (2, 3) for r in (1, 2) for h, dd in [(0.09, 0.25)]]
    ok = _write_gz(tmp_path / "s" / "DSL-StrongPasswordData.csv.gz", CMU_HEADER + "".join(rows))
    assert len(load_cmu(ok.parent)) == 4
    ms = [f"s00{s},1,{r},{h},{dd},{dd - h},{h}\n" for s in (2, 3) for r in (1, 2) for h, dd in [(90, 250)]]
    path = _write_gz(tmp_path / "ms" / "DSL-StrongPasswordData.csv.gz", CMU_HEADER + "".join(ms))
    with pytest.raises(DatasetError, match=r"median key hold \(H\.\* columns\) is 90 s.*milliseconds.*divide them by 1000"):
        load_cmu(path.parent)
    # holds of 0 (no key events) in milliseconds: the press-to-press time catches them
    zero = [f"s00{s},1,{r},0,{dd},{dd},0\n" for s in (2, 3) for r in (1, 2) for dd in [250]]
    path = _write_gz(tmp_path / "zero" / "DSL-StrongPasswordData.csv.gz", CMU_HEADER + "".join(zero))
    with pytest.raises(DatasetError, match=r"time from press to press \(DD\.\* columns\) is 250 s"):
        load_cmu(path.parent)


# --------------------------------------------------------------------------- train/eval leaks


def _keys_folder(root: Path, ids: list[int], seed: int = 0, n: int = 40) -> Path:
    for i in ids:
        _write_gz(root / f"{i}_processed.csv.gz", _keys_csv(n, seed=seed + i))
    return root


def test_copied_or_linked_subjects_in_train_and_eval_are_refused(tmp_path: Path) -> None:
    a = _keys_folder(tmp_path / "a", [1, 2, 3])
    copy = _keys_folder(tmp_path / "copy", [1, 2, 3])  # same bytes, other folder
    with pytest.raises(DatasetError, match="same keystroke file for subjects 1, 2, 3"):
        resolve_folds("keystroke", train_dir=a, eval_dir=copy)
    part = _keys_folder(tmp_path / "part", [8, 9])
    (part / "2_processed.csv.gz").symlink_to(a / "2_processed.csv.gz")
    with pytest.raises(DatasetError, match="for subjects 2:"):
        resolve_folds("keystroke", train_dir=a, eval_dir=part)


def test_same_ids_with_other_files_are_a_reported_warning(tmp_path: Path) -> None:
    a = _keys_folder(tmp_path / "a", [1, 2, 3])
    b = _keys_folder(tmp_path / "b", [2, 3, 4], seed=100)
    (fold,) = resolve_folds("keystroke", train_dir=a, eval_dir=b)
    assert fold.eval_subjects == (2, 3, 4) and "subject ids 2, 3 are in both" in fold.warnings[0]
    assert fold.train_subjects == (1,) and "left out of training" in fold.warnings[0]  # an id is a person
    ctx = BenchContext(train_dir=a, eval_dir=b, out=tmp_path / "out")
    ctx.folds("keystroke")
    assert ctx.notes == list(fold.warnings)


def test_training_that_is_all_evaluation_subjects_is_refused(tmp_path: Path) -> None:
    a = _keys_folder(tmp_path / "a", [2, 3])
    b = _keys_folder(tmp_path / "b", [2, 3, 4], seed=100)
    with pytest.raises(DatasetError, match="no training subject is left"):
        resolve_folds("keystroke", train_dir=a, eval_dir=b)


def test_one_eval_subject_is_refused(tmp_path: Path) -> None:
    a = _keys_folder(tmp_path / "a", [1, 2, 3])
    one = _keys_folder(tmp_path / "one", [8])
    with pytest.raises(DatasetError, match="one keystroke subject \\(8\\).*at least 2"):
        resolve_folds("keystroke", train_dir=a, eval_dir=one)


# --------------------------------------------------------------------------- harness


@register("selftest-empty", "no trials at all (tests only)")
def _empty(ctx: BenchContext) -> BenchOutput:
    return BenchOutput(protocol={}, train_subjects=[1], eval_subjects=[8], scores=ScoreTable())


@register("selftest-nan", "a NaN measurement and a note (tests only)")
def _nan(ctx: BenchContext) -> BenchOutput:
    ctx.notes.append("something to know")
    return BenchOutput(protocol={}, train_subjects=[], eval_subjects=[], rows=[{"method": "m", "p99_ms": math.nan}],
                       extra={"ratio": np.float64("inf")})


def test_bench_without_trials_is_an_error_not_an_empty_result(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="no result.*evaluation subjects \\[8\\]"):
        run_bench("selftest-empty", BenchContext(out=tmp_path), print_table=False)
    assert not (tmp_path / "selftest-empty.json").exists()


def test_bench_json_has_no_nan_and_carries_notes(tmp_path: Path) -> None:
    run_bench("selftest-nan", BenchContext(out=tmp_path), print_table=False)
    doc = json.loads((tmp_path / "selftest-nan.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert doc["results"][0]["p99_ms"] is None and doc["ratio"] is None
    assert doc["protocol"]["warnings"] == ["something to know"]


def test_keystroke_bench_skips_a_one_row_subject_with_a_note(tmp_path: Path) -> None:
    import evaluation.benches.keystroke  # noqa: F401  (registers the bench)

    train = _keys_folder(tmp_path / "train", [1, 2, 3], n=450)
    ev = _keys_folder(tmp_path / "eval", [4, 5], n=450)
    _write_gz(ev / "6_processed.csv.gz", _keys_csv(1, seed=6))  # one row: nothing to enrol or test
    ctx = BenchContext(train_dir=train, eval_dir=ev, out=tmp_path / "out", progress=False)
    doc = run_bench("keystroke", ctx, print_table=False)
    assert doc["protocol"]["skipped_subjects"] == [6] and doc["results"]
    assert any("skipped" in w and "[6]" in w for w in doc["protocol"]["warnings"])
    # listed as what it is: read, never scored (the JSON listed it among the evaluated people too)
    assert doc["eval_subjects"] == [4, 5] and doc["train_subjects"] == [1, 2, 3]
    assert set(doc["protocol"]["skipped_by_window"]) == {r["window"] for r in doc["results"]}


def test_a_data_file_whose_name_has_no_numeric_id_is_named_not_silently_ignored(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = _keys_folder(tmp_path / "k", [1, 2])
    _write_gz(folder / "s11_processed.csv.gz", _keys_csv(40, seed=11))
    (folder / "notes.csv").write_text("not data\n")  # nothing like a keystroke file: not named
    with caplog.at_level("WARNING", logger="evaluation.datasets.data"):
        assert list(find_subject_files(folder, "keystroke")) == [1, 2]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "s11_processed.csv.gz: not read" in said[0] and r"(\d+)_processed" in said[0]
    only = tmp_path / "only"
    only.mkdir()
    _write_gz(only / "s11_processed.csv.gz", _keys_csv(40, seed=11))
    with pytest.raises(DatasetError, match=r"no keystroke subjects in .*only: files named like .*\(the subject id"):
        resolve_folds("keystroke", data_dir=only)
