"""The server's personal-data holder for compliance.subjects (export, erasure, retention).

Importing this module registers `ServerHolder` (settings.holder_modules lists it). Erasure
deletes every server row that references the user id: users, devices, nonces, enrolment
windows, templates, evidence hashes, flags, transactions and continuous sessions.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from server.models import (
    AuthSession,
    Device,
    EnrolmentWindow,
    EvidenceSeen,
    RequestNonce,
    SecurityFlag,
    Template,
    Transaction,
    User,
)

log = logging.getLogger(__name__)


def _rows(session: Session, table: Any, user_id: str) -> list[Any]:
    return list(session.scalars(select(table).where(table.user_id == user_id)).all())


class ServerHolder:
    """Personal data the transaction API keeps about a user."""

    name = "server"

    def export(self, session: Session, user_id: str) -> dict[str, Any]:
        user = session.get(User, user_id)
        if user is None:
            return {}
        return {
            "user": {"id": user.id, "created_at": str(user.created_at), "locked": user.locked,
                     "consecutive_failures": user.consecutive_failures, "enrolment_open": user.enrolment_open},
            "devices": [{"device_id": d.id, "platform": d.platform, "public_key": d.public_key,
                         "attestation": d.attestation, "created_at": str(d.created_at)} for d in _rows(session, Device, user_id)],
            "templates": [{"modality": t.modality, "feature_version": t.feature_version, "model_id": t.model_id,
                           "n_windows": t.n_windows, "template": t.data} for t in _rows(session, Template, user_id)],
            "enrolment_windows": [{"modality": w.modality, "feature_version": w.feature_version, "quality": w.quality,
                                   "values": w.values} for w in _rows(session, EnrolmentWindow, user_id)],
            "transactions": [{"decision": t.response, "device_id": t.device_id, "channel": t.channel,
                              "idempotency_key": t.idempotency_key, "status": t.status,
                              "created_at": str(t.created_at)} for t in _rows(session, Transaction, user_id)],
            "sessions": [{"session_id": s.id, "device_id": s.device_id, "status": s.status, "risk": s.risk,
                          "state": s.state, "created_at": str(s.created_at), "updated_at": str(s.updated_at)}
                         for s in _rows(session, AuthSession, user_id)],
            "security_flags": [{"kind": f.kind, "detail": f.detail, "created_at": str(f.created_at)}
                               for f in _rows(session, SecurityFlag, user_id)],
            # digests of the feature windows received (replay protection), not the windows
            "evidence_hashes": [{"sha256": e.window_hash, "modality": e.modality, "seen_at": str(e.seen_at),
                                 "transaction_id": e.transaction_id} for e in _rows(session, EvidenceSeen, user_id)],
        }

    def lock(self, session: Session, user_id: str) -> None:
        """Lock the person's device rows, then their user row (PostgreSQL), before erasure changes anything.

        The order every writer takes them in: device requests hold their device row through
        the request's nonce, then lock the user, then its sessions or transactions; the bank's
        step-up locks the user, then the transaction. Taken first (`compliance.subjects.erase_user`
        calls this before it deletes consents), a payment, session post, consent change or
        step-up in flight finishes before the erasure, instead of the two deadlocking.
        """
        session.execute(select(Device.id).where(Device.user_id == user_id).with_for_update())
        session.execute(select(User.id).where(User.id == user_id).with_for_update())

    def erase(self, session: Session, user_id: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        # the rows are locked already: `compliance.subjects.erase_user` calls `lock` before anything else
        devices = list(session.scalars(select(Device.id).where(Device.user_id == user_id)).all())
        if devices:
            counts["server_nonce"] = session.execute(delete(RequestNonce).where(RequestNonce.device_id.in_(devices))).rowcount  # type: ignore[attr-defined]
        for table in (AuthSession, Transaction, SecurityFlag, EvidenceSeen, Template, EnrolmentWindow, Device):
            counts[table.__tablename__] = session.execute(delete(table).where(table.user_id == user_id)).rowcount  # type: ignore[attr-defined]
        counts["server_user"] = session.execute(delete(User).where(User.id == user_id)).rowcount  # type: ignore[attr-defined]
        return counts

    def erase_modality(self, session: Session, user_id: str, modality: str) -> int:
        """Delete the modality's template and the enrolment windows it was built from; returns templates removed.

        The evidence hashes stay until the retention policy's `evidence.days` (or the
        person's erasure): they are digests, not features, and deleting them would let the
        windows already sent be enrolled or replayed again after a revoke and a new grant.
        """
        session.execute(delete(EnrolmentWindow).where(EnrolmentWindow.user_id == user_id,
                                                      EnrolmentWindow.modality == modality))
        return int(session.execute(delete(Template).where(Template.user_id == user_id,
                                                          Template.modality == modality)).rowcount)  # type: ignore[attr-defined]

    def purge(self, session: Session, policy: Any, *, now: datetime | None = None, dry_run: bool = False) -> dict[str, int]:
        """Delete rows older than the policy allows (days per kind; missing kinds are kept).

        Kinds read from `policy` (a mapping or an object with the attributes):
        ``transactions``, ``evidence``, ``sessions``, ``security_flags`` (days), and
        ``template_inactive_days`` for templates of people who stopped using the service.
        """
        now = now or datetime.now(UTC)
        # the tables in erasure's order (sessions, transactions, flags, evidence), so a purge and
        # an erasure running at once take their row locks in the same order and never deadlock
        targets = {"sessions": (AuthSession, AuthSession.updated_at), "transactions": (Transaction, Transaction.created_at),
                   "security_flags": (SecurityFlag, SecurityFlag.created_at), "evidence": (EvidenceSeen, EvidenceSeen.seen_at)}
        out: dict[str, int] = {}
        for kind, (table, col) in targets.items():
            days = policy.get(kind) if isinstance(policy, dict) else getattr(policy, kind, None)
            if days is None:
                continue
            cutoff = now - timedelta(days=float(days))
            where = col < cutoff
            if dry_run:
                out[table.__tablename__] = len(session.scalars(select(table).where(where)).all())
            else:
                out[table.__tablename__] = session.execute(delete(table).where(where)).rowcount  # type: ignore[attr-defined]
        out.update(self._purge_inactive_templates(session, policy, now=now, dry_run=dry_run))
        return out

    @staticmethod
    def _purge_inactive_templates(session: Session, policy: Any, *, now: datetime, dry_run: bool) -> dict[str, int]:
        """Templates (and their enrolment windows) of people inactive for ``template_inactive_days``.

        Active means a transaction after the cutoff or a template updated after it, so a
        template in use is never removed however old its enrolment is.
        """
        days = policy.get("template_inactive_days") if isinstance(policy, dict) else getattr(policy, "template_inactive_days", None)
        if days is None:
            return {}
        cutoff = now - timedelta(days=float(days))
        recent = select(Transaction.user_id).where(Transaction.created_at >= cutoff)
        stale = session.execute(
            select(Template.id, Template.user_id, Template.modality)
            .where(Template.updated_at < cutoff, Template.user_id.not_in(recent))
        ).all()
        n_windows = 0
        for _, user_id, modality in stale:
            q = select(EnrolmentWindow.id).where(EnrolmentWindow.user_id == user_id, EnrolmentWindow.modality == modality)
            n_windows += len(session.scalars(q).all())
            if not dry_run:
                session.execute(delete(EnrolmentWindow).where(EnrolmentWindow.user_id == user_id,
                                                              EnrolmentWindow.modality == modality))
        if not dry_run and stale:
            session.execute(delete(Template).where(Template.id.in_([r[0] for r in stale])))
        return {Template.__tablename__: len(stale), EnrolmentWindow.__tablename__: n_windows}


def _register() -> None:
    try:
        from compliance.subjects import register_holder
    except ImportError:
        log.info("compliance.subjects not available yet: the server holder is not registered")
        return
    register_holder(ServerHolder())


_register()
