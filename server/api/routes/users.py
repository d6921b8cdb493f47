"""/v1/users/{user_id}: consent, enrolment and erasure, called by the user's signed device."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path
from sqlalchemy.exc import IntegrityError

from server.api.deps import Signed, State, same_user
from server.api.routing import CadenceRoute
from server.errors import ApiError
from server.schemas import ConsentIn, ConsentOut, EnrolRequest, EnrolResponse
from server.services import compliance_hooks as hooks
from server.services.enrolment import enrol
from server.services.evidence import EvidenceReplay, find_replay, record_replay
from server.services.users import erase_own

router = APIRouter(prefix="/v1/users", tags=["users"], route_class=CadenceRoute)
UserId = Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")


@router.post("/{user_id}/consents", status_code=201, response_model=ConsentOut)
def set_consent(body: ConsentIn, req: Signed, user_id: str = UserId) -> dict[str, Any]:
    """Grant (or with ``granted=false`` revoke) consent for one modality and purpose.

    `recorded` is true either way; a revoke's `erased` counts the rows it deleted per table
    (it was the `recorded` value itself, so that field was a boolean or an object by case).
    """
    erased: dict[str, int] = {}
    with req.transaction() as session:
        same_user(req.device, user_id)
        if body.granted:
            hooks.grant_consent(session, user_id=user_id, modality=body.modality, purpose=body.purpose,
                                policy_version=body.policy_version, actor=req.actor)
        else:
            erased = hooks.revoke_consent(session, user_id=user_id, modality=body.modality, purpose=body.purpose,
                                          actor=req.actor)
        return {"user_id": user_id, "modality": body.modality, "purpose": body.purpose, "granted": body.granted,
                "recorded": True, "erased": erased}


@router.get("/{user_id}/consents")
def get_consents(req: Signed, user_id: str = UserId) -> dict[str, Any]:
    with req.transaction() as session:
        same_user(req.device, user_id)
        return {"user_id": user_id, "consents": hooks.list_consents(session, user_id)}


@router.post("/{user_id}/enrolment", response_model=EnrolResponse)
def enrol_user(body: EnrolRequest, req: Signed, state: State, user_id: str = UserId) -> EnrolResponse:
    """Add feature windows to the user's enrolment; templates are rebuilt per modality.

    With `confirmed_transaction_id` the windows are evidence the user already sent with that
    transaction, now confirmed (approved, or approved after step-up), of a modality that
    matched in its decision: controlled adaptation.
    """
    try:
        with req.transaction() as session:
            same_user(req.device, user_id)
            return enrol(session, state.provider, user_id=user_id, windows=body.windows,
                         min_windows=state.settings.enrol_min_windows, min_quality=state.settings.enrol_min_quality,
                         actor=req.actor, confirmed_transaction_id=body.confirmed_transaction_id)
    except EvidenceReplay as exc:
        record_replay(req.transaction, exc, req.actor)
        raise
    except IntegrityError:
        # a concurrent request stored one of these windows first (its digest's primary key):
        # answered, and flagged, as the replay it is when it comes after that request
        with state.read() as session:
            replay = find_replay(session, user_id, body.windows)
        if replay is None:
            raise ApiError(409, "evidence_replay", "windows: a concurrent request carried the same window; "
                                                   "replayed evidence is refused") from None
        record_replay(req.transaction, replay, req.actor)
        raise replay from None


@router.delete("/{user_id}")
def erase_self(req: Signed, user_id: str = UserId) -> dict[str, Any]:
    """The person's own erasure request (GDPR Art. 17) from the app: everything the server holds about them.

    Signed by their device like every device call; audited with the device as actor. The
    device's key goes with it, so the app must register again to be used. Refused (423) while
    the user is locked or has failed authentications on record (`server.services.users.erase_own`):
    erasing, then being registered again, gave a clean user with no failures and enrolment open.
    Their erasure then goes through the bank (the admin route).
    """
    with req.transaction() as session:
        same_user(req.device, user_id)
        return {"user_id": user_id, "erased": erase_own(session, user_id, actor=req.actor)}
