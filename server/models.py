"""Server tables on the shared `cadence.db.Base` (compliance tables live in `compliance.models`).

Every row that concerns a person carries `user_id`, so erasure can find and delete it all.
Feature values are stored only where needed (enrolment windows, to rebuild templates when the
active model changes); probe evidence is kept as hashes only.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint, true
from sqlalchemy.orm import Mapped, mapped_column

from cadence.db import Base


def utcnow() -> datetime:
    return datetime.now(UTC)


class User(Base):
    __tablename__ = "server_user"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    locked: Mapped[bool] = mapped_column(Boolean, default=False)
    #: plain enrolment (windows without a confirming transaction) is accepted only while this is
    #: true: from registration until the first authorize call after a template exists (a payment
    #: made before any enrolment, on the web say, leaves it open), or after the bank reopens it.
    #: Afterwards a template changes only with confirmed evidence (controlled adaptation), so
    #: whoever holds the device key cannot enrol their own behaviour over the owner's.
    enrolment_open: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())


class Device(Base):
    __tablename__ = "server_device"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("server_user.id", ondelete="CASCADE"), index=True)
    public_key: Mapped[str] = mapped_column(String(64))
    platform: Mapped[str] = mapped_column(String(64), default="")
    attestation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RequestNonce(Base):
    """Nonces seen per device inside the clock-skew window (replay protection)."""

    __tablename__ = "server_nonce"

    device_id: Mapped[str] = mapped_column(ForeignKey("server_device.id", ondelete="CASCADE"), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(128), primary_key=True)
    seen_at: Mapped[float] = mapped_column(Float, index=True)


class RetiredNonce(Base):
    """Nonces of erased devices, as digests, for the clock-skew window (replay protection).

    Erasure deletes a device's `RequestNonce` rows; a request captured before it could then be
    replayed once the app registers again with the same device id and key. Its digest stays
    here until the request is stale (``2 x signature_max_skew_s``). `digest` is the hex
    SHA-256 of the device id, a NUL and the nonce (`of`): no device or user id is stored, and
    without the nonce, which only the captured request carries, it names nobody.
    """

    __tablename__ = "server_retired_nonce"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[float] = mapped_column(Float, index=True)

    @staticmethod
    def of(device_id: str, nonce: str) -> str:
        """The digest a device's nonce is retired under."""
        return hashlib.sha256(f"{device_id}\0{nonce}".encode()).hexdigest()


class EnrolmentWindow(Base):
    __tablename__ = "server_enrolment_window"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("server_user.id", ondelete="CASCADE"), index=True)
    modality: Mapped[str] = mapped_column(String(16))
    feature_version: Mapped[str] = mapped_column(String(64))
    quality: Mapped[float] = mapped_column(Float)
    values: Mapped[list[float]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: the approved transaction whose evidence this window is (controlled adaptation), None for a
    #: window of plain enrolment: past the cap, adapted windows are dropped first (oldest first),
    #: so the enrolment the template began with is kept, and at most `ADAPT_MAX_WINDOWS` of one
    #: transaction adapt a modality (`server.services.enrolment`)
    transaction_id: Mapped[str | None] = mapped_column(String(36), nullable=True)


class Template(Base):
    """A person's template for one modality, built by one scorer/model version."""

    __tablename__ = "server_template"
    __table_args__ = (UniqueConstraint("user_id", "modality"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("server_user.id", ondelete="CASCADE"), index=True)
    modality: Mapped[str] = mapped_column(String(16))
    feature_version: Mapped[str] = mapped_column(String(64))
    feature_dim: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[str] = mapped_column(String(128))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    n_windows: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class EvidenceSeen(Base):
    """Hash of every feature window ever received (enrolment or probe): replay detection."""

    __tablename__ = "server_evidence_seen"
    # Keyed by user first, and without SQLite's separate rowid tree: the windows of one request
    # land in one leaf page, where a key of the (random) hash alone touched a page per window,
    # about a third of the pages each authorize call wrote. Replay is checked per user.
    __table_args__ = {"sqlite_with_rowid": False}

    user_id: Mapped[str] = mapped_column(ForeignKey("server_user.id", ondelete="CASCADE"), primary_key=True)
    window_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    modality: Mapped[str] = mapped_column(String(16))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: the authorize call that carried the window, until the window adapts its owner's template
    #: (enrolment with `confirmed_transaction_id`, once the call was approved); cleared then, so
    #: a window adapts at most once
    transaction_id: Mapped[str | None] = mapped_column(String(36), nullable=True)


class SecurityFlag(Base):
    """Something suspicious about a user's traffic (replayed evidence, bot-like input)."""

    __tablename__ = "server_security_flag"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("server_user.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Transaction(Base):
    __tablename__ = "server_transaction"
    # the unique (user_id, idempotency_key) index also serves lookups by user (its prefix)
    __table_args__ = (UniqueConstraint("user_id", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("server_user.id", ondelete="CASCADE"))
    device_id: Mapped[str | None] = mapped_column(ForeignKey("server_device.id", ondelete="CASCADE"), nullable=True)
    idempotency_key: Mapped[str] = mapped_column(String(128))
    request_hash: Mapped[str] = mapped_column(String(64))
    amount: Mapped[str] = mapped_column(String(32))
    currency: Mapped[str] = mapped_column(String(3))
    payee: Mapped[str] = mapped_column(String(128))
    channel: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    #: up to "approved_after_step_up" (22 characters; PostgreSQL enforces the length, SQLite does not)
    status: Mapped[str] = mapped_column(String(32))
    risk: Mapped[float] = mapped_column(Float)
    tier: Mapped[str] = mapped_column(String(16))
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: when the bank redeemed the decision token (`verify-token`): a token approves one execution
    token_redeemed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuthSession(Base):
    """A continuous-authentication session: evidence streams in, risk is tracked."""

    __tablename__ = "server_auth_session"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("server_user.id", ondelete="CASCADE"), index=True)
    device_id: Mapped[str | None] = mapped_column(ForeignKey("server_device.id", ondelete="CASCADE"), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    risk: Mapped[float] = mapped_column(Float, default=0.5)
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    #: when a post's evidence last counted (None: never): what keeps the user's templates from
    #: the inactivity purge (opening a session, or posting nothing usable, is no use of them)
    last_scored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


USER_TABLES: tuple[type[Base], ...] = (AuthSession, Transaction, SecurityFlag, EvidenceSeen, Template,
                                       EnrolmentWindow, Device, User)
