"""`create_app(settings=None)`: the FastAPI transaction-approval API (nothing built at import time)."""

from __future__ import annotations

import importlib
import logging
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, event
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cadence.db import make_engine, make_sessionmaker
from cadence.settings import Settings, get_settings
from fusion.policy import decide as policy_decide
from server.api.deps import AppState
from server.api.routes import admin, devices, health, models, sessions, transactions, users
from server.errors import ApiError
from server.metrics import Metrics
from server.services.devices import RateLimiter
from server.services.scoring import ScorerProvider
from server.signing import b64d

log = logging.getLogger(__name__)
DEV_API_KEYS = {"dev-bank-key", "dev-admin-key"}


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413 (declared or streamed)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await JSONResponse({"detail": f"body: larger than {self.limit} bytes", "code": "payload_too_large"},
                               status_code=413)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, "payload_too_large", f"body: larger than {self.limit} bytes")
            return msg

        await self.app(scope, limited, send)


class MetricsMiddleware:
    """Count requests and time them per route template (pure ASGI: no per-request task)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except ApiError as exc:  # raised by the body limit while the body streams in
            status["code"] = exc.status
            await JSONResponse({"detail": exc.detail, "code": exc.code}, status_code=exc.status)(scope, receive, send)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(name, scope["method"], str(status["code"])).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - t0)


def serialize_sqlite_writers(engine: Engine) -> None:
    """Begin every SQLite transaction with BEGIN IMMEDIATE.

    pysqlite's default deferred transactions let two requests read, then both try to write:
    one fails with SQLITE_BUSY at once (no busy wait for a stale snapshot), i.e. a 500 under
    load. Taking the write lock up front makes them queue on the busy timeout instead, and
    makes SAVEPOINTs and commits behave as SQLAlchemy expects.
    """

    @event.listens_for(engine, "connect")
    def _no_pysqlite_transactions(dbapi_conn, _rec):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("cadence_read_only") else "BEGIN IMMEDIATE")


def signing_key(settings: Settings) -> Ed25519PrivateKey:
    if settings.server_signing_key:
        raw = b64d(settings.server_signing_key, field="server_signing_key")
        if len(raw) != 32:
            raise ValueError("server_signing_key: an Ed25519 seed is 32 bytes")
        return Ed25519PrivateKey.from_private_bytes(raw)
    if settings.environment != "development":
        raise ValueError("server_signing_key: required outside development (CADENCE_SERVER_SIGNING_KEY)")
    log.warning("no CADENCE_SERVER_SIGNING_KEY: decision tokens are signed with a key made at start-up")
    return Ed25519PrivateKey.generate()


def load_fusion(settings: Settings, registry_root: Path | None) -> Any:
    """The calibrated `FusionEngine` when its file exists, else None (the policy's uncalibrated rule)."""
    path = settings.fusion_calibration or (registry_root / "fusion-calibration.json" if registry_root else None)
    if path is not None and Path(path).is_file():
        from fusion.engine import FusionEngine

        engine = FusionEngine.load(path)
        log.info("fusion: calibrated modalities %s from %s", engine.calibrated_modalities, path)
        return engine
    log.warning("fusion: no calibration file; using the policy's uncalibrated score mapping")
    return None


def _field_message(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
    return f"{loc or 'body'}: {err.get('msg', 'invalid')}"


def create_app(settings: Settings | None = None, *, init_db: bool = True) -> FastAPI:
    """Build the app: engine, scorer provider, signing key, routes, error handlers, metrics."""
    settings = settings or get_settings()
    if settings.environment != "development" and DEV_API_KEYS & set(settings.api_keys):
        raise ValueError("api_keys: development API keys are refused outside development")
    engine = make_engine(settings.database_url)
    if settings.database_url.startswith("sqlite"):
        serialize_sqlite_writers(engine)
    if init_db:
        from server.migrate import upgrade

        upgrade(engine)
    for mod in settings.holder_modules:
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            log.warning("holder module %s not importable: %s", mod, exc)
    registry_root = settings.model_registry if settings.model_registry and settings.model_registry.exists() else None
    app = FastAPI(title="Cadence transaction-approval API", version="1",
                  description="Behavioural evidence (features only) + device possession -> approve / step-up / deny.")
    metrics = Metrics()
    engine_ = load_fusion(settings, registry_root)
    app.state.cadence = AppState(settings=settings, sessions=make_sessionmaker(engine),
                                 provider=ScorerProvider(registry_root), signing_key=signing_key(settings),
                                 metrics=metrics,
                                 read_sessions=make_sessionmaker(engine.execution_options(cadence_read_only=True)),
                                 limiter=RateLimiter(settings.device_rate_per_s),
                                 write_lock=threading.Lock() if settings.database_url.startswith("sqlite") else nullcontext(),
                                 decide=engine_.decide if engine_ else policy_decide,
                                 calibrate=engine_.calibrate if engine_ else (lambda e: e))
    app.state.engine = engine
    app.state.metrics = metrics
    for r in (health, devices, users, transactions, sessions, models, admin):
        app.include_router(r.router)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        if exc.code in ("evidence_replay", "implausible_input"):
            metrics.flags.labels(exc.code).inc()
        return JSONResponse({"detail": exc.detail, "code": exc.code}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        detail = "; ".join(_field_message(e) for e in errors[:5])
        safe = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors[:20]]
        return JSONResponse({"detail": detail, "code": "validation_error", "errors": safe}, status_code=422)

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app
