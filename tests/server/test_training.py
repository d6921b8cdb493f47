"""`cadence models train` publishes calibrated population models that the server then serves."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cadence.cli import app
from cadence.settings import Settings
from fusion.engine import FusionEngine
from fusion.policy import ModalityEvidence
from modalities.registry import ModelRegistry
from server.app import load_fusion
from server.services.scoring import ScorerProvider


@pytest.mark.slow
def test_train_publish_and_serve(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADENCE_DATABASE_URL", f"sqlite:///{tmp_path / 'audit.sqlite'}")
    reg_root = tmp_path / "registry"
    r = CliRunner().invoke(app, ["models", "train", "--data-dir", str(data_dir), "--registry", str(reg_root),
                                 "-m", "keystroke", "--max-subjects", "10"])
    assert r.exit_code == 0, r.output
    reg = ModelRegistry(reg_root)
    active = reg.active("keystroke")
    assert active is not None and active.version == "v0001" and active.metrics["n_subjects"] == 10
    # the server resolves the registry model and the calibration fitted for it
    provider = ScorerProvider(reg_root)
    served = provider.get("keystroke")
    assert served.model_id == "registry:v0001" and served.scorer.name == reg.load("keystroke").name
    engine = load_fusion(Settings(model_registry=reg_root), reg_root)
    assert isinstance(engine, FusionEngine) and engine.calibrated_modalities == ["keystroke"]
    assert engine.report["keystroke"]["model_version"] == "v0001"
    ev = engine.calibrate(ModalityEvidence("keystroke", score=0.0))
    assert ev.llr is not None


def test_train_refuses_bad_input(tmp_path: Path) -> None:
    r = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["models", "train", "--data-dir", str(tmp_path / "nope")])
    assert r.exit_code != 0 and "not a folder" in r.output
    r = CliRunner().invoke(app, ["models", "train", "--data-dir", str(tmp_path), "-m", "iris"])
    assert r.exit_code == 2 and "unknown" in r.output


@pytest.mark.slow
def test_calibrate_a_published_model_the_server_then_uses(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A version activated after `models train` is left out until it is calibrated.

    The new version here is a one-class model, as a federated run publishes one of its own;
    `cadence models calibrate` fits a calibrator for it.
    """
    from modalities.keystroke.detectors import ManhattanScaledDetector

    monkeypatch.setenv("CADENCE_DATABASE_URL", f"sqlite:///{tmp_path / 'audit.sqlite'}")
    reg_root = tmp_path / "registry"
    assert CliRunner().invoke(app, ["models", "train", "--data-dir", str(data_dir), "--registry", str(reg_root),
                                    "-m", "keystroke", "--max-subjects", "8"]).exit_code == 0
    reg = ModelRegistry(reg_root)
    v2 = reg.publish("keystroke", ManhattanScaledDetector(), metrics={}, card="# one-class", source="test")
    reg.activate("keystroke", v2)
    engine = load_fusion(Settings(model_registry=reg_root), reg_root)
    served = ModalityEvidence("keystroke", score=-1.0, model_version=f"registry:{v2}")
    assert engine.calibrate(served).llr is None  # v0001's calibrator does not read v0002's scores
    assert engine.decide([served], amount=10).reasons[0].code == "uncalibrated"

    r = CliRunner(env={"COLUMNS": "400"}).invoke(
        app, ["models", "calibrate", "keystroke", "--data-dir", str(data_dir), "--registry", str(reg_root),
              "--max-subjects", "8"])
    assert r.exit_code == 0, r.output
    assert f"keystroke {v2} (keystroke-manhattan-scaled): calibrated on 8 subjects" in r.output
    engine = load_fusion(Settings(model_registry=reg_root), reg_root)
    assert engine.report["keystroke"]["model_version"] == v2
    assert engine.calibrate(served).llr is not None
    listed = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["models", "list", "--registry", str(reg_root)]).output
    rows = {line.split("│")[2].strip(): line.split("│")[4].strip() for line in listed.splitlines() if "keystroke" in line}
    assert rows == {"v0001": "", v2: "yes"}  # the calibrated column names the version decisions use

    bad = CliRunner(env={"COLUMNS": "400"}).invoke(
        app, ["models", "calibrate", "gait", "--data-dir", str(data_dir), "--registry", str(reg_root)])
    assert bad.exit_code == 2 and "no active gait model" in bad.output
