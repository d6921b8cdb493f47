"""Append-only, hash-chained audit log with signed checkpoints.

Every entry stores the SHA-256 of the previous entry, and its own hash covers its position,
time, event, actor, pseudonymous subject, canonical-JSON payload and that previous hash. So
editing, deleting or reordering any row breaks the chain at that row, and `verify_chain` names
the first broken entry. A hash chain alone cannot see its tail cut off (or the whole chain
rewritten from some point), so `seal` signs the head with Ed25519; keep the printed
checkpoints outside the database too (`cadence audit seal`) to also catch deleted seals.

Subjects are keyed pseudonyms (`compliance.keys.pseudonym`), so erasing a person never edits
an audit row. Payloads carry hashes of decision inputs (`digest`), model versions and reason
codes, never raw behaviour: long numeric lists are refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import String, Table, bindparam, delete, func, select, type_coerce
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.util import identity_key

from cadence import prepared
from cadence.db import begin_sqlite
from compliance import keys as _keys
from compliance.models import AuditCheckpoint, AuditEntry, AuditHead, iso_utc, utcnow

GENESIS = "0" * 64
#: a numeric list longer than this in a payload is taken for raw behaviour and refused
MAX_NUMERIC_LIST = 32
MAX_PAYLOAD_CHARS = 65_536
_EVENT_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


class AuditError(ValueError):
    """An audit entry or checkpoint was refused (bad event name, raw data in the payload...)."""


class AuditChainError(RuntimeError):
    """The chain is broken where an operation needs it intact (sealing over tampering)."""


def canonical_json(obj: Any) -> str:
    """One byte-exact JSON text per value: sorted keys, no spaces, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def digest(obj: Any) -> str:
    """SHA-256 (hex) of a decision input: bytes, str, an array (dtype+shape+bytes) or JSON."""
    h = hashlib.sha256()
    if isinstance(obj, bytes | bytearray | memoryview):
        h.update(bytes(obj))
    elif isinstance(obj, str):
        h.update(obj.encode("utf-8"))
    elif hasattr(obj, "tobytes") and hasattr(obj, "dtype") and hasattr(obj, "shape"):
        h.update(f"{obj.dtype.str}{tuple(obj.shape)}".encode())
        h.update(obj.tobytes())
    else:
        h.update(canonical_json(obj).encode("utf-8"))
    return h.hexdigest()


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _stored_time(value: Any) -> datetime | None:
    """A time column read as stored, as aware UTC; None when it is not a time (a row edited by hand).

    Verification reads times raw: a value the database type cannot parse must be reported as
    tampering, not stop the check (SQLite keeps any text in a DATETIME column).
    """
    try:
        parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: an offset taking year 1 below the first year
        return None


def _shown(value: Any) -> str:
    """A stored value as a report quotes it: its repr, cut short (whoever edited the row chose its length)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _text(value: Any) -> Any:
    """A stored value as JSON can carry it: text as is, bytes decoded with escapes, other values as text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def entry_hash(*, seq: int, ts: datetime, event: str, actor: str, subject: str | None, payload: str, prev_hash: str) -> str:
    """The hash an entry must carry; `payload` is the stored canonical JSON text."""
    body = {"seq": seq, "ts": _ts(ts), "event": event, "actor": actor, "subject": subject, "payload": payload, "prev": prev_hash}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AppendedEntry:
    """The row `append_audit` wrote (the columns of `AuditEntry`)."""

    seq: int
    ts: datetime
    event: str
    actor: str
    subject: str | None
    payload: str
    prev_hash: str
    hash: str


#: payload keys that name a person: the subject's id there (or in a list there) becomes its pseudonym.
#: Only these: a user id such as "gait", "EUR" or "approve" must not rewrite a modality, a
#: currency or an outcome elsewhere in the payload.
ID_FIELDS = frozenset({"user_id", "user", "subject"})


def _clean_payload(value: Any, path: str, subject: str | None, alias: str | None, *, is_id: bool = False) -> Any:
    """Copy `value` as plain JSON, pseudonymising the subject id in `ID_FIELDS` and refusing raw behaviour."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise AuditError(f"{path}: keys must be strings, got {k!r}")
            out[k] = _clean_payload(v, f"{path}.{k}", subject, alias, is_id=k in ID_FIELDS)
        return out
    if isinstance(value, list | tuple):
        numeric = [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(numeric) > MAX_NUMERIC_LIST:
            raise AuditError(
                f"{path}: a list of {len(numeric)} numbers looks like raw behaviour; audit payloads carry "
                "hashes of decision inputs (compliance.audit.digest), model versions and reason codes"
            )
        return [_clean_payload(v, f"{path}[{i}]", subject, alias, is_id=is_id) for i, v in enumerate(value)]
    if isinstance(value, str):
        return alias if is_id and subject is not None and value == subject else value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditError(f"{path}: must be finite, got {value}")
        return value
    if value is None or isinstance(value, bool | int):
        return value
    raise AuditError(f"{path}: {type(value).__name__} is not JSON; pass a digest() of it instead")


def _last_entry(session: Session) -> AuditEntry | None:
    return session.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).first()


def _create_head(session: Session) -> None:
    """Insert the head row unless a concurrent first writer just did (then queue behind it)."""
    last = _last_entry(session)
    values = {"id": 1, "seq": last.seq if last else 0, "hash": last.hash if last else GENESIS}
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        session.execute(pg_insert(AuditHead).values(**values).on_conflict_do_nothing(index_elements=["id"]))
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        session.execute(sqlite_insert(AuditHead).values(**values).on_conflict_do_nothing(index_elements=["id"]))
    else:
        session.add(AuditHead(**values))
        session.flush()


@dataclass(frozen=True)
class AuditDraft:
    """An entry checked and serialised, not yet placed in the chain (no database needed).

    Why: on SQLite the chain's head is appended under the write lock, which every writer of
    every worker waits on. Validating and serialising the payload first keeps that work out
    of the lock; only the head read, the hash and two statements remain inside it.
    """

    event: str
    actor: str
    #: the subject's keyed pseudonym (None: no subject)
    subject: str | None
    #: canonical JSON of the cleaned payload
    payload: str


def draft_audit(*, event: str, actor: str, subject: str | None, payload: dict[str, Any]) -> AuditDraft:
    """Check and serialise an entry (`append_audit`'s rules), refusing bad ones with `AuditError`."""
    if not isinstance(event, str) or not _EVENT_RE.match(event):
        raise AuditError(f"event: {event!r} must be a dotted lower-case name such as 'decision.made'")
    if not isinstance(actor, str) or not actor.strip() or len(actor) > 128:
        raise AuditError("actor: must be a non-empty string of at most 128 characters")
    if not isinstance(payload, Mapping):
        raise AuditError(f"payload: must be a dict, got {type(payload).__name__}")
    if subject is not None and (not isinstance(subject, str) or not subject):
        raise AuditError("subject: must be a non-empty user id or None")
    alias = _keys.pseudonym(subject) if subject is not None else None
    text = canonical_json(_clean_payload(payload, "payload", subject, alias))
    if len(text) > MAX_PAYLOAD_CHARS:
        raise AuditError(f"payload: {len(text)} characters is too large for an audit entry (max {MAX_PAYLOAD_CHARS})")
    return AuditDraft(event, actor, alias, text)


def append_audit(
    session: Session,
    *,
    event: str,
    actor: str,
    subject: str | None,
    payload: dict[str, Any],
    now: datetime | None = None,
) -> AppendedEntry:
    """Append one entry in the caller's transaction (so it commits or rolls back with the act).

    `subject` is the user id in the clear; it is stored as its keyed pseudonym, and the payload's
    identifier fields (`ID_FIELDS`) holding it are replaced by the pseudonym too. Concurrent
    appenders queue on the head row (PostgreSQL) or collide on the primary key (SQLite); the
    chain never forks.
    """
    return append_draft(session, draft_audit(event=event, actor=actor, subject=subject, payload=payload), now=now)


def append_draft(session: Session, draft: AuditDraft, *, now: datetime | None = None) -> AppendedEntry:
    """Place a drafted entry at the head of the chain, in the caller's transaction."""
    ts = now or utcnow()
    if ts.tzinfo is None:
        raise AuditError("now: must be an aware datetime (UTC)")
    ts = ts.astimezone(UTC)
    # Core statements, not ORM objects: this runs on every decision (the hot path). Pending
    # ORM changes are flushed first so the entry lands after them, as with session.flush().
    session.flush()
    row = prepared.execute(session, _HEAD_FOR_UPDATE).first()
    if row is None:
        _create_head(session)
        row = prepared.execute(session, _HEAD_FOR_UPDATE).first()
        assert row is not None
    seq = row.seq + 1
    event, actor, alias, text = draft.event, draft.actor, draft.subject, draft.payload
    # a plain record, not an ORM object: building a mapped instance cost as much as a statement
    entry = AppendedEntry(seq=seq, ts=ts, event=event, actor=actor, subject=alias, payload=text, prev_hash=row.hash,
                          hash=entry_hash(seq=seq, ts=ts, event=event, actor=actor, subject=alias, payload=text,
                                          prev_hash=row.hash))
    prepared.execute(session, _ENTRY_INSERT, dict(vars(entry)))
    prepared.execute(session, _HEAD_UPDATE, {"s": seq, "h": entry.hash})
    cached = session.identity_map.get(identity_key(AuditHead, 1))
    if cached is not None:  # an ORM copy of the head loaded earlier in this session is now stale
        session.expire(cached)
    return entry


_HEAD_FOR_UPDATE = select(AuditHead.__table__.c.seq, AuditHead.__table__.c.hash).where(
    AuditHead.__table__.c.id == 1).with_for_update()
_ENTRY_INSERT = cast(Table, AuditEntry.__table__).insert()
_HEAD_UPDATE = cast(Table, AuditHead.__table__).update().where(AuditHead.__table__.c.id == 1).values(
    seq=bindparam("s"), hash=bindparam("h"))


# --------------------------------------------------------------------------- checkpoints


def _checkpoint_message(kind: str, seq: int, head_hash: str, created_at: datetime, key_id: str) -> bytes:
    body = {"kind": kind, "seq": seq, "head_hash": head_hash, "created_at": _ts(created_at), "key_id": key_id}
    return canonical_json(body).encode("utf-8")


def checkpoint_dict(cp: AuditCheckpoint) -> dict[str, Any]:
    """A checkpoint as JSON, to keep outside the database and pass to `verify_chain` later."""
    return {
        "kind": cp.kind,
        "seq": cp.seq,
        "head_hash": cp.head_hash,
        "created_at": _ts(cp.created_at),
        "key_id": cp.key_id,
        "signature": cp.signature,
    }


def checkpoint_from_dict(d: Mapping[str, Any]) -> AuditCheckpoint:
    """Parse a checkpoint kept outside the database; a bad field is named in the error."""
    try:
        created = datetime.strptime(str(d["created_at"]), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        return AuditCheckpoint(
            kind=str(d["kind"]),
            seq=int(d["seq"]),
            head_hash=str(d["head_hash"]),
            created_at=created,
            key_id=str(d["key_id"]),
            signature=str(d["signature"]),
        )
    except KeyError as exc:
        raise AuditError(f"checkpoint: missing field {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise AuditError(f"checkpoint: malformed ({exc})") from exc


def _sign(session: Session, kind: str, seq: int, head_hash: str, key: Ed25519PrivateKey, now: datetime | None) -> AuditCheckpoint:
    created = (now or utcnow()).astimezone(UTC)
    kid = _keys.key_id(key.public_key())
    sig = key.sign(_checkpoint_message(kind, seq, head_hash, created, kid)).hex()
    cp = AuditCheckpoint(kind=kind, seq=seq, head_hash=head_hash, created_at=created, key_id=kid, signature=sig)
    session.add(cp)
    session.flush()
    return cp


def _signature_ok(cp: AuditCheckpoint, verify_keys: Mapping[str, Ed25519PublicKey]) -> str | None:
    """None when the signature holds, else why not."""
    pub = verify_keys.get(cp.key_id)
    if pub is None:
        return f"signed by unknown key {cp.key_id}"
    try:
        pub.verify(bytes.fromhex(cp.signature), _checkpoint_message(cp.kind, cp.seq, cp.head_hash, cp.created_at, cp.key_id))
    except (InvalidSignature, ValueError):
        return "signature does not verify (checkpoint forged or edited)"
    return None


def _stored_checkpoints(session: Session) -> tuple[list[AuditCheckpoint], list[Problem]]:
    """The checkpoints in the database (by id, detached copies) and those with an unreadable field.

    Read raw: SQLite keeps any value in any column, so a field edited into something else (a
    time that is no time, a position that is no number, bytes) is reported as tampering.
    """
    cols = AuditCheckpoint.__table__.c
    rows = session.execute(select(*(type_coerce(c, String) if c.name == "created_at" else c for c in cols))
                           .order_by(cols.id)).all()
    good: list[AuditCheckpoint] = []
    bad: list[Problem] = []
    for r in rows:
        created = _stored_time(r.created_at) if isinstance(r.created_at, str | datetime) else None
        seq_ok = isinstance(r.seq, int) and not isinstance(r.seq, bool)
        wrong = [c for c in ("kind", "head_hash", "key_id", "signature") if not isinstance(getattr(r, c), str)]
        wrong += ([] if seq_ok else ["seq"]) + ([] if created is not None else ["created_at"])
        if wrong:  # one with no readable position is listed first (seq 0)
            bad.append(Problem(r.seq if seq_ok else 0,
                               f"checkpoint {r.id} ({_text(r.kind)} of seq {_text(r.seq)}): {wrong[0]} "
                               f"{_shown(getattr(r, wrong[0]))} is unreadable (checkpoint edited)"))
            continue
        good.append(AuditCheckpoint(id=r.id, kind=r.kind, seq=r.seq, head_hash=r.head_hash, created_at=created,
                                    key_id=r.key_id, signature=r.signature))
    return good, bad


def _checking_keys(key: Ed25519PrivateKey | None) -> dict[str, Ed25519PublicKey]:
    """Keys a checkpoint may be signed by: `key`'s own and the configured ones.

    A missing or bad key setting is left out when the signer's own key is known (it signed the
    checkpoints this deployment wrote); without one it is raised (`KeyConfigError`).
    """
    pubs = {_keys.key_id(key.public_key()): key.public_key()} if key is not None else {}
    try:
        pubs.update(_keys.verify_keys())
    except _keys.KeyConfigError:
        if not pubs:
            raise
    return pubs


def _readable_head(head: AuditHead) -> bool:
    """Whether the head row holds a position and a hash (SQLite keeps any value in any column)."""
    return isinstance(head.seq, int) and not isinstance(head.seq, bool) and isinstance(head.hash, str)


@dataclass(frozen=True)
class SealPlan:
    """The head that `plan_seal` verified: what `seal` signs."""

    seq: int
    #: entry `seq`'s stored hash (GENESIS, or a prune checkpoint's, when no entry is kept)
    hash: str


def plan_seal(session: Session, key: Ed25519PrivateKey | None = None) -> SealPlan:
    """Verify the whole chain up to the head row, as `cadence audit verify` does; a break raises `AuditChainError`.

    The head row is read before that and the check stops at it: entries appended meanwhile by
    the running server are the next seal's, not a tail that disagrees with the head. It only
    reads: run it in a snapshot of its own (`read_snapshot`), as `seal_in_snapshots` does.
    """
    head = session.get(AuditHead, 1, populate_existing=True)
    upto = head.seq if head is not None and _readable_head(head) else None
    result = verify_chain(session, verify_keys=_checking_keys(key), limit=1, upto=upto)
    p = result.first_broken
    if p is None and upto is not None:
        # entries past the head row: appended meanwhile (the head row moved with them, in their
        # transaction) or put there by hand (it did not); read in that order, so no race reads as the latter
        last = session.scalar(select(func.max(AuditEntry.seq)).where(AuditEntry.seq > upto))
        cols = AuditHead.__table__.c
        if last is not None and session.scalar(select(cols.seq).where(cols.id == 1)) == upto:
            p = Problem(last, f"the head records seq {upto} but the chain ends at seq {last} (head row or tail edited)")
    if p is not None:
        raise AuditChainError(f"refusing to seal a broken chain: entry seq={p.seq}: {p.reason}")
    return SealPlan(result.head_seq, result.head_hash)


def seal(session: Session, key: Ed25519PrivateKey | None = None, *, now: datetime | None = None,
         plan: SealPlan | None = None) -> AuditCheckpoint:
    """Sign the chain head; refuses (`AuditChainError`) a chain `verify_chain` reports broken.

    Sealing over tampering would vouch for it, so the whole chain is verified first
    (`plan_seal`: one pass over the log, so a seal costs what a verification does). Given the
    `plan` a snapshot verified, this transaction only checks that its entry still holds the
    hash signed (which covers every entry before it, through their links). A break read
    outside a snapshot is refused only if no prune committed during that walk (`prune_marks`,
    as the purge decides): such a prune reads as deleted entries; then the chain is read again.
    """
    key = key or _keys.signing_key()
    if plan is None or session.scalar(select(AuditEntry.hash).where(AuditEntry.seq == plan.seq)) != plan.hash:
        marks = prune_marks(session)
        try:
            plan = plan_seal(session, key)
        except AuditChainError:
            if prune_marks(session) == marks:
                raise
            plan = plan_seal(session, key)
    return _sign(session, "seal", plan.seq, plan.hash, key, now)


def seal_in_snapshots(factory: sessionmaker[Session], key: Ed25519PrivateKey | None = None, *,
                      now: datetime | None = None) -> AuditCheckpoint:
    """`seal` as `cadence audit seal` runs it: verified in a read-only snapshot, then signed in a short transaction.

    Why a snapshot: the walk reads the chain in pages, and a prune that the server's scheduled
    purge (or a cron run) commits between two of them read as deleted entries, a false
    "refusing to seal a broken chain". Nor does the write transaction hold a lock over the walk.
    A break is refused only if a fresh snapshot shows it too.
    """
    key = key or _keys.signing_key()

    def verified() -> SealPlan:
        with factory() as session:
            read_snapshot(session)
            return plan_seal(session, key)

    try:
        plan = verified()
    except AuditChainError:
        plan = verified()
    with factory() as session, session.begin():
        return seal(session, key, now=now, plan=plan)


def read_snapshot(session: Session) -> None:
    """Begin `session`'s transaction read-only, seeing one snapshot of the database until it ends.

    Why: verifying reads the checkpoints, the chain's first position and then the entries in
    pages. Outside a snapshot, a prune that another purge commits in between is half seen,
    and the chain reads as if entries had been deleted. PostgreSQL: REPEATABLE READ, READ ONLY.
    SQLite: an explicit (deferred) BEGIN, as pysqlite runs SELECTs outside any transaction;
    in WAL mode a read transaction sees the database as of its first read and blocks no writer.
    Call it before the session's first statement.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ", "postgresql_readonly": True})
        return
    # a plain BEGIN on this option (`cadence.db.begin_sqlite`), here and in the server's engine
    conn = session.connection(execution_options={"cadence_read_only": True})
    if conn.dialect.name == "sqlite":
        begin_sqlite(conn)


def prune_marks(session: Session) -> tuple[Any, ...]:
    """What every committed prune changes: the chain's first position and the prune checkpoints (count, newest id).

    Why: a walk outside a snapshot reads the chain in several statements, and a prune that
    another purge commits between them reads as deleted entries. The same marks read before
    and after a walk mean that no prune committed during it, so a break it found is real;
    comparing them costs two small reads and holds no lock (`seal` and the purge both use it).
    """
    cp = AuditCheckpoint.__table__.c
    prunes = session.execute(select(func.count(), func.max(cp.id)).where(cp.kind == "prune")).one()
    return (session.scalar(select(func.min(AuditEntry.seq))), *prunes)


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Problem:
    """One break: the entry (by chain position `seq`) and what is wrong with it."""

    seq: int
    reason: str


@dataclass
class VerifyResult:
    """Outcome of `verify_chain`; `first_broken` names the lowest broken entry."""

    ok: bool
    entries: int
    first_seq: int | None
    head_seq: int
    head_hash: str
    checkpoints: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def first_broken(self) -> Problem | None:
        return min(self.problems, key=lambda p: p.seq) if self.problems else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        fb = self.first_broken
        d["first_broken"] = asdict(fb) if fb else None
        return d


def _iter_entries(session: Session, after_seq: int, upto: int | None = None) -> Iterator[Any]:
    """Entry rows (plain rows, not ORM objects) after `after_seq` (up to `upto`) in chain order, in pages.

    Plain rows keep memory constant on long chains and leave the caller's session untouched.
    """
    last = after_seq
    cols = AuditEntry.__table__.c
    raw = [type_coerce(c, String).label("ts") if c.name == "ts" else c for c in cols]  # parsed by `_walk`
    while True:
        q = select(*raw).where(cols.seq > last)
        page = session.execute((q if upto is None else q.where(cols.seq <= upto)).order_by(cols.seq).limit(1000)).all()
        if not page:
            return
        yield from page
        last = page[-1].seq


def _not_text(e: Any) -> str | None:
    """The first column of entry row `e` that holds no text where text belongs (SQLite keeps anything anywhere)."""
    if e.subject is not None and not isinstance(e.subject, str):
        return "subject"
    return next((c for c in ("event", "actor", "payload", "prev_hash", "hash") if not isinstance(getattr(e, c), str)), None)


def _walk(
    session: Session, after_seq: int, prev_hash: str, *, limit: int = 100, want: set[int] | None = None,
    seen: dict[int, str] | None = None, upto: int | None = None, on_row: Callable[[Any], None] | None = None,
) -> tuple[list[Problem], int, str]:
    """Check the links after position `after_seq` (whose hash is `prev_hash`), up to `upto` if given.

    Returns the problems (at most `limit`), the last seq and that entry's stored hash.
    After a break it goes on from the stored hash, so later independent edits are listed too.
    `on_row` is called with every row checked, as read.
    """
    problems: list[Problem] = []
    expect_seq, expect_prev = after_seq + 1, prev_hash
    last_seq, last_hash = after_seq, prev_hash
    for e in _iter_entries(session, after_seq, upto):
        if len(problems) >= limit:
            break
        ts = _stored_time(e.ts) if isinstance(e.ts, str | datetime) else None
        column = _not_text(e)
        if e.seq != expect_seq:
            problems.append(Problem(expect_seq, f"missing: the chain jumps from seq {expect_seq - 1} to {e.seq} (entries deleted)"))
        elif column is not None:
            problems.append(Problem(e.seq, f"stored {column} {_shown(getattr(e, column))} is not text (entry edited)"))
        elif ts is None:
            problems.append(Problem(e.seq, f"stored time {_shown(e.ts)} is unreadable (entry edited)"))
        elif entry_hash(seq=e.seq, ts=ts, event=e.event, actor=e.actor, subject=e.subject, payload=e.payload,
                        prev_hash=e.prev_hash) != e.hash:
            problems.append(Problem(e.seq, "content does not match its hash (entry edited or moved)"))
        elif e.prev_hash != expect_prev:
            problems.append(Problem(e.seq, f"prev_hash does not match entry seq {e.seq - 1} (an entry before it edited, deleted or reordered)"))
        if on_row is not None:
            on_row(e)
        stored = e.hash if isinstance(e.hash, str) else _shown(e.hash)  # never equal to a hash: the next link breaks
        if want is not None and seen is not None and e.seq in want:
            seen[e.seq] = stored
        expect_seq, expect_prev = e.seq + 1, stored
        last_seq, last_hash = e.seq, stored
    return problems, last_seq, last_hash


def _missing_start(first_seq: int, prunes: list[AuditCheckpoint]) -> Problem:
    """Entries gone before `first_seq` with no prune checkpoint vouching for it: named from the first missing.

    The first missing is the one after the newest signed prune below (else seq 1), so the
    report says which entries went, not the one before the kept chain.
    """
    gone_from = max((cp.seq for cp in prunes if cp.seq < first_seq), default=0) + 1
    span = f"entry seq {gone_from} is" if gone_from == first_seq - 1 else f"entries seq {gone_from}..{first_seq - 1} are"
    return Problem(gone_from, f"missing: {span} not in the chain, which starts at seq {first_seq}, and no signed "
                              f"prune checkpoint vouches for seq {first_seq - 1} (entries deleted at the start)")


def _beyond_tail(cp: AuditCheckpoint, last_seq: int) -> Problem | None:
    """A signed checkpoint covering entries past the chain's end: the tail was cut off."""
    if cp.seq <= last_seq:
        return None
    return Problem(last_seq + 1, f"missing: a signed {cp.kind} covers seq {cp.seq} but the chain ends at seq {last_seq} (tail truncated)")


def _head_problem(head: AuditHead | None, count: int, last_seq: int, last_hash: str) -> Problem | None:
    """The head row against the chain's last entry (`verify_chain`'s last check)."""
    if head is None:
        return Problem(last_seq, "the head row is missing") if count else None
    if not _readable_head(head):
        return Problem(last_seq, f"the head row is unreadable (seq {_shown(head.seq)}, hash {_shown(head.hash)}; head row edited)")
    if (head.seq, head.hash) == (last_seq, last_hash):
        return None
    if head.seq > last_seq:
        return Problem(last_seq + 1, f"missing: the head records seq {head.seq} but the chain ends at seq {last_seq} (tail deleted)")
    return Problem(last_seq, f"the head records seq {head.seq} but the chain ends at seq {last_seq} (head row or tail edited)")


def _load_keys() -> dict[str, Ed25519PublicKey]:
    return _keys.verify_keys()


def verify_chain(
    session: Session,
    *,
    verify_keys: Mapping[str, Ed25519PublicKey] | None = None,
    external: list[AuditCheckpoint] | None = None,
    limit: int = 100,
    upto: int | None = None,
    on_row: Callable[[Any], None] | None = None,
) -> VerifyResult:
    """Recompute the whole chain, check every signed checkpoint, and name the first break.

    `external` checkpoints (kept outside the database, see `checkpoint_dict`) are checked like
    stored ones; they catch an attacker who cut the tail and deleted the seals that covered it.
    With `upto` only the entries up to that seq are recomputed (what `seal` signs, what
    `prune_before` deletes); a checkpoint past it is still compared with the entry it signs, and
    one past the head row whose entry is gone reports the tail cut off, as without `upto`.
    `on_row` is called with each entry row the walk reads (`plan_prune` keeps what it verified).
    """
    pubs = dict(verify_keys) if verify_keys is not None else _load_keys()
    stored, unreadable = _stored_checkpoints(session)
    cps = [(f"checkpoint {cp.id}", cp) for cp in stored] + [(f"external checkpoint {i + 1}", cp) for i, cp in enumerate(external or [])]
    problems: list[Problem] = list(unreadable)
    valid: list[AuditCheckpoint] = []
    for label, cp in cps:
        why = _signature_ok(cp, pubs)
        if why:
            problems.append(Problem(cp.seq, f"{label} ({cp.kind} of seq {cp.seq}): {why}"))
        else:
            valid.append(cp)

    # the chain numbers entries from 1: a row below that was put in the table by hand, and no
    # walk from genesis or from a prune anchor would ever read it
    n_stray, lowest = session.execute(select(func.count(), func.min(AuditEntry.seq)).where(AuditEntry.seq < 1)).one()
    if n_stray:
        problems.append(Problem(int(lowest), f"{n_stray} row(s) numbered {lowest} to 0 are outside the chain, which "
                                             "starts at seq 1 (inserted by hand)"))
    first_seq = session.scalar(select(func.min(AuditEntry.seq)).where(AuditEntry.seq >= 1))
    counted = select(func.count()).select_from(AuditEntry)
    count = session.scalar(counted if upto is None else counted.where(AuditEntry.seq <= upto)) or 0
    head = session.get(AuditHead, 1, populate_existing=True)  # read anew: a second look sees a moved head
    # where the kept chain starts: genesis, or a signed prune checkpoint vouching for its start
    start_seq, start_prev = 0, GENESIS
    prunes = [cp for cp in valid if cp.kind == "prune"]
    if first_seq is not None and first_seq > 1:
        anchor = next((cp for cp in prunes if cp.seq == first_seq - 1), None)
        if anchor is None:
            problems.append(_missing_start(first_seq, prunes))
            start_seq, start_prev = first_seq - 1, "?"
        else:
            start_seq, start_prev = anchor.seq, anchor.head_hash
    elif first_seq is None and prunes:
        top = max(prunes, key=lambda cp: cp.seq)
        start_seq, start_prev = top.seq, top.head_hash

    want = {cp.seq for cp in valid if cp.seq > start_seq}
    seen: dict[int, str] = {}
    chain_problems, last_seq, last_hash = _walk(session, start_seq, start_prev, limit=limit, want=want, seen=seen,
                                                upto=upto, on_row=on_row)
    if start_prev == "?":  # unanchored start: the first link cannot be checked, and is reported above
        chain_problems = [p for p in chain_problems if not (p.seq == first_seq and p.reason.startswith("prev_hash"))]
    problems.extend(chain_problems)

    for cp in valid:
        if cp.seq <= start_seq:
            if cp.seq == start_seq and cp.head_hash != start_prev and start_prev != "?":
                problems.append(Problem(cp.seq, f"{cp.kind} checkpoint {cp.id} disagrees with the prune anchor"))
            continue
        if upto is not None and cp.seq > upto:  # outside the walk: one look at the entry it signs
            signed = session.scalar(select(AuditEntry.hash).where(AuditEntry.seq == cp.seq))
            if signed is not None and signed != cp.head_hash:
                problems.append(Problem(cp.seq, f"differs from the signed {cp.kind} checkpoint of seq {cp.seq} (chain rewritten)"))
            elif signed is None and (head is None or not _readable_head(head) or cp.seq > head.seq):
                # signed past the head row, whose position only grows (the checkpoints are read before
                # it): no purge committed meanwhile explains that, the tail was cut and the head rewound
                end = session.scalar(select(func.max(AuditEntry.seq)))
                beyond = _beyond_tail(cp, max(last_seq, end or 0))
                if beyond is not None:
                    problems.append(beyond)
            continue
        beyond = _beyond_tail(cp, last_seq)
        if beyond is not None:
            problems.append(beyond)
        elif seen.get(cp.seq) != cp.head_hash:
            problems.append(Problem(cp.seq, f"differs from the signed {cp.kind} checkpoint of seq {cp.seq} (chain rewritten)"))
    # with `upto` below a readable head row, the walk must just reach `upto` (the head lies beyond)
    past_upto = upto is not None and head is not None and _readable_head(head) and head.seq > upto and last_seq == upto
    head_problem = None if past_upto else _head_problem(head, int(count), last_seq, last_hash)
    if head_problem is not None:
        problems.append(head_problem)
    # one problem per entry, lowest first
    uniq: dict[int, Problem] = {}
    for p in sorted(problems, key=lambda p: p.seq):
        uniq.setdefault(p.seq, p)
    return VerifyResult(
        ok=not uniq,
        entries=int(count),
        first_seq=first_seq,
        head_seq=last_seq,
        head_hash=last_hash,
        checkpoints=len({(cp.kind, cp.seq, cp.head_hash) for cp in valid}),  # a stored seal and its copy: one
        problems=list(uniq.values()),
    )


@dataclass(frozen=True)
class PrunePlan:
    """A prefix of the chain that `plan_prune` found due and verified, and how it was stored then.

    Why: verifying re-hashes every entry (~20 µs each), and on SQLite a write transaction holds
    the database's write lock, which every `authorize` waits for. So the purge verifies in a
    read-only transaction first, and `prune_before` then only checks, cheaply and inside the
    write transaction, that what was verified is still stored as it was (`_still_stored`).
    """

    cutoff: datetime
    #: the first and last entries to drop and how many they are (verified: no gap between)
    first_seq: int
    top_seq: int
    count: int
    #: entry `top_seq`'s stored hash: what the prune checkpoint signs
    top_hash: str
    #: SHA-256 of the positions and stored hashes of entries first_seq..top_seq, as verified (`_fold`)
    stored: str
    #: (hash, prev_hash) of the first entry kept, as verified; None: there was none
    kept: tuple[str, str] | None


def _fold(digest: Any, seq: int, stored: Any) -> None:
    """Add one entry's position and stored hash to `digest` (the same for the plan and the check)."""
    digest.update(f"{seq}:{stored}\n".encode("utf-8", "backslashreplace"))


class _Prefix:
    """What the verifying walk read of the entries up to `top_seq` and of the one after (`plan_prune`)."""

    def __init__(self, top_seq: int) -> None:
        self.top_seq, self.digest = top_seq, hashlib.sha256()
        self.first: int | None = None
        self.count = 0
        self.top_hash: str | None = None
        self.kept: tuple[str, str] | None = None

    def __call__(self, e: Any) -> None:
        if e.seq > self.top_seq:  # the walk stops at top_seq + 1
            self.kept = (e.hash, e.prev_hash)
            return
        self.first = e.seq if self.first is None else self.first
        self.count += 1
        _fold(self.digest, e.seq, e.hash)
        if e.seq == self.top_seq:
            self.top_hash = e.hash


def plan_prune(session: Session, cutoff: datetime, *, dry_run: bool = False, key: Ed25519PrivateKey | None = None) -> PrunePlan | None:
    """Find the entries `prune_before` drops for `cutoff` and verify them; None when none are due.

    Only a prefix can go: an old entry after a newer one (clock skew) stays until everything
    before it is old enough. The prefix, the link to the first kept entry and every checkpoint
    are verified (a dry run too): entries back-dated to look old must not be deleted under a
    signature, so a broken chain is refused with `AuditChainError` and verify's reason. Unless
    `dry_run`, the signing key is loaded first (`KeyConfigError` before any work). It only
    reads: run it in a snapshot of its own (`read_snapshot`), before the purge's write transaction.
    """
    # rows numbered below 1 are outside the chain (verify reports them): they must not move the prefix
    first_new = session.scalar(select(func.min(AuditEntry.seq)).where(AuditEntry.ts >= cutoff, AuditEntry.seq >= 1))
    q = select(func.max(AuditEntry.seq)).where(AuditEntry.seq >= 1)
    top_seq = session.scalar(q if first_new is None else q.where(AuditEntry.seq < first_new))
    if top_seq is None:
        return None
    if not dry_run:
        key = key or _keys.signing_key()
    prefix = _Prefix(top_seq)
    p = verify_chain(session, verify_keys=_checking_keys(key), limit=1, upto=top_seq + 1, on_row=prefix).first_broken
    if p is not None:
        raise AuditChainError(f"refusing to prune a broken chain: entry seq={p.seq}: {p.reason}")
    if prefix.first is None or prefix.top_hash is None:  # only rows the chain does not hold (seq <= 0)
        return None
    return PrunePlan(cutoff=cutoff, first_seq=prefix.first, top_seq=top_seq, count=prefix.count,
                     top_hash=prefix.top_hash, stored=prefix.digest.hexdigest(), kept=prefix.kept)


def _still_stored(session: Session, plan: PrunePlan) -> bool:
    """Whether the entries `plan` verified are stored as they were then (read, not re-hashed).

    Run in the write transaction, so nothing changes between this check and the delete: SQLite
    lets one writer in at a time, and on PostgreSQL the prefix's rows are read FOR UPDATE.
    Compared: the prefix's stored hashes in order (none edited, deleted, added or moved: then
    entry top_seq still holds the hash the checkpoint signs) and the first kept entry's link
    to it (an entry appended since, when none was kept, must link to it too). Contents are not
    re-hashed: an entry whose content alone was edited meanwhile is deleted anyway, and what is
    signed is the hash verified; the first kept entry stays, for `verify_chain` to check.
    """
    cols = AuditEntry.__table__.c
    after = session.execute(select(cols.hash, cols.prev_hash).where(cols.seq == plan.top_seq + 1)).first()
    if plan.kept is not None and (after is None or tuple(after) != plan.kept):
        return False
    if plan.kept is None and after is not None and after.prev_hash != plan.top_hash:
        return False
    digest, last = hashlib.sha256(), plan.first_seq - 1
    while True:
        page = session.execute(select(cols.seq, cols.hash).where(cols.seq > last, cols.seq <= plan.top_seq)
                               .order_by(cols.seq).limit(1000).with_for_update()).all()
        if not page:
            return digest.hexdigest() == plan.stored
        for seq, stored in page:
            _fold(digest, seq, stored)
        last = page[-1].seq


def prune_before(session: Session, cutoff: datetime, *, dry_run: bool = False, key: Ed25519PrivateKey | None = None,
                 now: datetime | None = None, plan: PrunePlan | None = None) -> int:
    """Drop the oldest entries older than `cutoff` (a prefix of the chain), signing an anchor.

    The signed "prune" checkpoint keeps the rest verifiable. The prefix is verified first
    (`plan_prune`: a broken chain is refused with `AuditChainError`). Given the `plan` that an
    earlier read-only transaction made for this cutoff, this transaction only checks that the
    verified entries are still stored as they were (`_still_stored`) and re-hashes nothing; if
    anything changed meanwhile (another purge pruned them, or they were edited) the prefix is
    verified again here. Returns how many entries go (would go, in a dry run).
    """
    if not dry_run:
        key = key or _keys.signing_key()
    if plan is None or plan.cutoff != cutoff or not (dry_run or _still_stored(session, plan)):
        plan = plan_prune(session, cutoff, dry_run=dry_run, key=key)
    if plan is None:
        return 0
    if dry_run:
        return plan.count
    assert key is not None
    _sign(session, "prune", plan.top_seq, plan.top_hash, key, now)
    session.execute(delete(AuditEntry).where(AuditEntry.seq.between(plan.first_seq, plan.top_seq))
                    .execution_options(synchronize_session=False))
    session.flush()
    return plan.count


def entries_for(session: Session, user_id: str) -> list[dict[str, Any]]:
    """Audit entries about a person (by pseudonym), for their access/export request.

    Read raw, as verification reads them: an entry edited by hand (a time that is no time, a
    payload that is no JSON) is exported with its stored text and ``"damaged": true``, so one
    tampered row does not deny the person their export.
    """
    alias = _keys.pseudonym(user_id)
    cols = AuditEntry.__table__.c
    rows = session.execute(select(cols.seq, type_coerce(cols.ts, String).label("ts"), cols.event, cols.actor, cols.payload)
                           .where(cols.subject == alias).order_by(cols.seq)).all()
    return [_exported(r) for r in rows]


def _no_constant(name: str) -> Any:
    """`json.loads` hook: refuse NaN and Infinity."""
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: no JSON response could carry them


def _exported(r: Any) -> dict[str, Any]:
    """One entry of `entries_for`: times as the rest of the export writes them (ISO-8601, +00:00)."""
    ts = _stored_time(r.ts) if isinstance(r.ts, str | datetime) else None
    payload, parsed = _text(r.payload), False
    if isinstance(r.payload, str):
        try:
            payload, parsed = json.loads(r.payload, parse_constant=_no_constant), True
        except (ValueError, RecursionError):
            pass
    out = {"seq": r.seq, "ts": iso_utc(ts) if ts is not None else _text(r.ts), "event": _text(r.event),
           "actor": _text(r.actor), "payload": payload}
    if ts is None or not parsed or not isinstance(r.event, str) or not isinstance(r.actor, str) or r.seq < 1:
        out["damaged"] = True  # seq < 1: a row outside the chain (verify names it), not the person's history
    return out
