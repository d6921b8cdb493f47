"""d91af66: one boot's app runs must read as one recording (raw_store's `boot` estimate)."""

from __future__ import annotations

import time as real_time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from evaluation.synthetic import SyntheticPerson
from mobile_client import federation, raw_store
from mobile_client.clock import VirtualClock
from mobile_client.collectors.replay import ReplaySource
from mobile_client.raw_store import RawEventStore
from mobile_client.secrets_store import FileSecretStore


def _runs(tmp_path: Path, clocks: dict[str, float], sleep_s: float, runs: int = 4, keys: int = 60,
          **kw: Any) -> RawEventStore:
    """`runs` app runs of one boot, `keys` keys each, ten minutes of use plus `sleep_s` of deep sleep apart."""
    secrets = FileSecretStore(tmp_path / "s")
    person = SyntheticPerson(4)
    for run in range(runs):
        evs: list[Any] = []
        ReplaySource(person.keystrokes(keys, run), clock=VirtualClock(clocks["mono"])).play_all(evs.append)
        RawEventStore(tmp_path / "raw", secrets, **kw).append(evs)
        clocks["wall"] += 600.0 + sleep_s  # the wall clock and CLOCK_BOOTTIME count deep sleep ...
        clocks["boottime"] += 600.0 + sleep_s
        clocks["mono"] += 600.0  # ... CLOCK_MONOTONIC (time.monotonic) does not
    return RawEventStore(tmp_path / "raw", secrets, **kw)


def test_deep_sleep_between_runs_does_not_split_one_boot(tmp_path: Path, monkeypatch) -> None:
    clocks = {"wall": 1_790_000_000.0, "mono": 5_000.0, "boottime": 9_000.0}
    fake = SimpleNamespace(time=lambda: clocks["wall"], monotonic=lambda: clocks["mono"],
                           CLOCK_BOOTTIME=real_time.CLOCK_BOOTTIME, CLOCK_MONOTONIC=real_time.CLOCK_MONOTONIC,
                           clock_gettime=lambda c: clocks["boottime"] if c == real_time.CLOCK_BOOTTIME else clocks["mono"])
    monkeypatch.setattr(raw_store, "time", fake)
    store = _runs(tmp_path, clocks, sleep_s=1_800.0, runs=8, keys=30)  # payments half an hour of sleep apart
    assert [len(r) for r in store.read_recordings("keystroke")] == [240]
    windows = federation.recording_windows(store, "keystroke")
    assert windows and min(w.n_events for w in windows) >= 100  # HEAD: [] (every 30-key window < 0.2)


def test_injected_now_is_the_wall_clock_of_the_boot_estimate(tmp_path: Path) -> None:
    clocks = {"wall": 1_790_000_000.0, "mono": 5_000.0, "boottime": 5_000.0}
    store = _runs(tmp_path, clocks, sleep_s=0.0, now=lambda: clocks["wall"], uptime=lambda: clocks["boottime"])
    assert [len(r) for r in store.read_recordings("keystroke")] == [240]
