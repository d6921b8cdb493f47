"""The server's calls into `compliance/` (consent, audit, subject rights), in one place.

compliance/ is written in parallel; where one of its functions is not importable yet, the
hook logs once and degrades (no consent check, no audit entry) instead of failing, so the
walking skeleton runs. Once compliance lands every hook is live without changes here.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from typing import Any

from sqlalchemy.orm import Session

from server.errors import ApiError
from server.services import core_sql

log = logging.getLogger(__name__)
_missing: set[str] = set()


_found: dict[tuple[str, str], Any] = {}


def _fn(module: str, name: str) -> Any:
    hit = _found.get((module, name))
    if hit is not None:  # resolved before: skip the import machinery on the hot path
        return hit
    try:
        _found[(module, name)] = fn = getattr(importlib.import_module(module), name)
        return fn
    except (ImportError, AttributeError):
        if f"{module}.{name}" not in _missing:
            _missing.add(f"{module}.{name}")
            log.warning("%s.%s is not available yet: that compliance step is skipped", module, name)
        return None


def digest(obj: Any) -> str:
    """SHA-256 of a JSON-able object: what the audit log records instead of the data itself."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def require_consent(session: Session, *, user_id: str, modality: str, purpose: str = "authentication") -> None:
    fn = _fn("compliance.consent", "require_consent")
    if fn is None:
        return
    err = _fn("compliance.consent", "ConsentError") or Exception
    try:
        fn(session, user_id=user_id, modality=modality, purpose=purpose)
    except err as exc:  # type: ignore[misc]
        raise ApiError(403, "consent_required", str(exc)) from exc


def current_policy_version(purpose: str) -> str:
    fn = _fn("compliance.consent", "policy_text")
    return "1" if fn is None else str(fn(purpose).version)


def require_consents(session: Session, *, user_id: str, modalities: list[str], purpose: str = "authentication") -> None:
    """`require_consent` for several modalities in one query (the authorize hot path).

    Uses ``compliance.consent.require_consents`` when compliance offers it; otherwise the
    same rule as compliance's `require_consent` (an unrevoked grant exists) in one query
    over its ConsentRecord table, raising its `ConsentError` for the first one missing.
    """
    batch = _fn("compliance.consent", "require_consents")
    if batch is not None:
        err = _fn("compliance.consent", "ConsentError") or Exception
        try:
            batch(session, user_id=user_id, modalities=modalities, purpose=purpose)
        except err as exc:  # type: ignore[misc]
            raise ApiError(403, "consent_required", str(exc)) from exc
        return
    try:
        from compliance.consent import ConsentError
    except ImportError:
        for m in modalities:
            require_consent(session, user_id=user_id, modality=m, purpose=purpose)
        return
    granted = set(core_sql.execute(session, _GRANTED, {"u": user_id, "p": purpose, "m": list(modalities)}).scalars().all()) \
        if _GRANTED is not None else set()
    for m in modalities:
        if m not in granted:
            raise ApiError(403, "consent_required", str(ConsentError(user_id, m, purpose)))


def _granted_statement() -> Any:
    try:
        from compliance.models import ConsentRecord
    except ImportError:
        return None
    from sqlalchemy import bindparam, select

    c = ConsentRecord.__table__.c
    return select(c.modality).where(
        c.user_id == bindparam("u"), c.purpose == bindparam("p"),
        c.modality.in_(bindparam("m", expanding=True)), c.revoked_at.is_(None))


_GRANTED = _granted_statement()


def grant_consent(session: Session, *, user_id: str, modality: str, purpose: str, policy_version: str | None,
                  actor: str = "user") -> bool:
    fn = _fn("compliance.consent", "grant_consent")
    if fn is None:
        return False
    version = policy_version or current_policy_version(purpose)
    try:
        fn(session, user_id=user_id, modality=modality, purpose=purpose, policy_version=version, actor=actor)
    except ValueError as exc:
        raise ApiError(422, "invalid_consent", str(exc)) from exc
    return True


def revoke_consent(session: Session, *, user_id: str, modality: str, purpose: str, actor: str = "user") -> Any:
    fn = _fn("compliance.consent", "revoke_consent")
    if fn is None:
        return False
    try:
        return fn(session, user_id=user_id, modality=modality, purpose=purpose, actor=actor)
    except ValueError as exc:
        raise ApiError(422, "invalid_consent", str(exc)) from exc


def list_consents(session: Session, user_id: str) -> list[dict[str, Any]]:
    """Consent records of a user (compliance.consent.consents_of)."""
    fn = _fn("compliance.consent", "consents_of")
    return [] if fn is None else list(fn(session, user_id))


def audit(session: Session, *, event: str, actor: str, subject: str | None, payload: dict[str, Any]) -> None:
    fn = _fn("compliance.audit", "append_audit")
    if fn is None:
        return
    fn(session, event=event, actor=actor, subject=subject, payload=payload)


def export_user(session: Session, user_id: str) -> dict[str, Any]:
    fn = _fn("compliance.subjects", "export_user")
    if fn is None:
        from server.holders import ServerHolder

        return {"server": ServerHolder().export(session, user_id)}
    return fn(session, user_id)


def erase_user(session: Session, user_id: str, *, actor: str = "admin") -> dict[str, Any]:
    fn = _fn("compliance.subjects", "erase_user")
    if fn is None:
        from server.holders import ServerHolder

        return {"server": ServerHolder().erase(session, user_id)}
    return fn(session, user_id, actor=actor)


def register_server_holder() -> None:
    """Register the server's data holder with compliance.subjects (idempotent)."""
    import server.holders  # noqa: F401  (registers on import)
