"""`cadence bench fusion --quick` on the real multi-modal people."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cadence.cli import app
from fusion.engine import FusionEngine


@pytest.mark.slow
def test_fusion_bench_quick(data_dir: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["bench", "fusion", "--quick", "--data-dir", str(data_dir), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "fusion.json").read_text())
    rows = {(x["method"], x["window"]): x for x in doc["results"]}
    for m in ("keystroke", "touch", "gait", "llr-sum", "learned-weights", "znorm-sum", "min", "max", "and", "or", "majority", "sequential"):
        assert (m, "standard") in rows and (m, "extended") in rows
    assert not set(doc["train_subjects"]) & set(doc["eval_subjects"])
    # fusing three real modalities of the same people must beat the weakest one alone
    assert rows[("llr-sum", "standard")]["eer"] < max(rows[(m, "standard")]["eer"] for m in ("keystroke", "touch", "gait"))
    for budget in ("standard", "extended"):
        tiers = doc["policy"][budget]
        assert set(tiers) == {"low", "medium", "high"}
        for t in tiers.values():
            assert t["genuine_approve"] + t["genuine_step_up"] + t["genuine_deny"] == pytest.approx(1.0)
            # the tail is measured on every impostor window pair, with a bound the count supports
            assert t["impostor_approvals"] == round(t["impostor_approve"] * t["n_impostor"])
            assert t["impostor_approve"] <= t["impostor_approve_upper95"] <= 1.0
            assert t["n_impostor"] >= rows[("llr-sum", budget)]["n_impostor"]
    assert tiers["low"]["genuine_approve"] >= tiers["high"]["genuine_approve"]
    assert doc["policy"]["standard"]["high"]["n_impostor"] > rows[("llr-sum", "standard")]["n_impostor"]
    assert [tiers[t]["corroborate"] for t in ("low", "medium", "high")] == [False, True, True]
    engine = FusionEngine.load(tmp_path / "fusion-calibration.json")
    assert engine.calibrated_modalities == ["gait", "keystroke", "touch"]
    assert (tmp_path / "fusion-det.png").stat().st_size > 10_000
