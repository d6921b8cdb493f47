"""Device registration (possession factor) and verification of signed device requests."""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cadence import prepared
from server.errors import ApiError
from server.models import Device, RequestNonce, RetiredNonce, User
from server.schemas import DeviceRegister
from server.services import compliance_hooks as hooks
from server.signing import SignatureError, canonical_request, load_public_key, registration_message, verify_signature


def register_device(session: Session, body: DeviceRegister, *, actor: str) -> Device:
    """Bind a device key to a user; the device proves it holds the private key.

    Each refusal names the field at fault: a malformed key is `public_key`'s, a signature that
    is malformed or does not verify is `proof`'s (the request has no signature header to name).
    """
    try:
        key = load_public_key(body.public_key)
    except SignatureError as exc:
        raise ApiError(422, "bad_device_key", str(exc)) from exc
    try:
        verify_signature(key, registration_message(body.device_id, body.user_id), body.proof)
    except SignatureError as exc:
        raise ApiError(422, "bad_device_key", "proof: not this public_key's Ed25519 signature (base64url) of "
                                              "\"register\\n<device_id>\\n<user_id>\"") from exc
    existing = session.get(Device, body.device_id)
    if existing is not None:
        return _registered_before(existing, body)
    # INSERT ... ON CONFLICT DO NOTHING, not get-then-add: concurrent registrations of one new
    # user (or a retry of one device) both found no row, and the second insert was a 500
    insert = _insert(session)
    session.execute(insert(User).values(id=body.user_id).on_conflict_do_nothing())
    added = session.execute(insert(Device).values(  # RETURNING: psycopg's rowcount of it is -1 either way
        id=body.device_id, user_id=body.user_id, public_key=body.public_key, platform=body.platform,
        attestation=dict(body.attestation)).on_conflict_do_nothing().returning(Device.id)).first() is not None
    dev = session.get(Device, body.device_id, populate_existing=True)
    assert dev is not None  # inserted, or by the concurrent registration that committed first
    if not added:
        return _registered_before(dev, body)
    hooks.audit(session, event="device.registered", actor=actor, subject=body.user_id,
                payload=hooks.device_registered_payload(body.device_id, body.public_key, body.platform))
    return dev


def _registered_before(existing: Device, body: DeviceRegister) -> Device:
    """A device id registered already: the same key and user is a repeat (answered as registered), else 409."""
    if existing.public_key == body.public_key and existing.user_id == body.user_id:
        return existing
    raise ApiError(409, "device_exists", f"device_id: {body.device_id!r} is already registered with another key or user")


def _insert(session: Session) -> Callable[[type[Any]], Any]:
    """The dialect's INSERT, which has `on_conflict_do_nothing` (SQLite and PostgreSQL both)."""
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


@dataclass(frozen=True)
class DeviceKey:
    """What request verification needs of a device (read with one Core query)."""

    id: str
    user_id: str
    public_key: str
    active: bool
    #: when the device row was made (naive UTC on SQLite); None on a row without one
    created_at: datetime | None

    def fresh(self, now: float, max_skew_s: int) -> bool:
        """Whether the device was registered less than twice the skew window ago.

        Only then can a request captured before an erasure of this device id still be inside
        its window (`retired_nonce`).
        """
        made = self.created_at
        if made is None:
            return False
        # a subtraction: a quarter of `datetime.timestamp()`'s CPU on the authorize path
        return (made - (_EPOCH if made.tzinfo is None else _EPOCH_UTC)).total_seconds() >= now - 2 * max_skew_s


_EPOCH = datetime(1970, 1, 1)  # noqa: DTZ001 - SQLite returns naive UTC
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)


#: parsed device keys by their stored text (parsing is a visible share of a request's CPU)
_public_key = functools.lru_cache(maxsize=4096)(load_public_key)

_D = Device.__table__.c
_DEVICE_KEY = select(_D.id, _D.user_id, _D.public_key, _D.active, _D.created_at).where(_D.id == bindparam("d"))
_RN = RetiredNonce.__table__.c
_RETIRED = select(_RN.digest).where(_RN.digest == bindparam("h"))


def verify_device_request(session: Session, *, device_id: str | None, timestamp: str | None, nonce: str | None,
                          signature: str | None, method: str, path: str, body: bytes, max_skew_s: int,
                          require_signature: bool = True, now: float | None = None,
                          body_sha256: str | None = None, check_retired: bool = True) -> DeviceKey:
    """Return the calling device, or refuse: unknown device, stale, replayed or bad signature (401).

    `check_retired=False` leaves the retired-nonce lookup to the caller's write transaction
    (a read phase: an erasure and a new registration may land before that transaction).
    """
    if not device_id:
        raise ApiError(401, "device_required", "X-Cadence-Device: header missing")
    row = prepared.execute(session, _DEVICE_KEY, {"d": device_id}).first()
    dev = DeviceKey(*row) if row is not None else None  # type: ignore[call-arg]  # a Row of its five columns
    if dev is None or not dev.active:
        raise ApiError(401, "unknown_device", f"X-Cadence-Device: device {device_id!r} is not registered")
    if not require_signature:
        return dev
    if not (timestamp and nonce and signature):
        raise ApiError(401, "signature_required", "X-Cadence-Timestamp, X-Cadence-Nonce and X-Cadence-Signature are required")
    now = time.time() if now is None else now
    # ASCII digits only: int() also reads "+N", " N", "N_M" and other scripts' digits, so
    # one signed timestamp had several spellings
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise ApiError(401, "bad_timestamp", "X-Cadence-Timestamp: must be integer seconds since the epoch "
                                             "(ASCII digits only)")
    ts = int(timestamp)
    if abs(now - ts) > max_skew_s:
        raise ApiError(401, "stale_request", f"X-Cadence-Timestamp: outside the allowed clock skew of {max_skew_s} s")
    if len(nonce) > 128:
        raise ApiError(401, "bad_nonce", "X-Cadence-Nonce: at most 128 characters")
    try:
        verify_signature(_public_key(dev.public_key), canonical_request(method, path, body, timestamp, nonce, body_sha256=body_sha256),
                         signature)
    except SignatureError as exc:
        raise ApiError(401, "bad_signature", str(exc)) from exc
    # only a device registered within 2 x the skew window can be the same id registered again
    # after an erasure while a captured request is still inside its window: others skip the lookup
    if check_retired and dev.fresh(now, max_skew_s) and retired_nonce(session, device_id, nonce):
        raise ApiError(401, "replayed_request", "X-Cadence-Nonce: this request was already received (replay refused)")
    return dev


def retired_nonce(session: Session, device_id: str, nonce: str) -> bool:
    """Whether an erasure retired this device id's nonce (`RetiredNonce`: the request was received before)."""
    return prepared.execute(session, _RETIRED, {"h": RetiredNonce.of(device_id, nonce)}).first() is not None


class RateLimiter:
    """Token bucket per key (a device id, or a client address), in memory per worker process.

    Refuses a key's request (429) when it has used its `burst` and refills at `rate` per
    second. Per process: it bounds abuse cheaply with no service to run; the durable limit on
    guessing is the lockout after failed authentications. With `rate_limit_redis_url` set the
    server uses `shared_limits.RedisRateLimiter` instead (one budget for all processes), and
    this class while Redis cannot be reached.
    """

    def __init__(self, rate: float, burst: float | None = None, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst or 2 * rate, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def exhausted(self, key: str, now: float | None = None) -> bool:
        """Whether `key`'s next request would be refused (nothing is charged)."""
        if self.rate <= 0:
            return False
        now = time.monotonic() if now is None else now
        with self._lock:
            return self._tokens(key, now) < 1.0

    def _tokens(self, key: str, now: float) -> float:
        """`key`'s tokens at `now`: what was left, refilled at `rate` up to `burst` (caller holds the lock)."""
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def known(self, key: str) -> bool:
        """Whether `key` was charged before (for devices: it verified a request in this process)."""
        return key in self._buckets

    def refund(self, key: str) -> None:
        """Give back one request's token (it was charged for a request refused afterwards)."""
        with self._lock:
            if key in self._buckets:
                tokens, last = self._buckets[key]
                self._buckets[key] = (min(self.burst, tokens + 1.0), last)

    def allow(self, key: str, now: float | None = None) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens = self._tokens(key, now)
            ok = tokens >= 1.0
            self._store(key, tokens - 1.0 if ok else tokens, now)
            return ok

    def set(self, key: str, tokens: float, now: float | None = None) -> None:
        """Make `key` hold `tokens` as of `now` (what a shared budget said: `shared_limits`)."""
        with self._lock:
            self._store(key, tokens, time.monotonic() if now is None else now)

    def _store(self, key: str, tokens: float, now: float) -> None:
        """Keep `key`'s bucket; past `max_keys`, forget the stalest half (caller holds the lock)."""
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            for k, _ in sorted(self._buckets.items(), key=lambda kv: kv[1][1])[: self.max_keys // 2]:
                del self._buckets[k]


PRUNE_EVERY = 1000
_calls = itertools.count(1)


_NONCE_INSERT = cast(Table, RequestNonce.__table__).insert()


def consume_nonce(session: Session, device_id: str, nonce: str, timestamp: float, *, max_skew_s: int = 300) -> None:
    """Record a request's nonce (in the request's own transaction); a nonce seen before is a replay.

    The primary key (device, nonce) refuses a second use. No SAVEPOINT here: pysqlite would
    commit it on release, outside the request's transaction. Every `PRUNE_EVERY` calls the
    nonces older than twice the skew window are deleted (such requests are stale anyway).
    """
    if next(_calls) % PRUNE_EVERY == 0:
        prune_nonces(session, max_skew_s=max_skew_s)
    try:
        prepared.execute(session, _NONCE_INSERT, {"device_id": device_id, "nonce": nonce, "seen_at": timestamp})
    except IntegrityError as exc:
        if not device_exists(session, device_id):  # the nonce's foreign key: erased since it verified
            raise ApiError(401, "unknown_device", f"X-Cadence-Device: device {device_id!r} is not registered") from exc
        raise ApiError(401, "replayed_request", "X-Cadence-Nonce: this request was already received (replay refused)") from exc


def device_exists(session: Session, device_id: str) -> bool:
    """Whether the device is (still) registered, asked after a failed statement of `session`.

    SQLite keeps the transaction usable after a failed statement, so it is asked there.
    PostgreSQL aborts it, so another connection asks; the erasure that removed the device has
    committed by then (the foreign-key check waited for its row lock).
    """
    query = select(_D.id).where(_D.id == device_id)
    bind = session.get_bind()
    if bind.dialect.name == "sqlite":
        return session.execute(query).first() is not None
    with bind.engine.connect() as conn:
        return conn.execute(query).first() is not None


def prune_nonces(session: Session, *, max_skew_s: int, now: float | None = None) -> int:
    """Forget nonces, and erased devices' retired ones, older than the skew window.

    A request that old is refused as stale anyway. Returns the nonces removed (both kinds).
    """
    cutoff = (time.time() if now is None else now) - 2 * max_skew_s
    n = session.execute(delete(RequestNonce).where(RequestNonce.seen_at < cutoff)).rowcount  # type: ignore[attr-defined]
    return int(n) + int(session.execute(delete(RetiredNonce).where(RetiredNonce.seen_at < cutoff)).rowcount)  # type: ignore[attr-defined]
