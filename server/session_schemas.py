"""Bodies of /v1/sessions: what the device is told, what the bank reads, how the bank reports a step-up.

The device's answers carry no risk number: a device key in an attacker's hands would read the
session's LLR back and hill-climb its features toward an approval. The risk, and the engine
that tracks it, are the bank's (`SessionView`, read with a bank API key).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, StrictBool

#: `pending`: no window scored yet (verifies nobody); `step_up` is held until the bank reports the
#: step-up (`POST /v1/sessions/{id}/step-up`); `terminate` is final
SessionStatusCode = Literal["pending", "ok", "step_up", "terminate"]


class SessionStatus(BaseModel):
    """The device's view of a session: its status, window counts and times, no risk."""

    #: forbid: a bank view (with risk) never passes for a device view, so the union of the
    #: GET route's answers always resolves to the model that was returned
    model_config = ConfigDict(extra="forbid")

    session_id: str
    user_id: str
    status: SessionStatusCode
    #: windows received, and those whose evidence counted: a session with none scored verifies nobody
    windows: int = 0
    scored_windows: int = 0
    created_at: datetime
    #: when the last accepted window arrived (None before the first)
    last_window_at: datetime | None = None
    #: when the session expires unless a window arrives first (idle timeout or lifetime, the earlier)
    expires_at: datetime


class SessionView(SessionStatus):
    """The bank's view of a session: the device's, plus the tracked risk and the engine tracking it."""

    risk: float
    engine: Literal["continuous.session", "fallback-window"]


class SessionStepUp(BaseModel):
    """The outcome of the step-up the bank ran for a session held in `step_up`."""

    model_config = ConfigDict(extra="forbid")

    #: strictly true or false: "yes" or 1 must not clear a held session
    success: StrictBool
