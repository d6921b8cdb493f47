"""Checks on incoming feature windows: version/dimension, replay, physical plausibility."""

from __future__ import annotations

import functools
import hashlib
import json
import struct
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import cast

import numpy as np
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from cadence import prepared
from modalities.reading import read_by_models
from server.errors import ApiError
from server.models import EvidenceSeen, SecurityFlag, User, utcnow
from server.schemas import FeatureWindowIn
from server.services import compliance_hooks as hooks
from server.services.scoring import ActiveScorer, ScorerProvider

#: most events per second a human produces in a window (faster = scripted input)
MAX_EVENT_RATE = {"keystroke": 25.0, "touch": 500.0, "gait": 1000.0}


class EvidenceReplay(ApiError):
    """A window identical to one already received: refused (409) and flagged."""

    def __init__(self, user_id: str, modality: str, index: int, digest: str, *, field: str = "windows") -> None:
        # `field`: the request's body field that carried the window (enrolment `windows`,
        # authorize `evidence`, sessions `windows`); the stored flag repeats this text
        super().__init__(409, "evidence_replay",
                         f"{field}[{index}]: this {modality} feature window was already received; replayed evidence is refused")
        self.user_id, self.modality, self.digest = user_id, modality, digest


@functools.lru_cache(maxsize=256)
def _hash_prefix(modality: str, feature_version: str) -> str:
    """`json.dumps([modality, feature_version, n])` up to n (the same text, built once per version)."""
    return json.dumps([modality, feature_version])[:-1] + ", "


@functools.lru_cache(maxsize=256)
def _features_prefix(modality: str, feature_version: str) -> bytes:
    """`json.dumps([modality, feature_version, "features"])`, encoded once per version."""
    return json.dumps([modality, feature_version, "features"]).encode()


_TIMES = struct.Struct("<3d")
#: feature values are compared to about 6 significant digits (20 of the 52 mantissa bits kept,
#: rounded to nearest): a replayed window nudged by float noise is still the same window
_ROUND, _KEEP = np.uint64(1 << 31), np.uint64(0xFFFFFFFF00000000)
#: values nearer zero than this count as 0.0: significant digits are relative, so an exact 0.0
#: (keystroke windows have dozens) nudged to 1e-12 kept all its digits and hashed anew. Real
#: features are far above it; below it lies float noise (a touch feature computes to ~1e-13)
ZERO_FLOOR = 1e-9


def window_hash(w: FeatureWindowIn) -> str:
    """SHA-256 identifying a window for replay protection.

    A window the models read (a typing, swipe or walking window) is identified by its feature
    values alone, each rounded to about 6 significant digits, and those within `ZERO_FLOOR` of
    zero read as 0.0: behaviour never repeats to that precision, so the same values with another
    start time, event count or quality, or nudged by 1e-12, are the same evidence replayed
    (almost always: a value within the nudge of a rounding boundary can fall to the other side). A window the models do not read (a touch tap,
    whose few features can repeat honestly) is identified by all its fields, exact.
    Values changed beyond that precision are not caught here: they are scored as what they
    are, new behaviour (docs/api.md, "Replay protection").
    """
    return window_hashes([w])[0]


def _rounded(a: np.ndarray) -> bytes:
    """`a`'s values as `window_hash` compares them: zero below `ZERO_FLOOR`, about 6 significant digits kept."""
    bits = np.where(np.abs(a) < ZERO_FLOOR, 0.0, a).view("<u8")  # -0.0 and 0.0 are one value too
    return ((bits + _ROUND) & _KEEP).tobytes()


def window_hashes(windows: Sequence[FeatureWindowIn]) -> list[str]:
    """`window_hash` of each window, the read ones' values rounded in one pass.

    An authorize call carries about seven windows: rounded one by one (a handful of numpy calls
    each) their digests took 43 us, in one pass 25 us (BENCHMARKS.md, API, "Twenty-fourth round").
    """
    read = [scored(w) for w in windows]
    arrays = [w.array() for w, r in zip(windows, read) if r]
    # little-endian as each window's own array: the digest is of those bytes on any machine
    rounded = _rounded(np.concatenate(arrays).astype("<f8", copy=False) if len(arrays) > 1 else arrays[0]) \
        if arrays else b""
    out, at = [], 0
    for w, r in zip(windows, read):
        if r:
            end = at + 8 * len(w.values)
            h = hashlib.sha256(_features_prefix(w.modality, w.feature_version))
            h.update(rounded[at:end])
            at = end
        else:
            h = hashlib.sha256(f"{_hash_prefix(w.modality, w.feature_version)}{w.n_events}]".encode())
            h.update(_TIMES.pack(w.start, w.end, w.quality))  # the bytes of np.asarray([...], "<f8"), without the array
            h.update(w.array().tobytes())
        out.append(h.hexdigest())
    return out


def group_windows(windows: list[FeatureWindowIn]) -> dict[str, list[tuple[int, FeatureWindowIn]]]:
    out: dict[str, list[tuple[int, FeatureWindowIn]]] = defaultdict(list)
    for i, w in enumerate(windows):
        out[w.modality].append((i, w))
    return dict(out)


def check_versions(modality: str, items: list[tuple[int, FeatureWindowIn]], active: ActiveScorer,
                   *, field: str, expect_version: str | None = None, expect_dim: int | None = None) -> None:
    """All windows of a modality must share version and dimension, and match what is expected."""
    version = expect_version or active.feature_version or items[0][1].feature_version
    dim = expect_dim or active.feature_dim or len(items[0][1].values)
    for i, w in items:
        if w.feature_version != version:
            raise ApiError(422, "feature_version_mismatch",
                           f"{field}[{i}].feature_version: {modality} expects {version!r}, got {w.feature_version!r}")
        if len(w.values) != dim:
            raise ApiError(422, "feature_dim_mismatch",
                           f"{field}[{i}].values: {modality} expects {dim} features, got {len(w.values)}")


def check_served_versions(provider: ScorerProvider, windows: list[FeatureWindowIn], *, field: str) -> None:
    """`check_versions` of each modality's windows against its serving model, before anything reads their values.

    For a caller that hashes the windows (`window_hashes`) before it scores them (a session's
    retry check): the hash asks the modality package whether its models read a window, which
    indexes into the values of a window of the package's feature version, so a short one was
    an IndexError (500) instead of the 422 naming the field that authorize and enrolment answer.
    """
    for modality, items in group_windows(windows).items():
        check_versions(modality, items, provider.get(modality), field=field)


_E = EvidenceSeen.__table__.c
_SEEN = select(_E.window_hash).where(_E.user_id == bindparam("u"), _E.window_hash.in_(bindparam("h", expanding=True)))


def check_unseen(session: Session, user_id: str, items: list[tuple[int, FeatureWindowIn]],
                 digests: list[str] | None = None, *, field: str = "windows") -> list[str]:
    """Hashes of the windows; raise `EvidenceReplay` (naming `field[i]`) if this user sent one before (or twice here)."""
    digests = digests if digests is not None else window_hashes([w for _, w in items])
    seen = set(prepared.execute(session, _SEEN, {"u": user_id, "h": digests}).scalars().all()) if digests else set()
    batch: set[str] = set()
    for (i, w), d in zip(items, digests):
        if d in seen or d in batch:
            raise EvidenceReplay(user_id, w.modality, i, d, field=field)
        batch.add(d)
    return digests


def find_replay(session: Session, user_id: str, windows: list[FeatureWindowIn], *,
                field: str = "windows") -> EvidenceReplay | None:
    """The refusal a replay of `windows` gets, or None: for a request that lost a race on a window's digest.

    Asked once the concurrent request that stored the digest first committed, so the loser is
    answered, and flagged, as the replay it is when it comes after that request.
    """
    try:
        check_unseen(session, user_id, list(enumerate(windows)), field=field)
    except EvidenceReplay as exc:
        return exc
    return None


def claim_hashes(session: Session, user_id: str, items: list[tuple[int, FeatureWindowIn]],
                 digests: list[str] | None = None, *, field: str = "windows") -> list[str]:
    """Record each window's hash; raise `EvidenceReplay` if one was seen before (or twice here)."""
    digests = check_unseen(session, user_id, items, digests, field=field)
    insert_hashes(session, user_id, items, digests)
    return digests


def claim_confirmed(session: Session, user_id: str, tx_id: str, items: list[tuple[int, FeatureWindowIn]]) -> list[str]:
    """Hashes of windows re-sent as evidence of `tx_id`; each must be one that call carried, unused.

    The counterpart of `claim_hashes` for controlled adaptation (`server.services.enrolment`):
    each accepted window's link to the transaction is cleared, so it adapts a template once.
    The rows are read with a row lock (PostgreSQL) and cleared only where they still name the
    transaction: a concurrent call that claimed one meanwhile makes this one's count fall
    short, and it is refused (409) rather than adapt with the same window again.
    """
    digests = window_hashes([w for _, w in items])
    carried = set(session.scalars(select(_E.window_hash).where(
        _E.user_id == user_id, _E.transaction_id == tx_id, _E.window_hash.in_(digests)).with_for_update()))
    batch: set[str] = set()
    for (i, w), d in zip(items, digests):
        if d not in carried or d in batch:
            raise ApiError(409, "not_confirmed_evidence",
                           f"windows[{i}]: this {w.modality} window is not unused evidence of transaction {tx_id!r}")
        batch.add(d)
    claimed = session.execute(update(EvidenceSeen)
                              .where(EvidenceSeen.user_id == user_id, EvidenceSeen.transaction_id == tx_id,
                                     EvidenceSeen.window_hash.in_(digests))
                              .values(transaction_id=None)).rowcount  # type: ignore[attr-defined]
    if claimed != len(digests):
        raise ApiError(409, "not_confirmed_evidence",
                       f"windows: {len(digests) - claimed} of these windows are no longer unused evidence of "
                       f"transaction {tx_id!r} (a concurrent request adapted with them); each adapts a template once")
    return digests


_SEEN_INSERT = cast(Table, EvidenceSeen.__table__).insert()


def insert_hashes(session: Session, user_id: str, items: list[tuple[int, FeatureWindowIn]], digests: list[str],
                  transaction_id: str | None = None) -> None:
    """Insert the hashes (the primary key refuses one seen before), naming the authorize call if any."""
    if items:
        now = utcnow()
        prepared.execute(session, _SEEN_INSERT, [{"window_hash": d, "user_id": user_id, "modality": w.modality,
                                                "seen_at": now, "transaction_id": transaction_id}
                                               for (_, w), d in zip(items, digests)])


def scored(w: FeatureWindowIn) -> bool:
    """Whether the modality's models read this window (`modalities.reading`: a touch tap is not read)."""
    return read_by_models(w.modality, w.feature_version, w.values)


def implausible(w: FeatureWindowIn) -> str | None:
    """Why a window looks scripted (too many events for its duration), or None."""
    dur = w.end - w.start
    if w.n_events > 1 and dur <= 0:
        return f"{w.n_events} events in zero time"
    if dur > 0 and w.n_events / dur > MAX_EVENT_RATE[w.modality]:
        return f"{w.n_events / dur:.1f} events/s exceeds the human limit {MAX_EVENT_RATE[w.modality]}"
    values = w.values  # list.count compares in C: two numpy reductions per window cost more on these sizes
    if len(values) > 1 and values.count(values[0]) == len(values):
        return "all features identical"
    return None


def record_replay(uow: Callable[[], AbstractContextManager[Session]], exc: EvidenceReplay, actor: str) -> None:
    """Flag a replay in its own transaction (the refused request itself wrote nothing)."""
    with uow() as session:
        if session.get(User, exc.user_id) is None:
            return
        session.add(SecurityFlag(user_id=exc.user_id, kind="evidence_replay", detail=exc.detail))
        hooks.audit(session, event="security.evidence_replay", actor=actor, subject=exc.user_id,
                    payload={"modality": exc.modality, "window_sha256": exc.digest})
