"""A person's own requests about their data from the app (the bank's go through the admin routes)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from server.errors import ApiError
from server.models import User
from server.services import compliance_hooks as hooks


def erase_own(session: Session, user_id: str, *, actor: str) -> dict[str, Any]:
    """The person's own erasure (GDPR Art. 17), asked for by their signed device.

    Refused while the user has failed authentications on record: a locked user (423
    `user_locked`), and one with fewer failures than the lockout too (423
    `failed_authentications`). The erasure deletes the user row and its failure count with it,
    and once the bank registers the device again the user starts at no failures, unlocked and
    with plain enrolment open: whoever holds the phone would get a fresh set of attempts
    after each erasure (PSD2 RTS Art. 4 allows at most five in a row) and could enrol their own
    behaviour. A successful authentication resets the count; otherwise the erasure goes
    through the bank (the admin route), which then also decides whether they may register again.
    """
    user = session.get(User, user_id, with_for_update=True)
    if user is not None and user.locked:
        raise ApiError(423, "user_locked", "user_id: locked after repeated failed authentications; "
                                           "ask your bank to erase your data (it lifts the lock too)")
    if user is not None and user.consecutive_failures:
        raise ApiError(423, "failed_authentications",
                       f"user_id: {user.consecutive_failures} consecutive failed authentication(s) on record, "
                       "which an erasure from the app would clear; ask your bank to erase your data, or "
                       "authenticate successfully first")
    return hooks.erase_user(session, user_id, actor=actor)
