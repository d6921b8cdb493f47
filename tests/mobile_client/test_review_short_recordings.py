"""Several short app runs on one boot: the federated export must not become one tiny window per run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evaluation.synthetic import SyntheticPerson
from mobile_client import federation
from mobile_client.clock import VirtualClock
from mobile_client.collectors.replay import ReplaySource
from mobile_client.raw_store import RawEventStore
from mobile_client.secrets_store import FileSecretStore


def test_short_runs_on_one_boot_still_give_full_keystroke_windows(tmp_path: Path) -> None:
    """Four app runs on the same boot (one clock), 60 keys each (a payment's payee and amount).

    Before the per-recording cut, the 240 keys gave windows of 100 keys; now each run is cut
    on its own and yields one 60-key window, and those short windows are what is exported.
    """
    secrets = FileSecretStore(tmp_path / "s")
    person = SyntheticPerson(4)
    clock = VirtualClock(5_000.0)
    for run in range(4):
        evs: list[Any] = []
        ReplaySource(person.keystrokes(60, run), clock=clock).play_all(evs.append)
        RawEventStore(tmp_path / "raw", secrets).append(evs)  # one store per app run
        clock.advance(600.0)  # ten minutes later, same boot
    store = RawEventStore(tmp_path / "raw", secrets)
    windows = federation.recording_windows(store, "keystroke")
    assert windows and min(w.n_events for w in windows) >= 100, \
        f"exported windows hold {sorted(w.n_events for w in windows)} keys"


def test_runs_of_two_boots_are_never_joined_even_when_their_times_go_forward(tmp_path: Path) -> None:
    """After a reboot the monotonic clock starts again; its new stamps can still lie after the old ones."""
    secrets = FileSecretStore(tmp_path / "s")
    person = SyntheticPerson(5)
    for boot_uptime, start in ((5_000.0, 100.0), (20.0, 400.0)):  # boot 2: 20 s up, stamps from 400 s on
        evs: list[Any] = []
        ReplaySource(person.keystrokes(150, int(start)), clock=VirtualClock(start)).play_all(evs.append)
        RawEventStore(tmp_path / "raw", secrets, uptime=lambda u=boot_uptime: u).append(evs)
    recordings = RawEventStore(tmp_path / "raw", secrets).read_recordings("keystroke")
    assert [len(r) for r in recordings] == [150, 150]
