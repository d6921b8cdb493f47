"""`cadence bench keystroke-cmu` and `cadence bench keystroke` in --quick mode on the real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.bench import BenchContext, discover, run_bench


def test_benches_are_registered() -> None:
    specs = discover()
    assert {"keystroke", "keystroke-cmu"} <= set(specs)


def test_cmu_quick_rows(data_dir: Path, tmp_path: Path) -> None:
    doc = run_bench("keystroke-cmu", BenchContext(data_dir=data_dir, out=tmp_path, quick=True), print_table=False)
    assert (tmp_path / "keystroke-cmu.json").exists() and (tmp_path / "keystroke-cmu-scores.csv").exists()
    rows = {r["method"]: r for r in json.loads((tmp_path / "keystroke-cmu.json").read_text())["results"]}
    assert set(rows) == {"manhattan-scaled", "nn-mahalanobis", "outlier-count", "svm-oneclass", "llr",
                         "background-svm", "fused"}
    for r in rows.values():
        assert r["eer"] == pytest.approx(r["eer_mean_per_subject"])  # K&M report the per-subject mean
        assert r["eer_sd_per_subject"] is not None
    assert 0.03 < rows["manhattan-scaled"]["eer"] < 0.2
    assert rows["fused"]["eer"] < rows["manhattan-scaled"]["eer"]
    # population methods see impostors of their own half only: about half as many trials
    assert rows["fused"]["n_impostor"] < rows["manhattan-scaled"]["n_impostor"]
    assert doc["benchmark"] == "keystroke-cmu"


def _linked(src: Path, dst: Path, names: list[Path]) -> Path:
    dst.mkdir()
    for p in names:
        (dst / p.name).symlink_to(p)
    return dst


def test_bbmas_quick_on_two_folders(data_dir: Path, tmp_path: Path) -> None:
    from evaluation.datasets import find_subject_files

    files = list(find_subject_files(data_dir, "keystroke").values())
    a = _linked(data_dir, tmp_path / "A", files[:10])
    b = _linked(data_dir, tmp_path / "B", files[10:20])
    out = tmp_path / "out"
    doc = run_bench("keystroke", BenchContext(train_dir=a, eval_dir=b, out=out, quick=True), print_table=False)
    assert (out / "keystroke.json").exists() and (out / "keystroke-det.png").exists()
    assert set(doc["eval_subjects"]).isdisjoint(doc["train_subjects"]) and len(doc["eval_subjects"]) == 10
    rows = [r for r in doc["results"] if r["window"] == "100 keys"]
    assert {r["method"] for r in rows} >= {"manhattan-scaled", "fused"}
    assert {r["window"] for r in doc["results"]} == {"50 keys", "100 keys"}
    best = min(r["eer"] for r in rows)
    base = next(r["eer"] for r in rows if r["method"] == "manhattan-scaled")
    assert best < base
    assert best < 0.25
