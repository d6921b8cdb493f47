"""A keystroke file whose times are milliseconds is a `DatasetError` naming it, not a subject of garbage."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from evaluation.datasets import DatasetError, load_bbmas_keystrokes

HEADER = "key,time_since_beginning,press_to_press,hold_time,release_to_press\n"


def _keys_csv(scale: float, n: int = 60) -> str:
    """PriyaBansal68's layout (press_to_press holds the hold time, hold_time the press-to-press time)."""
    rng = np.random.default_rng(4)
    dd = rng.uniform(0.1, 0.4, n)
    hold = rng.uniform(0.06, 0.2, n)
    t = np.cumsum(dd)
    return HEADER + "".join(f"{'etaoin'[i % 6]},{t[i] * scale:.3f},{hold[i] * scale:.3f},{dd[i] * scale:.3f},0.1\n"
                            for i in range(n))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADENCE_CACHE_DIR", str(tmp_path / "cache"))


def test_keystroke_file_in_milliseconds_is_refused_naming_it(tmp_path: Path) -> None:
    ok, ms = tmp_path / "s" / "3_processed.csv.gz", tmp_path / "ms" / "3_processed.csv.gz"
    for path, scale in ((ok, 1.0), (ms, 1000.0)):
        path.parent.mkdir()
        path.write_bytes(gzip.compress(_keys_csv(scale).encode()))
    assert len(load_bbmas_keystrokes(ok.parent)[3]) == 60
    with pytest.raises(DatasetError, match="median key hold over 60 presses.*milliseconds") as err:
        load_bbmas_keystrokes(ms.parent)
    assert str(ms) in str(err.value)
