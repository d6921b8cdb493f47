"""Session-level continuous authentication: a sliding-window risk over evidence windows.

Each `update` is one window of behaviour (e.g. the last 100 keys), given as the per-modality
evidence the scorers produced (`fusion.policy.ModalityEvidence`, with a calibrated `llr`
where a calibrator exists). The window's log-likelihood ratio is the one the transaction
policy would fuse (`fusion.policy.decide`), so sessions and transactions read evidence the
same way; evidence of the RL agent can be added as one more item (`DDQNAgent.evidence`).

The session risk is ``1 / (1 + exp(mean LLR of the last `window` windows))``: the mean, not
the sum, because consecutive windows overlap (hop 50 of 100 keys) and are far from
independent, so summing would be overconfident. A window without usable evidence counts as
LLR 0 (missing evidence never counts as genuine), which pulls the risk toward 0.5.
Termination is final: once terminated, later updates leave the state unchanged.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
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


def _llr_of(evidence: list[ModalityEvidence]) -> float:
    if not isinstance(evidence, (list, tuple)):
        raise TypeError(f"evidence: expected a list of ModalityEvidence, got {type(evidence).__name__}")
    for i, e in enumerate(evidence):
        if not isinstance(e, ModalityEvidence):
            raise TypeError(f"evidence[{i}]: expected ModalityEvidence, got {type(e).__name__}")
        if not math.isfinite(e.score) or (e.llr is not None and not math.isfinite(e.llr)):
            raise ValueError(f"evidence[{i}].score: must be finite")
    if not evidence:
        return 0.0
    return float(decide(list(evidence), amount=0.0).fused_llr)


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
        self.window = window
        self.step_up_risk = float(step_up_risk)
        self.terminate_risk = float(terminate_risk)
        self._llrs: deque[float] = deque(maxlen=window)
        self._state = SessionState(risk=0.5, status="ok", n_windows=0)

    @property
    def state(self) -> SessionState:
        return self._state

    def _status(self, risk: float) -> Status:
        if risk >= self.terminate_risk:
            return "terminate"
        if risk >= self.step_up_risk:
            return "step_up"
        return "ok"

    def update(self, evidence: list[ModalityEvidence]) -> SessionState:
        """Add one window of evidence and return the new session state."""
        llr = _llr_of(evidence)
        if self._state.status == "terminate":
            return self._state
        self._llrs.append(llr)
        mean = sum(self._llrs) / len(self._llrs)
        risk = 1.0 / (1.0 + math.exp(max(min(mean, 50.0), -50.0)))
        self._state = SessionState(risk=risk, status=self._status(risk), n_windows=self._state.n_windows + 1,
                                   window_llr=llr)
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
        if not isinstance(llrs, list) or len(llrs) > t.window or not all(
                isinstance(x, (int, float)) and math.isfinite(x) for x in llrs):
            raise ValueError(f"llrs: must be a list of at most {t.window} finite numbers")
        t._llrs.extend(float(x) for x in llrs)
        s = d["state"]
        if not isinstance(s, Mapping) or s.get("status") not in STATUSES:
            raise ValueError(f"state.status: must be one of {STATUSES}")
        try:
            risk, n = float(s["risk"]), int(s["n_windows"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError("state.risk: risk and n_windows are required numbers") from exc
        if not 0.0 <= risk <= 1.0 or n < 0:
            raise ValueError("state.risk: risk must be in [0, 1] and n_windows >= 0")
        t._state = SessionState(risk=risk, status=s["status"], n_windows=n, window_llr=float(s.get("window_llr", 0.0)))
        return t
