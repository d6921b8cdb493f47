"""Continuous-authentication sessions: evidence windows stream in, the session risk is tracked.

The risk engine is `continuous.session.SessionRiskTracker` (its state is stored on the
session row after each window); evidence is calibrated the same way as for transactions.
If that module cannot be imported the server falls back to a plain mean-LLR window here and
reports ``engine="fallback-window"``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from fusion.policy import Decision, ModalityEvidence, decide
from server.errors import ApiError
from server.models import AuthSession, SecurityFlag, User
from server.schemas import FeatureWindowIn, SessionOut
from server.services import compliance_hooks as hooks
from server.services.evidence import window_hash
from server.services.scoring import ScorerProvider
from server.services.transactions import assess_evidence, record_evidence

WINDOW, STEP_UP_RISK, TERMINATE_RISK = 5, 0.6, 0.9


def _tracker_cls() -> Any:
    try:
        from continuous.session import SessionRiskTracker
    except ImportError:
        return None
    return SessionRiskTracker


def fallback_update(state: dict[str, Any], evidence: list[ModalityEvidence]) -> dict[str, Any]:
    """Mean fused LLR of the last WINDOW windows -> risk and status (used without continuous/).

    As in `SessionRiskTracker`, a window without usable evidence leaves risk and status as
    they were, so empty windows cannot talk a stepped-up session back to ok. A stored state
    that is not a list of finite LLRs raises ValueError.
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
    llrs = old[-(WINDOW - 1):] + [d.fused_llr]
    mean = sum(llrs) / len(llrs)
    risk = 1.0 / (1.0 + math.exp(max(min(mean, 50.0), -50.0)))
    status = "terminate" if risk >= TERMINATE_RISK else "step_up" if risk >= STEP_UP_RISK else "ok"
    return {"llrs": llrs, "state": {"risk": risk, "status": status}}


def _fused(evidence: list[ModalityEvidence]) -> Decision | None:
    """The window's fused decision, or None when no item is usable evidence (as the trackers judge it)."""
    if not evidence:
        return None
    d = decide(evidence, amount=0.0)
    return None if any(r.code == "no_evidence" for r in d.reasons) else d


def _unreadable(session_id: str, exc: Exception) -> ApiError:
    """The stored state cannot be used (e.g. written by another version): the session cannot go on.

    Restarting the risk silently would clear a step-up; the client starts a new session instead.
    """
    return ApiError(409, "session_state_unreadable",
                    f"session_id: {session_id!r} has a stored state this server cannot read ({exc}); "
                    "start a new session")


def _engine() -> str:
    return "continuous.session" if _tracker_cls() is not None else "fallback-window"


#: keys of the session row's state beside the engine's own: feature windows received and those
#: whose evidence counted, and the last accepted post's window hashes (its retry is answered)
RECEIVED, SCORED, LAST = "windows_received", "scored_windows", "last_windows"


def _bookkeeping(session_id: str, state: Any) -> tuple[int, int, list[str] | None]:
    """(windows received, windows scored, last post's hashes) of a stored state; 409 if unreadable."""
    if not isinstance(state, dict):
        raise _unreadable(session_id, ValueError(f"state: must be a mapping, got {type(state).__name__}"))
    counts = []
    for key in (RECEIVED, SCORED):
        v = state.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise _unreadable(session_id, ValueError(f"{key}: must be a count, got {v!r}"))
        counts.append(v)
    last = state.get(LAST)
    if last is not None and not (isinstance(last, list) and all(isinstance(h, str) for h in last)):
        raise _unreadable(session_id, ValueError(f"{LAST}: must be a list of hashes"))
    return counts[0], counts[1], last


def _out(s: AuthSession) -> SessionOut:
    received, scored, _ = _bookkeeping(s.id, s.state)
    return SessionOut(session_id=s.id, user_id=s.user_id, status=s.status, risk=s.risk, engine=_engine(),
                      windows=received, scored_windows=scored)


def _scored_windows(evidence: list[ModalityEvidence]) -> int:
    """How many windows the fused evidence rests on (the modalities `decide` used, not those left out)."""
    d = _fused(evidence)
    if d is None:
        return 0
    used = {r.modality for r in d.reasons if r.code in ("strong_match", "match", "mismatch", "strong_mismatch")}
    return sum(e.n_windows for e in evidence if e.modality in used)


def _locked(user: User | None) -> None:
    if user is not None and user.locked:
        raise ApiError(423, "user_locked", "user_id: locked after consecutive failed authentications; "
                                           "an administrator must unlock it")


def create_session(session: Session, *, user_id: str, device_id: str | None) -> SessionOut:
    user = session.get(User, user_id)
    if user is None:
        raise ApiError(404, "unknown_user", f"user_id: {user_id!r} not found")
    _locked(user)
    tracker = _tracker_cls()
    state = tracker().to_dict() if tracker is not None else {"llrs": []}
    s = AuthSession(id=str(uuid.uuid4()), user_id=user_id, device_id=device_id, status="ok", risk=0.5, state=state)
    session.add(s)
    session.flush()
    return _out(s)


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


def read_session(session: Session, session_id: str, user_id: str, device_id: str | None = None) -> SessionOut:
    """The session's state; a locked user's sessions answer 423, as their evidence does."""
    s = get_session(session, session_id, user_id, device_id)
    _locked(session.get(User, user_id))
    return _out(s)


def _terminated(session: Session, s: AuthSession, user: User | None, *, actor: str) -> None:
    """A session the behaviour ended: flagged and audited for the bank, and plain enrolment closed.

    It does not count toward the PSD2 lockout: a session ends on much weaker evidence than a
    denied payment (mean LLR -2.2 over a few windows against a fused -4.6), and owners' own
    sessions end now and then; five of those would lock an owner out. What it closes is
    enrolment (reopened by the bank), so whoever ended it cannot then enrol their own behaviour.
    """
    if user is None:
        return
    user.enrolment_open = False
    session.add(SecurityFlag(user_id=user.id, kind="session_terminated", detail=f"session {s.id}: risk {s.risk:.3f}"))
    hooks.audit(session, event="session.terminated", actor=actor, subject=user.id,
                payload={"session_id": s.id, "risk": round(s.risk, 6)})


def post_evidence(session: Session, provider: ScorerProvider, *, session_id: str, user_id: str,
                  windows: list[FeatureWindowIn],
                  calibrate: Callable[[ModalityEvidence], ModalityEvidence] = lambda e: e,
                  device_id: str | None = None, actor: str = "device") -> SessionOut:
    """Score one post of evidence windows (one update) and return the session's risk and status.

    A session that ends (`terminate`) is flagged and audited, and closes plain enrolment.
    """
    # the user row, then the session's (the device's was taken by the request's nonce): the
    # order authorize and erasure (`server.holders.ServerHolder.erase`) take them in, so none
    # of these deadlock on PostgreSQL
    user = session.get(User, user_id, with_for_update=True)
    s = get_session(session, session_id, user_id, device_id, for_update=True)
    _locked(user)
    received, scored, last = _bookkeeping(session_id, s.state)
    digests = [window_hash(w) for w in windows]
    if digests == last:
        # the same windows as the last accepted post: a client retry after a lost answer (a timeout).
        # Answered with the state they produced; refusing it as a replay would flag the owner
        return _out(s)
    if s.status == "terminate":
        raise ApiError(409, "session_terminated", f"session_id: {session_id!r} was terminated; start a new session")
    tracker_cls = _tracker_cls()
    tracker = None
    if tracker_cls is not None and "version" in s.state:
        try:  # read before scoring: a refused state must not consume the windows
            tracker = tracker_cls.from_dict(s.state)
        except ValueError as exc:
            raise _unreadable(session_id, exc) from exc
    assessment = assess_evidence(session, provider, user_id, windows, field="windows")
    record_evidence(session, assessment)
    evidence = [calibrate(e) for e in assessment.evidence]
    books = {RECEIVED: received + len(windows), SCORED: scored + _scored_windows(evidence), LAST: digests}
    if tracker is not None:
        st = tracker.update(evidence)
        s.state, s.risk, s.status = {**tracker.to_dict(), **books}, float(st.risk), str(st.status)
    else:
        try:
            new = fallback_update(s.state, evidence)
        except (ValueError, TypeError, AttributeError) as exc:
            raise _unreadable(session_id, exc) from exc
        s.state, s.risk, s.status = {**new, **books}, float(new["state"]["risk"]), str(new["state"]["status"])
    if s.status == "terminate":
        _terminated(session, s, user, actor=actor)
    session.flush()
    return _out(s)
