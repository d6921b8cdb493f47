"""/v1/admin: data-subject rights (export, erasure), unlocking and reopening enrolment, admin API key only."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path

from server.api.deps import AdminKey, Uow
from server.api.routing import CadenceRoute
from server.errors import ApiError
from server.models import User
from server.services import compliance_hooks as hooks
from server.services.enrolment import reopen_enrolment

router = APIRouter(prefix="/v1/admin", tags=["admin"], route_class=CadenceRoute)
UserId = Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")


def _nothing_held(user_id: str) -> ApiError:
    """404 `unknown_user` for an id nothing is held about (a typo, or a person already erased)."""
    return ApiError(404, "unknown_user", f"user_id: no data held for {user_id!r}")


@router.get("/users/{user_id}/export")
def export(uow: Uow, actor: AdminKey, user_id: str = UserId) -> dict[str, Any]:
    with uow() as session:
        data = hooks.export_user(session, user_id)
        if not hooks.holds_data(data):
            raise _nothing_held(user_id)
        return {"user_id": user_id, "data": data}


@router.delete("/users/{user_id}")
def erase(uow: Uow, actor: AdminKey, user_id: str = UserId) -> dict[str, Any]:
    """Erase the person (Art. 17); 404 when nothing is held, and then no audit entry is kept (rolled back)."""
    with uow() as session:
        erased = hooks.erase_user(session, user_id, actor=actor)
        if not any(erased.values()):
            raise _nothing_held(user_id)
        return {"user_id": user_id, "erased": erased}


@router.post("/users/{user_id}/unlock")
def unlock(uow: Uow, actor: AdminKey, user_id: str = UserId) -> dict[str, Any]:
    with uow() as session:
        user = session.get(User, user_id)
        if user is None:
            raise ApiError(404, "unknown_user", f"user_id: {user_id!r} not found")
        user.locked, user.consecutive_failures = False, 0
        hooks.audit(session, event="user.unlocked", actor=actor, subject=user_id, payload={})
        return {"user_id": user_id, "locked": False}


@router.post("/users/{user_id}/enrolment/reopen")
def reopen(uow: Uow, actor: AdminKey, user_id: str = UserId) -> dict[str, Any]:
    """Accept plain enrolment again (after the bank re-verified the customer): audited."""
    with uow() as session:
        reopen_enrolment(session, user_id, actor=actor)
        return {"user_id": user_id, "enrolment_open": True}
