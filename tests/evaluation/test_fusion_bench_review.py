"""Review fixes to `cadence bench fusion` (and the folds `cadence bench sessions` shares with it).

* eval_subjects lists only the people scored; the warnings name each one left out and why;
* fusion-calibration.json records the model each calibrator was fitted on, so a server applies
  it to that model only (docs/api.md: "A calibrator reads only its own model");
* --train-dir alone is refused, as every bench refuses it;
* too few evaluation or training subjects are named up front, with the counts of the folders.

Small folders of real BB-MAS people, symlinked from the shared datasets (a few seconds each).
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

FOLDERS = ("bbmas_desktop_keystroke_processed", "bbmas_phone_touch", "bbmas_phone_gait")
TRAIN = (2, 4, 6, 8, 16, 18)


def _folder(data_dir: Path, root: Path, ids: tuple[int, ...]) -> Path:
    """`root` with the three BB-MAS folders, holding links to the files of subjects `ids`."""
    for name in FOLDERS:
        (root / name).mkdir(parents=True)
        for f in (data_dir / name).iterdir():
            head = f.name.split("_")[0]
            if head.isdigit() and int(head) in ids:
                (root / name / f.name).symlink_to(f)
    return root


def _few_swipes(folder: Path, sid: int) -> None:
    """Subject `sid`'s touch file in `folder` cut to its first 150 rows: a few strokes, under 10 swipes."""
    (touch,) = (folder / "bbmas_phone_touch").glob(f"{sid}_*")
    with gzip.open(touch, "rt") as fh:
        lines = fh.read().splitlines()[:151]
    touch.unlink()
    with gzip.open(touch, "wt") as fh:
        fh.write("\n".join(lines) + "\n")


def _cli(*args: str) -> Result:
    from cadence.cli import app

    return CliRunner().invoke(app, list(args))


def _said(res: Result) -> str:
    return " ".join(res.output.split())


@pytest.fixture(scope="module")
def thin_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One bench run: 6 training subjects; evaluation subjects 1, 3 and 7, with 7's touch cut to a few strokes."""
    root = tmp_path_factory.mktemp("thin")
    a = _folder(data_dir, root / "A", TRAIN)
    b = _folder(data_dir, root / "B", (1, 3, 7))
    _few_swipes(b, 7)
    out = root / "o"
    res = _cli("bench", "fusion", "--train-dir", str(a), "--eval-dir", str(b), "--out", str(out))
    assert res.exit_code == 0, res.output
    with open(out / "fusion-scores.csv") as fh:
        scored = {int(r[k]) for r in csv.DictReader(fh) for k in ("template_subject", "probe_subject")}
    return {"doc": json.loads((out / "fusion.json").read_text()), "scored": scored, "out": out, "output": res.output}


# --------------------------------------------------------------------------- 1. subjects never scored


def test_fusion_eval_subjects_are_the_people_scored(thin_run: dict[str, Any]) -> None:
    doc = thin_run["doc"]
    assert doc["eval_subjects"] == [1, 3]
    assert set(doc["eval_subjects"]) == thin_run["scored"]
    assert doc["train_subjects"] == list(TRAIN)
    assert doc["protocol"]["skipped_subjects"] == [7]


def test_fusion_warnings_name_each_skipped_subject_and_why(thin_run: dict[str, Any]) -> None:
    warnings = thin_run["doc"]["protocol"]["warnings"]
    assert "evaluation subjects skipped (touch: fewer than 10 swipes): [7]" in warnings, warnings
    assert "evaluation subjects skipped (touch: fewer than 10 swipes): [7]" in " ".join(thin_run["output"].split())


def test_fusion_refuses_when_skipping_leaves_one_evaluation_subject(data_dir: Path, tmp_path: Path) -> None:
    a = _folder(data_dir, tmp_path / "A", TRAIN)
    b = _folder(data_dir, tmp_path / "B", (3, 7))
    _few_swipes(b, 7)
    res = _cli("bench", "fusion", "--train-dir", str(a), "--eval-dir", str(b), "--out", str(tmp_path / "o"))
    said = _said(res)
    assert res.exit_code == 2, said
    assert "cllr" not in said
    assert "impostor trials need at least 2 evaluation subjects" in said, said
    assert "1 of the 2" in said and "touch: 7 (fewer than 10 swipes)" in said, said


# --------------------------------------------------------------------------- 2. the calibration's model


def test_fusion_calibration_records_the_model_it_read(thin_run: dict[str, Any]) -> None:
    from fusion.engine import FusionEngine

    engine = FusionEngine.load(thin_run["out"] / "fusion-calibration.json")
    assert engine.calibrated_modalities == ["gait", "keystroke", "touch"]
    assert {m: engine.fitted_for(m) for m in engine.calibrated_modalities} == {
        "keystroke": "bench:fusion:keystroke-fused:1", "touch": "bench:fusion:touch-fused:2",
        "gait": "bench:fusion:gait-fusion:1"}


def test_a_server_does_not_apply_the_bench_calibration_to_its_models(thin_run: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    from fusion.engine import FusionEngine
    from fusion.policy import ModalityEvidence
    from server.demo import served_models
    from server.services.scoring import ScorerProvider

    engine = FusionEngine.load(thin_run["out"] / "fusion-calibration.json")
    provider = ScorerProvider(None)
    for m in engine.calibrated_modalities:
        served = provider.get(m).model_id  # the packages' default, as a server with no registry serves
        assert not engine.applies(m, served)
        assert engine.applies(m, engine.fitted_for(m) or "?")
        assert engine.calibrate(ModalityEvidence(m, 0.5, model_version=served)).llr is None
    # a registry holding the bench's file: the server's own check (what `cadence demo` uses) refuses it
    reg = tmp_path / "registry"
    reg.mkdir()
    shutil.copy(thin_run["out"] / "fusion-calibration.json", reg / "fusion-calibration.json")
    assert served_models(reg)[1] is None


def test_served_model_id_is_the_servers_for_its_default_scorers() -> None:
    import importlib

    from evaluation.benches.fusion import served_model_id
    from evaluation.pair_scores import as_decided
    from server.services.scoring import ScorerProvider

    provider = ScorerProvider(None)
    for m in ("keystroke", "touch", "gait"):
        pkg: Any = importlib.import_module(f"modalities.{m}")
        # touch is scored per 5 swipes (`as_decided`), as the server decides: still the default model
        assert served_model_id(m, as_decided(m, pkg.default_scorer())) == provider.get(m).model_id
        assert served_model_id(m, pkg.default_scorer()).startswith("default:")


# --------------------------------------------------------------------------- 3. --train-dir alone


@pytest.mark.parametrize("bench", ["fusion", "sessions", "federated"])
@pytest.mark.parametrize("given", ["--train-dir", "--eval-dir"])
def test_one_folder_alone_is_refused_as_every_bench_refuses_it(bench: str, given: str, data_dir: Path,
                                                                tmp_path: Path) -> None:
    a = _folder(data_dir, tmp_path / "A", (*TRAIN, 22, 24, 26, 28, 32, 34))
    other = _cli("bench", "keystroke", given, str(a), "--out", str(tmp_path / "k"))
    res = _cli("bench", bench, given, str(a), "--out", str(tmp_path / "o"))
    assert res.exit_code == other.exit_code == 2, res.output
    assert _said(res) == _said(other) == "error: --train-dir and --eval-dir go together"
    assert not (tmp_path / "o" / f"{bench}.json").exists()


def test_fusion_folds_refuse_a_train_dir_without_an_eval_dir(data_dir: Path, tmp_path: Path) -> None:
    from evaluation.bench import BenchContext
    from evaluation.benches.fusion import _fusion_folds

    a = _folder(data_dir, tmp_path / "A", (*TRAIN, 22, 24, 26, 28))
    with pytest.raises(ValueError, match="go together"):
        _fusion_folds(BenchContext(train_dir=a, out=tmp_path / "o"))


def test_fusion_folds_name_the_subjects_left_out_for_lacking_a_modality(data_dir: Path, tmp_path: Path) -> None:
    """Subject 9 has no gait file: it was dropped from both sides without a word."""
    from evaluation.bench import BenchContext
    from evaluation.benches.fusion import _fusion_folds

    a = _folder(data_dir, tmp_path / "A", TRAIN)
    b = _folder(data_dir, tmp_path / "B", (1, 3, 9))
    assert not list((b / "bbmas_phone_gait").glob("9_*")) and list((b / "bbmas_phone_touch").glob("9_*"))
    ctx = BenchContext(train_dir=a, eval_dir=b, out=tmp_path / "o")
    ((_, _, tr, ev),) = _fusion_folds(ctx)
    assert ev == [1, 3] and tr == list(TRAIN)
    assert "--eval-dir: subjects left out for lacking a modality: 9 (no gait)" in ctx.notes, ctx.notes
    assert not any(n.startswith("--train-dir: subjects left out") for n in ctx.notes)


# --------------------------------------------------------------------------- 4. too few subjects, said up front


def test_fusion_with_one_evaluation_subject_names_the_problem(data_dir: Path, tmp_path: Path) -> None:
    a = _folder(data_dir, tmp_path / "A", TRAIN)
    b = _folder(data_dir, tmp_path / "B", (3,))
    res = _cli("bench", "fusion", "--train-dir", str(a), "--eval-dir", str(b), "--out", str(tmp_path / "o"))
    said = _said(res)
    assert res.exit_code == 2, said
    assert "cllr" not in said
    assert f"--eval-dir {b} has one subject with all three modalities (3): impostor trials need at least 2 " \
           "evaluation subjects" in said, said


def test_fusion_with_three_training_subjects_names_the_folder_and_its_count(data_dir: Path, tmp_path: Path) -> None:
    a = _folder(data_dir, tmp_path / "A3", (2, 4, 6))
    b = _folder(data_dir, tmp_path / "B", (1, 3, 7))
    res = _cli("bench", "fusion", "--train-dir", str(a), "--eval-dir", str(b), "--out", str(tmp_path / "o"))
    said = _said(res)
    assert res.exit_code == 2, said
    assert "got 1" not in said
    assert f"--train-dir {a} has 3 subjects with all three modalities (2, 4, 6): this bench needs at least 6" in said, said


def test_fusion_on_one_folder_too_small_for_two_folds_says_how_many(data_dir: Path, tmp_path: Path) -> None:
    d = _folder(data_dir, tmp_path / "D", (*TRAIN, 1, 3, 11, 13))  # 10: each fold trains on 5, calibrates on 2
    res = _cli("bench", "fusion", "--data-dir", str(d), "--out", str(tmp_path / "o"))
    said = _said(res)
    assert res.exit_code == 2, said
    assert f"need at least 12 subjects with all three modalities in {d}, found 10" in said, said
