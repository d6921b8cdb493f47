"""`cadence bench sessions`: owners and impostors through the server's session risk engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cadence.cli import app
from cadence.settings import Settings
from evaluation.benches.sessions import IMPOSTORS, session_outcome
from fusion.policy import ModalityEvidence


def _updates(*llrs: float) -> list[list[ModalityEvidence]]:
    return [[ModalityEvidence("gait", 0.0, llr=x)] for x in llrs]


def test_an_outcome_follows_the_servers_rules() -> None:
    """Held from the first step-up (the bank's step-up is not run), ended only on a full window."""
    s = Settings()
    assert session_outcome(_updates(2.0, 2.0, 2.0), s) == (None, None)
    assert session_outcome(_updates(-12.0, -12.0, -12.0, -12.0, -12.0, 3.0), s) == (1, s.session_window)
    # owner-like windows after a step-up do not un-hold it, and the session can still end
    assert session_outcome(_updates(2.0, -2.0, -2.0, 4.0, 4.0), s) == (3, None)


@pytest.mark.slow
def test_bench_sessions_quick(data_dir: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["bench", "sessions", "--quick", "--data-dir", str(data_dir), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "sessions.json").read_text())
    assert not set(doc["train_subjects"]) & set(doc["eval_subjects"])
    rows = {(x["method"], x["window"]): x for x in doc["results"]}
    if ("owner", "keystroke") not in rows:  # a modality left out is said
        assert any("keystroke" in w and "left out" in w for w in doc["protocol"]["warnings"]), doc["protocol"]
    for who in ("owner", "impostor"):
        assert {"touch", "gait", "all"} <= {w for m, w in rows if m == who}  # keystroke: few long enough
        pooled = rows[(who, "all")]
        assert pooled["sessions"] == sum(x["sessions"] for (m, w), x in rows.items() if m == who and w != "all")
        assert 0.0 <= pooled["ended"] <= pooled["held_or_ended"] <= 1.0
        if pooled["ended"] > 0:  # nobody is ended before the risk rests on a full window
            assert pooled["mean_update_ended"] >= Settings().session_window
    assert rows[("impostor", "all")]["sessions"] <= IMPOSTORS * rows[("owner", "all")]["sessions"]
    # impostors on real data are held far more often than owners
    assert rows[("impostor", "all")]["held_or_ended"] > rows[("owner", "all")]["held_or_ended"]
