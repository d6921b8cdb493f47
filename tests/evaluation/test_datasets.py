"""Loaders read every subject of every shared folder, and any folder with the same layout."""

from __future__ import annotations

import gzip
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from evaluation.datasets import (
    DatasetError,
    find_subject_files,
    load_bbmas_gait,
    load_bbmas_keystrokes,
    load_bbmas_touch,
    load_cmu,
    modality_dir,
    split_segments,
)


def test_every_subject_of_every_folder_loads(data_dir: Path) -> None:
    cmu = load_cmu(data_dir)
    assert cmu.shape == (20400, 34) and cmu["subject"].nunique() == 51

    files = find_subject_files(data_dir, "keystroke")
    keys = load_bbmas_keystrokes(data_dir)
    assert set(keys) == set(files) and len(keys) >= 90
    for seq in keys.values():
        assert len(seq) > 500
        assert np.all(np.diff(seq.press) >= 0) and np.all(seq.release >= seq.press)
        # holds are key dwell times (the fixed column), not down-down latencies
        assert 0.03 < np.median(seq.release - seq.press) < 0.3

    files = find_subject_files(data_dir, "touch")
    touch = load_bbmas_touch(data_dir)
    assert set(touch) == set(files) and len(touch) >= 90
    for s in touch.values():
        assert s.device in ("HTC_One", "Samsung_S6")
        assert np.all(np.diff(s.time) >= 0)
        downs, ups = np.sum(s.action == 0), np.sum(s.action == 1)
        assert downs > 50 and abs(int(downs) - int(ups)) <= 2

    files = find_subject_files(data_dir, "gait")
    t0 = time.perf_counter()
    gait = load_bbmas_gait(data_dir)
    assert set(gait) == set(files) and len(gait) >= 85
    for rec in gait.values():
        assert 1 <= len(rec.segments) <= 3 and rec.units == "m/s^2"
        for seg in rec.segments:
            assert np.all(np.diff(seg.t) > 0)  # duplicates dropped
            dt = np.median(np.diff(seg.t))
            assert 0.005 < dt < 0.02  # ~100 Hz
            assert 7.0 < np.median(np.linalg.norm(seg.xyz, axis=1)) < 14.0
    # the second load comes from the cache
    t1 = time.perf_counter()
    load_bbmas_gait(data_dir)
    assert time.perf_counter() - t1 < max(5.0, (t1 - t0))


def _gz(src: Path, dst: Path) -> None:
    with open(src, "rb") as fi, gzip.open(dst, "wb") as fo:
        shutil.copyfileobj(fi, fo)


def test_any_folder_with_the_layout(tmp_path: Path) -> None:
    """Ids above 1000, another phone name, numeric epoch-ms times in g, plain .csv and .csv.gz."""
    gait = tmp_path / "other" / "phone_gait"
    gait.mkdir(parents=True)
    t = 1.5e12 + np.arange(0, 30_000, 40.0)  # 25 Hz, epoch milliseconds
    rows = ["EID,Xvalue,Yvalue,Zvalue,time"]
    for k, ti in enumerate(t):
        rows.append(f"{k},{0.1 * np.sin(ti / 300):.4f},-1.0,{0.05:.3f},{ti:.0f}")
    rows.append(rows[-1])  # a duplicate timestamp
    src = tmp_path / "raw.csv"
    src.write_text("\n".join(rows))
    _gz(src, gait / "1234_PocketPhone_Accelerometer_(Pixel_7).csv.gz")
    rec = load_bbmas_gait(tmp_path / "other")[1234]
    assert rec.device == "Pixel_7" and rec.units == "g"
    assert np.median(np.diff(rec.segments[0].t)) == pytest.approx(0.04)
    assert np.median(np.linalg.norm(rec.segments[0].xyz, axis=1)) == pytest.approx(9.81, abs=0.1)

    touch = tmp_path / "other" / "touch"
    touch.mkdir()
    (touch / "1001_HandPhone_TouchEvent_(Pixel_7).csv").write_text(
        "EID,Xvalue,Yvalue,pressure,touchMajor,touchMinor,pointerID,fingerOrientation,actionType,time\n"
        "0,100,200,0.5,3,2,0,0,0.0,2017-4-14 18:56:47:185\n"
        "1,101,210,0.5,3,2,0,0,,null\n"
        "2,102,220,0.5,3,2,0,0,2.0,2017-4-14 18:56:47:205\n"
        "3,103,230,0.5,3,2,0,0,261.0,2017-4-14 18:56:47:215\n"
        "4,104,240,0.5,3,2,0,0,1.0,2017-4-14 18:56:47:225\n"
    )
    s = load_bbmas_touch(tmp_path / "other")[1001]
    assert list(s.action) == [0, 2, 2, 5, 1]
    assert s.time[1] == pytest.approx((s.time[0] + s.time[2]) / 2)  # interpolated
    assert s.device == "Pixel_7" and s.screen_width > 0


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        modality_dir(tmp_path / "nope", "gait")
    with pytest.raises(DatasetError, match="no gait files"):
        modality_dir(tmp_path, "gait")


def test_split_segments() -> None:
    t = np.r_[np.arange(0, 10, 0.01), np.arange(100, 120, 0.01), np.arange(200, 201, 0.01)]
    segs = split_segments(t, max_gap=1.0, min_duration=5.0)
    assert len(segs) == 2 and t[segs[1].start] == 100
