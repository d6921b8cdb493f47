"""The server's calls into `compliance/` (consent, audit, subject rights), in one place.

Imported directly: a missing consent check or audit entry must fail loudly, never degrade
to a silent skip. Consent errors become field-named 403s and invalid consent requests 422s.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import bindparam, inspect, literal, select
from sqlalchemy.orm import Session

from cadence import prepared
from compliance import audit as _audit
from compliance import consent as _consent
from compliance import subjects as _subjects
from compliance.models import ConsentRecord
from server.errors import ApiError


def digest(obj: Any) -> str:
    """SHA-256 of a JSON-able object: what the audit log records instead of the data itself."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def require_consent(session: Session, *, user_id: str, modality: str, purpose: str = "authentication") -> None:
    try:
        _consent.require_consent(session, user_id=user_id, modality=modality, purpose=purpose)
    except _consent.ConsentError as exc:
        raise ApiError(403, "consent_required", f"modality: {exc}") from exc


def current_policy_version(purpose: str) -> str:
    return str(_consent.policy_text(purpose).version)


_c = ConsentRecord.__table__.c
_GRANTED = select(_c.modality).where(
    _c.user_id == bindparam("u"), _c.purpose == bindparam("p"),
    _c.modality.in_(bindparam("m", expanding=True)), _c.revoked_at.is_(None))


def require_consents(session: Session, *, user_id: str, modalities: list[str], purpose: str = "authentication") -> None:
    """`require_consent` for several modalities in one query (the authorize hot path).

    The same rule as compliance's `require_consent` (an unrevoked grant exists), raising
    its `ConsentError` message for the first modality missing.
    """
    granted = set(prepared.execute(session, _GRANTED, {"u": user_id, "p": purpose, "m": list(modalities)}).scalars())
    for m in modalities:
        if m not in granted:
            raise ApiError(403, "consent_required", f"modality: {_consent.ConsentError(user_id, m, purpose)}")


def grant_consent(session: Session, *, user_id: str, modality: str, purpose: str, policy_version: str | None,
                  actor: str = "user") -> bool:
    version = policy_version or current_policy_version(purpose)
    try:
        _consent.grant_consent(session, user_id=user_id, modality=modality, purpose=purpose, policy_version=version,
                               actor=actor)
    except ValueError as exc:
        raise ApiError(422, "invalid_consent", str(exc)) from exc
    return True


def revoke_consent(session: Session, *, user_id: str, modality: str, purpose: str, actor: str = "user") -> dict[str, int]:
    try:
        return _consent.revoke_consent(session, user_id=user_id, modality=modality, purpose=purpose, actor=actor)
    except ValueError as exc:
        raise ApiError(422, "invalid_consent", str(exc)) from exc


def list_consents(session: Session, user_id: str) -> list[dict[str, Any]]:
    """Consent records of a user."""
    return list(_consent.consents_of(session, user_id))


def device_alias(device_id: str) -> str:
    """A device id as the audit log names it: its keyed pseudonym (the same key as the subjects').

    Device ids are chosen by the client and often contain the person's name or user id, so
    the log must not hold them in the clear: erasing the person would leave them behind.
    Whoever holds the key can still match a known device id to its entries.
    """
    from compliance.keys import pseudonym

    return pseudonym(device_id)


def payee_alias(payee: str) -> str:
    """A payee as the audit log names it: a keyed pseudonym, never the name or an unkeyed hash.

    Payees are free text (often a person's name); a plain SHA-256 of one is found by hashing
    guesses, so after the payer's erasure it would still say whom they paid. Domain-separated
    from user and device pseudonyms, so a payee named like a user id does not link to them.
    """
    from compliance.keys import pseudonym

    return pseudonym(f"payee:{payee}")


_PLATFORM_FAMILIES = (
    ("android", re.compile(r"android")),
    ("ios", re.compile(r"\b(ios|ipados|iphone|ipad|ipod)")),
    ("desktop", re.compile(r"\b(desktop|linux|windows|win(32|64)|macos|mac os|osx|darwin)\b")),
)


def platform_family(platform: str) -> str:
    """The coarse family (android, ios, desktop, other) of a device's free-text `platform`.

    The client writes `platform` freely (a device model, a name); the audit log keeps only the
    family, so nothing personal is left there after erasure (the device row itself goes).
    """
    text = platform.lower()
    return next((family for family, pattern in _PLATFORM_FAMILIES if pattern.search(text)), "other")


def device_registered_payload(device_id: str, public_key: str, platform: str) -> dict[str, Any]:
    """The `device.registered` audit payload: device pseudonym, key digest, platform family."""
    return {"device": device_alias(device_id), "key_sha256": digest(public_key), "platform": platform_family(platform)}


def _coarse(payload: dict[str, Any]) -> dict[str, Any]:
    """A payload's `platform` as its family: what every audit entry written through here keeps."""
    if isinstance(payload.get("platform"), str):
        return {**payload, "platform": platform_family(payload["platform"])}
    return payload


def audit(session: Session, *, event: str, actor: str, subject: str | None, payload: dict[str, Any]) -> None:
    _audit.append_audit(session, event=event, actor=actor, subject=subject, payload=_coarse(payload))


def draft_audit(*, event: str, actor: str, subject: str | None, payload: dict[str, Any]) -> _audit.AuditDraft:
    """An audit entry checked and serialised ahead of its transaction (see `append_draft`)."""
    return _audit.draft_audit(event=event, actor=actor, subject=subject, payload=_coarse(payload))


def append_draft(session: Session, draft: _audit.AuditDraft) -> None:
    _audit.append_draft(session, draft)


def export_user(session: Session, user_id: str) -> dict[str, Any]:
    return _subjects.export_user(session, user_id)


def holds_data(export: Mapping[str, Any]) -> bool:
    """Whether an `export_user` result holds anything about the person.

    Consents, any holder's rows, or audit entries under their pseudonym. A typo'd or unknown
    id holds none: saying "exported" or "erased" for it would hide the mistake.
    """
    def filled(value: Any) -> bool:
        return any(filled(v) for v in value.values()) if isinstance(value, Mapping) else bool(value)

    return bool(export.get("consents")) or filled(export.get("data", {})) or bool(export.get("audit", {}).get("entries"))


def erase_user(session: Session, user_id: str, *, actor: str = "admin") -> dict[str, Any]:
    return _subjects.erase_user(session, user_id, actor=actor)


#: the server's data holder's name (`server.holders.ServerHolder.name`)
SERVER_HOLDER = "server"


def unheld_server_tables(session: Session) -> list[str]:
    """The server's tables that hold rows while no data holder named `SERVER_HOLDER` is registered.

    Why: without `server.holders` among CADENCE_HOLDER_MODULES, an erasure removed the consents
    only and reported success, leaving the person's templates, evidence and sessions; an export
    and a purge left those tables out as silently. [] when the holder is registered.
    """
    if any(h.name == SERVER_HOLDER for h in _subjects.registered_holders()):
        return []
    from server import models as m

    present = set(inspect(session.connection()).get_table_names())
    tables = (m.User, m.Device, m.RequestNonce, m.Template, m.EnrolmentWindow, m.EvidenceSeen, m.Transaction,
              m.AuthSession, m.SecurityFlag)
    return [t.__tablename__ for t in tables if t.__tablename__ in present
            and session.execute(select(literal(1)).select_from(t).limit(1)).first() is not None]


def register_server_holder() -> None:
    """Register the server's data holder with compliance.subjects (idempotent)."""
    import server.holders  # noqa: F401  (registers on import)
