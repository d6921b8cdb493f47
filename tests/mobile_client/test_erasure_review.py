"""Erasure and withdrawal stop federated training; stored recordings stay apart; torn batches stay local.

* Withdrawing federated-training consent, withdrawing authentication consent for the modality
  the app trains, and "Delete my data" (reset, or waiting for the bank) stop the app's SuperNode
  and delete `data_dir/federated/` (the exported feature windows, written owner-only); the
  Privacy screen's training line says what is true afterwards. App-level: each scenario runs
  the app in its own process (one Kivy App per process), with a stand-in SuperNode.
* The raw store keeps each recording (app run) apart: event times restart at every boot, so the
  federated export cuts windows one recording at a time, and batches written before recordings
  were kept are still read (each on its own).
* "Delete my data" while the sensor thread is writing a batch leaves no batch behind.
* Batches are written atomically; a torn or damaged batch is skipped (logged, counted), while a
  wrong key for the whole store is still a `RawStoreError`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from evaluation.synthetic import SyntheticPerson
from mobile_client import federation
from mobile_client.clock import VirtualClock
from mobile_client.collectors.replay import ReplaySource
from mobile_client.controllers.privacy import PrivacyController
from mobile_client.evidence import FLUSH_EVERY
from mobile_client.raw_store import SECRET_NAME, RawEventStore, RawStoreError
from mobile_client.secrets_store import FileSecretStore
from mobile_client.services import build_services
from modalities.keystroke.features import FEATURE_NAMES
from tests.mobile_client.scenes import run_script

DRIVER = r"""
import json, os, stat, sys, time
from pathlib import Path
from mobile_client import headless
headless.prepare(420, 880)
from kivy.clock import Clock
from evaluation.synthetic import SyntheticPerson
from mobile_client import federation, platform_info
platform_info.can_run_flower = federation.can_run_flower = lambda: True
from mobile_client.clock import VirtualClock
from mobile_client.collectors.replay import ReplaySource
from mobile_client.raw_store import RawEventStore
from mobile_client.profile import PURPOSES
from mobile_client.services import build_services
from mobile_client.ui.app import CadenceApp
from modalities.keystroke.features import FEATURE_NAMES

scenario, data = sys.argv[1], Path(sys.argv[2])
res = {}
ROLLOVER = FEATURE_NAMES.index("rate.rollover")


from tests.mobile_client.scenes import FakeNode, settle  # stands in for `cadence federated supernode`


NODES = []
def fake_start(superlink, data_dir, windows, modality, port):
    f = federation.export_windows(data_dir, windows, modality)  # what the real one writes first
    res["file_mode"] = oct(stat.S_IMODE(f.stat().st_mode))
    res["dir_mode"] = oct(stat.S_IMODE(data_dir.stat().st_mode))
    res["exported_rollover"] = max(float(w.values[ROLLOVER]) for w in windows)
    NODES.append(FakeNode(data_dir))
    return NODES[-1]
federation.start_supernode = fake_start

s = build_services(data, "http://127.0.0.1:9", retries=0)
s.profile.consents["keystroke"] = {"authentication": True, "federated_training": True}
s.profile.consents["touch"] = {"authentication": True, "federated_training": True}
from mobile_client.policy import policy  # granted under the current texts (test_consent_versions.py)
s.profile.consent_versions = {m: {q: policy(q).version for q in PURPOSES} for m in ("keystroke", "touch")}
s.profile.federated = True
s.profile.onboarded = True
s.profile.enrolled = ["keystroke", "touch"]
s.profile.registered = scenario == "delete_waiting"
# typing of two app runs on two boots: the collectors' clock (CLOCK_BOOTTIME) started again at each
person = SyntheticPerson(4)
days = [[], []]
for i, day in enumerate(days):
    ReplaySource(person.keystrokes(300, i + 1), clock=VirtualClock(50.0)).play_all(day.append)
s.store.append(days[0])
RawEventStore(data / "raw", s.secrets).append(days[1])  # the second run's store
from mobile_client import features
res["own_rollover"] = max(float(w.values[ROLLOVER]) for d in days for w in features.keystroke_windows(d))
os.environ["CADENCE_SUPERLINK"] = "127.0.0.1:9"




def after(app, pr):
    res["node_running"] = NODES[0].running
    res["status"] = app.federation_status()
    res["screen_status"] = pr.federated_status
    res["left_files"] = sorted(str(p.relative_to(data)) for p in (data / "federated").rglob("*") if p.is_file())


def scene(app):
    res["started"] = bool(NODES) and NODES[0].running
    pr = app.go("privacy")
    for _ in range(3):
        yield
    if scenario == "off":
        pr.set_federated(False)
        yield from settle(app)
        after(app, pr)
        pr.set_federated(True)  # the training text is shown first: only agreeing grants
        yield from settle(app)
        res["asked"] = bool(pr.ids.ask.children) and app.federation_status().startswith("Off")
        pr.ids.ask.children[0].dispatch("on_agree")
        yield from settle(app)
        res["status_on_again"] = app.federation_status()
        res["running_again"] = len(NODES) == 2 and NODES[-1].running
    elif scenario == "auth":
        pr.set_consent("keystroke", False)
        yield from settle(app)
        after(app, pr)
    else:
        pr.delete(); yield
        pr.delete()
        yield from settle(app)
        res["deleted_text"] = pr.deleted
        after(app, pr)


def ready(app):
    from tests.mobile_client.scenes import drive
    drive(app, scene(app), res)


CadenceApp(s, animate=False, on_ready=ready).run()
res["left_after_close"] = sorted(str(p.relative_to(data)) for p in (data / "federated").rglob("*") if p.is_file())
print("RESULT " + json.dumps(res), flush=True)
"""


def _drive(env: dict[str, str], tmp_path: Path, scenario: str) -> dict[str, Any]:
    res: dict[str, Any] = run_script(DRIVER, scenario, str(tmp_path / "app"), env=env)
    assert res["started"], res
    return res


# -- 1: withdrawal and erasure stop federated training and delete its files ---------------------------
@pytest.mark.ui
def test_turning_federated_training_off_stops_the_supernode_and_deletes_its_windows(gl_env: dict[str, str],
                                                                                   tmp_path: Path) -> None:
    res = _drive(gl_env, tmp_path, "off")
    assert not res["node_running"], f"federated consent withdrawn, the SuperNode still runs: {res['status']!r}"
    assert res["left_files"] == [], res["left_files"]
    assert res["status"].startswith("Off") and res["screen_status"] == res["status"], res
    # switched on again: the text is shown first; agreed to, training starts again at once
    assert res["asked"] and res["running_again"], res
    assert "taking part in training now" in res["status_on_again"], res["status_on_again"]


@pytest.mark.ui
def test_withdrawing_authentication_for_the_trained_modality_stops_training(gl_env: dict[str, str],
                                                                           tmp_path: Path) -> None:
    res = _drive(gl_env, tmp_path, "auth")
    assert not res["node_running"], "typing consent withdrawn, the SuperNode still trains on typing"
    assert res["left_files"] == [], res["left_files"]
    # federated training stays on for touch, which this computer does not train: not "will take part"
    assert "not taking part" in res["status"] and res["screen_status"] == res["status"], res


@pytest.mark.ui
@pytest.mark.parametrize("scenario", ["delete", "delete_waiting"])
def test_delete_my_data_stops_training_and_leaves_no_features(gl_env: dict[str, str], tmp_path: Path,
                                                              scenario: str) -> None:
    res = _drive(gl_env, tmp_path, scenario)
    assert "Deleted" in res["deleted_text"], res
    assert not res["node_running"], "after 'Delete my data' the SuperNode still trains on the erased data"
    assert res["left_files"] == [] and res["left_after_close"] == [], res
    # reset: training is off; waiting for the bank: the consents stay until it confirms, training is paused
    assert res["status"].startswith("Off" if scenario == "delete" else "Paused"), res["status"]


@pytest.mark.ui
def test_the_exported_windows_are_owner_only_and_never_mix_two_boots(gl_env: dict[str, str], tmp_path: Path) -> None:
    res = _drive(gl_env, tmp_path, "auth")
    assert res["file_mode"] == "0o600" and res["dir_mode"] == "0o700", res
    assert res["exported_rollover"] <= res["own_rollover"] + 0.05, (
        f"exported windows mix two recordings: key roll-over rate up to {res['exported_rollover']:.2f} "
        f"(each recording alone: at most {res['own_rollover']:.2f})")


def test_compliance_inventory_lists_the_federated_export() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "compliance.md").read_text()
    assert "federated/device-keystroke.npz" in doc


def test_the_supernodes_data_file_goes_when_it_stops(tmp_path: Path) -> None:
    class Proc:
        pid = 0

        def poll(self) -> int:
            return 0

    f = tmp_path / "device-keystroke.npz"
    f.write_bytes(b"x")
    node = federation.SuperNode(Proc(), tmp_path, f)  # type: ignore[arg-type]
    import federated.deployment as dep

    real = dep.stop
    dep.stop = lambda proc, timeout=10.0: None  # type: ignore[assignment]
    try:
        node.stop()
    finally:
        dep.stop = real
    assert not f.exists()


# -- 2: recordings of different boots stay apart -------------------------------------------------------
def _two_boots(tmp_path: Path) -> tuple[RawEventStore, list[Any], list[Any]]:
    secrets = FileSecretStore(tmp_path / "s")
    person = SyntheticPerson(4)
    day1: list[Any] = []
    day2: list[Any] = []
    # each run's collectors stamp events on mobile_client.clock.monotonic(), which starts again after a reboot
    ReplaySource(person.keystrokes(300, 1), clock=VirtualClock(50.0)).play_all(day1.append)
    ReplaySource(person.keystrokes(300, 2), clock=VirtualClock(50.0)).play_all(day2.append)
    RawEventStore(tmp_path / "raw", secrets).append(day1)
    store = RawEventStore(tmp_path / "raw", secrets)  # the next app run
    store.append(day2)
    return store, day1, day2


def test_stored_recordings_of_two_boots_are_read_and_cut_apart(tmp_path: Path) -> None:
    from mobile_client import features

    store, day1, day2 = _two_boots(tmp_path)
    assert store.read_recordings("keystroke") == [day1, day2]
    assert store.read("keystroke") == day1 + day2
    exported = federation.recording_windows(store, "keystroke")
    own = features.keystroke_windows(day1) + features.keystroke_windows(day2)
    i = FEATURE_NAMES.index("rate.rollover")
    assert [w.values[i] for w in exported] == [w.values[i] for w in own]


def test_one_run_whose_clock_goes_back_is_two_recordings(tmp_path: Path) -> None:
    store = RawEventStore(tmp_path / "raw", FileSecretStore(tmp_path / "s"))
    person = SyntheticPerson(4)
    day1: list[Any] = []
    day2: list[Any] = []
    ReplaySource(person.keystrokes(300, 1), clock=VirtualClock(50.0)).play_all(day1.append)
    ReplaySource(person.keystrokes(300, 2), clock=VirtualClock(50.0)).play_all(day2.append)
    store.append(day1[:150])
    store.append(day1[150:])  # the same recording, flushed in two batches
    store.append(day2)
    assert store.read_recordings("keystroke") == [day1, day2]


def test_batches_written_before_recordings_were_kept_are_still_read_each_on_its_own(tmp_path: Path) -> None:
    secrets = FileSecretStore(tmp_path / "s")
    store = RawEventStore(tmp_path / "raw", secrets)
    evs = SyntheticPerson(2).keystrokes(40, 0).to_events()
    old = Fernet(secrets.get(SECRET_NAME) or b"").encrypt(json.dumps([asdict(e) for e in evs]).encode())
    d = tmp_path / "raw" / "keystroke"
    d.mkdir(exist_ok=True)
    now = time.time()  # batches of today (reads sweep what retention no longer allows)
    (d / f"{now - 2:.3f}-000001-40.bin").write_bytes(old)
    (d / f"{now - 1:.3f}-000002-40.bin").write_bytes(old)
    assert store.read_recordings("keystroke") == [evs, evs]
    assert store.summary().counts["keystroke"] == 80


# -- 3: an erasure waits for a batch being written ---------------------------------------------------
def test_no_raw_batch_survives_delete_my_data(tmp_path: Path) -> None:
    s = build_services(tmp_path / "app", "http://127.0.0.1:9", retries=0)
    s.profile.consents["gait"]["authentication"] = True
    samples = SyntheticPerson(1).walk(10, 100, 0).to_samples()[:FLUSH_EVERY]
    real_append = s.store.append
    in_append = threading.Event()

    def slow_append(events: Any) -> int:  # the sensor thread is encrypting and writing its batch (a slow phone)
        in_append.set()
        time.sleep(0.5)
        return real_append(events)

    s.store.append = slow_append  # type: ignore[method-assign]
    sensor = threading.Thread(target=lambda: s.evidence.extend(samples))  # the accelerometer's thread
    sensor.start()
    assert in_append.wait(10)
    text = PrivacyController(s).delete_my_data()  # the worker job: nothing on record with the bank, a reset
    sensor.join()
    assert text.startswith("Deleted")
    left = sorted(p.name for p in (tmp_path / "app" / "raw").rglob("*.bin"))
    assert not left, f"raw accelerometer batches left on the phone after 'Delete my data': {left}"
    assert s.store.summary().counts["gait"] == 0
    s.evidence.flush()  # nothing recorded before the erasure is left to flush either
    assert not list((tmp_path / "app" / "raw").rglob("*.bin"))


# -- 4: atomic batches; a torn batch is skipped, a wrong key is an error -----------------------------
def test_one_torn_batch_is_skipped_logged_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = RawEventStore(tmp_path / "raw", FileSecretStore(tmp_path / "s"))
    person = SyntheticPerson(2)
    first = person.keystrokes(200, 0).to_events()
    store.append(first)
    store.append(person.keystrokes(200, 1).to_events())
    last = sorted((tmp_path / "raw" / "keystroke").glob("*.bin"))[-1]
    last.write_bytes(last.read_bytes()[: len(last.read_bytes()) // 2])  # torn (an older version wrote in place)
    with caplog.at_level(logging.WARNING, logger="mobile_client.raw_store"):
        assert store.read("keystroke") == first
        assert store.read("keystroke") == first
    assert caplog.text.count(last.name) == 1  # logged once, not at every read
    assert store.summary().unreadable == 1


def test_a_store_whose_only_batch_is_torn_reads_empty_not_wrong_key(tmp_path: Path) -> None:
    store = RawEventStore(tmp_path / "raw", FileSecretStore(tmp_path / "s"))
    store.append(SyntheticPerson(2).keystrokes(50, 0).to_events())
    f = next((tmp_path / "raw" / "keystroke").glob("*.bin"))
    f.write_bytes(b"")
    assert store.read("keystroke") == [] and store.summary().unreadable == 1


def test_a_wrong_key_for_the_whole_store_is_a_clear_error(tmp_path: Path) -> None:
    secrets = FileSecretStore(tmp_path / "s")
    store = RawEventStore(tmp_path / "raw", secrets)
    store.append(SyntheticPerson(2).keystrokes(50, 0).to_events())
    store.append(SyntheticPerson(2).keystrokes(50, 1).to_events())
    secrets.put(SECRET_NAME, Fernet.generate_key())  # a valid key, but not this store's
    with pytest.raises(RawStoreError, match="wrong key"):
        RawEventStore(tmp_path / "raw", secrets).read("keystroke")


def test_a_wrong_key_for_a_store_older_than_key_checks_is_still_an_error(tmp_path: Path) -> None:
    secrets = FileSecretStore(tmp_path / "s")
    store = RawEventStore(tmp_path / "raw", secrets)
    store.append(SyntheticPerson(2).keystrokes(50, 0).to_events())
    (tmp_path / "raw" / "key-check").unlink(missing_ok=True)  # as a store made before key-checks
    secrets.put(SECRET_NAME, Fernet.generate_key())
    with pytest.raises(RawStoreError, match="wrong key"):
        RawEventStore(tmp_path / "raw", secrets).read("keystroke")


def test_a_batch_write_that_fails_leaves_no_partial_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    store = RawEventStore(tmp_path / "raw", FileSecretStore(tmp_path / "s"))
    first = SyntheticPerson(2).keystrokes(50, 0).to_events()
    store.append(first)

    def crash(*_a: Any, **_k: Any) -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.append(SyntheticPerson(2).keystrokes(50, 1).to_events())
    monkeypatch.undo()
    names = sorted(p.name for p in (tmp_path / "raw" / "keystroke").iterdir())
    assert len(names) == 1 and names[0].endswith(".bin"), names  # no half-written batch, no temp file
    assert store.read("keystroke") == first


def test_windows_of_an_older_feature_version_are_not_exported_as_current(tmp_path: Path) -> None:
    """The device file is labelled with the current feature version: older windows are other numbers."""
    import numpy as np

    from federated.features import feature_spec
    from mobile_client.federation import export_windows
    from modalities.events import FeatureWindow

    spec = feature_spec("keystroke")
    rng = np.random.default_rng(0)

    def window(i: int, version: str) -> FeatureWindow:
        return FeatureWindow("keystroke", version, float(i), float(i) + 1, 100, 1.0, rng.normal(size=spec.dim))

    old = [window(i, "keystroke-free-0-old") for i in range(8)]
    with pytest.raises(ValueError, match="8 of another version"):
        export_windows(tmp_path / "a", old, "keystroke")
    current = [window(i, spec.feature_version) for i in range(6)]
    with pytest.raises(ValueError, match="4 keystroke window.*fewer than the 5"):  # its sums would give them back
        export_windows(tmp_path / "b", old + current[:4], "keystroke")
    path = export_windows(tmp_path / "b", old + current, "keystroke")
    with np.load(path) as z:
        assert z["X"].shape[0] == 6  # only the current windows
        assert str(z["feature_version"]) == spec.feature_version
