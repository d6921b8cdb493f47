"""The gait window cache turns an unreadable data file or an unwritable cache into a `DatasetError`.

chmod does not stop root (the test machines run as root), so the failures are simulated by making
the file operations raise PermissionError, as the OS does for a file or folder without access.
"""

from __future__ import annotations

import builtins
import gzip
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from evaluation import datasets
from evaluation.datasets import DatasetError, load_bbmas_gait
from modalities.gait import data as gait_data
from modalities.gait.features import FEATURE_VERSION

GAIT_HEADER = "EID,Xvalue,Yvalue,Zvalue,time\n"


def _gait_csv(n: int = 1500, seed: int = 0, rate: float = 50.0) -> str:
    rng = np.random.default_rng(seed)
    t = pd.to_datetime(1.49e9 + np.arange(n) / rate, unit="s").strftime("%Y-%m-%d %H:%M:%S.%f").str[:-3]
    step = np.sin(2 * np.pi * 1.8 * np.arange(n) / rate)[:, None] * [1.0, 3.0, 0.5]
    xyz = step + rng.normal(0, 0.3, (n, 3)) + [0, 9.8, 0]
    return GAIT_HEADER + "".join(f"{i},{a:.5f},{b:.5f},{c:.5f},{ti}\n" for i, ((a, b, c), ti) in enumerate(zip(xyz, t)))


@pytest.fixture
def gait_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CADENCE_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "g"
    folder.mkdir()
    for i in (1, 2):
        (folder / f"{i}_PocketPhone_Accelerometer_(X).csv.gz").write_bytes(gzip.compress(_gait_csv(seed=i).encode()))
    return folder


def test_an_unreadable_gait_file_is_a_dataset_error_naming_it(gait_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shut = gait_dir / "2_PocketPhone_Accelerometer_(X).csv.gz"
    real_open = builtins.open

    def refuse(file: Any, *args: Any, **kw: Any) -> Any:
        if Path(file) == shut:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kw)

    monkeypatch.setattr(builtins, "open", refuse)  # every reader of the file, whichever module it is in
    with pytest.raises(DatasetError, match="cannot read: Permission denied") as err:
        gait_data.load_windows(gait_dir, None, 4.0)
    assert str(shut) in str(err.value)


def _in_window_cache(path: Any) -> bool:
    return "gait-windows" in str(path)


def _refuse_mkdir(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Path.mkdir

    def mkdir(self: Path, *args: Any, **kw: Any) -> None:
        if _in_window_cache(self):
            raise PermissionError(13, "Permission denied", str(self))
        real(self, *args, **kw)

    monkeypatch.setattr(Path, "mkdir", mkdir)


def _refuse_savez(monkeypatch: pytest.MonkeyPatch) -> None:
    real = np.savez

    def savez(file: Any, *args: Any, **kw: Any) -> None:
        if _in_window_cache(file):
            raise PermissionError(13, "Permission denied", str(file))
        real(file, *args, **kw)

    monkeypatch.setattr(np, "savez", savez)


def _refuse_replace(monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.replace

    def replace(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
        if _in_window_cache(dst):
            raise PermissionError(13, "Permission denied", str(dst))
        real(src, dst, *args, **kw)

    monkeypatch.setattr(os, "replace", replace)


REFUSALS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "mkdir": _refuse_mkdir, "savez": _refuse_savez, "replace": _refuse_replace,
}


@pytest.mark.parametrize("step", list(REFUSALS))
def test_an_unwritable_window_cache_is_a_dataset_error(gait_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                       step: str) -> None:
    load_bbmas_gait(gait_dir)  # the parse cache is written: only the window cache fails
    REFUSALS[step](monkeypatch)
    with pytest.raises(DatasetError, match=r"cannot write the gait window cache .*gait-windows.*Permission denied"):
        gait_data.load_windows(gait_dir, None, 4.0)
    folder = datasets.cache_dir() / "gait-windows"
    assert not list(folder.glob("*.tmp.npz"))  # no temporary file left behind


def test_windows_are_cached_under_the_same_key_as_before(gait_dir: Path) -> None:
    path = gait_dir / "1_PocketPhone_Accelerometer_(X).csv.gz"
    h = hashlib.sha1(f"gait-windows:{FEATURE_VERSION}:4.0:2.0:".encode())
    h.update(path.read_bytes())
    assert gait_data._key(path, 4.0, 2.0) == h.hexdigest()  # existing cache entries stay valid
    first = gait_data.load_windows(gait_dir, None, 4.0)
    assert (datasets.cache_dir() / "gait-windows" / f"{h.hexdigest()}.npz").is_file()
    again = gait_data.load_windows(gait_dir, None, 4.0)
    assert list(first) == list(again) == [1, 2]
    assert all(np.array_equal(first[s].X, again[s].X) for s in first)
