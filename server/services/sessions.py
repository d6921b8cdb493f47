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

from sqlalchemy import select
from sqlalchemy.orm import Session

from fusion.policy import ModalityEvidence, decide
from server.errors import ApiError
from server.models import AuthSession, SecurityFlag, Template, User
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
    if not _usable(evidence):
        prev = state.get("state") or {"risk": 0.5, "status": "ok"}
        return {"llrs": old, "state": dict(prev)}
    llrs = old[-(WINDOW - 1):] + [decide(evidence, amount=0.0).fused_llr]
    mean = sum(llrs) / len(llrs)
    risk = 1.0 / (1.0 + math.exp(max(min(mean, 50.0), -50.0)))
    status = "terminate" if risk >= TERMINATE_RISK else "step_up" if risk >= STEP_UP_RISK else "ok"
    return {"llrs": llrs, "state": {"risk": risk, "status": status}}


def _usable(evidence: list[ModalityEvidence]) -> bool:
    """Whether the window's evidence counts at all (calibrated, good enough quality), as the trackers judge it."""
    return bool(evidence) and not any(r.code == "no_evidence" for r in decide(evidence, amount=0.0).reasons)


def _unreadable(session_id: str, exc: Exception) -> ApiError:
    """The stored state cannot be used (e.g. written by another version): the session cannot go on.

    Restarting the risk silently would clear a step-up; the client starts a new session instead.
    """
    return ApiError(409, "session_state_unreadable",
                    f"session_id: {session_id!r} has a stored state this server cannot read ({exc}); "
                    "start a new session")


def _engine() -> str:
    return "continuous.session" if _tracker_cls() is not None else "fallback-window"


#: key of the session row's state that counts the windows whose evidence was scored (beside the tracker's own)
SCORED = "scored_windows"
#: key of the session row's state holding the last accepted post's window hashes (its retry is answered, not refused)
LAST = "last_windows"


def _out(s: AuthSession) -> SessionOut:
    state = s.state or {}
    inner = state.get("state")
    # the tracker counts windows in its own state; the fallback keeps the count beside it
    windows = inner.get("n_windows") if isinstance(inner, dict) and "n_windows" in inner else state.get("windows", 0)
    return SessionOut(session_id=s.id, user_id=s.user_id, status=s.status, risk=s.risk, engine=_engine(),
                      windows=int(windows or 0), scored_windows=int(state.get(SCORED, 0) or 0))


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


def _terminated(session: Session, s: AuthSession, user: User | None, *, lockout_failures: int, actor: str) -> None:
    """A session the behaviour ended counts as a failed authentication (PSD2 RTS Art. 4), flagged and audited."""
    if user is None:
        return
    user.consecutive_failures += 1
    user.locked = user.locked or user.consecutive_failures >= lockout_failures
    session.add(SecurityFlag(user_id=user.id, kind="session_terminated",
                             detail=f"session {s.id}: risk {s.risk:.3f}"))
    hooks.audit(session, event="session.terminated", actor=actor, subject=user.id,
                payload={"session_id": s.id, "risk": round(s.risk, 6), "locked": bool(user.locked),
                         "consecutive_failures": user.consecutive_failures})


def post_evidence(session: Session, provider: ScorerProvider, *, session_id: str, user_id: str,
                  windows: list[FeatureWindowIn],
                  calibrate: Callable[[ModalityEvidence], ModalityEvidence] = lambda e: e,
                  device_id: str | None = None, lockout_failures: int = 5, actor: str = "device") -> SessionOut:
    """Score one window of evidence and update the session's risk and status.

    Scored evidence on an enrolled user closes plain enrolment, as a transaction decision does
    (a session is a decision on the template). A session that ends (`terminate`) counts as a
    failed authentication toward the lockout, and is flagged and audited.
    """
    # the user row, then the session's (the device's was taken by the request's nonce): the
    # order authorize and erasure (`server.holders.ServerHolder.erase`) take them in, so none
    # of these deadlock on PostgreSQL
    user = session.get(User, user_id, with_for_update=True)
    s = get_session(session, session_id, user_id, device_id, for_update=True)
    _locked(user)
    digests = [window_hash(w) for w in windows]
    if digests == (s.state or {}).get(LAST):
        # the same windows as the last accepted post: a client retry after a lost answer (a timeout).
        # Answered with the state they produced; refusing it as a replay would flag the owner
        return _out(s)
    if s.status == "terminate":
        raise ApiError(409, "session_terminated", f"session_id: {session_id!r} was terminated; start a new session")
    tracker_cls = _tracker_cls()
    tracker = None
    if tracker_cls is not None and "version" in (s.state or {}):
        try:  # read before scoring: a refused state must not consume the windows
            tracker = tracker_cls.from_dict(s.state)
        except ValueError as exc:
            raise _unreadable(session_id, exc) from exc
    assessment = assess_evidence(session, provider, user_id, windows, field="windows")
    record_evidence(session, assessment)
    evidence = [calibrate(e) for e in assessment.evidence]
    scored = int((s.state or {}).get(SCORED, 0) or 0) + int(_usable(evidence))
    if tracker is not None:
        st = tracker.update(evidence)
        s.state, s.risk, s.status = {**tracker.to_dict(), SCORED: scored, LAST: digests}, float(st.risk), str(st.status)
    else:
        try:
            new = fallback_update(s.state or {}, evidence)
        except (ValueError, TypeError, AttributeError) as exc:
            raise _unreadable(session_id, exc) from exc
        new["windows"] = int((s.state or {}).get("windows", 0) or 0) + 1
        s.state, s.risk, s.status = ({**new, SCORED: scored, LAST: digests}, float(new["state"]["risk"]),
                                     str(new["state"]["status"]))
    if user is not None and scored and user.enrolment_open and session.scalar(
            select(Template.id).where(Template.user_id == user_id).limit(1)) is not None:
        user.enrolment_open = False
    if s.status == "terminate":
        _terminated(session, s, user, lockout_failures=lockout_failures, actor=actor)
    session.flush()
    return _out(s)
