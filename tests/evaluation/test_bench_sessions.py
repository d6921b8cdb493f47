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


def _folder(data_dir: Path, root: Path, ids: list[int], keystroke_rows: int | None = None) -> Path:
    """A BB-MAS folder of `ids` (links to the real files; keystroke files cut to `keystroke_rows` rows)."""
    import gzip

    for sub in ("bbmas_desktop_keystroke_processed", "bbmas_phone_gait", "bbmas_phone_touch"):
        (root / sub).mkdir(parents=True)
        for f in (data_dir / sub).iterdir():
            if f.name.split("_", 1)[0] not in {str(i) for i in ids}:
                continue
            if sub.startswith("bbmas_desktop") and keystroke_rows is not None:
                with gzip.open(f, "rt") as src:
                    head = [line for _, line in zip(range(keystroke_rows + 1), src, strict=False)]
                with gzip.open(root / sub / f.name, "wt") as dst:
                    dst.writelines(head)
            else:
                (root / sub / f.name).symlink_to(f)
    return root


@pytest.mark.slow
def test_an_uncalibrated_modality_is_left_out_and_said(data_dir: Path, tmp_path: Path) -> None:
    """Its sessions read 0 % of impostors contained (its evidence never counted), with no warning."""
    train = _folder(data_dir, tmp_path / "train", [101, 102, 103], keystroke_rows=300)
    evals = _folder(data_dir, tmp_path / "eval", [13, 22, 36, 39, 51, 76])
    r = CliRunner().invoke(app, ["bench", "sessions", "--train-dir", str(train), "--eval-dir", str(evals),
                                 "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "out" / "sessions.json").read_text())
    windows = {x["window"] for x in doc["results"]}
    assert "keystroke" not in windows and {"touch", "gait"} <= windows, doc["results"]
    assert any("keystroke" in w and "not calibrated" in w for w in doc["protocol"]["warnings"]), doc["protocol"]
