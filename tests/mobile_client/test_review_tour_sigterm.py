"""`cadence app --screenshots` stopped by SIGTERM half-way says so and exits 143.

SDL's own SIGTERM handler quit the app as if the tour had finished: exit 0, the screenshot
summary, and a tour.json without a word that it was cut short.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ui]

CADENCE = Path(sys.executable).with_name("cadence")


def test_a_tour_stopped_by_sigterm_says_it_did_not_finish(gl_env: dict[str, str], tmp_path: Path) -> None:
    out, tmp = tmp_path / "O", tmp_path / "tmp"
    tmp.mkdir()
    p = subprocess.Popen([str(CADENCE), "app", "--screenshots", str(out)], env=dict(gl_env, TMPDIR=str(tmp)),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (out / "02-consent.png").exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.poll() is None, "the tour ended before it could be stopped: " + p.communicate()[1][-2000:]
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 143, stderr[-3000:]
    assert "screenshots in" not in stdout and '"screenshots"' not in stdout, stdout  # no summary of a whole tour
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stopped (SIGTERM) before it finished" in errors[0], stderr[-3000:]
    report = json.loads((out / "tour.json").read_text())
    assert report["stopped_by"] == "SIGTERM" and "screenshots" not in report
    taken = set(report["screenshots_taken"])
    assert {"01-welcome", "02-consent"} <= taken and taken == {png.stem for png in out.glob("*.png")}
    assert not list(tmp.glob("cadence-app-*")), "the stopped tour left its app data behind"
