"""Consent ledger: explicit consent per user, modality and purpose (GDPR Art. 9(2)(a)).

Each grant records the version of the plain-language policy text the person saw. Revoking
"authentication" consent deletes that modality's template at once, through every registered
data holder. Grants and revocations write audit entries themselves; callers need not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from compliance.audit import append_audit
from compliance.models import ConsentRecord, iso_utc, utcnow
from modalities.events import MODALITIES

PURPOSES: tuple[str, ...] = ("authentication", "federated_training")


class ConsentError(PermissionError):
    """Processing refused for lack of consent; the message names modality and purpose."""

    def __init__(self, user_id: str, modality: str, purpose: str) -> None:
        self.user_id, self.modality, self.purpose = user_id, modality, purpose
        super().__init__(f"no consent for {purpose.replace('_', ' ')} with the {modality} modality: the user has not granted it or has revoked it")


@dataclass(frozen=True)
class PolicyText:
    """The text a person agrees to; grants record its `version`."""

    purpose: str
    version: str
    title: str
    text: str


def _check(modality: str, purpose: str) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"modality: unknown {modality!r}; expected one of {MODALITIES}")
    if purpose not in PURPOSES:
        raise ValueError(f"purpose: unknown {purpose!r}; expected one of {PURPOSES}")


def _check_user(user_id: str) -> None:
    if not isinstance(user_id, str) or not user_id or len(user_id) > 128:
        raise ValueError("user_id: must be a non-empty string of at most 128 characters")


@cache
def policy_text(purpose: str) -> PolicyText:
    """The current policy text for a purpose, from compliance/policies/<purpose>.yaml."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose: unknown {purpose!r}; expected one of {PURPOSES}")
    raw = yaml.safe_load(resources.files("compliance").joinpath("policies", f"{purpose}.yaml").read_text("utf-8"))
    return PolicyText(purpose=raw["purpose"], version=str(raw["version"]), title=raw["title"], text=raw["text"])


def _active(session: Session, user_id: str, modality: str, purpose: str) -> ConsentRecord | None:
    q = (
        select(ConsentRecord)
        .where(
            ConsentRecord.user_id == user_id,
            ConsentRecord.modality == modality,
            ConsentRecord.purpose == purpose,
            ConsentRecord.revoked_at.is_(None),
        )
        .order_by(ConsentRecord.granted_at.desc(), ConsentRecord.id.desc())
        .limit(1)
    )
    return session.scalars(q).first()


def has_consent(session: Session, *, user_id: str, modality: str, purpose: str = "authentication") -> bool:
    _check(modality, purpose)
    return _active(session, user_id, modality, purpose) is not None


def require_consent(session: Session, *, user_id: str, modality: str, purpose: str = "authentication") -> None:
    """Raise `ConsentError` unless an unrevoked grant exists (call before enrolment/scoring)."""
    _check(modality, purpose)
    if _active(session, user_id, modality, purpose) is None:
        raise ConsentError(user_id, modality, purpose)


def grant_consent(
    session: Session,
    *,
    user_id: str,
    modality: str,
    purpose: str,
    policy_version: str,
    now: datetime | None = None,
    actor: str = "user",
) -> ConsentRecord:
    """Record a grant of the given policy version; granting the same version again is a no-op.

    A grant of a newer version closes the older one (revoked at the same instant) so exactly
    one grant is active. An unknown version is refused: people agree to a text we can show.
    """
    _check_user(user_id)
    _check(modality, purpose)
    current = policy_text(purpose).version
    if policy_version != current:
        raise ValueError(f"policy_version: {policy_version!r} is not the current {purpose} policy ({current!r})")
    ts = (now or utcnow()).astimezone(UTC)
    active = _active(session, user_id, modality, purpose)
    if active is not None and active.policy_version == policy_version:
        return active
    if active is not None:
        active.revoked_at = ts
    rec = ConsentRecord(user_id=user_id, modality=modality, purpose=purpose, policy_version=policy_version, granted_at=ts)
    session.add(rec)
    append_audit(
        session,
        event="consent.grant",
        actor=actor,
        subject=user_id,
        payload={"modality": modality, "purpose": purpose, "policy_version": policy_version},
        now=ts,
    )
    session.flush()
    return rec


def revoke_consent(
    session: Session,
    *,
    user_id: str,
    modality: str,
    purpose: str,
    now: datetime | None = None,
    actor: str = "user",
) -> dict[str, int]:
    """Withdraw consent; for "authentication", delete the modality's templates everywhere.

    Returns what was removed, e.g. ``{"consents": 1, "server.templates": 1}``. Revoking
    what was never granted is a no-op (still audited, so the request is on record).
    """
    from compliance.subjects import registered_holders

    _check_user(user_id)
    _check(modality, purpose)
    ts = (now or utcnow()).astimezone(UTC)
    removed: dict[str, int] = {"consents": 0}
    for rec in session.scalars(
        select(ConsentRecord).where(
            ConsentRecord.user_id == user_id,
            ConsentRecord.modality == modality,
            ConsentRecord.purpose == purpose,
            ConsentRecord.revoked_at.is_(None),
        )
    ):
        rec.revoked_at = ts
        removed["consents"] += 1
    if purpose == "authentication":
        for holder in registered_holders():
            removed[f"{holder.name}.templates"] = int(holder.erase_modality(session, user_id, modality))
    append_audit(
        session,
        event="consent.revoke",
        actor=actor,
        subject=user_id,
        payload={"modality": modality, "purpose": purpose, "removed": removed},
        now=ts,
    )
    session.flush()
    return removed


def consents_of(session: Session, user_id: str) -> list[dict[str, Any]]:
    """Every consent record of a user (history included), oldest first, as JSON-ready dicts."""
    rows = session.scalars(select(ConsentRecord).where(ConsentRecord.user_id == user_id).order_by(ConsentRecord.granted_at, ConsentRecord.id)).all()
    return [
        {
            "modality": r.modality,
            "purpose": r.purpose,
            "policy_version": r.policy_version,
            "granted_at": iso_utc(r.granted_at),
            "revoked_at": iso_utc(r.revoked_at),
            "active": r.revoked_at is None,
        }
        for r in rows
    ]
