"""Headless app tests: each runs the app in its own process (Kivy allows one App per process).

* `cadence app --screenshots O` renders one non-blank PNG per screen;
* the full consent -> enrolment -> transaction flow through the UI against a live loopback
  server, asserting the decision shown is the server's and that the server recorded the
  consents, the enrolment and the transaction.
They skip with the reason when this machine cannot open an offscreen GL window
(run `scripts/system-deps.sh` as root to install the Mesa/mtdev packages).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = [pytest.mark.ui]

PROBE = """
from mobile_client import headless
headless.prepare(64, 64)
from kivy.core.window import Window
assert Window is not None, "no window provider"
print("WINDOW-OK", Window.size)
"""


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, SDL_VIDEODRIVER="offscreen", KIVY_NO_ARGS="1", KIVY_HOME=str(tmp / "kivy-home"),
               KIVY_NO_CONSOLELOG="1", KIVY_CLIPBOARD="dummy")
    env.pop("CADENCE_DATA_DIR", None)  # synthetic walk: the same on every machine
    return env


@pytest.fixture(scope="module")
def kivy_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("kivy")
    env = _env(tmp)
    p = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    if "WINDOW-OK" not in p.stdout:
        last = (p.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"cannot open a headless Kivy window here ({last}); run scripts/system-deps.sh as root "
                    "to install libgl1-mesa-dri, libegl1 and libmtdev1")
    return env


FEDERATION_WITHOUT_COMMAND = """
import os, sys
from pathlib import Path
from mobile_client import headless
headless.prepare(64, 64)
from evaluation.synthetic import SyntheticPerson
from mobile_client import federation, platform_info
platform_info.can_run_flower = federation.can_run_flower = lambda: True
from mobile_client.services import build_services
from mobile_client.ui.app import CadenceApp
s = build_services(Path(sys.argv[1]), "http://127.0.0.1:9")
s.profile.federated = True
s.profile.consents["keystroke"] = {"authentication": True, "federated_training": True}
from mobile_client.policy import policy  # granted under the current texts (test_consent_versions.py)
s.profile.consent_versions = {"keystroke": {q: policy(q).version for q in ("authentication", "federated_training")}}
s.store.append(SyntheticPerson(1).keystrokes(200, 0).to_events())
os.environ["CADENCE_SUPERLINK"] = "127.0.0.1:9"
# the real `find_bin` finds no `cadence`: nothing next to this "Python", nothing on PATH
empty = Path(sys.argv[1]) / "empty"
empty.mkdir()
sys.executable = str(empty / "python")
os.environ["PATH"] = str(empty)
app = CadenceApp(s)
app.start_federation()
print("STATUS", app.federation_status())
"""


def test_federation_without_its_command_says_the_program_is_missing(kivy_env: dict[str, str],
                                                                   tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-c", FEDERATION_WITHOUT_COMMAND, str(tmp_path)], env=kivy_env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "STATUS On: training could not start on this computer (its training program is missing)" in p.stdout, \
        p.stdout[-2000:] + p.stderr[-2000:]


def _variance(png: Path) -> float:
    from PIL import Image

    return float(np.asarray(Image.open(png).convert("L"), dtype=float).var())


@pytest.mark.slow
def test_screenshot_tour_writes_one_nonblank_png_per_screen(kivy_env: dict[str, str], tmp_path: Path) -> None:
    out, tmp = tmp_path / "O", tmp_path / "tmp"
    tmp.mkdir()
    cadence = Path(sys.executable).with_name("cadence")
    p = subprocess.run([str(cadence), "app", "--screenshots", str(out)],
                       env=dict(kivy_env, TMPDIR=str(tmp)), capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    assert not list(tmp.glob("cadence-app-*")), "the tour left its app data (device key, raw events) behind"
    names = {png.stem.split("-", 1)[1] for png in out.glob("*.png")}
    for screen in ("welcome", "consent", "enrolment-typing", "enrolment-swipe", "enrolment-walk",
                   "enrolment-quality", "home", "transaction", "transaction-approve", "transaction-step-up",
                   "transaction-deny", "privacy"):
        assert screen in names, f"no screenshot of {screen}: {sorted(names)}"
    for png in out.glob("*.png"):
        assert _variance(png) > 100.0, f"{png.name} looks blank"
    report = json.loads((out / "tour.json").read_text())
    assert [t["headline"] for t in report["transactions"]] == ["Payment approved", "One more check", "Payment blocked"]
    assert report["transactions"][1]["after_code"] == "approve"  # the one-time code went through


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def live_server(tmp_path: Path):
    server_app = pytest.importorskip("server.app", reason="server/ is not available")
    import uvicorn

    from cadence.settings import Settings

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'server.sqlite'}", model_registry=tmp_path / "no-registry",
                        environment="development")
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(server_app.create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and th.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        th.join(15)


@pytest.mark.slow
def test_full_flow_through_the_ui_against_live_server(kivy_env: dict[str, str], live_server: str, tmp_path: Path) -> None:
    report_path = tmp_path / "flow.json"
    bank = {"X-API-Key": "dev-bank-key"}
    p = subprocess.run([sys.executable, "-m", "mobile_client.tour", "--server", live_server, "--report", str(report_path),
                        "--app-data", str(tmp_path / "app"), "--bank-key", "dev-bank-key",
                        "--payment", "42.50:Jordan Lee", "--payment", "15.00:Corner Coffee"],
                       env=kivy_env, capture_output=True, text=True, timeout=400)
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    assert p.returncode == 0, report.get("traceback") or p.stderr[-3000:]

    # what the screens showed
    assert all(v["authentication"] for v in report["consent_shown"].values())
    for m in ("keystroke", "touch", "gait"):
        assert report["enrolment"][m]["ok"], report["enrolment"]
    assert report["enrolled"] == ["gait", "keystroke", "touch"]
    assert all(d.startswith("Active") for _, d in report["home"]["status"])
    # a second payment right after the first is decided too (its evidence is new behaviour, never resent)
    shown, second = report["transactions"]
    assert shown["outcome"] in ("approve", "step_up", "deny") and second["outcome"] in ("approve", "step_up", "deny")
    tx2 = httpx.get(f"{live_server}/v1/transactions/{second['transaction_id']}", headers=bank).json()
    assert tx2["payee"] == "Corner Coffee" and {r["modality"] for r in tx2["reasons"]} >= {"keystroke", "gait"}

    # what the server recorded
    tx = httpx.get(f"{live_server}/v1/transactions/{shown['transaction_id']}", headers=bank).json()
    expected = tx["decision"] if "after_code" not in shown else shown["outcome"]
    if "after_code" in shown:  # a step-up was completed with the code: the server moved on
        assert tx["status"] == "approved_after_step_up" and shown["after_code"] == "approve"
    assert shown["outcome"] == expected
    assert shown["headline"] == {"approve": "Payment approved", "step_up": "One more check",
                                 "deny": "Payment blocked"}[tx["decision"] if "after_code" not in shown else "step_up"]
    assert tx["payee"] == "Jordan Lee" and tx["amount"] in ("42.50", "42.5")
    assert {r["modality"] for r in tx["reasons"]} >= {"keystroke", "touch", "gait"}  # evidence of all three arrived
    # an approved payment's evidence went back as controlled adaptation of the templates: that of
    # the modalities that matched in the decision (a step-up passed on uncalibrated evidence adapts nothing)
    export = httpx.get(f"{live_server}/v1/admin/users/{tx['user_id']}/export", headers={"X-API-Key": "dev-admin-key"}).json()
    adapted = [e for e in export["data"]["audit"]["entries"]
               if e["event"] == "enrolment" and e["payload"].get("confirmed_transaction_id") == tx["transaction_id"]]
    approved = tx["decision"] == "approve" or shown.get("after_code") == "approve"
    matched = {r["modality"] for r in tx["reasons"] if r["code"] in ("match", "strong_match")}
    assert len(adapted) == (1 if approved and matched else 0), adapted
    assert all(set(e["payload"]["window_hashes"]) == matched for e in adapted), (adapted, matched)
    exported = httpx.get(f"{live_server}/v1/admin/users/{report['user_id']}/export", headers=bank)
    if exported.status_code == 200:
        text = json.dumps(exported.json())
        assert "keystroke" in text and "gait" in text
