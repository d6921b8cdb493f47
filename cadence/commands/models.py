"""`cadence models list|activate`: the model registry (federated training publishes into it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer()
models_app = typer.Typer(help="Model registry: list published versions, activate one.", no_args_is_help=True)
app.add_typer(models_app, name="models")

Registry = Annotated[Path | None, typer.Option("--registry", help="Registry folder (default: settings.model_registry).")]


def _registry(path: Path | None):  # type: ignore[no-untyped-def]
    from cadence.settings import get_settings
    from modalities.registry import ModelRegistry

    return ModelRegistry(path or get_settings().model_registry)


@models_app.command("list")
def list_models(modality: Annotated[str | None, typer.Argument(help="keystroke, touch or gait")] = None,
                registry: Registry = None) -> None:
    """Every published version with its source and headline metrics; * marks the active one."""
    from modalities.registry import RegistryError

    reg = _registry(registry)
    try:
        versions = reg.list(modality)
    except RegistryError as exc:
        raise typer.BadParameter(str(exc), param_hint="MODALITY") from exc
    table = Table(title=f"models in {reg.root}")
    for c in ("modality", "version", "active", "scorer", "feature version", "source", "created", "metrics"):
        table.add_column(c)
    for mv in versions:
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(mv.metrics.items())[:4])
        table.add_row(mv.modality, mv.version, "*" if mv.active else "", mv.scorer, mv.feature_version, mv.source,
                      mv.created, metrics)
    Console().print(table)
    if not versions:
        Console().print("no published models: the server uses each modality package's default scorer")


@models_app.command("activate")
def activate(modality: Annotated[str, typer.Argument(help="keystroke, touch or gait")],
             version: Annotated[str, typer.Argument(help="e.g. v0003")],
             registry: Registry = None) -> None:
    """Make VERSION the model the server serves for MODALITY (recorded in the audit log)."""
    from modalities.base import ModelVersionError
    from modalities.registry import RegistryError

    reg = _registry(registry)
    try:
        mv = reg.activate(modality, version)
    except (RegistryError, ModelVersionError) as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    _audit_activation(modality, version, mv.scorer)
    Console().print(f"{modality}: {version} ({mv.scorer}) is now active")


def _audit_activation(modality: str, version: str, scorer: str) -> None:
    """Record the activation in the audit log of the configured database (if compliance is there)."""
    from cadence.db import make_engine, make_sessionmaker, transaction
    from cadence.settings import get_settings
    from server.migrate import upgrade
    from server.services import compliance_hooks as hooks

    engine = make_engine(get_settings().database_url)
    try:
        upgrade(engine)
        with transaction(make_sessionmaker(engine)) as session:
            hooks.audit(session, event="model.activated", actor="cli", subject=None,
                        payload={"modality": modality, "version": version, "scorer": scorer})
    finally:
        engine.dispose()
