"""The server's personal-data holder for compliance.subjects (export, erasure, retention).

Importing this module registers `ServerHolder` (settings.holder_modules lists it). Erasure
deletes every server row that references the user id: users, devices, nonces, enrolment
windows, templates, evidence hashes, flags, transactions and continuous sessions. The
devices' nonces stay as digests naming no one (`RetiredNonce`) until the clock-skew window
has passed, so a request captured before the erasure is not accepted again by the same
device id registered anew.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, delete, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from compliance.models import iso_utc
from server.models import (
    AuthSession,
    Device,
    EnrolmentWindow,
    EvidenceSeen,
    RequestNonce,
    RetiredNonce,
    SecurityFlag,
    Template,
    Transaction,
    User,
)

log = logging.getLogger(__name__)


def _rows(session: Session, table: Any, user_id: str) -> list[Any]:
    return list(session.scalars(select(table).where(table.user_id == user_id)).all())


def _record(row: Any, rename: dict[str, str] | None = None, times: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every stored column of `row` but the user id (Art. 20: the whole record), times as `iso_utc`.

    Generic over the columns so a column added later is exported without anyone remembering to.
    """
    names = rename or {}
    out: dict[str, Any] = {}
    for attr in sa_inspect(row).mapper.column_attrs:
        if attr.key == "user_id":
            continue
        value = getattr(row, attr.key)
        if isinstance(value, datetime) or attr.key in times:
            value = iso_utc(value)
        out[names.get(attr.key, attr.key)] = value
    return out


class ServerHolder:
    """Personal data the transaction API keeps about a user."""

    name = "server"

    def export(self, session: Session, user_id: str) -> dict[str, Any]:
        """Every server row about the person, each with all its stored columns ({} when none).

        The shape is documented in docs/compliance.md ("Data-subject requests").
        """
        user = session.get(User, user_id)
        if user is None:
            return {}
        devices = _rows(session, Device, user_id)
        nonces = session.scalars(select(RequestNonce).where(RequestNonce.device_id.in_([d.id for d in devices]))
                                 .order_by(RequestNonce.device_id, RequestNonce.seen_at)).all() if devices else []
        return {
            "user": _record(user),
            "devices": [_record(d, {"id": "device_id"}) for d in devices],
            # nonces of the device's signed requests (replay protection), with when each was seen
            "request_nonces": [_record(n, times=("seen_at",)) for n in nonces],
            "templates": [_record(t, {"data": "template"}) for t in _rows(session, Template, user_id)],
            "enrolment_windows": [_record(w) for w in _rows(session, EnrolmentWindow, user_id)],
            # the stored record; `decision` is the response given to the bank, as sent
            "transactions": [_record(t, {"id": "transaction_id", "response": "decision"})
                             for t in _rows(session, Transaction, user_id)],
            "sessions": [_record(s, {"id": "session_id"}) for s in _rows(session, AuthSession, user_id)],
            "security_flags": [_record(f) for f in _rows(session, SecurityFlag, user_id)],
            # digests of the feature windows received (replay protection), not the windows
            "evidence_hashes": [_record(e, {"window_hash": "sha256"}) for e in _rows(session, EvidenceSeen, user_id)],
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
            _retire_nonces(session, devices)
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
        """Delete rows older than the policy allows (days per kind).

        Kinds read from `policy`: ``transactions``, ``evidence``, ``sessions``,
        ``security_flags`` (days), and ``template_inactive_days`` for templates of people who
        stopped using the service. A policy object (`compliance.retention.RetentionPolicy`)
        lacking one is refused: skipping it would keep that data forever. A plain mapping is a
        partial purge of the kinds it names (tests, one-off tools).
        """
        now = now or datetime.now(UTC)
        _require_kinds(policy)
        # the tables in erasure's order (sessions, transactions, flags, evidence), so a purge and
        # an erasure running at once take their row locks in the same order and never deadlock
        targets = {"sessions": (AuthSession, AuthSession.updated_at), "transactions": (Transaction, Transaction.created_at),
                   "security_flags": (SecurityFlag, SecurityFlag.created_at), "evidence": (EvidenceSeen, EvidenceSeen.seen_at)}
        out: dict[str, int] = {}
        for kind, (table, col) in targets.items():
            days = _policy_value(policy, kind)
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

        Active means a transaction, a continuous-authentication session scored (its
        `last_scored_at`: a session opened or posted to without evidence that counted is no
        use), or a template updated after the cutoff: a template in use is never removed
        however old its enrolment or the last payment is.
        """
        days = _policy_value(policy, "template_inactive_days")
        if days is None:
            return {}
        cutoff = now - timedelta(days=float(days))
        recent = (select(Transaction.user_id).where(Transaction.created_at >= cutoff)
                  .union(select(AuthSession.user_id).where(AuthSession.last_scored_at >= cutoff)))
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


def _retire_nonces(session: Session, devices: list[str]) -> None:
    """Keep the devices' nonces as digests (`RetiredNonce`), in the erasure's transaction.

    Without them, a request captured in the last `signature_max_skew_s` is accepted again
    once the app registers the same device id and key anew. A digest already retired (the
    device id erased before, inside the window) is left as it is.
    """
    nonces = session.execute(select(RequestNonce.device_id, RequestNonce.nonce, RequestNonce.seen_at)
                             .where(RequestNonce.device_id.in_(devices))).all()
    if not nonces:
        return
    rows = {RetiredNonce.of(d, n): seen for d, n, seen in nonces}
    values = [{"digest": h, "seen_at": seen} for h, seen in rows.items()]
    table = cast(Table, RetiredNonce.__table__)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(postgresql.insert(table).on_conflict_do_nothing(index_elements=["digest"]), values)
    elif dialect == "sqlite":
        session.execute(sqlite.insert(table).on_conflict_do_nothing(index_elements=["digest"]), values)
    else:  # no portable upsert: insert the digests not on record yet
        known = set(session.scalars(select(RetiredNonce.digest).where(RetiredNonce.digest.in_(list(rows)))).all())
        if len(known) < len(values):
            session.execute(table.insert(), [v for v in values if v["digest"] not in known])


#: what `ServerHolder.purge` reads from a retention policy
PURGE_KINDS = ("transactions", "evidence", "sessions", "security_flags", "template_inactive_days")


def _policy_value(policy: Any, kind: str) -> Any:
    """Days for `kind` from a mapping or a policy object's attribute; None when it has none."""
    return policy.get(kind) if isinstance(policy, Mapping) else getattr(policy, kind, None)


def _require_kinds(policy: Any) -> None:
    """Refuse a policy object lacking a kind: its rows would silently be kept forever."""
    from compliance.retention import PolicyError

    if isinstance(policy, Mapping):
        return
    missing = [k for k in PURGE_KINDS if _policy_value(policy, k) is None]
    if missing:
        raise PolicyError(f"retention policy: no {', '.join(missing)} for the server's data; "
                         "every kind must have a retention period (compliance/retention.yaml)")


def _register() -> None:
    try:
        from compliance.subjects import register_holder
    except ImportError:
        log.info("compliance.subjects not available yet: the server holder is not registered")
        return
    register_holder(ServerHolder())


_register()
