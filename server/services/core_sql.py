"""Run a prepared Core statement in a session's transaction, without the ORM's per-call work.

The authorize hot path issues about ten small statements; through `Session.execute` each one
pays for ORM compilation context and result loading (a large share of a request's CPU).
Going to the session's connection keeps the same transaction; pending ORM changes are
flushed first, as autoflush would, so a read still sees what this unit of work added.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Executable
from sqlalchemy.orm import Session

from cadence import prepared


def execute(session: Session, statement: Executable,
            params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None) -> Any:
    """`statement` in the session's transaction, after an autoflush (`cadence.prepared`)."""
    return prepared.execute(session, statement, params)
