"""`cadence bench gait`: runs unchanged on another phone's folder (25 Hz, g, other name)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.modalities.gait_synth import person, rotation, walk


def _write_phone_folder(folder: Path, subjects: range, *, rate: float, phone: str, units_g: bool, epoch_ms: bool) -> None:
    """One CSV per subject with two walks an hour apart, in the BB-MAS layout or a 'new phone' one."""
    folder.mkdir(parents=True)
    for s in subjects:
        p, pose = person(500 + s), rotation(np.random.default_rng(s))
        segs = [walk(p, 45, rate, t0=1.49e9, pose=pose, seed=s, units_g=units_g, jitter=0.1 / rate, noise=0.5),
                walk(p, 45, rate, t0=1.49e9 + 3600, pose=pose, seed=s + 1000, units_g=units_g, jitter=0.1 / rate, noise=0.5)]
        t = np.concatenate([g.t for g in segs])
        xyz = np.vstack([g.xyz for g in segs])
        if epoch_ms:
            df = pd.DataFrame({"timestamp": np.round(t * 1000).astype(np.int64), "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]})
        else:
            times = pd.to_datetime(t, unit="s").strftime("%Y-%m-%d %H:%M:%S.%f").str[:-3]
            df = pd.DataFrame({"EID": np.arange(t.size), "Xvalue": xyz[:, 0], "Yvalue": xyz[:, 1], "Zvalue": xyz[:, 2], "time": times})
        df.to_csv(folder / f"{s}_PocketPhone_Accelerometer_({phone}).csv", index=False)


def test_bench_gait_runs_on_another_phone_at_25_hz_in_g(tmp_path: Path) -> None:
    from cadence.cli import app

    train, ev = tmp_path / "A", tmp_path / "B"
    _write_phone_folder(train, range(1, 9), rate=100.0, phone="Samsung_S6", units_g=False, epoch_ms=False)
    _write_phone_folder(ev, range(101, 107), rate=25.0, phone="Pixel_4a", units_g=True, epoch_ms=True)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["bench", "gait", "--train-dir", str(train), "--eval-dir", str(ev), "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "gait.json").read_text())
    assert doc["train_subjects"] == list(range(1, 9)) and doc["eval_subjects"] == list(range(101, 107))
    rows = {(r["method"], r["window"]): r for r in doc["results"]}
    assert {"5 s", "10 s", "5 s x3", "10 s x3"} <= {w for _, w in rows}
    best = min(r["eer"] for (m, w), r in rows.items() if w == "10 s")
    assert best < 0.2  # synthetic walkers are easy; a unit or rate mix-up would make this chance
    assert (out / "gait-scores.csv").exists() and (out / "gait-det.png").exists()


def test_bench_gait_names_the_evaluation_subjects_it_could_not_use(tmp_path: Path) -> None:
    """A subject with too little walking was dropped from the rows without a word (keystroke and touch say so)."""
    from cadence.cli import app

    train, ev = tmp_path / "A", tmp_path / "B"
    _write_phone_folder(train, range(1, 9), rate=100.0, phone="Samsung_S6", units_g=False, epoch_ms=False)
    _write_phone_folder(ev, range(101, 106), rate=100.0, phone="Samsung_S6", units_g=False, epoch_ms=False)
    short = walk(person(900), 14, 100.0, t0=1.49e9, seed=900, noise=0.5)  # 7 s before the cut: no 10 s window
    times = pd.to_datetime(short.t, unit="s").strftime("%Y-%m-%d %H:%M:%S.%f").str[:-3]
    pd.DataFrame({"EID": np.arange(short.t.size), "Xvalue": short.xyz[:, 0], "Yvalue": short.xyz[:, 1],
                  "Zvalue": short.xyz[:, 2], "time": times}).to_csv(
        ev / "106_PocketPhone_Accelerometer_(Samsung_S6).csv", index=False)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["bench", "gait", "--train-dir", str(train), "--eval-dir", str(ev), "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "gait.json").read_text())
    notes = [n for n in doc["protocol"].get("warnings", []) if "106" in n]
    assert notes and all("left out" in n or "skipped" in n for n in notes), doc["protocol"].get("warnings")
    assert any("'10 s'" in n or "skipped" in n for n in notes)
    assert doc["protocol"]["skipped_subjects"] == ([106] if any("skipped" in n for n in notes) else [])


def test_bench_gait_refuses_a_folder_without_gait_files(tmp_path: Path) -> None:
    from cadence.cli import app

    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["bench", "gait", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "gait" in res.output


@pytest.mark.slow
def test_bench_gait_quick_on_real_data(data_dir: Path, tmp_path: Path) -> None:
    from evaluation.bench import BenchContext, run_bench

    doc = run_bench("gait", BenchContext(data_dir=data_dir, out=tmp_path, quick=True, progress=False), print_table=False)
    ten = [r for r in doc["results"] if r["window"] == "10 s"]
    assert {r["method"] for r in ten} >= {"gait-manhattan", "gait-fusion"}
    assert set(doc["train_subjects"]).isdisjoint(doc["eval_subjects"])
    assert min(r["eer"] for r in ten) < 0.35
