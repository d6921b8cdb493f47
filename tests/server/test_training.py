"""`cadence models train` publishes calibrated population models that the server then serves."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from cadence.cli import app
from cadence.settings import Settings
from fusion.engine import FusionEngine
from fusion.policy import ModalityEvidence
from modalities.registry import ModelRegistry
from server.app import load_fusion
from server.services.scoring import ScorerProvider
from tests.server.test_operator_errors import audit_db, audit_events


@pytest.mark.slow
def test_train_publish_and_serve(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audit_db(tmp_path, monkeypatch)
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

    audit_db(tmp_path, monkeypatch)
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

    # v0001 was trained on data_dir: calibrating it on the same people is refused, not silently optimistic
    reg.activate("keystroke", "v0001")
    before = (reg_root / "fusion-calibration.json").read_bytes()
    own = CliRunner(env={"COLUMNS": "400"}).invoke(
        app, ["models", "calibrate", "keystroke", "--data-dir", str(data_dir), "--registry", str(reg_root),
              "--max-subjects", "8"])
    assert own.exit_code == 2 and "was trained on" in own.output and "not trained on" in own.output, own.output
    assert (reg_root / "fusion-calibration.json").read_bytes() == before


@pytest.fixture
def fake_training(monkeypatch: pytest.MonkeyPatch) -> dict[str, Exception]:
    """Training without datasets: eight subjects per modality, synthetic scores, one-class models.

    Put an exception under a modality's name in the returned dict to make its training fail.
    """
    import numpy as np

    import evaluation.datasets
    import evaluation.pair_scores
    from modalities.base import ScaledManhattan

    failures: dict[str, Exception] = {}
    rng = np.random.default_rng(0)
    monkeypatch.setattr(evaluation.datasets, "available_subjects", lambda data_dir, m: list(range(1, 9)))
    monkeypatch.setattr(evaluation.pair_scores, "pair_scores", lambda m, *a, **kw: m)
    monkeypatch.setattr(evaluation.pair_scores, "genuine_impostor",
                        lambda m: (rng.normal(1.0, 1.0, 200), rng.normal(-1.0, 1.0, 200)))
    for m in ("keystroke", "touch", "gait"):
        def train_scorer(data_dir: Path, subjects: list[int], m: str = m) -> ScaledManhattan:
            if m in failures:
                raise failures[m]
            return ScaledManhattan(min_scale=0.5)

        monkeypatch.setattr(f"modalities.{m}.train_scorer", train_scorer)
    return failures


def _train(tmp_path: Path, *args: str) -> Result:
    return CliRunner(env={"COLUMNS": "400"}).invoke(
        app, ["models", "train", "--data-dir", str(tmp_path), "--registry", str(tmp_path / "registry"), *args])


def test_every_modality_is_checked_before_anything_is_trained(fake_training: dict[str, Exception], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    url = audit_db(tmp_path, monkeypatch)
    r = _train(tmp_path, "-m", "keystroke", "-m", "bogus")
    assert r.exit_code == 2 and "'bogus'" in r.output, r.output
    assert ModelRegistry(tmp_path / "registry").list() == [] and audit_events(url) == []


def test_a_training_failing_part_way_activates_nothing(fake_training: dict[str, Exception], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    url = audit_db(tmp_path, monkeypatch)
    fake_training["touch"] = ValueError("touch: not enough strokes")
    r = _train(tmp_path, "-m", "keystroke", "-m", "touch")
    assert r.exit_code == 2 and "not enough strokes" in r.output, r.output
    reg = ModelRegistry(tmp_path / "registry")
    assert reg.active("keystroke") is None  # published as a candidate, not served uncalibrated
    assert not (tmp_path / "registry" / "fusion-calibration.json").exists() and audit_events(url) == []


def test_each_activation_is_calibrated_and_audited(fake_training: dict[str, Exception], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url = audit_db(tmp_path, monkeypatch)
    r = _train(tmp_path, "-m", "keystroke", "-m", "touch")
    assert r.exit_code == 0, r.output
    engine = FusionEngine.load(tmp_path / "registry" / "fusion-calibration.json")
    assert {m: engine.fitted_for(m) for m in engine.calibrated_modalities} == {"keystroke": "v0001", "touch": "v0001"}
    assert [(e, p["modality"], p["version"]) for e, p in audit_events(url)] == [
        ("model.activated", "keystroke", "v0001"), ("model.activated", "touch", "v0001")]


def test_an_unreadable_calibration_file_is_refused_before_anything_is_published(
        fake_training: dict[str, Exception], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is updated in place: read only after publishing, a broken one left a version behind, unsaid."""
    url = audit_db(tmp_path, monkeypatch)
    (tmp_path / "registry").mkdir()
    cal = tmp_path / "registry" / "fusion-calibration.json"
    cal.write_text("{bad")
    r = _train(tmp_path, "-m", "keystroke")
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and "not a fusion calibration file" in said and "nothing was trained" in said, r.output
    assert ModelRegistry(tmp_path / "registry").list() == [] and audit_events(url) == []
    assert cal.read_text() == "{bad"  # left for the operator to restore or move


def test_candidates_never_replace_the_live_calibration(fake_training: dict[str, Exception], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`train --no-activate` and `calibrate --version` of a non-active version leave the served calibrator."""
    url = audit_db(tmp_path, monkeypatch)
    assert _train(tmp_path, "-m", "keystroke").exit_code == 0
    cal = tmp_path / "registry" / "fusion-calibration.json"
    live = cal.read_bytes()
    r = _train(tmp_path, "-m", "keystroke", "--no-activate")
    assert r.exit_code == 0 and "cadence models calibrate" in r.output, r.output
    assert cal.read_bytes() == live
    reg = ModelRegistry(tmp_path / "registry")
    active = reg.active("keystroke")
    assert active is not None and active.version == "v0001" and [m.version for m in reg.list()] == ["v0001", "v0002"]
    r = CliRunner(env={"COLUMNS": "400"}).invoke(
        app, ["models", "calibrate", "keystroke", "--version", "v0002", "--data-dir", str(tmp_path),
              "--registry", str(tmp_path / "registry")])
    assert r.exit_code == 2 and "v0002 is not active" in r.output and "cadence models activate" in r.output, r.output
    assert cal.read_bytes() == live and len(audit_events(url)) == 1


def test_a_relative_data_dir_is_recorded_as_the_folder_it_names(fake_training: dict[str, Exception], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorded source must name the same folder from wherever `models calibrate` later runs.

    A relative path was stored as given ("central:A"), so calibrating from another folder on the
    very people the model was trained on passed the guard against it.
    """
    audit_db(tmp_path, monkeypatch)
    (tmp_path / "people").mkdir()
    monkeypatch.chdir(tmp_path)
    r = CliRunner(env={"COLUMNS": "400"}).invoke(
        app, ["models", "train", "--data-dir", "people", "--registry", str(tmp_path / "registry"), "-m", "keystroke"])
    assert r.exit_code == 0, r.output
    active = ModelRegistry(tmp_path / "registry").active("keystroke")
    assert active is not None and active.source == f"central:{tmp_path / 'people'}"
    monkeypatch.chdir(tmp_path / "people")
    r = CliRunner(env={"COLUMNS": "400"}).invoke(
        app, ["models", "calibrate", "keystroke", "--data-dir", str(tmp_path / "people"),
              "--registry", str(tmp_path / "registry")])
    assert r.exit_code == 2 and "was trained on" in r.output, r.output


@pytest.mark.parametrize("command", [["train"], ["calibrate", "keystroke"]])
def test_an_empty_data_dir_is_refused_not_read_as_the_current_folder(command: list[str], tmp_path: Path) -> None:
    r = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["models", *command, "--data-dir", "",
                                                       "--registry", str(tmp_path / "registry")])
    assert r.exit_code == 2 and "empty path" in r.output, r.output
    assert not (tmp_path / "registry").exists()


def test_calibration_people_are_checked_by_their_data_not_only_their_ids(tmp_path: Path) -> None:
    """A training person's file under another id (or gzipped) is still a training person."""
    import gzip

    from server.training import _refuse_training_people

    trained, other = tmp_path / "trained", tmp_path / "other"
    trained.mkdir()
    other.mkdir()
    for s in (1, 2, 3):
        (trained / f"{s}_processed.csv").write_text(f"key,time_since_beginning,press_to_press,hold_time\na,{s},0.1,0.2\n")
    for s in (11, 12):
        (other / f"{s}_processed.csv").write_text(f"key,time_since_beginning,press_to_press,hold_time\nb,{s},0.1,0.2\n")
    _refuse_training_people("keystroke", "v0001", f"central:{trained}", other, [11, 12])  # strangers: fine
    (other / "13_processed.csv.gz").write_bytes(gzip.compress((trained / "2_processed.csv").read_bytes()))
    with pytest.raises(ValueError, match=r"was trained on .* holds 1 of the people .*subjects 13"):
        _refuse_training_people("keystroke", "v0001", f"central:{trained}", other, [11, 12, 13])


def test_a_first_run_whose_audit_database_cannot_be_migrated_is_one_error_line(
        fake_training: dict[str, Exception], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No traceback, no model published, and no empty database file left to read as broken later."""
    import alembic.command

    from cadence.settings import get_settings

    db = tmp_path / "new.sqlite"
    monkeypatch.setenv("CADENCE_DATABASE_URL", f"sqlite:///{db}")
    get_settings.cache_clear()

    def full(*args, **kwargs):  # type: ignore[no-untyped-def]
        import sqlite3

        from sqlalchemy.exc import OperationalError
        raise OperationalError("CREATE TABLE ...", {}, sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(alembic.command, "upgrade", full)
    try:
        r = _train(tmp_path, "-m", "keystroke")
    finally:
        get_settings.cache_clear()
    assert r.exit_code == 2 and "database or disk is full" in r.output and "Traceback" not in r.output, r.output
    assert not db.exists() and ModelRegistry(tmp_path / "registry").list() == []


def test_an_activation_that_cannot_be_recorded_keeps_the_served_models_calibrator(
        fake_training: dict[str, Exception], tmp_path: Path) -> None:
    from server.training import train_and_publish

    reg_root = tmp_path / "registry"
    train_and_publish(tmp_path, reg_root, modalities=["keystroke"])

    def unrecorded(m: str, v: str, scorer: str) -> None:
        raise RuntimeError("audit log unavailable")

    with pytest.raises(RuntimeError, match="audit log unavailable"):
        train_and_publish(tmp_path, reg_root, modalities=["keystroke"], activated=unrecorded)
    active = ModelRegistry(reg_root).active("keystroke")
    assert active is not None and active.version == "v0001"
    assert FusionEngine.load(reg_root / "fusion-calibration.json").fitted_for("keystroke") == "v0001"


@pytest.mark.postgres
def test_models_train_migrates_an_empty_postgresql_schema(fake_training: dict[str, Exception], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The production order `models train`, then `serve` works on a new schema as it does on SQLite."""
    from sqlalchemy import text

    from cadence.settings import get_settings
    from tests.pg import pg_schema_url

    with pg_schema_url("cadence_train_first") as url:
        monkeypatch.setenv("CADENCE_DATABASE_URL", url)
        get_settings.cache_clear()
        try:
            r = CliRunner(env={"COLUMNS": "400"}).invoke(
                app, ["models", "train", "--data-dir", str(tmp_path), "--registry", str(tmp_path / "registry"),
                      "-m", "keystroke"])
        finally:
            get_settings.cache_clear()
        assert r.exit_code == 0 and "migrated the empty database" in r.output, r.output
        from cadence.db import make_engine
        from server.migrate import schema_problem

        engine = make_engine(url)
        try:
            assert schema_problem(engine) is None
            with engine.connect() as conn:
                events = conn.execute(text("SELECT count(*) FROM compliance_audit")).scalar()
            assert events == 1  # model.activated
        finally:
            engine.dispose()


def test_calibration_on_the_training_people_is_refused_after_the_training_folder_moved(tmp_path: Path,
                                                                                         data_dir: Path) -> None:
    """The ids recorded at training (`training-subjects.json`) still name them once the folder is gone."""
    import shutil

    from server.training import calibrate_published, train_and_publish

    src = data_dir / "bbmas_desktop_keystroke_processed"

    def linked(dst: Path) -> Path:
        dst.mkdir(parents=True)
        for i in (1, 2, 3, 4, 6, 7, 8):
            (dst / f"{i}_processed.csv.gz").symlink_to(src / f"{i}_processed.csv.gz")
        return dst

    train = linked(tmp_path / "train")
    registry = tmp_path / "registry"
    train_and_publish(train, registry, modalities=["keystroke"])
    same_people = linked(tmp_path / "calibration")  # the same people in another folder
    with pytest.raises(ValueError, match="was trained on"):
        calibrate_published(same_people, registry, "keystroke")
    shutil.move(str(train), str(tmp_path / "archived"))  # the training folder cleaned up or moved
    with pytest.raises(ValueError, match="was trained on"):
        calibrate_published(same_people, registry, "keystroke")
