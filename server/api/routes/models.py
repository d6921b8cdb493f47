"""/v1/models: the model registry as the server sees it (read; activation needs an admin key)."""

from __future__ import annotations

import os
from contextlib import ExitStack
from os import PathLike
from typing import Any

from fastapi import APIRouter, Path

from modalities.base import ModelVersionError
from modalities.registry import RegistryError, RegistryLockError
from server.api.deps import AdminKey, State, Uow
from server.api.routing import CadenceRoute
from server.errors import ApiError
from server.schemas import ActivateIn, ModelOut
from server.services import compliance_hooks as hooks


def public_source(source: str) -> str:
    """A version's source as anyone may read it: "central:<folder>" names a path on the server, so the folder is left out."""
    return "central" if source.startswith("central:") else source


def without_root(text: str, root: PathLike[str]) -> str:
    """`text` with the registry's folder written as ROOT: a model file's path names a folder on the server."""
    prefix = os.fspath(root).rstrip(os.sep) + os.sep
    return text.replace(prefix, "ROOT" + os.sep)


router = APIRouter(prefix="/v1/models", tags=["models"], route_class=CadenceRoute)
ModalityPath = Path(pattern=r"^(keystroke|touch|gait)$")


def _out(mv) -> ModelOut:  # type: ignore[no-untyped-def]
    return ModelOut(modality=mv.modality, version=mv.version, scorer=mv.scorer, feature_version=mv.feature_version,
                    source=public_source(mv.source), created=mv.created, active=mv.active, metrics=mv.metrics)


@router.get("", response_model=list[ModelOut])
def list_models(state: State) -> list[ModelOut]:
    reg = state.provider.registry
    return [_out(mv) for mv in reg.list()] if reg is not None else []


@router.get("/{modality}/active")
def active_model(state: State, modality: str = ModalityPath) -> dict[str, Any]:
    """What serves `modality` right now (registry version, package default or fallback).

    `calibrated` says whether the fusion calibrator applies to it (`calibrated_for` names the
    model it was fitted for); a registry model without one is left out of decisions.
    """
    a = state.provider.get(modality)
    out: dict[str, Any] = {"modality": modality, "model_id": a.model_id, "scorer": a.scorer.name,
                           "feature_version": a.feature_version or "", "calibrated": False, "calibrated_for": ""}
    fusion = state.fusion.current() if state.fusion is not None else None
    if fusion is not None and modality in fusion.calibrators:
        out["calibrated"] = fusion.applies(modality, a.model_id)
        out["calibrated_for"] = fusion.fitted_for(modality) or "any"
    return out


@router.post("/{modality}/activate", response_model=ModelOut)
def activate(body: ActivateIn, state: State, uow: Uow, actor: AdminKey, modality: str = ModalityPath) -> ModelOut:
    reg = state.provider.registry
    if reg is None or not reg.root.is_dir():  # nothing published yet (or no folder configured)
        raise ApiError(409, "no_registry", "registry: none yet; publish a model first (`cadence models train`)")
    with ExitStack() as held:
        try:  # the registry's lock is held until the audit entry is committed (other workers, the CLI)
            mv = held.enter_context(reg.activation(modality, body.version))
        except RegistryLockError as exc:
            raise ApiError(503, "registry_unavailable", f"registry: {exc.public}") from exc
        except RegistryError as exc:  # its public text: the registry's folder is the server's business
            raise ApiError(404, "unknown_model", exc.public) from exc
        except ModelVersionError as exc:  # published, but this code cannot load it (scorer name or version)
            raise ApiError(409, "unloadable_model", without_root(str(exc), reg.root)) from exc
        # committed before the lock is released, so the audit log's activations are in the order
        # the ACTIVE file changed; if it fails, the activation is undone
        with uow() as session:
            hooks.audit(session, event="model.activated", actor=actor, subject=None,
                        payload={"modality": modality, "version": body.version, "scorer": mv.scorer})
    return _out(mv)
