"""`cadence bench touch --quick` on the real data: the JSON carries the rows the issue needs."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_a_phone_model_cadence_does_not_know_is_scaled_once_over_its_files(data_dir: Path, tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Each file of an unknown model was scaled by its own person's sizes: part of the signal divided away.

    The same HTC One files, renamed to a model not in the tables, now share one screen and one
    contact and pressure scale, close to the HTC One's own table entry, and the loader says so.
    """
    import logging
    import os

    from evaluation.datasets import DATA_LOGGER, SCREENS, load_bbmas_touch
    from modalities.touch.strokes import DEVICE_PROFILES, device_profile

    src = sorted((data_dir / "bbmas_phone_touch").glob("*_(HTC_One).csv.gz"))[:8]
    for f in src:
        os.symlink(f, tmp_path / f.name.replace("HTC_One", "Pixel_4a"))
    with caplog.at_level(logging.WARNING, logger=DATA_LOGGER):
        streams = load_bbmas_touch(tmp_path)
    assert len(streams) == 8 and {s.device for s in streams.values()} == {"Pixel_4a"}
    assert len({(s.screen_width, s.screen_height, s.contact_scale, s.pressure_scale) for s in streams.values()}) == 1
    one = next(iter(streams.values()))
    assert abs(one.screen_width / SCREENS["HTC_One"][0] - 1) < 0.1
    contact, pressure = device_profile(one)
    assert abs(contact / DEVICE_PROFILES["HTC_One"].contact_scale - 1) < 0.25
    assert pressure is not None and abs(pressure / DEVICE_PROFILES["HTC_One"].pressure_scale - 1) < 0.25
    assert any("'Pixel_4a' is not in Cadence's tables" in r.getMessage() and "8 file(s)" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    known = load_bbmas_touch(data_dir / "bbmas_phone_touch", [int(f.name.split("_")[0]) for f in src[:2]])
    assert all(s.contact_scale is None and (s.screen_width, s.screen_height) == SCREENS["HTC_One"]
               for s in known.values())  # a model in the tables keeps the table's values
