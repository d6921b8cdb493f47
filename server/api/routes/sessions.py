"""/v1/sessions: continuous authentication during an app session (signed device)."""

from __future__ import annotations

from fastapi import APIRouter, Path

from server.api.deps import Signed, State, same_user
from server.api.routing import CadenceRoute
from server.schemas import SessionCreate, SessionEvidence, SessionOut
from server.services import sessions as svc
from server.services.evidence import EvidenceReplay, record_replay

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], route_class=CadenceRoute)
SessionId = Path(min_length=1, max_length=36, pattern=r"^[A-Za-z0-9-]+$")


@router.post("", status_code=201, response_model=SessionOut)
def create(body: SessionCreate, req: Signed) -> SessionOut:
    with req.transaction() as session:
        same_user(req.device, body.user_id)
        return svc.create_session(session, user_id=body.user_id, device_id=req.device.device_id)


@router.post("/{session_id}/evidence", response_model=SessionOut)
def evidence(body: SessionEvidence, req: Signed, state: State, session_id: str = SessionId) -> SessionOut:
    """Score one window of evidence and return the session's updated risk and status."""
    try:
        with req.transaction() as session:
            return svc.post_evidence(session, state.provider, session_id=session_id, user_id=req.device.user_id,
                                     windows=body.windows, calibrate=state.calibrate, device_id=req.device.device_id,
                                     actor=req.actor)
    except EvidenceReplay as exc:
        record_replay(req.transaction, exc, req.actor)
        raise


@router.get("/{session_id}", response_model=SessionOut)
def read(req: Signed, session_id: str = SessionId) -> SessionOut:
    with req.transaction() as session:
        return svc.read_session(session, session_id, req.device.user_id, req.device.device_id)
