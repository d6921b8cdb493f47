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
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import String, Table, bindparam, delete, func, select, type_coerce
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from cadence import prepared
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
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


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
    """The checkpoints in the database (by id, detached copies) and those whose time is unreadable."""
    cols = AuditCheckpoint.__table__.c
    rows = session.execute(select(*(type_coerce(c, String) if c.name == "created_at" else c for c in cols))
                           .order_by(cols.id)).all()
    good: list[AuditCheckpoint] = []
    bad: list[Problem] = []
    for r in rows:
        created = _stored_time(r.created_at)
        if created is None:
            bad.append(Problem(r.seq, f"checkpoint {r.id} ({r.kind} of seq {r.seq}): created_at {r.created_at!r} is unreadable "
                                      "(checkpoint edited)"))
            continue
        good.append(AuditCheckpoint(id=r.id, kind=r.kind, seq=r.seq, head_hash=r.head_hash, created_at=created,
                                    key_id=r.key_id, signature=r.signature))
    return good, bad


def seal(session: Session, key: Ed25519PrivateKey | None = None, *, now: datetime | None = None) -> AuditCheckpoint:
    """Sign the current chain head; refuses when the entries since the last seal are broken.

    Sealing over tampering would vouch for it, so the segment after the newest valid
    checkpoint is re-verified first (cheap: only what was appended since).
    """
    key = key or _keys.signing_key()
    pubs = {_keys.key_id(key.public_key()): key.public_key()}
    try:
        pubs.update(_keys.verify_keys())
    except _keys.KeyConfigError:
        pass
    start_seq, start_hash = 0, GENESIS
    cps = sorted(_stored_checkpoints(session)[0], key=lambda cp: (cp.seq, cp.id), reverse=True)
    for cp in cps:
        if _signature_ok(cp, pubs) is None:
            anchor = session.get(AuditEntry, cp.seq)
            if cp.seq == 0 or cp.kind == "prune" or (anchor is not None and anchor.hash == cp.head_hash):
                start_seq, start_hash = cp.seq, cp.head_hash
                break
    problems, last_seq, last_hash = _walk(session, start_seq, start_hash, limit=1)
    # what the walk cannot see: the tail cut off (the head row or a signed seal still know) or
    # the head row gone; `verify_chain` reports these, so sealing over them would vouch for it
    head = session.get(AuditHead, 1)  # the whole log is counted only when the head row is gone
    count = 1 if head is not None else session.scalar(select(func.count()).select_from(AuditEntry)) or 0
    found = [_head_problem(head, int(count), last_seq, last_hash)]
    found += [_beyond_tail(cp, last_seq) for cp in cps if cp.seq > last_seq and _signature_ok(cp, pubs) is None]
    problems += [f for f in found if f is not None]
    if problems:
        p = min(problems, key=lambda q: q.seq)
        raise AuditChainError(f"refusing to seal a broken chain: entry seq={p.seq}: {p.reason}")
    return _sign(session, "seal", last_seq, last_hash, key, now)


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


def _iter_entries(session: Session, after_seq: int) -> Iterator[Any]:
    """Entry rows (plain rows, not ORM objects) after `after_seq` in chain order, in pages.

    Plain rows keep memory constant on long chains and leave the caller's session untouched.
    """
    last = after_seq
    cols = AuditEntry.__table__.c
    raw = [type_coerce(c, String).label("ts") if c.name == "ts" else c for c in cols]  # parsed by `_walk`
    while True:
        page = session.execute(select(*raw).where(cols.seq > last).order_by(cols.seq).limit(1000)).all()
        if not page:
            return
        yield from page
        last = page[-1].seq


def _walk(
    session: Session, after_seq: int, prev_hash: str, *, limit: int = 100, want: set[int] | None = None, seen: dict[int, str] | None = None
) -> tuple[list[Problem], int, str]:
    """Check the links after position `after_seq` (whose hash is `prev_hash`).

    Returns the problems (at most `limit`), the last seq and that entry's stored hash.
    After a break it goes on from the stored hash, so later independent edits are listed too.
    """
    problems: list[Problem] = []
    expect_seq, expect_prev = after_seq + 1, prev_hash
    last_seq, last_hash = after_seq, prev_hash
    for e in _iter_entries(session, after_seq):
        if len(problems) >= limit:
            break
        ts = _stored_time(e.ts)
        if e.seq != expect_seq:
            problems.append(Problem(expect_seq, f"missing: the chain jumps from seq {expect_seq - 1} to {e.seq} (entries deleted)"))
        elif ts is None:
            problems.append(Problem(e.seq, f"stored time {e.ts!r} is unreadable (entry edited)"))
        elif entry_hash(seq=e.seq, ts=ts, event=e.event, actor=e.actor, subject=e.subject, payload=e.payload,
                        prev_hash=e.prev_hash) != e.hash:
            problems.append(Problem(e.seq, "content does not match its hash (entry edited or moved)"))
        elif e.prev_hash != expect_prev:
            problems.append(Problem(e.seq, f"prev_hash does not match entry seq {e.seq - 1} (an entry before it edited, deleted or reordered)"))
        if want is not None and seen is not None and e.seq in want:
            seen[e.seq] = e.hash
        expect_seq, expect_prev = e.seq + 1, e.hash
        last_seq, last_hash = e.seq, e.hash
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
    """The head row against the chain's last entry (shared by `verify_chain` and `seal`)."""
    if head is None:
        return Problem(last_seq, "the head row is missing") if count else None
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
) -> VerifyResult:
    """Recompute the whole chain, check every signed checkpoint, and name the first break.

    `external` checkpoints (kept outside the database, see `checkpoint_dict`) are checked like
    stored ones; they catch an attacker who cut the tail and deleted the seals that covered it.
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

    first_seq = session.scalar(select(func.min(AuditEntry.seq)))
    count = session.scalar(select(func.count()).select_from(AuditEntry)) or 0
    head = session.get(AuditHead, 1)
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
    chain_problems, last_seq, last_hash = _walk(session, start_seq, start_prev, limit=limit, want=want, seen=seen)
    if start_prev == "?":  # unanchored start: the first link cannot be checked, and is reported above
        chain_problems = [p for p in chain_problems if not (p.seq == first_seq and p.reason.startswith("prev_hash"))]
    problems.extend(chain_problems)

    for cp in valid:
        if cp.seq <= start_seq:
            if cp.seq == start_seq and cp.head_hash != start_prev and start_prev != "?":
                problems.append(Problem(cp.seq, f"{cp.kind} checkpoint {cp.id} disagrees with the prune anchor"))
            continue
        beyond = _beyond_tail(cp, last_seq)
        if beyond is not None:
            problems.append(beyond)
        elif seen.get(cp.seq) != cp.head_hash:
            problems.append(Problem(cp.seq, f"differs from the signed {cp.kind} checkpoint of seq {cp.seq} (chain rewritten)"))
    head_problem = _head_problem(head, int(count), last_seq, last_hash)
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
        checkpoints=len(valid),
        problems=list(uniq.values()),
    )


def prune_before(session: Session, cutoff: datetime, *, dry_run: bool = False, key: Ed25519PrivateKey | None = None, now: datetime | None = None) -> int:
    """Drop the oldest entries older than `cutoff` (a prefix of the chain), signing an anchor.

    Only a prefix can go: an old entry after a newer one (clock skew) stays until everything
    before it is old enough. The signed "prune" checkpoint keeps the rest verifiable.
    """
    first_new = session.scalar(select(func.min(AuditEntry.seq)).where(AuditEntry.ts >= cutoff))
    q = select(AuditEntry.seq, AuditEntry.hash).order_by(AuditEntry.seq.desc()).limit(1)
    if first_new is not None:
        q = q.where(AuditEntry.seq < first_new)
    row = session.execute(q).first()
    if row is None:
        return 0
    top_seq, top_hash = row
    n = session.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.seq <= top_seq)) or 0
    if dry_run or not n:
        return int(n)
    _sign(session, "prune", top_seq, top_hash, key or _keys.signing_key(), now)
    session.execute(delete(AuditEntry).where(AuditEntry.seq <= top_seq).execution_options(synchronize_session=False))
    session.flush()
    return int(n)


def entries_for(session: Session, user_id: str) -> list[dict[str, Any]]:
    """Audit entries about a person (by pseudonym), for their access/export request."""
    alias = _keys.pseudonym(user_id)
    rows = session.scalars(select(AuditEntry).where(AuditEntry.subject == alias).order_by(AuditEntry.seq)).all()
    # times as the rest of the export writes them (ISO-8601, +00:00), not the hash's `_ts` form
    return [{"seq": e.seq, "ts": iso_utc(e.ts), "event": e.event, "actor": e.actor,
             "payload": json.loads(e.payload)} for e in rows]
