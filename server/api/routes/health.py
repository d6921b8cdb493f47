"""Health, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from server.api.deps import State
from server.api.routing import CadenceRoute

router = APIRouter(tags=["health"], route_class=CadenceRoute)


@router.get("/v1/health")
def health() -> dict[str, str]:
    """Liveness: the process answers (also the trivial endpoint of `cadence bench api`)."""
    return {"status": "ok"}


@router.get("/v1/ready")
def ready(state: State) -> dict[str, str]:
    """Readiness: the database answers."""
    with state.sessions() as session:
        session.execute(text("SELECT 1"))
    return {"status": "ready"}


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
