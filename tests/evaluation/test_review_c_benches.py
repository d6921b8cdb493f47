"""Review C fixes to the benches, loaders and metrics.

* one --data-dir with a person under two ids (a copied file) is refused, as --train-dir/--eval-dir leaks are;
* keystroke-cmu reads H and DD by column name, so a file with its columns in another order scores the same;
* too few subjects for the keystroke population methods are refused up front, naming the option;
* a gait file below 20 Hz is named; the fusion bench's calibration refusal names the modality;
* `ctx.folds("cmu")` is a clear refusal; `threshold_at_fmr` does not lose an impostor to rounding;
* hand-held BB-MAS accelerometer files are not gait files; a bench without rows is an error;
* the README lists every bench that writes NAME.json only.

Most tests build small folders of their own; the few marked with `data_dir` link real BB-MAS files.
"""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import Result
from typer.testing import CliRunner

from evaluation.bench import BenchContext, BenchError, BenchOutput, register, run_bench
from evaluation.datasets import DatasetError, cmu_feature_columns, find_subject_files, load_bbmas_gait
from evaluation.metrics import rates_at, threshold_at_fmr
from evaluation.protocols import resolve_folds
from tests.evaluation.test_bad_data import _keys_csv, _write_gz
from tests.evaluation.test_bench_guards import (  # noqa: F401  (_own_cache: autouse, a cache of each test's own)
    _gait_csv,
    _own_cache,
    _touch_csv,
    _touch_file,
    _touch_rows,
)

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> Result:
    from cadence.cli import app

    return CliRunner().invoke(app, list(args))


def _said(res: Result) -> str:
    return " ".join(res.output.split())


def _keys(folder: Path, ids: list[int] | tuple[int, ...], n: int = 200) -> Path:
    for i in ids:
        _write_gz(folder / f"{i}_processed.csv.gz", _keys_csv(n, seed=i))
    return folder


def _three(root: Path, ids: list[int], gait_rows: int = 50) -> Path:
    """Small files of all three modalities per subject (distinct content per subject and modality)."""
    _keys(root / "keys", ids, 60)
    for i in ids:
        _touch_file(root / "touch", i, _touch_csv(_touch_rows(4, seed=i), seed=i))
        _write_gz(root / "gait" / f"{i}_PocketPhone_Accelerometer_(HTC_One).csv.gz", _gait_csv(gait_rows, seed=i))
    return root


# --------------------------------------------------------------------------- 1. one person under two ids


def test_a_data_dir_with_copied_subjects_is_refused(tmp_path: Path) -> None:
    d = _keys(tmp_path / "d", [1, 2, 3, 4, 6, 7, 8, 9])
    shutil.copy(d / "1_processed.csv.gz", d / "991_processed.csv.gz")  # a copy
    (d / "992_processed.csv").write_bytes(gzip.decompress((d / "2_processed.csv.gz").read_bytes()))  # unzipped
    (d / "993_processed.csv.gz").symlink_to(d / "3_processed.csv.gz")  # a link
    with pytest.raises(DatasetError, match=rf"^--data-dir {re.escape(str(d))} holds the same keystroke file for "
                                           r"subjects 991 \(same as 1\), 992 \(same as 2\), 993 \(same as 3\): a "
                                           "split by subject could evaluate the model on people it was trained on"):
        resolve_folds("keystroke", data_dir=d)
    res = _cli("bench", "keystroke", "--data-dir", str(d), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2, res.output
    assert _said(res).startswith(f"error: --data-dir {d} holds the same keystroke file"), res.output
    assert not (tmp_path / "o" / "keystroke.json").exists()


def test_a_data_dir_without_copies_still_splits(tmp_path: Path) -> None:
    d = _keys(tmp_path / "d", [1, 2, 3, 4, 6, 7, 8, 9])
    folds = resolve_folds("keystroke", data_dir=d)
    assert sorted(folds[0].train_subjects + folds[0].eval_subjects) == [1, 2, 3, 4, 6, 7, 8, 9]


@pytest.mark.parametrize("modality", ["keys", "touch", "gait"])
def test_fusion_and_sessions_folds_refuse_a_copied_subject(tmp_path: Path, modality: str) -> None:
    from evaluation.benches.fusion import CALIBRATION_MIN_TRAIN, _fusion_folds

    d = _three(tmp_path / "d", list(range(1, 13)))
    (src,) = (d / modality).glob("5_*")
    shutil.copy(src, d / modality / src.name.replace("5_", "55_", 1))
    kind = {"keys": "keystroke", "touch": "touch", "gait": "gait"}[modality]
    said = rf"--data-dir {re.escape(str(d))} holds the same {kind} file for subjects 55 \(same as 5\)"
    for min_train in (CALIBRATION_MIN_TRAIN, 1):  # the fusion bench's folds, and the sessions bench's
        with pytest.raises(DatasetError, match=said):
            _fusion_folds(BenchContext(data_dir=d, out=tmp_path / "o"), min_train=min_train)


def test_federated_split_refuses_a_copied_subject(tmp_path: Path) -> None:
    from evaluation.benches.federated import QUICK, _person_folds

    d = _keys(tmp_path / "d", [1, 2, 3, 4, 6, 7])
    shutil.copy(d / "4_processed.csv.gz", d / "44_processed.csv.gz")
    with pytest.raises(DatasetError, match=r"holds the same keystroke file for subjects 44 \(same as 4\)"):
        _person_folds(BenchContext(data_dir=d, out=tmp_path / "o"), QUICK)


# --------------------------------------------------------------------------- 2. CMU columns by name


KEYS3 = ["five", "Shift.r", "o"]  # key names with a dot, as in the CMU file
CANONICAL = ["H.five", "DD.five.Shift.r", "UD.five.Shift.r", "H.Shift.r", "DD.Shift.r.o", "UD.Shift.r.o", "H.o"]


def _cmu_frame(names: list[str], reps: int = 400, columns: list[str] | None = None) -> pd.DataFrame:
    """A CMU-shaped frame: per subject its own typing rhythm (H ~ 0.1 s, DD ~ 0.3 s, UD = DD - H)."""
    rng = np.random.default_rng(0)
    rows = []
    for si, s in enumerate(names):
        base_h, base_dd = 0.08 + 0.01 * si, 0.2 + 0.03 * si
        for r in range(reps):
            h = base_h + rng.normal(0, 0.01, 3).clip(-0.05, 0.05)
            dd = base_dd + rng.normal(0, 0.03, 2).clip(-0.1, 0.1)
            vals = [h[0], dd[0], dd[0] - h[0], h[1], dd[1], dd[1] - h[1], h[2]]
            rows.append({"subject": s, "sessionIndex": 1 + r // 50, "rep": 1 + r % 50,
                         **{c: round(float(v), 4) for c, v in zip(CANONICAL, vals)}})
    df = pd.DataFrame(rows)
    return df[["subject", "sessionIndex", "rep", *(columns or CANONICAL)]]


def test_cmu_columns_in_another_order_give_the_same_features() -> None:
    from modalities.keystroke.learned import log_timing

    df = _cmu_frame(["s002", "s003"], reps=5)
    shuffled = ["UD.Shift.r.o", "H.o", "DD.five.Shift.r", "H.Shift.r", "H.five", "DD.Shift.r.o", "UD.five.Shift.r"]
    perm = df[["subject", "sessionIndex", "rep", *shuffled]]
    assert cmu_feature_columns(df) == cmu_feature_columns(perm) == CANONICAL
    X, Xp = df[cmu_feature_columns(df)].to_numpy(float), perm[cmu_feature_columns(perm)].to_numpy(float)
    np.testing.assert_array_equal(log_timing(X), log_timing(Xp))
    np.testing.assert_array_equal(log_timing(Xp), np.log(df[["H.five", "DD.five.Shift.r", "H.Shift.r",
                                                            "DD.Shift.r.o", "H.o"]].to_numpy(float)))


def test_keystroke_cmu_scores_a_file_with_its_columns_in_another_order_the_same(tmp_path: Path) -> None:
    import evaluation.benches.keystroke  # noqa: F401  (registers the bench)

    names = [f"s00{i}" for i in range(2, 8)]
    shuffled = ["H.o", "UD.Shift.r.o", "DD.Shift.r.o", "H.Shift.r", "UD.five.Shift.r", "DD.five.Shift.r", "H.five"]
    eers = []
    for label, cols in (("file", CANONICAL), ("permuted", shuffled)):
        folder = tmp_path / label
        folder.mkdir()
        _cmu_frame(names, columns=cols).to_csv(folder / "DSL-StrongPasswordData.csv", index=False)
        doc = run_bench("keystroke-cmu", BenchContext(data_dir=folder, out=tmp_path / f"o-{label}", progress=False),
                        print_table=False)
        eers.append({r["method"]: r["eer"] for r in doc["results"]})
    assert {"llr", "background-svm", "fused"} <= set(eers[0])
    assert eers[0] == eers[1]


@pytest.mark.parametrize(("columns", "named"), [
    (["H.a", "DD.a.b", "H.b"], "no column UD.a.b:"),
    (["H.a", "DD.a.b", "UD.a.b", "H.b", "DD.b.c", "UD.b.c"], "column DD.b.c does not fit"),
    (["H.a", "DD.a.b", "UD.a.b", "H.b", "DD.b.a", "UD.b.a"], "column DD.b.a does not fit"),
    (["H.a", "H.b.c", "H.a.b", "H.c", "DD.a.b.c"], "column DD.a.b.c: which two keys it links is ambiguous"),
])
def test_a_cmu_layout_that_is_not_h_dd_ud_names_the_column(tmp_path: Path, columns: list[str], named: str) -> None:
    from evaluation.datasets import load_cmu

    row = "s002,1,1," + ",".join("0.1" for _ in columns) + "\n"
    path = _write_gz(tmp_path / "DSL-StrongPasswordData.csv.gz", "subject,sessionIndex,rep," + ",".join(columns) + "\n"
                     + row)
    layout = re.escape("H.k1, DD.k1.k2, UD.k1.k2, H.k2, ..., H.kn")
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}: {named}.*{layout}"):
        load_cmu(tmp_path)


# --------------------------------------------------------------------------- 3. minimum subjects


def test_keystroke_cmu_with_five_subjects_is_refused_naming_the_need(tmp_path: Path) -> None:
    import evaluation.benches.keystroke  # noqa: F401

    folder = tmp_path / "cmu"
    folder.mkdir()
    _cmu_frame([f"s00{i}" for i in range(2, 7)]).to_csv(folder / "DSL-StrongPasswordData.csv", index=False)
    with pytest.raises(DatasetError, match=r"^--data-dir: .*: 5 subjects \(s002, .*\); keystroke-cmu needs at least 6 "
                                           r"\(its population methods train on one half of a 2-fold split by subject, "
                                           r"at least 3 subjects\)"):
        run_bench("keystroke-cmu", BenchContext(data_dir=folder, out=tmp_path / "o", progress=False), print_table=False)


@pytest.mark.parametrize("n", [4, 5])
def test_bench_keystroke_on_a_data_dir_of_too_few_subjects_says_how_many_it_needs(tmp_path: Path, n: int) -> None:
    d = _keys(tmp_path / "d", list(range(1, n + 1)))
    res = _cli("bench", "keystroke", "--data-dir", str(d), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2, res.output
    assert _said(res) == (f"error: --data-dir {d} has {n} keystroke subjects ({', '.join(map(str, range(1, n + 1)))}); "
                          "bench keystroke needs at least 6: each of its 2 folds trains the population methods on one "
                          "half, at least 3 subjects")


def test_bench_keystroke_with_two_training_subjects_names_the_train_dir(tmp_path: Path) -> None:
    a, b = _keys(tmp_path / "a", [1, 2]), _keys(tmp_path / "b", [11, 12, 13])
    res = _cli("bench", "keystroke", "--train-dir", str(a), "--eval-dir", str(b), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2, res.output
    assert _said(res) == (f"error: --train-dir {a} has 2 keystroke subjects (1, 2); bench keystroke's population "
                          "methods need at least 3 training subjects")


def test_bench_keystroke_with_too_few_training_windows_names_the_fold(tmp_path: Path) -> None:
    a = _keys(tmp_path / "a", [1, 2])
    _keys(a, [3], n=40)  # fewer keys than two 50-key windows
    b = _keys(tmp_path / "b", [11, 12, 13])
    with pytest.raises(BenchError, match=rf"^fold 0: the keystroke population models need two 50 keys windows of at "
                                         rf"least 3 training subjects; 2 in {re.escape(str(a))} have them"):
        run_bench("keystroke", BenchContext(train_dir=a, eval_dir=b, out=tmp_path / "o", progress=False),
                  print_table=False)


# --------------------------------------------------------------------------- 4. gait below 20 Hz


def test_a_gait_file_below_20_hz_is_named(tmp_path: Path) -> None:
    slow = _write_gz(tmp_path / "g" / "7_PocketPhone_Accelerometer_(X).csv.gz", _gait_csv(600, seed=7, rate=10.0))
    _write_gz(tmp_path / "g" / "8_PocketPhone_Accelerometer_(X).csv.gz", _gait_csv(600, seed=8))
    said = "sampling rate 10.0 Hz is below the 20 Hz minimum"
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(slow))}: no usable data: time: {said}"):
        load_bbmas_gait(tmp_path / "g")
    from modalities.gait.data import load_windows

    with pytest.raises(DatasetError, match=rf"^{re.escape(str(slow))}: .*{said}"):
        load_windows(tmp_path / "g", None, 5.0)


def test_gait_windows_name_the_file_whose_features_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import modalities.gait.data as data
    from modalities.events import EventValidationError

    path = _write_gz(tmp_path / "g" / "8_PocketPhone_Accelerometer_(X).csv.gz", _gait_csv(600, seed=8))

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise EventValidationError("xyz", "something the features refuse")

    monkeypatch.setattr(data, "windows_for_subject", refuse)
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}: no usable data: xyz: something the features"):
        data.load_windows(tmp_path / "g", None, 5.0)


# --------------------------------------------------------------------------- 5. fusion calibration names the modality


def test_fusion_calibration_refusal_names_the_modality(data_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import fusion.calibration
    from evaluation.benches.fusion import MODALITIES
    from tests.evaluation.test_fusion_bench_review import TRAIN, _folder

    a = _folder(data_dir, tmp_path / "A", TRAIN)
    b = _folder(data_dir, tmp_path / "B", (1, 3))

    def refuse(self: Any, **kwargs: Any) -> Any:
        raise ValueError("scores: carry no information")

    monkeypatch.setattr(fusion.calibration.LogisticCalibrator, "fit", refuse)
    with pytest.raises(ValueError, match=rf"^{MODALITIES[0]} calibration: scores: carry no information$"):
        run_bench("fusion", BenchContext(train_dir=a, eval_dir=b, out=tmp_path / "o", progress=False),
                  print_table=False)


# --------------------------------------------------------------------------- 6. folds of the CMU file


def test_folds_of_the_cmu_file_are_a_clear_refusal(tmp_path: Path) -> None:
    folder = tmp_path / "cmu"
    folder.mkdir()
    _cmu_frame(["s002", "s003"], reps=2).to_csv(folder / "DSL-StrongPasswordData.csv", index=False)
    with pytest.raises(DatasetError, match="cmu data is one file holding every subject, not a file per subject"):
        BenchContext(data_dir=folder).folds("cmu")


# --------------------------------------------------------------------------- 8. threshold at an FMR


@pytest.mark.parametrize(("n", "fmr"), [(100, 0.29), (100, 0.57), (1000, 0.001), (10, 0.3)])
def test_threshold_at_fmr_accepts_as_many_impostors_as_the_rate_allows(n: int, fmr: float) -> None:
    impostor = np.arange(n, dtype=float)
    got, _ = rates_at(genuine=[0.0], impostor=impostor, threshold=threshold_at_fmr(impostor=impostor, fmr=fmr))
    assert got == pytest.approx(round(fmr * n) / n)


# --------------------------------------------------------------------------- 9. hand-held accelerometer


def test_hand_held_accelerometer_files_are_not_gait(tmp_path: Path) -> None:
    g = tmp_path / "g"
    pocket = _write_gz(g / "1_PocketPhone_Accelerometer_(X).csv.gz", _gait_csv(600, seed=1))
    _write_gz(g / "1_HandPhone_Accelerometer_(X).csv.gz", _gait_csv(600, seed=2))
    _write_gz(g / "2_HandPhone_Accelerometer_(X).csv.gz", _gait_csv(600, seed=3))
    assert find_subject_files(g, "gait") == {1: pocket}


# --------------------------------------------------------------------------- 10. benches without rows


@register("selftest-c-norows", "neither scores nor rows (tests only)")
def _no_rows(ctx: BenchContext) -> BenchOutput:
    return BenchOutput(protocol={}, train_subjects=[1], eval_subjects=[], rows=[])


def test_a_bench_without_rows_is_an_error_not_an_empty_result(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="^bench selftest-c-norows: no result"):
        run_bench("selftest-c-norows", BenchContext(out=tmp_path), print_table=False)
    assert not (tmp_path / "selftest-c-norows.json").exists()


def test_sessions_bench_refuses_when_the_loaders_leave_no_evaluation_subject(data_dir: Path, tmp_path: Path) -> None:
    from tests.evaluation.test_fusion_bench_review import TRAIN, _folder

    a = _folder(data_dir, tmp_path / "A", TRAIN)
    b = _three(tmp_path / "B", [901, 902])  # 1 s of gait each: the loader leaves both out
    res = _cli("bench", "sessions", "--train-dir", str(a), "--eval-dir", str(b), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2, res.output
    said = _said(res)
    assert f"error: fold 1: 0 of the 2 evaluation subjects in {b} have usable data in all three modalities" in said
    assert not (tmp_path / "o" / "sessions.json").exists()


# --------------------------------------------------------------------------- 11. README


def test_readme_lists_every_bench_that_writes_its_json_only() -> None:
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `cadence bench NAME"))
    assert "Two exceptions write `O/NAME.json` only" in row
    for name in ("api", "sessions"):
        assert f"`{name}`" in row.split("Two exceptions", 1)[1]
    assert "The bench JSON schema is fixed (except the rows of `api` and `sessions`" in readme
