"""/v1/sessions: continuous authentication during an app session (signed device; the bank reads and steps up)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path

from server.api.deps import BankKey, Signed, State, Uow, require_scope, same_user
from server.api.routing import CadenceRoute
from server.schemas import SessionCreate, SessionEvidence
from server.services import sessions as svc
from server.services.evidence import EvidenceReplay, record_replay
from server.session_schemas import SessionStatus, SessionStepUp, SessionView

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], route_class=CadenceRoute)
SessionId = Path(min_length=1, max_length=36, pattern=r"^[A-Za-z0-9-]+$")
_bank = require_scope("bank")


async def _bank_reader(state: State, x_api_key: Annotated[str | None, Header()] = None) -> str | None:
    """The bank's actor when an API key is sent (401/403 as for any bank route if it is not a bank key), else None."""
    return None if x_api_key is None else await _bank(state, x_api_key)


BankReader = Annotated[str | None, Depends(_bank_reader)]


@router.post("", status_code=201, response_model=SessionStatus)
def create(body: SessionCreate, req: Signed, state: State) -> SessionStatus:
    """Open a session (`pending`, or `step_up` soon after a terminated one); 429 past the hourly bound."""
    with req.transaction() as session:
        same_user(req.device, body.user_id)
        return svc.create_session(session, user_id=body.user_id, device_id=req.device.device_id,
                                  settings=state.settings, actor=req.actor)


@router.post("/{session_id}/evidence", response_model=SessionStatus)
def evidence(body: SessionEvidence, req: Signed, state: State, session_id: str = SessionId) -> SessionStatus:
    """Score one window of evidence and return the session's updated status (the risk is the bank's)."""
    try:  # flags it stores (bot-like windows, a session that ends) are counted once committed
        with state.metrics.counting_flags(req.transaction()) as session:
            return svc.post_evidence(session, state.provider, session_id=session_id, user_id=req.device.user_id,
                                     windows=body.windows, settings=state.settings, calibrate=state.calibrate,
                                     device_id=req.device.device_id, actor=req.actor)
    except EvidenceReplay as exc:
        record_replay(req.transaction, exc, req.actor)
        raise


@router.get("/{session_id}", response_model=SessionStatus | SessionView)
def read(req: Signed, uow: Uow, state: State, bank: BankReader, session_id: str = SessionId) -> SessionStatus:
    """The device (signed) reads the status; the bank (X-API-Key, bank scope) reads the risk and engine too."""
    if bank is not None:
        with uow() as session:
            return svc.bank_read_session(session, session_id, settings=state.settings)
    with req.transaction() as session:
        return svc.read_session(session, session_id, req.device.user_id, req.device.device_id,
                                settings=state.settings)


@router.post("/{session_id}/step-up", response_model=SessionView)
def step_up(body: SessionStepUp, uow: Uow, state: State, actor: BankKey, session_id: str = SessionId) -> SessionView:
    """The bank reports the step-up of a session held in `step_up`: passed -> ok, failed -> terminate (counts)."""
    with state.metrics.counting_flags(uow()) as session:  # a failed step-up ends the session: flagged
        return svc.complete_step_up(session, session_id=session_id, success=body.success, settings=state.settings,
                                    actor=actor)
