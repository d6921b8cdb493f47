"""Compliance tables: the consent ledger and the hash-chained audit log with its seals.

All derive from `cadence.db.Base`, so the server's Alembic history covers them and
`Base.metadata.create_all` builds them for tests. Times are stored as naive UTC and read back
as aware UTC, so SQLite and PostgreSQL hash the same entry identically.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, Table, Text, TypeDecorator
from sqlalchemy.orm import Mapped, mapped_column

from cadence.db import Base


def iso_utc(value: datetime | float | None) -> str | None:
    """The one time format of exports and audit listings: ISO-8601 in UTC with a +00:00 offset.

    A naive datetime is read as UTC (SQLite hands back the server's aware columns naive; they
    hold UTC); a number is epoch seconds (nonce times are stored so).
    """
    if value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).isoformat()
    return (value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)).isoformat()


class UTCDateTime(TypeDecorator[datetime]):
    """Naive UTC in the database, aware UTC in Python (no dialect-specific time-zone rules)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where an aware UTC time is needed")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    """Current time, aware UTC, truncated to microseconds (what both databases keep)."""
    return datetime.now(UTC)


class ConsentRecord(Base):
    """One grant of consent for (user, modality, purpose); revocation stamps `revoked_at`.

    Rows are history: a re-grant after revocation is a new row, so we can prove what was
    allowed when until the person asks for erasure or the revoked row outlives the policy.
    """

    __tablename__ = "compliance_consent"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(128), nullable=False)
    modality: Mapped[str] = mapped_column(String(32), nullable=False)
    purpose: Mapped[str] = mapped_column(String(32), nullable=False)
    policy_version: Mapped[str] = mapped_column(String(32), nullable=False)
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (Index("ix_compliance_consent_user", "user_id", "modality", "purpose"),)


class AuditEntry(Base):
    """One append-only audit event; `hash` covers every other column plus `prev_hash`.

    `seq` is the position in the chain (1, 2, ...) and the primary key, so two writers that
    race for the same position collide instead of forking the chain. `subject` is a keyed
    pseudonym (HMAC) of the user id, never the id itself, so erasure leaves these rows alone.
    `payload` is canonical JSON text (not a JSON column) so the bytes hashed are the bytes kept.
    """

    __tablename__ = "compliance_audit"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False)
    ts: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, index=True)
    event: Mapped[str] = mapped_column(String(64), nullable=False)
    actor: Mapped[str] = mapped_column(String(128), nullable=False)
    subject: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    payload: Mapped[str] = mapped_column(Text, nullable=False)
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


class AuditHead(Base):
    """The chain head (one row): appenders lock it, so concurrent writers queue, not fork.

    It is a cache, not a proof: verification recomputes the chain and only reports when this
    row disagrees with it (a cheap tail-deletion check between seals).
    """

    __tablename__ = "compliance_audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


class AuditCheckpoint(Base):
    """A signed statement "the chain had head `seq` with hash `head_hash` at `created_at`".

    kind "seal": periodic, detects truncation of the tail. kind "prune": written when the
    retention purge drops entries older than the audit window, so the oldest kept entry's
    `prev_hash` is still vouched for.
    """

    __tablename__ = "compliance_audit_checkpoint"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), nullable=False)
    head_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    key_id: Mapped[str] = mapped_column(String(16), nullable=False)
    signature: Mapped[str] = mapped_column(String(128), nullable=False)


#: every table this package owns (for create_all in tests and the report to the migrations)
TABLES: tuple[Table, ...] = tuple(m.__table__ for m in (ConsentRecord, AuditEntry, AuditHead, AuditCheckpoint))  # type: ignore[misc]
