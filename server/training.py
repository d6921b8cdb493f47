"""Train the best population model of each modality, calibrate it, publish it to the registry.

This is how a deployment replaces the one-class defaults with the benchmarked best methods:

1. calibration data: subjects are split in two seeded halves; models trained on one half
   score the other half (genuine = a person's own later windows, impostor = other people's),
   so the calibration never sees scores of people the model was trained on;
2. the final model of each modality is trained on every subject of the folder and published
   to the registry (and activated);
3. the per-modality calibrators are saved as ``<registry>/fusion-calibration.json``, which
   the server's `FusionEngine` loads, with the model versions they were fitted for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MODALITIES = ("keystroke", "touch", "gait")


@dataclass
class TrainReport:
    versions: dict[str, str] = field(default_factory=dict)
    calibration: dict[str, dict[str, float]] = field(default_factory=dict)
    subjects: dict[str, int] = field(default_factory=dict)
    calibration_file: Path | None = None


def train_and_publish(
    data_dir: Path,
    registry_root: Path,
    *,
    modalities: Sequence[str] = MODALITIES,
    activate: bool = True,
    seed: int = 0,
    max_subjects: int | None = None,
    step: Callable[[str], None] = lambda msg: None,
) -> TrainReport:
    """Train, calibrate and publish each modality's population model from `data_dir`."""
    import importlib

    from evaluation.datasets import available_subjects
    from evaluation.metrics import eer
    from evaluation.pair_scores import genuine_impostor, pair_scores
    from fusion.engine import FusionEngine
    from modalities.registry import ModelRegistry

    reg = ModelRegistry(registry_root)
    report = TrainReport()
    cal_path = Path(registry_root) / "fusion-calibration.json"
    engine = FusionEngine.load(cal_path) if cal_path.exists() else FusionEngine()
    rng = np.random.default_rng(seed)
    for m in modalities:
        if m not in MODALITIES:
            raise ValueError(f"modality: unknown {m!r}; expected one of {MODALITIES}")
        subs = available_subjects(data_dir, m)
        if max_subjects is not None and len(subs) > max_subjects:
            subs = sorted(rng.choice(subs, size=max_subjects, replace=False).tolist())
        if len(subs) < 6:
            raise ValueError(f"{m}: need at least 6 subjects in {data_dir}, found {len(subs)}")
        perm = rng.permutation(subs)
        a, b = sorted(perm[: len(perm) // 2].tolist()), sorted(perm[len(perm) // 2:].tolist())
        step(f"{m}: calibration scores (train on {len(a)}, score {len(b)} other subjects)")
        ps = pair_scores(m, data_dir, a, data_dir, b, seed=seed)
        gen, imp = genuine_impostor(ps)
        engine.fit_modality(m, genuine=gen, impostor=imp)
        step(f"{m}: training the population model on {len(subs)} subjects")
        pkg: Any = importlib.import_module(f"modalities.{m}")
        scorer = pkg.train_scorer(data_dir, subs)
        metrics = {"calibration_eer": eer(genuine=gen, impostor=imp), "calibration_cllr": engine.report[m]["cllr"],
                   "n_subjects": len(subs)}
        card = (f"# {m} model ({scorer.name})\n\nTrained by `cadence models train` on {len(subs)} subjects of "
                f"`{data_dir}`. Calibration fitted on scores of subjects the calibration model never saw "
                f"(EER {metrics['calibration_eer']:.4f}, Cllr {metrics['calibration_cllr']:.3f}). "
                "Evaluate it only on people outside that folder.\n")
        version = reg.publish(m, scorer, metrics=metrics, card=card, source=f"central:{data_dir}")
        if activate:
            reg.activate(m, version)
        engine.report[m]["model_version"] = version
        report.versions[m] = version
        report.calibration[m] = dict(engine.report[m])
        report.subjects[m] = len(subs)
    engine.save(cal_path)
    report.calibration_file = cal_path
    return report


@dataclass
class CalibrationReport:
    modality: str
    version: str
    scorer: str
    subjects: int
    eer: float
    cllr: float
    calibration_file: Path


def calibrate_published(
    data_dir: Path,
    registry_root: Path,
    modality: str,
    *,
    version: str | None = None,
    max_subjects: int | None = None,
    seed: int = 0,
) -> CalibrationReport:
    """Fit the fusion calibrator of an already published model (default: the active version).

    For models this process did not train, such as a federated run's global model: each
    subject of `data_dir` enrols on the earliest half of their data and is probed with the
    later half, scored by the published model exactly as the server scores it. The
    calibrator is recorded as fitted for that version (`FusionEngine.applies`), beside the
    other modalities' calibrators. Use people the model was not trained on: scores of its own
    training people are optimistic, and the calibrated LLRs would be too.
    """
    from evaluation.datasets import available_subjects
    from evaluation.metrics import eer
    from evaluation.pair_scores import SPLITS, as_decided, genuine_impostor, scores_of
    from fusion.engine import FusionEngine
    from modalities.registry import ModelRegistry, RegistryError

    if modality not in MODALITIES:
        raise ValueError(f"modality: unknown {modality!r}; expected one of {MODALITIES}")
    reg = ModelRegistry(registry_root)
    if version is None:
        active = reg.active(modality)
        if active is None:
            raise RegistryError(f"version: no active {modality} model in {reg.root}; name one with --version")
        version = active.version
    scorer = reg.load(modality, version)
    subs = available_subjects(data_dir, modality)
    if max_subjects is not None and len(subs) > max_subjects:
        subs = sorted(np.random.default_rng(seed).choice(subs, size=max_subjects, replace=False).tolist())
    split = SPLITS[modality](Path(data_dir), subs)
    if len(split) < 3:
        raise ValueError(f"{modality}: need at least 3 subjects with enough data in {data_dir}, found {len(split)}")
    ps = scores_of(as_decided(modality, scorer), split)
    gen, imp = genuine_impostor(ps)
    cal_path = Path(registry_root) / "fusion-calibration.json"
    engine = FusionEngine.load(cal_path) if cal_path.exists() else FusionEngine()
    engine.fit_modality(modality, genuine=gen, impostor=imp)
    engine.report[modality]["model_version"] = version
    engine.save(cal_path)
    return CalibrationReport(modality, version, scorer.name, len(split), float(eer(genuine=gen, impostor=imp)),
                             float(engine.report[modality]["cllr"]), cal_path)
