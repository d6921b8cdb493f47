"""Train the best population model of each modality, calibrate it, publish it to the registry.

This is how a deployment replaces the one-class defaults with the benchmarked best methods:

1. calibration data: subjects are split in two seeded halves; models trained on one half
   score the other half (genuine = a person's own later windows, impostor = other people's),
   so the calibration never sees scores of people the model was trained on;
2. the final model of each modality is trained on every subject of the folder and published
   to the registry;
3. only when every modality is published, each is activated and its calibrator saved in the
   fusion calibration file the server reads (`fusion_path`: ``CADENCE_FUSION_CALIBRATION``, else
   ``<registry>/fusion-calibration.json``), with the model versions they were fitted for, then
   reported to `activated` (the audit log).

Every modality and its subjects are checked before anything is trained, and a failure
part-way leaves only inactive, published versions: never an active model without its
calibrator or its audit entry. Without activation the live calibration file is not touched:
its calibrators belong to the versions being served (see `calibrate_published`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cadence.settings import Settings

log = logging.getLogger(__name__)

MODALITIES = ("keystroke", "touch", "gait")

#: the fusion calibration's file name in a model registry (when no setting names another file)
CALIBRATION_FILE = "fusion-calibration.json"


def fusion_path(settings: Settings, registry_root: Path | None) -> Path | None:
    """Where the fusion calibration lives: the setting, else beside the registry's models.

    The one answer for the server (which reads it) and the CLI (`models train|calibrate`
    write it, `models list|activate` report what it holds).
    """
    path = settings.fusion_calibration or (Path(registry_root) / CALIBRATION_FILE if registry_root else None)
    return Path(path) if path is not None else None


@dataclass
class TrainReport:
    versions: dict[str, str] = field(default_factory=dict)
    calibration: dict[str, dict[str, float]] = field(default_factory=dict)
    subjects: dict[str, int] = field(default_factory=dict)
    calibration_file: Path | None = None


def check_modalities(modalities: Sequence[str]) -> None:
    """ValueError naming every unknown modality (before anything is trained)."""
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ValueError(f"modality: unknown {', '.join(map(repr, unknown))}; expected one of {MODALITIES}")


#: beside a centrally trained version's files: the ids of the subjects its model was trained on
TRAINING_SUBJECTS_FILE = "training-subjects.json"


def _plan(data_dir: Path, modalities: Sequence[str], *, seed: int,
          max_subjects: int | None) -> dict[str, tuple[list[Any], list[Any], list[Any]]]:
    """Modality -> (training subjects, calibration half a, half b); ValueError/DatasetError if one cannot be trained."""
    from evaluation.datasets import available_subjects

    check_modalities(modalities)
    rng = np.random.default_rng(seed)
    plan: dict[str, tuple[list[Any], list[Any], list[Any]]] = {}
    for m in dict.fromkeys(modalities):
        subs = available_subjects(data_dir, m)
        if max_subjects is not None and len(subs) > max_subjects:
            subs = sorted(rng.choice(subs, size=max_subjects, replace=False).tolist())
        if len(subs) < 6:
            why = f" (--max-subjects {max_subjects})" if max_subjects is not None and max_subjects < 6 else ""
            raise ValueError(f"{m}: training needs at least 6 subjects, found {len(subs)} in {data_dir}{why}")
        perm = rng.permutation(subs)
        plan[m] = (subs, sorted(perm[: len(perm) // 2].tolist()), sorted(perm[len(perm) // 2:].tolist()))
    return plan


def check_training_data(data_dir: Path, modalities: Sequence[str] = MODALITIES, *, seed: int = 0,
                        max_subjects: int | None = None) -> None:
    """What `train_and_publish` refuses, refused before anything (database, registry) is created."""
    _plan(data_dir, modalities, seed=seed, max_subjects=max_subjects)


def train_and_publish(
    data_dir: Path,
    registry_root: Path,
    *,
    modalities: Sequence[str] = MODALITIES,
    activate: bool = True,
    seed: int = 0,
    max_subjects: int | None = None,
    step: Callable[[str], None] = lambda msg: None,
    activated: Callable[[str, str, str], None] = lambda modality, version, scorer: None,
    calibration_file: Path | None = None,
) -> TrainReport:
    """Train, calibrate and publish each modality's population model from `data_dir`.

    `activated(modality, version, scorer name)` is called after each activation, once that
    version's calibrator is saved: the caller records it in the audit log. `calibration_file`:
    the fusion calibration the server reads (`fusion_path`; default: the registry's).
    """
    import importlib

    from evaluation.metrics import eer
    from evaluation.pair_scores import genuine_impostor, pair_scores
    from fusion.engine import FusionEngine
    from modalities.registry import ModelRegistry

    plan = _plan(data_dir, modalities, seed=seed, max_subjects=max_subjects)  # every input checked first
    reg = ModelRegistry(registry_root)
    report = TrainReport()
    fitted = FusionEngine()
    scorers: dict[str, str] = {}
    for m, (subs, a, b) in plan.items():
        step(f"{m}: calibration scores (train on {len(a)}, score {len(b)} other subjects)")
        ps = pair_scores(m, data_dir, a, data_dir, b, seed=seed)
        gen, imp = genuine_impostor(ps)
        fitted.fit_modality(m, genuine=gen, impostor=imp)
        step(f"{m}: training the population model on {len(subs)} subjects")
        pkg: Any = importlib.import_module(f"modalities.{m}")
        scorer = pkg.train_scorer(data_dir, subs)
        metrics = {"calibration_eer": eer(genuine=gen, impostor=imp), "calibration_cllr": fitted.report[m]["cllr"],
                   "n_subjects": len(subs)}
        card = (f"# {m} model ({scorer.name})\n\nTrained by `cadence models train` on {len(subs)} subjects of "
                f"`{data_dir}`. Calibration fitted on scores of subjects the calibration model never saw "
                f"(EER {metrics['calibration_eer']:.4f}, Cllr {metrics['calibration_cllr']:.3f}). "
                "Evaluate it only on people outside that folder.\n")
        version = reg.publish(m, scorer, metrics=metrics, card=card, source=f"central:{Path(data_dir).resolve()}")
        # which people exactly: `calibrate_published` refuses these (not every subject of the folder)
        (reg.root / m / version / TRAINING_SUBJECTS_FILE).write_text(json.dumps([int(x) for x in subs]))
        fitted.report[m]["model_version"] = version
        scorers[m] = scorer.name
        report.versions[m] = version
        report.calibration[m] = dict(fitted.report[m])
        report.subjects[m] = len(subs)
    if not activate:
        return report  # the live calibrators stay with the versions being served
    cal_path = Path(calibration_file) if calibration_file is not None else Path(registry_root) / CALIBRATION_FILE
    live = FusionEngine.load(cal_path) if cal_path.exists() else FusionEngine()
    for m, version in report.versions.items():
        with reg.activation(m, version):  # recorded under the registry's lock (see `ModelRegistry.activation`)
            before = dict(live.calibrators), dict(live.report)
            live.calibrators[m], live.report[m] = fitted.calibrators[m], fitted.report[m]
            live.save(cal_path)
            try:
                activated(m, version, scorers[m])
            except BaseException:  # not recorded: the activation is undone, so is its calibrator
                live.calibrators, live.report = before
                live.save(cal_path)
                raise
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


def _refuse_training_people(modality: str, version: str, source: str, data_dir: Path, subjects: list[Any],
                            trained_subjects: list[int] | None = None) -> None:
    """A model trained centrally on a folder (`source` "central:<folder>") is not calibrated on its people.

    `trained_subjects`: the ids it was trained on (`TRAINING_SUBJECTS_FILE`); None (a model
    published before they were recorded) counts every subject of that folder.

    Its scores on them are optimistic, so would the calibrated LLRs be: impostors would read as
    stronger matches than they are on strangers. Federated models record no folder (their
    devices' data never left them), so nothing can be checked for them here.
    """
    from evaluation.datasets import available_subjects, shared_content

    if not source.startswith("central:"):
        return
    trained_on = Path(source.split(":", 1)[1])
    present = trained_on.is_dir()
    if not present and trained_subjects is None:
        return  # neither the folder nor a record of its people: nothing to compare
    try:  # the recorded ids are compared even when the training folder has moved or gone since
        same_ids = set(subjects) & set(trained_subjects if trained_subjects is not None
                                       else available_subjects(trained_on, modality))
    except Exception:  # noqa: BLE001 - the training folder changed layout: nothing to compare
        return
    copies: set[Any] = set()
    if present:
        try:  # the same data under other ids: a linked, copied or (de)compressed file
            copies = {e for _, e in shared_content(modality, trained_on, data_dir, train_subjects=trained_subjects,
                                                   eval_subjects=subjects)}
        except Exception:  # noqa: BLE001 - as above
            copies = set()
    shared = sorted(same_ids | copies)
    if shared:
        raise ValueError(f"{modality} {version} was trained on {trained_on}, which {'holds' if present else 'held'} {len(shared)} of the people in "
                         f"{data_dir} (e.g. subjects {', '.join(map(str, shared[:5]))}): calibrate it on people it was "
                         "not trained on, or its LLRs read impostors as stronger matches than they are")


def _training_subjects(version_dir: Path) -> list[int] | None:
    """The subject ids recorded at training, None where none are (older or federated models)."""
    try:
        ids = json.loads((version_dir / TRAINING_SUBJECTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        return None
    return ids


def check_calibration_data(data_dir: Path, modality: str) -> None:
    """What `calibrate_published` refuses of `data_dir` without scoring: fewer than 3 subjects of `modality`.

    Why: checked before the audit database is opened (created, on a fresh machine): a typo'd
    `--data-dir` left a new database behind (./cadence.sqlite by default) for a refused calibration.
    """
    from evaluation.datasets import available_subjects

    if modality not in MODALITIES:
        raise ValueError(f"modality: unknown {modality!r}; expected one of {MODALITIES}")
    found = len(available_subjects(data_dir, modality))  # DatasetError for a folder that cannot be read
    if found < 3:
        raise ValueError(f"{modality}: calibration needs at least 3 subjects with {modality} data, found {found} "
                         f"in {data_dir}")


def calibrate_published(
    data_dir: Path,
    registry_root: Path,
    modality: str,
    *,
    version: str | None = None,
    max_subjects: int | None = None,
    seed: int = 0,
    calibration_file: Path | None = None,
) -> CalibrationReport:
    """Fit the fusion calibrator of the active model of `modality` (`version`, when given, must be it).

    For models this process did not train, such as a federated run's global model: each
    subject of `data_dir` enrols on the earliest half of their data and is probed with the
    later half, scored by the published model exactly as the server scores it. The
    calibrator is recorded as fitted for that version (`FusionEngine.applies`), beside the
    other modalities' calibrators. Use people the model was not trained on: scores of its own
    training people are optimistic, and the calibrated LLRs would be too.

    The file holds one calibrator per modality, the one decisions use now: a calibrator
    fitted for a version that is not served would replace it, and the served version's
    evidence would be left out of decisions. So a candidate is activated first.

    `calibration_file`: the fusion calibration the server reads (`fusion_path`; default: the registry's).
    """
    from evaluation.datasets import available_subjects
    from evaluation.metrics import eer
    from evaluation.pair_scores import SPLITS, as_decided, genuine_impostor, scores_of
    from fusion.engine import FusionEngine
    from modalities.registry import ModelRegistry, RegistryError

    if modality not in MODALITIES:
        raise ValueError(f"modality: unknown {modality!r}; expected one of {MODALITIES}")
    reg = ModelRegistry(registry_root)
    active = reg.active(modality)
    if version is not None:
        reg.get(modality, version)  # unknown or malformed: named as such
    if active is None:
        raise RegistryError(f"version: no active {modality} model in {reg.root}: activate one first "
                            f"(`cadence models activate {modality} VERSION`), then calibrate it")
    if version is not None and version != active.version:
        raise RegistryError(f"version: {modality} {version} is not active ({active.version} is): calibrating it would "
                            f"replace the calibrator decisions use for {active.version}; activate it first "
                            f"(`cadence models activate {modality} {version}`), then calibrate it")
    version = active.version
    scorer = reg.load(modality, version)
    subs = available_subjects(data_dir, modality)
    _refuse_training_people(modality, version, active.source, data_dir, subs,
                            _training_subjects(reg.root / modality / version))
    if max_subjects is not None and len(subs) > max_subjects:
        subs = sorted(np.random.default_rng(seed).choice(subs, size=max_subjects, replace=False).tolist())
    cal_path = Path(calibration_file) if calibration_file is not None else Path(registry_root) / CALIBRATION_FILE
    engine = FusionEngine.load(cal_path) if cal_path.exists() else FusionEngine()
    if modality == "keystroke":
        n_subjects, gen, imp = _fit_keystroke_by_quality(engine, scorer, Path(data_dir), subs)
    else:
        split = SPLITS[modality](Path(data_dir), subs)
        if len(split) < 3:
            raise ValueError(f"{modality}: need at least 3 subjects with enough data in {data_dir}, found {len(split)}")
        gen, imp = genuine_impostor(scores_of(as_decided(modality, scorer), split))
        engine.fit_modality(modality, genuine=gen, impostor=imp)
        n_subjects = len(split)
    engine.report[modality]["model_version"] = version
    engine.save(cal_path)
    return CalibrationReport(modality, version, scorer.name, n_subjects, float(eer(genuine=gen, impostor=imp)),
                             float(engine.report[modality]["cllr"]), cal_path)


def _fit_keystroke_by_quality(engine: Any, scorer: Any, data_dir: Path, subs: list[Any]) -> tuple[int, np.ndarray, np.ndarray]:
    """Fit `engine`'s keystroke calibrator on windows of 30-100 keys with their quality.

    Returns (subjects, genuine and impostor scores of the 100-key windows, for the report's EER).
    Why: a phone sends a recording of n <= 100 keys as one window of n keys. A calibrator fitted
    on 100-key windows alone read a federated embedding's scores of 30-key owner windows as
    strong evidence against the owner (BENCHMARKS.md, Keystroke, "Windows shorter than 100 keys":
    8 % of them at a keystroke-alone deny level, against the 1 % such an LLR promises). Fitted on
    every length the phone sends, with the window's quality as a covariate, the LLR's slope
    shrinks as windows get shorter. Windows below the policy's `min_quality` are left out: decisions
    never read them. Where the quality-aware fit is refused (qualities without spread, a slope
    that reverses), the calibrator falls back to the scores alone, as for the other modalities,
    and the report says so.
    """
    from evaluation.pair_scores import keystroke_length_split, scores_of
    from modalities.keystroke import DEFAULT_WINDOW_KEYS

    split = keystroke_length_split(data_dir, subs)
    if len(split) < 3:
        raise ValueError(f"keystroke: need at least 3 subjects with enough data in {data_dir}, found {len(split)}")
    floor = engine.policy.min_quality
    ps = scores_of(scorer, {s: (e, X) for s, (e, X, _, _) in split.items()})
    parts: dict[bool, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {True: [], False: []}
    for (s, p), scores in ps.items():  # each probe's quality and length are its own person's
        parts[s == p].append((scores, split[p][2], split[p][3]))
    (gs, gq, gn), (is_, iq, in_) = ([np.concatenate(c) for c in zip(*parts[k], strict=True)] for k in (True, False))
    read_g, read_i = gq >= floor, iq >= floor
    try:
        engine.fit_modality("keystroke", genuine=gs[read_g], impostor=is_[read_i],
                            genuine_quality=gq[read_g], impostor_quality=iq[read_i], quality_floor=floor)
        engine.report["keystroke"]["quality_aware"] = {"window_keys": sorted({int(x) for x in gn}),
                                                       "min_quality": floor}
    except ValueError as exc:
        log.warning("keystroke calibration: the quality-aware fit was refused (%s); fitting on the scores of "
                    "100-key windows alone", exc)
        full_g, full_i = gn == DEFAULT_WINDOW_KEYS, in_ == DEFAULT_WINDOW_KEYS
        engine.fit_modality("keystroke", genuine=gs[full_g], impostor=is_[full_i])
        engine.report["keystroke"]["quality_aware"] = False
    return len(split), gs[gn == DEFAULT_WINDOW_KEYS], is_[in_ == DEFAULT_WINDOW_KEYS]
