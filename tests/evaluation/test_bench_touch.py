"""`cadence bench touch --quick` on the real data: the JSON carries the rows the issue needs."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_bench_touch_quick(data_dir, tmp_path) -> None:
    from evaluation.bench import BenchContext, run_bench

    ctx = BenchContext(data_dir=data_dir, out=tmp_path, quick=True, progress=False)
    run_bench("touch", ctx, print_table=False)
    doc = json.loads((tmp_path / "touch.json").read_text())
    assert doc["benchmark"] == "touch"
    assert len(doc["eval_subjects"]) == 12  # --quick: 12 subjects, 2 folds of 6
    rows = {(r["method"], r["window"]): r for r in doc["results"]}
    for m in ("touch-manhattan-scaled", "touch-knn", "touch-ocsvm", "touch-background-lr", "touch-background-qlr",
              "touch-plda", "touch-fused"):
        for w in ("1 swipe", "5 swipes"):
            assert (m, w) in rows and (f"{m}-same-device", w) in rows
            assert 0.0 <= rows[(m, w)]["eer"] <= 1.0
    # evidence accumulates: 5 swipes beat 1 swipe for the population-trained scorer
    assert rows[("touch-fused", "5 swipes")]["eer"] < rows[("touch-fused", "1 swipe")]["eer"]
    # learning from other people beats the one-class baseline on 5 swipes
    assert rows[("touch-fused", "5 swipes")]["eer"] < rows[("touch-manhattan-scaled", "5 swipes")]["eer"]
    assert any(w == "5 taps" for _, w in rows)
    # the adapted protocol has a window label of its own, for touch-fused only
    adapted = {(m, w) for m, w in rows if w == "5 swipes, adapted"}
    assert adapted == {("touch-fused", "5 swipes, adapted"), ("touch-fused-same-device", "5 swipes, adapted")}
    assert rows[("touch-fused", "5 swipes, adapted")]["n_genuine"] == rows[("touch-fused", "5 swipes")]["n_genuine"]
    # as on the server, only owner windows whose touch evidence matched adapt (not every one)
    counts = doc["protocol"]["adapted_counts"]
    assert counts["owner_windows"] == rows[("touch-fused", "5 swipes")]["n_genuine"]
    assert 0 < counts["adapted_windows"] < counts["owner_windows"], counts
    assert (tmp_path / "touch-scores.csv").exists() and (tmp_path / "touch-det.png").exists()
