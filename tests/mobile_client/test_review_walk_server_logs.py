"""The replayed walk can pass set-up, a bad server address is named at once, logs carry no ids.

* with the real BB-MAS recordings the walk the desktop replays gives set-up's gait windows, a
  walk started again replays another stretch, and `cadence app --screenshots` gets through;
  a tour that fails says so in one `error:` line (its traceback stays in tour.json);
* `recorded_walk` cuts the recording at the first sample at or past the length asked, so a long
  enough recording is never looped;
* `--server notaurl` / `ftp://...` is a configuration error before anything starts, and a URL
  the client cannot use (nothing sent) is not "offline, answer unknown";
* the client's log lines name the route, never the user id in its path.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from evaluation.synthetic import SyntheticPerson
from mobile_client import features
from mobile_client.api import ApiClient, ApiError, OfflineQueue, Queued
from mobile_client.clock import VirtualClock
from mobile_client.collectors.replay import events_of, recorded_walk
from mobile_client.controllers import enrolment
from mobile_client.controllers.privacy import PrivacyController
from mobile_client.device_key import DeviceKey
from mobile_client.secrets_store import FileSecretStore
from tests.mobile_client.test_consent_and_erasure import FaultyBank
from tests.mobile_client.test_controllers import _enrolled
from tests.mobile_client.test_ui import _env

CADENCE = Path(sys.executable).with_name("cadence")


def _gait_report(series: object) -> features.QualityReport:
    return features.quality_report("gait", features.windows_for("gait", events_of(series)))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- 1: the walk set-up needs
def test_the_walk_length_comes_from_what_the_gait_gate_needs() -> None:
    need = features.GAIT_WINDOW_S + (features.MIN_ENROL_WINDOWS["gait"] - 1) * features.GAIT_HOP_S
    assert features.gait_walk_seconds(features.MIN_ENROL_WINDOWS["gait"]) == need
    assert enrolment.WALK_NEEDED_S == need
    assert enrolment.REPLAY_WALK_S > enrolment.WALK_SECONDS >= enrolment.WALK_NEEDED_S


@pytest.mark.parametrize("seed", [1, 2, 5])
def test_the_replayed_set_up_walk_passes_and_a_retry_replays_another_stretch(data_dir: Path, seed: int) -> None:
    walks = [recorded_walk(data_dir, enrolment.REPLAY_WALK_S, seed=seed, attempt=a) for a in range(3)]
    for (series, label), a in zip(walks, range(3)):
        rep = _gait_report(series)
        assert label.startswith("BB-MAS") and rep.ok, (seed, a, label, rep)
        assert series.duration >= enrolment.REPLAY_WALK_S
    firsts = {(round(float(s.t[0]), 3), s.xyz[:50].tobytes()) for s, _ in walks}
    assert len(firsts) == 3, "a walk started again must replay another stretch"
    again, _ = recorded_walk(data_dir, enrolment.REPLAY_WALK_S, seed=seed, attempt=0)
    assert np.array_equal(again.t, walks[0][0].t), "the same attempt replays the same stretch"


def test_a_longer_walk_of_the_same_attempt_continues_the_same_stretch(data_dir: Path) -> None:
    """The tour's payments replay what follows the set-up walk, never the set-up walk again."""
    short, _ = recorded_walk(data_dir, enrolment.REPLAY_WALK_S, attempt=1)
    long, _ = recorded_walk(data_dir, enrolment.REPLAY_WALK_S + 40.0, attempt=1)
    assert np.array_equal(long.t[:len(short)], short.t)


def test_a_synthetic_walk_started_again_is_another_walk() -> None:
    a, _ = recorded_walk(None, 10.0, attempt=0)
    b, _ = recorded_walk(None, 10.0, attempt=1)
    assert not np.array_equal(a.xyz, b.xyz)


# ---------------------------------------------------------------------------- 3: the cut is not short
def test_a_real_walk_long_enough_is_never_looped(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mobile_client.collectors.replay"):
        series, label = recorded_walk(data_dir, 32.0)
    assert "looped" not in caplog.text, caplog.text
    assert series.duration >= 32.0 and np.all(np.diff(series.t) > 0)


def test_a_recording_longer_than_asked_is_cut_at_or_past_the_length(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "long"
    folder.mkdir()
    t = 1_700_000_000.0 + np.arange(6000) * 0.01  # a 60 s recording (no walking in it: replayed from its start)
    rows = "\n".join(f"{x:.3f},{np.sin(x):.4f},1.0,9.8" for x in t)
    (folder / "1_PocketPhone_Accelerometer_(X).csv").write_text("time,Xvalue,Yvalue,Zvalue\n" + rows + "\n")
    with caplog.at_level(logging.WARNING, logger="mobile_client.collectors.replay"):
        series, label = recorded_walk(folder, 32.0)
    assert label.startswith("BB-MAS") and "looped" not in caplog.text, caplog.text
    assert 32.0 <= series.duration < 32.1
    assert np.all(np.diff(series.t) > 0)


# ---------------------------------------------------------------------------- 1: the app and the tour
START_TWICE = """
import sys
from pathlib import Path
from mobile_client import headless
headless.prepare(64, 64)
from mobile_client import features
from mobile_client.collectors.replay import events_of
from mobile_client.services import build_services
from mobile_client.ui.app import CadenceApp
app = CadenceApp(build_services(Path(sys.argv[1]), "http://127.0.0.1:9"), data_dir_for_replay=sys.argv[2])
for _ in range(2):
    label = app.start_walk(lambda: None)
    rec = app.walk_source.recording
    app.walk_source.stop()
    ok = features.quality_report("gait", features.windows_for("gait", events_of(rec))).ok
    print("WALK", label, float(rec.t[0]), ok)
"""


@pytest.mark.ui
def test_walking_again_in_the_app_replays_another_stretch_that_can_pass(gl_env: dict[str, str], data_dir: Path,
                                                                        tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-c", START_TWICE, str(tmp_path / "app"), str(data_dir)], env=gl_env,
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    walks = [line.split()[1:] for line in p.stdout.splitlines() if line.startswith("WALK")]
    assert len(walks) == 2 and walks[0][-2] != walks[1][-2], walks
    assert all(w[-1] == "True" for w in walks), walks


@pytest.mark.ui
@pytest.mark.slow
def test_the_screenshot_tour_gets_through_with_the_real_recordings(gl_env: dict[str, str], data_dir: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "O"
    p = subprocess.run([str(CADENCE), "app", "--screenshots", str(out), "--data-dir", str(data_dir)], env=gl_env,
                       capture_output=True, text=True, timeout=400)
    report = json.loads((out / "tour.json").read_text()) if (out / "tour.json").exists() else {}
    assert p.returncode == 0, report.get("traceback") or p.stderr[-3000:]
    assert len(list(out.glob("*.png"))) == 12
    assert report["walk_source"].startswith("Desktop: BB-MAS") and report["enrolment"]["gait"]["ok"]


@pytest.mark.ui
def test_a_failed_tour_is_one_error_line_and_its_traceback_stays_in_the_report(gl_env: dict[str, str],
                                                                              tmp_path: Path) -> None:
    out = tmp_path / "O"
    p = subprocess.run([sys.executable, "-m", "mobile_client.tour", "--screenshots", str(out),
                        "--report", str(out / "tour.json"), "--timeout", "0"], env=gl_env,
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "tour took more than 0" in errors[0] and str(out / "tour.json") in errors[0], p.stderr
    report = json.loads((out / "tour.json").read_text())
    assert "Traceback" in report["traceback"] and "TimeoutError" in report["error"]


# ---------------------------------------------------------------------------- 2: a server address that cannot work
@pytest.mark.parametrize("server", ["notaurl", "ftp://127.0.0.1:1", "http://"])
def test_cadence_app_refuses_a_server_address_it_cannot_use(tmp_path: Path, server: str) -> None:
    env = _env(tmp_path)
    p = subprocess.run([str(CADENCE), "app", "--server", server, "--screenshots", str(tmp_path / "O"),
                        "--app-data", str(tmp_path / "app")], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-3000:]
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--server" in lines[0] and server in lines[0], lines
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "app" / "held_payments.json").exists() and not list((tmp_path / "O").glob("*.png"))


def _client(tmp_path: Path, url: str = "http://bank.test", transport: httpx.BaseTransport | None = None) -> ApiClient:
    return ApiClient(url, DeviceKey(FileSecretStore(tmp_path / "s")), "dev-1", "user-1",
                     OfflineQueue(tmp_path / "q.jsonl"), retries=2, backoff_s=0.0, transport=transport,
                     sleep=lambda _s: None)


@pytest.mark.parametrize("url", ["notaurl", "ftp://127.0.0.1:1", "http://", "", "http://bank..example.com",
                                 "http://127.0.0.1:99999"])
def test_the_client_refuses_a_server_address_it_cannot_use(tmp_path: Path, url: str) -> None:
    with pytest.raises(ValueError, match="server address"):
        _client(tmp_path, url)


def test_an_unusable_url_is_not_offline_and_holds_no_payment(tmp_path: Path) -> None:
    """The URL was refused before anything was sent: nothing may have gone through, nothing waits."""
    tries: list[str] = []

    def refuse(req: httpx.Request) -> httpx.Response:
        tries.append(req.url.path)
        raise httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'.", request=req)

    c = _client(tmp_path, transport=httpx.MockTransport(refuse))
    with pytest.raises(ApiError) as err:
        c.authorize("42.50", "GBP", "Jordan Lee", [])
    exc = err.value
    assert not exc.offline and not exc.answer_unknown and not exc.can_wait and not exc.in_doubt
    assert "reach" not in exc.user_message and "gone through" not in exc.user_message
    assert "server address" in exc.user_message
    assert c.held.all() == [] and not (tmp_path / "held_payments.json").exists()
    assert len(tries) == 1, "a URL that cannot be used is not retried"
    with pytest.raises(ApiError):
        c.send_or_queue("POST", "/v1/users/user-1/consents", {"modality": "gait"})
    assert len(c.queue) == 0, "a request that can never be sent does not wait in the queue"


# ---------------------------------------------------------------------------- 4: no ids in the log
def test_log_lines_name_routes_without_the_user_id(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bank, clock = FaultyBank(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, SyntheticPerson(11), clock)
    user = s.profile.user_id
    bank.faults[f"/v1/users/{user}"] = 503
    bank.faults["/consents"] = 503
    with caplog.at_level(logging.INFO, logger="mobile_client"):
        res = s.api.set_consent("gait", "authentication", False)
        assert isinstance(res, Queued)
        PrivacyController(s).delete_my_data()
        bank.faults = {"/consents": 422}
        s.api.flush_queue()
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("mobile_client"))
    assert "queued POST /v1/users/{id}/consents" in text, text
    assert "erase queued" in text and "DELETE /v1/users/{id}" in text, text
    assert "refused" in text, text
    assert user not in text, text


def test_the_apps_log_leaves_out_the_request_urls_httpx_logs() -> None:
    """The app logs at INFO, where httpx logs each request's full URL (the user id in it)."""
    probe = ("import logging; from mobile_client.__main__ import configure_logging; configure_logging(); "
             "print(logging.getLogger('mobile_client.api').isEnabledFor(logging.INFO), "
             "logging.getLogger('httpx').isEnabledFor(logging.INFO))")
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert p.stdout.split() == ["True", "False"], p.stdout + p.stderr
