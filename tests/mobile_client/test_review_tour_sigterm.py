"""`cadence app --screenshots` stopped by SIGTERM half-way says so and exits 143.

SDL's own SIGTERM handler quit the app as if the tour had finished: exit 0, the screenshot
summary, and a tour.json without a word that it was cut short.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.processes import sigterm_when

pytestmark = [pytest.mark.ui]

CADENCE = Path(sys.executable).with_name("cadence")


def test_a_tour_stopped_by_sigterm_says_it_did_not_finish(gl_env: dict[str, str], tmp_path: Path) -> None:
    out, tmp = tmp_path / "O", tmp_path / "tmp"
    tmp.mkdir()
    rc, stdout, stderr = sigterm_when([str(CADENCE), "app", "--screenshots", str(out)],
                                      lambda: (out / "02-consent.png").exists(), env=dict(gl_env, TMPDIR=str(tmp)),
                                      what="the tour", wait_s=180)
    assert rc == 143, stderr[-3000:]
    assert "screenshots in" not in stdout and '"screenshots"' not in stdout, stdout  # no summary of a whole tour
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stopped (SIGTERM) before it finished" in errors[0], stderr[-3000:]
    report = json.loads((out / "tour.json").read_text())
    assert report["stopped_by"] == "SIGTERM" and "screenshots" not in report
    taken = set(report["screenshots_taken"])
    assert {"01-welcome", "02-consent"} <= taken and taken == {png.stem for png in out.glob("*.png")}
    assert not list(tmp.glob("cadence-app-*")), "the stopped tour left its app data behind"
