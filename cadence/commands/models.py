"""`cadence models list|activate`: the model registry (federated training publishes into it)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cadence.commands.errors import fail, warning_line
from cadence.console import out_console

app = typer.Typer()
models_app = typer.Typer(help="Model registry: train, list, activate and calibrate published versions.",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")

Registry = Annotated[str | None, typer.Option("--registry", help="Registry folder (default: settings.model_registry).")]


def _registry(path: str | None):  # type: ignore[no-untyped-def]
    from cadence.commands.paths import path_option
    from cadence.settings import get_settings
    from modalities.registry import ModelRegistry

    root = path_option(path, "--registry") or get_settings().model_registry
    if root.exists() and not root.is_dir():  # else "no published models" or "not in the registry": misleading
        fail(f"model registry {root} is not a folder")
    return ModelRegistry(root)


@models_app.command("list")
def list_models(modality: Annotated[str | None, typer.Argument(help="keystroke, touch or gait")] = None,
                registry: Registry = None) -> None:
    """Every published version with its source and headline metrics; * marks the active one."""
    from modalities.registry import RegistryError

    reg = _registry(registry)
    damaged: list[str] = []
    registry_log = logging.getLogger("modalities.registry")
    was_disabled, registry_log.disabled = registry_log.disabled, True  # each reason is one warning line below
    try:
        versions = reg.list(modality, damaged=damaged)
    except RegistryError as exc:
        raise typer.BadParameter(str(exc), param_hint="MODALITY") from exc
    finally:
        registry_log.disabled = was_disabled
    calibrated = _calibrated_versions(_calibration_file(reg.root))
    table = Table(title=f"models in {escape(str(reg.root))}")  # values from files and folders: no markup read
    for c in ("modality", "version", "active", "calibrated", "scorer", "feature version", "source", "created", "metrics"):
        table.add_column(c)
    for mv in versions:
        metrics = headline_metrics(mv.metrics)
        table.add_row(*(escape(str(v)) for v in (mv.modality, mv.version, "*" if mv.active else "",
                                                 "yes" if calibrated.get(mv.modality) == mv.version else "",
                                                 mv.scorer, mv.feature_version, mv.source, mv.created, metrics)))
    out_console().print(table)
    for problem in damaged:
        warning_line(f"left out: {problem}")
    for problem in reg.problems(modality):  # what the table cannot show: an ACTIVE naming no servable version
        warning_line(problem)
    if not versions and not damaged:
        out_console().print("no published models: the server uses each modality package's default scorer")


#: what a model card needs at a glance, in this order: error rates (benches, `models train`), then how a
#: federated model was trained and with what privacy (metrics.json holds the rest: sizes, timings, losses)
HEADLINE_METRICS = ("eer", "calibration_eer", "calibration_cllr", "n_subjects", "rounds", "num_devices", "dp",
                    "epsilon", "delta", "secagg")


def headline_metrics(metrics: dict[str, Any], fallback: int = 4) -> str:
    """`HEADLINE_METRICS` present, in that order; without any, the first `fallback` plain values by name.

    Under DP an epsilon of None means noise too small for a finite one (`RunOutcome`): shown as inf.
    """
    shown = {k: v for k in HEADLINE_METRICS if (v := _headline_value(metrics, k)) is not None}
    if not shown:
        plain = sorted((k, v) for k, v in metrics.items() if isinstance(v, (int, float, str)))
        shown = dict(plain[:fallback])
    return ", ".join(f"{k}={_metric_value(v)}" for k, v in shown.items())


def _headline_value(metrics: dict[str, Any], key: str) -> Any:
    if key == "epsilon" and metrics.get("dp") is True and metrics.get(key) is None:
        return "inf"
    if key == "secagg":  # a federated run's record of its secure aggregation (`RunOutcome.secure_aggregation`)
        return (metrics["secure_aggregation"] is not None) if "secure_aggregation" in metrics else None
    return metrics.get(key)


def _metric_value(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _calibration_file(root: Path) -> Path:
    """The fusion calibration a server of this registry reads (CADENCE_FUSION_CALIBRATION, else the registry's)."""
    from cadence.settings import get_settings
    from server.training import fusion_path

    path = fusion_path(get_settings(), root)
    assert path is not None  # a registry is given
    return path


def _check_calibration_writable(path: Path) -> None:
    """Exit 2 naming the file (and the setting that chose it) when the fusion calibration cannot be updated there.

    Checked before the work: a calibration fitted, or models trained and published, for nothing
    (also when the file there cannot be read: it is updated, not replaced).
    """
    import os

    from cadence.files import write_problem
    from cadence.settings import get_settings
    from fusion.engine import FusionEngine

    problem = write_problem(path)
    if problem is None and not os.access(path.parent, os.W_OK | os.X_OK):  # saved by replacing it in its folder
        problem = f"cannot write {path}: its folder {path.parent} is not writable"
    if problem is None and path.is_file():  # updated in place: one it cannot read failed after publishing
        try:
            FusionEngine.load(path)
        except ValueError as exc:
            problem = (f"{exc}; nothing was trained or changed. Restore the file from a backup, or move it away "
                       "(every modality then goes uncalibrated, and steps up, until `models train` or "
                       "`models calibrate` fits it again)")
    if problem is not None:
        chosen = " (CADENCE_FUSION_CALIBRATION)" if get_settings().fusion_calibration is not None else ""
        fail(f"fusion calibration{chosen}: {problem}")


def _calibrated_versions(path: Path) -> dict[str, str]:
    """Modality -> the version its fusion calibrator in `path` was fitted for (what decisions will use)."""
    from server.fusion_source import FusionSource

    engine = FusionSource(path).current() if path.is_file() else None  # no file: nothing to say
    if engine is None:
        return {}
    return {m: v for m in engine.calibrated_modalities if (v := engine.fitted_for(m))}


@models_app.command("activate")
def activate(modality: Annotated[str, typer.Argument(help="keystroke, touch or gait")],
             version: Annotated[str, typer.Argument(help="e.g. v0003")],
             registry: Registry = None) -> None:
    """Make VERSION the model the server serves for MODALITY (recorded in the audit log)."""
    from modalities.base import ModelVersionError
    from modalities.registry import RegistryError

    reg = _registry(registry)
    try:
        reg.check(modality, version)  # a typo or a foreign model is named before the database is looked at
    except (RegistryError, ModelVersionError) as exc:
        fail(exc)
    with _audit_log() as record:  # checked before the switch: no activation goes unrecorded
        try:  # recorded under the registry's lock: activations by servers and the CLI are audited in order
            with reg.activation(modality, version) as mv:
                record("model.activated", {"modality": modality, "version": version, "scorer": mv.scorer})
        except (RegistryError, ModelVersionError) as exc:
            fail(exc)
    out_console().print(f"{modality}: {version} ({mv.scorer}) is now active", markup=False)
    _calibration_hint(reg.root, modality, version)


def _calibration_hint(root: Path, modality: str, version: str) -> None:
    """Say so when decisions will leave the newly active version out until it is calibrated."""
    if _calibrated_versions(_calibration_file(root)).get(modality) != version:
        out_console().print(f"{modality} {version} has no fusion calibrator yet: decisions leave its evidence out "
                        f"('uncalibrated') until `cadence models calibrate {modality} --data-dir PEOPLE` "
                        "(people it was not trained on)", soft_wrap=True)


def _data_folder(value: str | None) -> Path:
    """`--data-dir` as an absolute folder; '' is refused.

    It is recorded (a model's source, an audit entry), so it must still name the same folder
    from wherever the next command runs.
    """
    from cadence.commands.paths import folder_option

    folder = folder_option(value, "--data-dir")
    if folder is None:
        raise typer.BadParameter("give --data-dir or set CADENCE_DATA_DIR", param_hint="--data-dir")
    return folder.resolve()


@models_app.command("train")
def train(
    data_dir: Annotated[str | None, typer.Option("--data-dir", envvar="CADENCE_DATA_DIR", help="Dataset folder (layout of shared/datasets).")] = None,
    modality: Annotated[list[str] | None, typer.Option("--modality", "-m", help="Only this modality (repeatable).")] = None,
    registry: Registry = None,
    activate: Annotated[bool, typer.Option(help="Activate the new versions.")] = True,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seeds the subject sampling and calibration split.")] = 0,
    max_subjects: Annotated[int | None, typer.Option(min=6, help="Use at most this many subjects (seeded; training "
                                                                 "needs at least 6).")] = None,
) -> None:
    """Train each modality's best population model on DATA_DIR, calibrate it and publish it."""
    from cadence.commands.paths import ensure_writable_dir
    from evaluation.datasets import DatasetError
    from server.training import MODALITIES, check_training_data, train_and_publish

    folder = _data_folder(data_dir)
    try:  # the data, before the registry or the audit database is created
        check_training_data(folder, modality or MODALITIES, seed=seed, max_subjects=max_subjects)
    except (ValueError, DatasetError) as exc:
        fail(exc)
    reg = _registry(registry)
    ensure_writable_dir(reg.root, "--registry")
    if activate:  # without activation the live calibration is not touched
        _check_calibration_writable(_calibration_file(reg.root))
    console = out_console()
    with _audit_log() as record:  # checked before training: every activation below is recorded
        try:
            with console.status("training") as status:
                report = train_and_publish(
                    folder, reg.root, modalities=modality or MODALITIES, activate=activate, seed=seed,
                    max_subjects=max_subjects, step=lambda msg: status.update(msg),
                    calibration_file=_calibration_file(reg.root),
                    activated=lambda m, v, scorer: record("model.activated", {"modality": m, "version": v, "scorer": scorer,
                                                                              "calibrated": True}))
        except (ValueError, DatasetError) as exc:  # DatasetError: a missing or unreadable data file
            fail(exc)
    table = Table(title=f"published to {escape(str(reg.root))}")
    for c in ("modality", "version", "subjects", "calibration Cllr", "active"):
        table.add_column(c)
    for m, v in report.versions.items():
        table.add_row(m, v, str(report.subjects[m]), f"{report.calibration[m]['cllr']:.3f}", "yes" if activate else "no")
    console.print(table)
    if report.calibration_file is not None:
        console.print(f"fusion calibration: {report.calibration_file}", markup=False, soft_wrap=True)
    else:
        console.print("not activated, and the live fusion calibration is unchanged. To serve one: "
                      "`cadence models activate MODALITY VERSION`, then `cadence models calibrate MODALITY --data-dir PEOPLE` "
                      "(people it was not trained on); until then decisions leave its evidence out", soft_wrap=True)


@models_app.command("calibrate")
def calibrate(
    modality: Annotated[str, typer.Argument(help="keystroke, touch or gait")],
    data_dir: Annotated[str | None, typer.Option("--data-dir", envvar="CADENCE_DATA_DIR",
                                                 help="Calibration people (layout of shared/datasets), not the model's training people.")] = None,
    version: Annotated[str | None, typer.Option(help="Version to calibrate (default: the active one).")] = None,
    registry: Registry = None,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    max_subjects: Annotated[int | None, typer.Option(min=3, help="Use at most this many subjects (seeded).")] = None,
) -> None:
    """Fit the fusion calibrator of a published model, e.g. a federated run's, so decisions use it."""
    from evaluation.datasets import DatasetError
    from modalities.base import ModelVersionError
    from modalities.registry import RegistryError
    from server.training import calibrate_published, check_calibration_data

    folder = _data_folder(data_dir)
    reg = _registry(registry)
    try:  # a version that is not there is refused before the audit database is opened (or made)
        if version is not None:
            reg.get(modality, version)
        elif reg.active(modality) is None:
            published = [mv.version for mv in reg.list(modality)]
            hint = (f"; activate one first: cadence models activate {modality} {published[-1]} --registry {reg.root}"
                    if published else f"; publish one first (cadence models train --modality {modality}, or a federated run)")
            raise RegistryError(f"version: no active {modality} model in {reg.root}{hint}")
    except (RegistryError, ValueError) as exc:
        fail(exc)
    try:  # the people too: a wrong folder is refused before the audit database is made
        check_calibration_data(folder, modality)
    except (ValueError, DatasetError) as exc:
        fail(exc)
    cal_file = _calibration_file(reg.root)
    _check_calibration_writable(cal_file)
    with _audit_log() as record:  # checked before the calibration file changes
        before = cal_file.read_bytes() if cal_file.is_file() else None
        try:
            with out_console().status(f"{modality}: scoring the calibration people"):
                rep = calibrate_published(folder, reg.root, modality, version=version, max_subjects=max_subjects,
                                          seed=seed, calibration_file=cal_file)
        except (RegistryError, ModelVersionError, ValueError, DatasetError) as exc:
            fail(exc)
        try:
            record("model.calibrated", {"modality": modality, "version": rep.version, "scorer": rep.scorer,
                                        "subjects": rep.subjects, "cllr": round(rep.cllr, 4), "data_dir": str(folder)})
        except BaseException:  # not on record (e.g. the database stayed locked): servers must not decide with it
            _restore(cal_file, before)
            raise
    out_console().print(f"{modality} {rep.version} ({rep.scorer}): calibrated on {rep.subjects} subjects, "
                    f"EER {rep.eer:.4f}, Cllr {rep.cllr:.3f} -> {rep.calibration_file}", markup=False)


def _restore(path: Path, content: bytes | None) -> None:
    """Put back `path` as it was (`content`; None: it did not exist), as `activate` undoes an unrecorded switch."""
    from cadence.files import atomic_write

    if content is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write(path, content)


def _migrate_if_empty(url: str) -> None:
    """Migrate a database with no tables at all (a new PostgreSQL database or schema), as `cadence serve` would.

    No server can depend on an empty database, so migrating it here changes nothing under one;
    a database with tables is left to the server that owns it.
    """
    from sqlalchemy import inspect

    from cadence.commands.database import database_errors, shown
    from cadence.db import make_engine
    from server.migrate import upgrade

    with database_errors(url):
        engine = make_engine(url)
        try:
            if inspect(engine).get_table_names():
                return
            upgrade(engine)
        finally:
            engine.dispose()
    out_console().print(f"audit log: migrated the empty database {shown(url)} (as `cadence serve` does at start-up)",
                        soft_wrap=True, markup=False)


@contextmanager
def _audit_log() -> Iterator[Callable[[str, dict[str, Any]], None]]:
    """The audit log of the configured database, checked before anything changes (exit 2 if unusable).

    Yields `record(event, payload)`, which appends one entry in its own transaction, so each
    change is on record as soon as it is made. On a fresh machine (no SQLite file yet: `models
    train`, then `serve`) it creates and migrates the embedded database as `cadence serve`
    would, and says where. An existing database is never migrated here (the server migrates
    its own database; a newer CLI must not change it under an older server): it must hold the
    audit tables, or this stops with the reason, as the `audit` and `compliance` commands do.
    """
    from cadence.commands.audit import compliance_engine, sqlite_file_missing
    from cadence.commands.database import database_errors
    from cadence.db import make_engine, make_sessionmaker, transaction
    from cadence.settings import get_settings
    from compliance.keys import KeyConfigError
    from server.migrate import upgrade
    from server.services import compliance_hooks as hooks

    url = get_settings().database_url
    created = sqlite_file_missing(url)
    if created is not None:
        existed = created.exists()  # an empty file: migrated into, but never removed
        try:
            with database_errors(url):
                engine = make_engine(url)
                try:
                    upgrade(engine)
                finally:
                    engine.dispose()
        except typer.Exit:  # nothing was migrated: leave no empty file that reads as a broken database later
            for leftover in ([] if existed else [created]) + [Path(f"{created}-wal"), Path(f"{created}-shm")]:
                Path(leftover).unlink(missing_ok=True)
            raise
        out_console().print(f"audit log: created the database {created} (set CADENCE_DATABASE_URL to use another)",
                            soft_wrap=True, markup=False)
    else:
        _migrate_if_empty(url)
    with compliance_engine(url) as engine:
        factory = make_sessionmaker(engine)

        def record(event: str, payload: dict[str, Any]) -> None:
            try:
                with database_errors(url), transaction(factory) as session:
                    hooks.audit(session, event=event, actor="cli", subject=None, payload=payload)
            except KeyConfigError as exc:
                fail(exc)

        yield record
