"""Continuous-authentication sessions: evidence windows stream in, the session risk is tracked.

The risk engine is `continuous.session.SessionRiskTracker` (its state is stored on the
session row after each window); evidence is calibrated the same way as for transactions.
If that module cannot be imported the server falls back to a plain mean-LLR window here and
reports ``engine="fallback-window"``. Both engines take their window and thresholds from the
settings (`session_window`, `session_step_up_risk`, `session_terminate_risk`).

A session is a status oracle for whoever holds the device key, so it is kept a poor one: the
device is told the status and counts, never the risk (the bank reads that); a user opens a
bounded number per hour; `step_up` is held until the bank reports the step-up, whose failure
counts toward the lockout; and a session opened soon after one was terminated, or left in
step-up, starts in `step_up`. Sessions expire after an idle timeout and an absolute lifetime.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from cadence.settings import Settings
from fusion.policy import Decision, ModalityEvidence, decide
from server.errors import ApiError
from server.models import AuthSession, SecurityFlag, User
from server.schemas import FeatureWindowIn
from server.services import compliance_hooks as hooks
from server.services.evidence import check_served_versions, window_hashes
from server.services.scoring import ScorerProvider
from server.services.transactions import assess_evidence, count_step_up, record_evidence
from server.session_schemas import SessionStatus, SessionView

Engine = Literal["continuous.session", "fallback-window"]
TRACKER: Engine = "continuous.session"
FALLBACK: Engine = "fallback-window"
STATUSES = ("pending", "ok", "step_up", "terminate")
#: the period `session_max_per_hour` counts over
HOUR = timedelta(hours=1)


def _now() -> datetime:
    """The current time in UTC (one function, so that tests can move the clock)."""
    return datetime.now(UTC)


def _aware(t: datetime) -> datetime:
    """`t` in UTC: SQLite gives its stored times back without a zone (they were written in UTC)."""
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _tracker_cls() -> Any:
    try:
        from continuous.session import SessionRiskTracker
    except ImportError:
        return None
    return SessionRiskTracker


def fallback_update(state: dict[str, Any], evidence: list[ModalityEvidence], *, window: int, step_up_risk: float,
                    terminate_risk: float) -> dict[str, Any]:
    """Mean fused LLR of the last `window` windows -> risk and status (used without continuous/).

    As in `SessionRiskTracker`, a window without usable evidence leaves risk and status as
    they were, so empty windows cannot talk a stepped-up session back to ok. A stored state
    that is not a list of finite LLRs raises ValueError. The thresholds are the settings'
    (passed in): this engine keeps none of its own.
    """
    if state and "llrs" not in state:  # not a state this engine wrote: a silent fresh start would clear a step-up
        raise ValueError("llrs: is required")
    old = list(state.get("llrs", []))
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in old):
        raise ValueError("llrs: must be a list of finite numbers")
    d = _fused(evidence)
    if d is None:
        prev = state.get("state") or {"risk": 0.5, "status": "ok"}
        return {"llrs": old, "state": dict(prev)}
    llrs = (old + [d.fused_llr])[-window:]
    mean = sum(llrs) / len(llrs)
    risk = 1.0 / (1.0 + math.exp(max(min(mean, 50.0), -50.0)))
    # ended only on a full window, as in `SessionRiskTracker`
    status = ("terminate" if len(llrs) >= window else "step_up") if risk >= terminate_risk \
        else "step_up" if risk >= step_up_risk else "ok"
    return {"llrs": llrs, "state": {"risk": risk, "status": status}}


def _fused(evidence: list[ModalityEvidence]) -> Decision | None:
    """The window's fused decision, or None when no item is usable evidence (as the trackers judge it)."""
    if not evidence:
        return None
    d = decide(evidence, amount=0.0)
    return None if any(r.code == "no_evidence" for r in d.reasons) else d


def _fresh_engine_state(settings: Settings) -> dict[str, Any]:
    """A new session's risk state (the prior, risk 0.5), with the settings' window and thresholds."""
    tracker = _tracker_cls()
    if tracker is None:
        return {"llrs": []}
    return dict(tracker(settings.session_window, settings.session_step_up_risk, settings.session_terminate_risk).to_dict())


def _restarted_engine_state(session_id: str, state: Any, settings: Settings) -> dict[str, Any]:
    """The risk state after a passed step-up: the prior again, with the window and thresholds it had.

    A tracker keeps those the session opened with, as it does at every update; a state in the
    fallback format reads the settings anyway, so it restarts as a new session does.
    """
    if _engine(state) != TRACKER:
        return _fresh_engine_state(settings)
    tracker = _tracker_cls()
    try:
        old = tracker.from_dict(state)
    except ValueError as exc:
        raise _unreadable(session_id, exc) from exc
    return dict(tracker(old.window, old.step_up_risk, old.terminate_risk).to_dict())


def _engine(state: Any) -> Engine:
    """The engine that updates this stored state: the tracker reads only the states it wrote (versioned).

    A state in the fallback format is updated by `fallback_update`, and labelled so, even
    where the tracker can be imported.
    """
    return TRACKER if isinstance(state, dict) and "version" in state and _tracker_cls() is not None else FALLBACK


def _unreadable(session_id: str, exc: Exception) -> ApiError:
    """The stored state cannot be used (e.g. written by another version): the session cannot go on.

    Restarting the risk silently would clear a step-up; the client starts a new session instead.
    """
    return ApiError(409, "session_state_unreadable",
                    f"session_id: {session_id!r} has a stored state this server cannot read ({exc}); "
                    "start a new session")


#: keys of the session row's state beside the engine's own: feature windows received and those
#: whose evidence counted, the posts whose evidence counted (the engine's updates, counted over
#: the whole session), the last accepted post's window hashes (its retry is answered), when
#: that post arrived, and when the bank last reported a passed step-up for the session
RECEIVED, SCORED, UPDATES, LAST, LAST_AT, PASSED_AT = ("windows_received", "scored_windows", "scored_updates",
                                                       "last_windows", "last_window_at", "step_up_passed_at")


@dataclass(frozen=True)
class Books:
    """The session's bookkeeping (see the keys above), apart from the engine's state."""

    received: int = 0
    scored: int = 0
    last: list[str] | None = None
    last_at: datetime | None = None
    passed_at: datetime | None = None
    updates: int = 0

    def to_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {RECEIVED: self.received, SCORED: self.scored, UPDATES: self.updates}
        if self.last is not None:
            out[LAST] = self.last
        for key, t in ((LAST_AT, self.last_at), (PASSED_AT, self.passed_at)):
            if t is not None:
                out[key] = t.isoformat()
        return out


def _time(v: Any) -> datetime | None:
    """A stored ISO-8601 time (None when absent); ValueError when it is not one."""
    if v is None:
        return None
    if not isinstance(v, str):
        raise ValueError(f"must be an ISO-8601 time, got {v!r}")
    return _aware(datetime.fromisoformat(v))


def _bookkeeping(session_id: str, state: Any) -> Books:
    """The bookkeeping of a stored state; 409 if it cannot be read."""
    if not isinstance(state, dict):
        raise _unreadable(session_id, ValueError(f"state: must be a mapping, got {type(state).__name__}"))
    counts = []
    # a state from before `scored_updates` counted windows only: its window count stands in
    for key, default in ((RECEIVED, 0), (SCORED, 0), (UPDATES, state.get(SCORED, 0))):
        v = state.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise _unreadable(session_id, ValueError(f"{key}: must be a count, got {v!r}"))
        counts.append(v)
    last = state.get(LAST)
    if last is not None and not (isinstance(last, list) and all(isinstance(h, str) for h in last)):
        raise _unreadable(session_id, ValueError(f"{LAST}: must be a list of hashes"))
    times = []
    for key in (LAST_AT, PASSED_AT):
        try:
            times.append(_time(state.get(key)))
        except ValueError as exc:
            raise _unreadable(session_id, ValueError(f"{key}: {exc}")) from None
    return Books(counts[0], counts[1], last, times[0], times[1], counts[2])


def _expiry(s: AuthSession, books: Books, settings: Settings) -> tuple[datetime, str]:
    """When the session expires, and which limit ends it: idle (no window, nor a passed step-up) or lifetime."""
    created = _aware(s.created_at)
    active = max(t for t in (created, books.last_at, books.passed_at) if t is not None)
    idle = active + timedelta(seconds=settings.session_idle_timeout_s)
    life = created + timedelta(seconds=settings.session_max_lifetime_s)
    return (idle, "idle") if idle < life else (life, "lifetime")


def _check_live(s: AuthSession, books: Books, settings: Settings, now: datetime) -> None:
    """409 `session_expired`, naming the limit, once the session is past its idle timeout or lifetime."""
    end, which = _expiry(s, books, settings)
    if now < end:
        return
    limit = (f"no window for {settings.session_idle_timeout_s:g} s (session_idle_timeout_s)" if which == "idle"
             else f"open for {settings.session_max_lifetime_s:g} s (session_max_lifetime_s)")
    raise ApiError(409, "session_expired",
                   f"session_id: {s.id!r} expired at {end.isoformat(timespec='seconds')}: {limit}; "
                   "start a new session")


def _fields(s: AuthSession, books: Books, settings: Settings) -> dict[str, Any]:
    if s.status not in STATUSES:  # written by another version (e.g. the model's default "active")
        raise _unreadable(s.id, ValueError(f"status: {s.status!r} is not one of {STATUSES}"))
    return {"session_id": s.id, "user_id": s.user_id, "status": s.status, "windows": books.received,
            "scored_windows": books.scored, "created_at": _aware(s.created_at), "last_window_at": books.last_at,
            "expires_at": _expiry(s, books, settings)[0]}


def _status_view(s: AuthSession, settings: Settings, books: Books | None = None) -> SessionStatus:
    """What the device is told: no risk, so that its answers cannot be hill-climbed on."""
    return SessionStatus(**_fields(s, books or _bookkeeping(s.id, s.state), settings))


def _full_view(s: AuthSession, settings: Settings, books: Books | None = None) -> SessionView:
    """What the bank reads: the device's view, the tracked risk and the engine tracking it."""
    return SessionView(**_fields(s, books or _bookkeeping(s.id, s.state), settings), risk=s.risk,
                       engine=_engine(s.state))


def _scored_windows(evidence: list[ModalityEvidence]) -> int:
    """How many windows the fused evidence rests on (the modalities `decide` used, not those left out)."""
    d = _fused(evidence)
    if d is None:
        return 0
    used = {r.modality for r in d.reasons if r.code in ("strong_match", "match", "mismatch", "strong_mismatch")}
    return sum(e.n_windows for e in evidence if e.modality in used)


def _next_status(previous: str, engine_status: str, scored: int) -> str:
    """The session's status after a window.

    `terminate` is final; `step_up` is held until the bank reports the step-up (evidence that
    looks like the owner again must not clear it: the step-up was never done); `ok` needs a
    scored window, so a session that has verified nobody says `pending`.
    """
    if "terminate" in (previous, engine_status):
        return "terminate"
    if "step_up" in (previous, engine_status):
        return "step_up"
    return "pending" if previous == "pending" and scored == 0 else "ok"


def _locked(user: User | None) -> None:
    if user is not None and user.locked:
        raise ApiError(423, "user_locked", "user_id: locked after consecutive failed authentications; "
                                           "an administrator must unlock it")


class TooManySessions(ApiError):
    """429 `too_many_sessions`, with a Retry-After header (seconds until one of the hour's sessions ages out)."""

    def __init__(self, opened: int, limit: int, retry_after_s: int) -> None:
        super().__init__(429, "too_many_sessions",
                         f"user_id: {opened} sessions opened in the last hour, at most {limit} allowed "
                         f"(session_max_per_hour); retry in {retry_after_s} s")
        self.headers = {"Retry-After": str(retry_after_s)}


def _check_quota(session: Session, user_id: str, now: datetime, limit: int) -> None:
    """429 when the user opened `limit` sessions in the last hour: each one is another oracle probe."""
    opened = session.scalars(select(AuthSession.created_at)
                             .where(AuthSession.user_id == user_id, AuthSession.created_at > now - HOUR)
                             .order_by(AuthSession.created_at)).all()
    if len(opened) < limit:
        return
    frees = _aware(opened[len(opened) - limit]) + HOUR  # then one fewer than `limit` are in the hour
    raise TooManySessions(len(opened), limit, max(1, math.ceil((frees - now).total_seconds())))


def _passed_at(state: Any) -> datetime | None:
    """When the bank reported this session's step-up passed (None: never, or unreadable: no clearance)."""
    try:
        return _time(state.get(PASSED_AT)) if isinstance(state, dict) else None
    except ValueError:
        return None


def _hold_reason(session: Session, user_id: str, now: datetime, hold_s: float) -> str | None:
    """Why a new session of this user starts in `step_up`, or None.

    A session of the user terminated, or held in step-up, within `hold_s`, and after the last
    step-up the bank reported passed for any of the user's sessions: otherwise whoever was
    ended (or stepped up) opens a new session and is `ok` again on no evidence at all.
    """
    if hold_s <= 0:
        return None
    rows = session.execute(select(AuthSession.status, AuthSession.updated_at, AuthSession.state)
                           .where(AuthSession.user_id == user_id,
                                  AuthSession.updated_at >= now - timedelta(seconds=hold_s))).all()
    cleared = max((t for r in rows if (t := _passed_at(r.state)) is not None), default=None)
    held = {r.status for r in rows
            if r.status in ("terminate", "step_up") and (cleared is None or _aware(r.updated_at) > cleared)}
    if not held:
        return None
    return "recent_termination" if "terminate" in held else "pending_step_up"


def _stepped_up(session: Session, s: AuthSession, *, actor: str, reason: str) -> None:
    """The session entered `step_up` (held until the bank reports the step-up): audited for the bank."""
    hooks.audit(session, event="session.step_up", actor=actor, subject=s.user_id,
                payload={"session_id": s.id, "reason": reason, "risk": round(s.risk, 6)})


def _hold_siblings(session: Session, s: AuthSession, *, actor: str, reason: str) -> None:
    """The user's other open sessions (`pending` or `ok`) are held in `step_up` too.

    Otherwise sessions opened before this one ended (up to the hourly bound) would each carry
    on from the prior, and the hold on new sessions (`_hold_reason`) would never apply to
    them. The user's row is locked by the caller, so no concurrent window of theirs is lost.
    """
    siblings = session.scalars(select(AuthSession).where(AuthSession.user_id == s.user_id, AuthSession.id != s.id,
                                                         AuthSession.status.in_(("pending", "ok")))).all()
    for sib in siblings:
        sib.status = "step_up"
        _stepped_up(session, sib, actor=actor, reason=reason)


def create_session(session: Session, *, user_id: str, device_id: str | None, settings: Settings,
                   actor: str = "device") -> SessionStatus:
    """Open a session: `pending` until a window is scored, or `step_up` when one is held (`_hold_reason`).

    The user row is locked (PostgreSQL) so that concurrent opens are counted against the
    hourly bound one after another.
    """
    user = session.get(User, user_id, with_for_update=True)
    if user is None:
        raise ApiError(404, "unknown_user", f"user_id: {user_id!r} not found")
    _locked(user)
    now = _now()
    _check_quota(session, user_id, now, settings.session_max_per_hour)
    reason = _hold_reason(session, user_id, now, settings.session_hold_s)
    s = AuthSession(id=str(uuid.uuid4()), user_id=user_id, device_id=device_id,
                    status="step_up" if reason else "pending", risk=0.5, state=_fresh_engine_state(settings),
                    created_at=now, updated_at=now)
    session.add(s)
    session.flush()
    hooks.audit(session, event="session.opened", actor=actor, subject=user_id,
                payload={"session_id": s.id, "status": s.status, "engine": _engine(s.state)})
    if reason is not None:
        _stepped_up(session, s, actor=actor, reason=reason)
    return _status_view(s, settings)


def get_session(session: Session, session_id: str, user_id: str, device_id: str | None = None, *,
                for_update: bool = False) -> AuthSession:
    """The session, if it is this user's and (when it names one) this device's: else 404.

    `for_update` locks the row until the commit (PostgreSQL; SQLite's writers are serialised
    already): concurrent windows of one session are applied one after another, never over
    each other.
    """
    s = session.get(AuthSession, session_id, with_for_update=for_update)
    if s is None or s.user_id != user_id or (device_id is not None and s.device_id not in (None, device_id)):
        raise ApiError(404, "unknown_session", f"session_id: {session_id!r} not found")
    return s


def read_session(session: Session, session_id: str, user_id: str, device_id: str | None = None, *,
                 settings: Settings) -> SessionStatus:
    """The device's view; a locked user's sessions answer 423, as their evidence does."""
    s = get_session(session, session_id, user_id, device_id)
    _locked(session.get(User, user_id))
    books = _bookkeeping(session_id, s.state)
    _check_live(s, books, settings, _now())
    return _status_view(s, settings, books)


def bank_read_session(session: Session, session_id: str, *, settings: Settings) -> SessionView:
    """The bank's view (risk and engine included) of any session, the locked user's too.

    An expired session is readable here (the bank may be investigating how it ended); its
    `expires_at` says it is over. Only the device is refused one (409 `session_expired`).
    """
    s = session.get(AuthSession, session_id)
    if s is None:
        raise ApiError(404, "unknown_session", f"session_id: {session_id!r} not found")
    books = _bookkeeping(session_id, s.state)
    return _full_view(s, settings, books)


def _terminated(session: Session, s: AuthSession, user: User | None, *, actor: str, reason: str = "risk") -> None:
    """A session that ended: flagged and audited for the bank, and plain enrolment closed.

    Ended by the behaviour (`reason="risk"`), it does not count toward the PSD2 lockout: a
    session ends on much weaker evidence than a denied payment (mean LLR -2.2 over a few
    windows against a fused -4.6), and owners' own sessions end now and then; five of those
    would lock an owner out. A failed step-up does count (`complete_step_up`). What it closes
    is enrolment (reopened by the bank), so whoever ended it cannot then enrol their own
    behaviour; the user's other open sessions are held in `step_up`, and new ones start there
    for a while (`_hold_reason`).
    """
    if user is None:
        return
    user.enrolment_open = False
    _hold_siblings(session, s, actor=actor, reason="sibling_terminated")
    what = f"risk {s.risk:.3f}" if reason == "risk" else reason.replace("_", " ")
    session.add(SecurityFlag(user_id=user.id, kind="session_terminated", detail=f"session {s.id}: {what}"))
    hooks.audit(session, event="session.terminated", actor=actor, subject=user.id,
                payload={"session_id": s.id, "risk": round(s.risk, 6), "reason": reason})


def _update_engine(session_id: str, state: dict[str, Any], tracker: Any, evidence: list[ModalityEvidence],
                   settings: Settings) -> tuple[dict[str, Any], float, str]:
    """(new engine state, risk, the engine's status) after one window."""
    if tracker is not None:
        st = tracker.update(evidence)
        return dict(tracker.to_dict()), float(st.risk), str(st.status)
    try:
        new = fallback_update(state, evidence, window=settings.session_window,
                              step_up_risk=settings.session_step_up_risk,
                              terminate_risk=settings.session_terminate_risk)
    except (ValueError, TypeError, AttributeError) as exc:
        raise _unreadable(session_id, exc) from exc
    return new, float(new["state"]["risk"]), str(new["state"]["status"])


def _ends_on_session_window(engine_state: dict[str, Any], risk: float, updates: int, settings: Settings) -> bool:
    """Whether a risk past the terminate threshold ends the session: once it has scored a full window.

    The engines count a full window of updates (posts whose evidence counted) since their
    last start, and a passed step-up restarts them; counted that way, whoever holds the phone
    and passes each step-up (an impostor can: the bank's code goes to the phone) could post
    fewer updates than that between step-ups and never be ended. So the session's own count of
    scored updates decides. Updates, not windows: a touch update is 5 swipes, and a post of
    several windows weighs as one, so counting windows would end a fresh session on its first post.
    """
    window = engine_state.get("window", settings.session_window)
    terminate_risk = engine_state.get("terminate_risk", settings.session_terminate_risk)
    return risk >= terminate_risk and updates >= window


def post_evidence(session: Session, provider: ScorerProvider, *, session_id: str, user_id: str,
                  windows: list[FeatureWindowIn], settings: Settings,
                  calibrate: Callable[[ModalityEvidence], ModalityEvidence] = lambda e: e,
                  device_id: str | None = None, actor: str = "device") -> SessionStatus:
    """Score one post of evidence windows (one update) and return the session's status (no risk).

    Entering `step_up` is audited; a session that ends (`terminate`) is flagged and audited,
    and closes plain enrolment.
    """
    # the user row, then the session's (the device's was taken by the request's nonce): the
    # order authorize and erasure (`server.holders.ServerHolder.erase`) take them in, so none
    # of these deadlock on PostgreSQL
    user = session.get(User, user_id, with_for_update=True)
    s = get_session(session, session_id, user_id, device_id, for_update=True)
    _locked(user)
    books = _bookkeeping(session_id, s.state)
    now = _now()
    _check_live(s, books, settings, now)
    # versions and dimensions first, as authorize and enrolment check them: hashing reads the values
    check_served_versions(provider, windows, field="windows")
    digests = window_hashes(windows)
    if digests == books.last:
        # the same windows as the last accepted post: a client retry after a lost answer (a timeout).
        # Answered with the state they produced; refusing it as a replay would flag the owner
        return _status_view(s, settings, books)
    if s.status == "terminate":
        raise ApiError(409, "session_terminated", f"session_id: {session_id!r} was terminated; start a new session")
    if s.status not in STATUSES:
        raise _unreadable(session_id, ValueError(f"status: {s.status!r} is not one of {STATUSES}"))
    tracker_cls = _tracker_cls()
    tracker = None
    if _engine(s.state) == TRACKER:
        try:  # read before scoring: a refused state must not consume the windows
            tracker = tracker_cls.from_dict(s.state)
        except ValueError as exc:
            raise _unreadable(session_id, exc) from exc
    assessment = assess_evidence(session, provider, user_id, windows, field="windows")
    record_evidence(session, assessment)
    evidence = [calibrate(e) for e in assessment.evidence]
    scored = _scored_windows(evidence)
    books = replace(books, received=books.received + len(windows), scored=books.scored + scored,
                    updates=books.updates + (scored > 0), last=digests, last_at=now)
    engine_state, risk, engine_status = _update_engine(session_id, s.state, tracker, evidence, settings)
    if engine_status == "step_up" and _ends_on_session_window(engine_state, risk, books.updates, settings):
        engine_status = "terminate"
    previous = s.status
    s.state, s.risk, s.updated_at = {**engine_state, **books.to_state()}, risk, now
    if scored:
        s.last_scored_at = now  # use of the templates (the retention purge reads it)
    s.status = _next_status(previous, engine_status, books.scored)
    if s.status == "step_up" and previous != "step_up":
        _stepped_up(session, s, actor=actor, reason="risk")
        _hold_siblings(session, s, actor=actor, reason="sibling_step_up")
    if s.status == "terminate":
        _terminated(session, s, user, actor=actor)
    session.flush()
    return _status_view(s, settings, books)


def complete_step_up(session: Session, *, session_id: str, success: bool, settings: Settings,
                     actor: str) -> SessionView:
    """The bank reports the step-up it ran for a session held in `step_up`.

    Passed: the session is `ok` again and its risk restarts from the prior (what was tracked
    before the step-up is not evidence about who passed it), and the user's failure count is
    reset. Failed: the session is terminated and the failure counts toward the user's lockout,
    as a failed payment step-up does (`server.services.transactions.complete_step_up`): the
    user and then the session are read with row locks (PostgreSQL), so two reports cannot both
    pass and concurrent failures are counted one after another. A failure is recorded even for
    a locked user or an expired session; a pass of either is refused (423, 409).
    """
    owner = session.scalar(select(AuthSession.user_id).where(AuthSession.id == session_id))
    user = session.get(User, owner, with_for_update=True) if owner is not None else None
    s = session.get(AuthSession, session_id, with_for_update=True, populate_existing=True)
    if s is None or user is None or s.user_id != user.id:  # never there, or erased before the locks were ours
        raise ApiError(404, "unknown_session", f"session_id: {session_id!r} not found")
    if s.status != "step_up":
        raise ApiError(409, "not_pending", f"session_id: status is {s.status!r}, not step_up")
    now = _now()
    books: Books | None
    try:
        books = _bookkeeping(session_id, s.state)
    except ApiError:
        if success:
            raise
        books = None  # a failure still counts; the state is final now and need not be read
    if success:
        assert books is not None
        if user.locked:
            raise ApiError(423, "user_locked", f"session_id: its user is locked after {settings.lockout_failures} "
                                               "consecutive failed authentications; an administrator must unlock it first")
        _check_live(s, books, settings, now)
        books = replace(books, passed_at=now)
        s.state, s.status, s.risk = {**_restarted_engine_state(session_id, s.state, settings), **books.to_state()}, "ok", 0.5
    else:
        s.status = "terminate"
    count_step_up(user, success, settings.lockout_failures)
    s.updated_at = now
    hooks.audit(session, event="session.step_up_completed", actor=actor, subject=user.id,
                payload={"session_id": s.id, "success": success})
    if not success:
        _terminated(session, s, user, actor=actor, reason="step_up_failed")
    session.flush()
    return _full_view(s, settings, books or Books())
