"""Health, readiness and Prometheus metrics."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import Engine, text

from server.api.deps import State
from server.api.routing import CadenceRoute
from server.errors import DatabaseUnavailable
from server.metrics import exposition
from server.signing import HEADER_INSTANCE
from server.sqlite_writers import sqlite_file

router = APIRouter(tags=["health"], route_class=CadenceRoute)
#: names this server process (one per uvicorn worker; random, not the pid): a balancer or the
#: bench's load generator reads it from `HEADER_INSTANCE` to spread requests over workers
INSTANCE_ID = secrets.token_hex(6)


#: a load balancer's health check may probe with HEAD (headers only: the server sends no body)
@router.head("/v1/health", operation_id="health_head", summary="Health (HEAD)")
@router.get("/v1/health", response_model=dict[str, str])
async def health() -> JSONResponse:
    """Liveness: the process answers (also the trivial endpoint of `cadence bench api`).

    Async: it blocks on nothing, so it runs on the event loop without a thread-pool hop
    (0.75 against 1.0-1.1 ms of server CPU per call under the bench's load). HEAD answers the
    same status and headers (a balancer's probe).
    """
    return JSONResponse({"status": "ok"}, headers={HEADER_INSTANCE: INSTANCE_ID})


#: how long a request's "database unavailable" keeps /v1/ready at 503 (a failed write, e.g. a
#: full disk, that a probe's SELECT cannot see)
RECENT_FAILURE_S = 10.0
#: failures that hold readiness down: the probe's SELECT cannot see them. Others (unreachable,
#: a lost connection, busy, a conflict, a timeout) are answered 503 but not held: the probe sees
#: an outage itself, and one conflict or timeout is no reason to take a worker out of service
HELD_REASONS = frozenset({"disk full", "read-only", "I/O error", "damaged", "not a database", "cannot be opened"})
#: free space below which the disk holding a SQLite database counts as full (an authorize call
#: appends ~18 pages, 72 KiB, to the log)
MIN_FREE_BYTES = 1 << 20


class DatabaseHealth:
    """The last time (and reason) a request found the database unusable in a way a probe cannot see, per worker."""

    def __init__(self) -> None:
        self._last: tuple[float, str] | None = None

    def failed(self, reason: str) -> None:
        """Remember a failure, if it is one readiness must show (`HELD_REASONS`)."""
        if reason in HELD_REASONS:
            self._last = (time.monotonic(), reason)

    def recent(self, within_s: float | None = None) -> str | None:
        """The reason of a held failure in the last `within_s` (default `RECENT_FAILURE_S`) seconds."""
        last, window = self._last, RECENT_FAILURE_S if within_s is None else within_s
        return last[1] if last is not None and time.monotonic() - last[0] <= window else None


def database_health(app: Any) -> DatabaseHealth:
    health = getattr(app.state, "database_health", None)
    if health is None:
        health = app.state.database_health = DatabaseHealth()
    return health


def sqlite_disk_full(engine: Engine) -> bool:
    """Whether the file system holding a SQLite database file has (nearly) no room left.

    SELECT 1 still answers then, but writes fail ("database or disk is full") as soon as the
    log has to grow.
    """
    database = sqlite_file(engine.url)
    if database is None:
        return False
    try:
        st = os.statvfs(Path(database).resolve().parent)
    except (OSError, AttributeError):  # no statvfs (Windows), or the folder is gone (the probe says so)
        return False
    return st.f_bavail * st.f_frsize < MIN_FREE_BYTES


@router.head("/v1/ready", operation_id="ready_head", summary="Ready (HEAD)")
@router.get("/v1/ready")
def ready(request: Request, state: State) -> dict[str, str]:
    """Readiness: the database answers and can be written; 503 `database_unavailable` otherwise.

    Not ready: the probe fails (PostgreSQL unreachable, ...), a request found the database
    unusable in the last `RECENT_FAILURE_S` seconds (a write failure the probe cannot see), or
    the disk holding the SQLite file is full. The probe reads (`AppState.read`): a write session
    would queue behind every writer for SQLite's write lock, so one long writer (a purge, a
    backup, another instance) held every worker's probe for the busy timeout and then failed it.
    """
    with state.read() as session:  # a failure here is answered by the app's database error handler
        session.execute(text("SELECT 1"))
    if reason := database_health(request.app).recent():
        raise DatabaseUnavailable(reason)
    if sqlite_disk_full(request.app.state.engine):
        raise DatabaseUnavailable("disk full")
    return {"status": "ready"}


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """The server's metrics: all its workers' counters, whichever worker answers (`X-Cadence-Instance` names it)."""
    return Response(exposition(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST,
                    headers={HEADER_INSTANCE: INSTANCE_ID})
