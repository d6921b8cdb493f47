"""Session-level continuous authentication: a sliding-window risk over evidence windows.

Each `update` is one window of behaviour (e.g. the last 100 keys), given as the per-modality
evidence the scorers produced (`fusion.policy.ModalityEvidence`, with a calibrated `llr`
where a calibrator exists). The window's log-likelihood ratio is the one the transaction
policy would fuse (`fusion.policy.decide`), so sessions and transactions read evidence the
same way, one item per modality (`decide` refuses a second). Evidence of the RL agent
(`DDQNAgent.evidence`, modality keystroke) can stand in for the keystroke scorer's item, not
be added beside it: both read the same keystrokes.

The session risk is ``1 / (1 + exp(mean LLR of the last `window` windows))``: the mean, not
the sum, because consecutive windows overlap (hop 50 of 100 keys) and are far from
independent, so summing would be overconfident. A window without usable evidence (none sent,
all of low quality, implausible or invalid) changes neither the risk nor the status: it is
counted in `n_windows` only. Counting it as LLR 0 would let an impostor who was stepped up
send empty windows until the mean drifted back to 0.5 and the status back to ok.
Termination is final: once terminated, later updates leave the state unchanged. So it needs
a full window: while fewer than `window` windows have been scored, a risk past the terminate
threshold is `step_up`, which the bank's step-up can clear (one odd window of a fresh session
must not end the owner's session for good).

The server (`server.services.sessions`) builds its trackers with the settings' window and
thresholds (`session_window`, `session_step_up_risk`, `session_terminate_risk`), never with
the defaults below, and layers its session rules over the status this tracker computes from
the risk: `pending` before any scored window, `step_up` held until the bank's step-up, and the
full window counted over the whole session (a passed step-up restarts this tracker, not that count).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from fusion.policy import ModalityEvidence, decide

Status = Literal["ok", "step_up", "terminate"]
STATUSES: tuple[str, ...] = ("ok", "step_up", "terminate")
STATE_VERSION = 1


@dataclass(frozen=True)
class SessionState:
    """What the server stores and returns after each window."""

    risk: float  # 0 = surely the owner, 1 = surely not
    status: Status
    n_windows: int  # windows seen since the session started
    window_llr: float = 0.0  # the latest window's fused LLR

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _llr_of(evidence: list[ModalityEvidence]) -> float | None:
    """The window's fused LLR, or None when no item is usable evidence.

    Non-finite scores are the fusion policy's business: -inf (a scorer overflowing on extreme
    features) counts as a bounded strong mismatch; NaN and +inf are left out (no overflow counts for the person).
    """
    if not isinstance(evidence, (list, tuple)):
        raise TypeError(f"evidence: expected a list of ModalityEvidence, got {type(evidence).__name__}")
    for i, e in enumerate(evidence):
        if not isinstance(e, ModalityEvidence):
            raise TypeError(f"evidence[{i}]: expected ModalityEvidence, got {type(e).__name__}")
    if not evidence:
        return None
    d = decide(list(evidence), amount=0.0)
    if any(r.code == "no_evidence" for r in d.reasons):
        return None
    return float(d.fused_llr)


def _risk(llrs: Iterable[float]) -> float:
    xs = list(llrs)
    mean = sum(xs) / len(xs)
    return 1.0 / (1.0 + math.exp(max(min(mean, 50.0), -50.0)))


def _number(name: str, v: Any) -> float:
    """`v` as a finite float; bools, strings and None refused with a ValueError naming `name`."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{name}: must be a finite number, got {v!r}")
    return float(v)


#: a session's risk before any evidence (mean LLR 0): the step-up threshold must lie above it
NO_EVIDENCE_RISK = 0.5


class SessionRiskTracker:
    """Sliding-window session risk with step-up and terminate thresholds.

    >>> t = SessionRiskTracker(window=3, step_up_risk=0.6, terminate_risk=0.9)
    >>> t.update([ModalityEvidence("keystroke", 0.0, llr=2.0)]).status
    'ok'
    >>> [t.update([ModalityEvidence("keystroke", 0.0, llr=-3.0)]).status for _ in range(4)]
    ['step_up', 'step_up', 'terminate', 'terminate']
    """

    def __init__(self, window: int = 5, step_up_risk: float = 0.6, terminate_risk: float = 0.9) -> None:
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"window: must be an integer >= 1, got {window!r}")
        for name, v in (("step_up_risk", step_up_risk), ("terminate_risk", terminate_risk)):
            if not (isinstance(v, (int, float)) and 0.0 < float(v) < 1.0):
                raise ValueError(f"{name}: must be in (0, 1), got {v!r}")
        if step_up_risk > terminate_risk:
            raise ValueError(f"step_up_risk: must be <= terminate_risk ({step_up_risk} > {terminate_risk})")
        if step_up_risk <= NO_EVIDENCE_RISK:  # every fresh session would be stepped up on no evidence at all
            raise ValueError(f"step_up_risk: must be above {NO_EVIDENCE_RISK}, the risk of a session without "
                             f"evidence (got {step_up_risk!r})")
        self.window = window
        self.step_up_risk = float(step_up_risk)
        self.terminate_risk = float(terminate_risk)
        self._llrs: deque[float] = deque(maxlen=window)
        self._state = SessionState(risk=NO_EVIDENCE_RISK, status="ok", n_windows=0)

    @property
    def state(self) -> SessionState:
        return self._state

    def _status(self, risk: float) -> Status:
        if risk >= self.terminate_risk:
            # ended only on a full window: a fresh session's first odd windows are held in
            # step-up (which the bank's step-up can clear), not ended on one window
            return "terminate" if len(self._llrs) >= self.window else "step_up"
        if risk >= self.step_up_risk:
            return "step_up"
        return "ok"

    def update(self, evidence: list[ModalityEvidence]) -> SessionState:
        """Add one window of evidence and return the new session state."""
        llr = _llr_of(evidence)
        if self._state.status == "terminate":
            return self._state
        n = self._state.n_windows + 1
        if llr is None:  # no evidence either way: keep risk and status (see the module docstring)
            self._state = SessionState(self._state.risk, self._state.status, n, window_llr=0.0)
            return self._state
        self._llrs.append(llr)
        risk = _risk(self._llrs)
        self._state = SessionState(risk=risk, status=self._status(risk), n_windows=n, window_llr=llr)
        return self._state

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (for the server's session row)."""
        return {"version": STATE_VERSION, "window": self.window, "step_up_risk": self.step_up_risk,
                "terminate_risk": self.terminate_risk, "llrs": list(self._llrs), "state": self._state.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SessionRiskTracker:
        """Rebuild a tracker from `to_dict` output; a malformed field raises ValueError naming it."""
        if not isinstance(d, Mapping):
            raise ValueError("state: must be a mapping")
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"version: expected {STATE_VERSION}, got {d.get('version')!r}")
        for key in ("window", "step_up_risk", "terminate_risk", "llrs", "state"):
            if key not in d:
                raise ValueError(f"{key}: is required")
        t = cls(d["window"], d["step_up_risk"], d["terminate_risk"])
        llrs = d["llrs"]
        if not isinstance(llrs, list) or len(llrs) > t.window:
            raise ValueError(f"llrs: must be a list of at most {t.window} finite numbers")
        t._llrs.extend(_number("llrs", x) for x in llrs)
        s = d["state"]
        if not isinstance(s, Mapping) or s.get("status") not in STATUSES:
            raise ValueError(f"state.status: must be one of {STATUSES}")
        risk = _number("state.risk", s.get("risk"))
        n = s.get("n_windows")
        if isinstance(n, bool) or not isinstance(n, int) or n < len(llrs):
            raise ValueError(f"state.n_windows: must be an integer >= len(llrs) = {len(llrs)}, got {n!r}")
        window_llr = _number("state.window_llr", s.get("window_llr", 0.0))
        # the stored risk must be the one the stored windows give, and the status the one it gives
        want = _risk(t._llrs) if t._llrs else 0.5
        if not 0.0 <= risk <= 1.0 or not math.isclose(risk, want, rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(f"state.risk: {risk!r} does not match the stored windows' risk {want!r}")
        # a terminate the risk reached before the window was full is one stored by code that
        # ended sessions on fewer windows: termination is final, so it is read as it was
        if s["status"] != t._status(risk) and not (s["status"] == "terminate" and risk >= t.terminate_risk):
            raise ValueError(f"state.status: {s['status']!r} does not match risk {risk!r}")
        t._state = SessionState(risk=risk, status=s["status"], n_windows=n, window_llr=window_llr)
        return t
