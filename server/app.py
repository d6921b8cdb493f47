"""`create_app(settings=None)`: the FastAPI transaction-approval API (nothing built at import time)."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cadence.db import HeldConnections, make_engine, make_sessionmaker
from cadence.settings import Settings, bind_settings, get_settings
from modalities.events import MODALITIES
from server.affinity import is_worker_process, pin_worker
from server.api.deps import AppState, charge_failure, client_address
from server.api.routes import admin, devices, health, models, sessions, transactions, users
from server.errors import ApiError, DatabaseUnavailable, database_unavailable, describe_database_error
from server.fusion_source import FusionSource
from server.metrics import Metrics
from server.retention_schedule import RetentionScheduler
from server.schemas import ERROR_RESPONSES
from server.services.evidence import EvidenceReplay
from server.services.scoring import ScorerProvider, TemplateCache
from server.services.shared_limits import RedisRateLimiter, make_limiters
from server.signing import HEADER_DEVICE, b64d
from server.sqlite_writers import WalCheckpointer, serialize_sqlite_writers, write_lock
from server.training import fusion_path  # shared with the CLI's `models` commands: one answer

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
                # an HTTPException: FastAPI's body parsing passes it on (any other error becomes a 400)
                raise CodedHTTPException(413, "payload_too_large", f"body: larger than {self.limit} bytes")
            return msg

        await self.app(scope, limited, send)


class CodedHTTPException(StarletteHTTPException):
    """An HTTP error raised below the routes (body limit) that keeps the API's machine code."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(status, detail)
        self.code = code


#: machine codes of the HTTP errors Starlette raises itself (unknown path, wrong method, ...)
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
#: the methods a 405's `Allow` may name
HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _http_detail(request: Request, exc: StarletteHTTPException) -> str:
    if isinstance(exc, CodedHTTPException):
        return str(exc.detail)
    if exc.status_code == 404:
        return f"path: no endpoint {request.url.path}"
    if exc.status_code == 405:
        return f"method: {request.method} is not allowed on {request.url.path}"
    return f"request: {exc.detail}"


def _document_required_signatures(app: FastAPI) -> None:
    """Mark a device route's `X-Cadence-*` headers required in the OpenAPI spec.

    The dependency reads them as optional so that a missing one is a 401 naming it, not
    FastAPI's 422; the spec said `required: false` of headers no device request may leave out.
    A route that also takes the bank's `X-API-Key` (reading a session) keeps them optional.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            for item in spec.get("paths", {}).values():
                for op in item.values():
                    params = op.get("parameters", []) if isinstance(op, dict) else []
                    if any(p.get("in") == "header" and p.get("name", "").lower() == "x-api-key" for p in params):
                        continue
                    for p in params:
                        if p.get("in") == "header" and p.get("name", "").lower().startswith("x-cadence-"):
                            p["required"] = True
        return build()

    app.openapi = openapi  # type: ignore[method-assign]


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on this request's path (a 405's `Allow`, RFC 9110 15.5.6).

    Starlette names only the methods of the first route that matched the path, and GET and HEAD
    of one path are routes of their own here, so its `Allow` left HEAD out. Each method is asked
    of the router as a request would be (included routers nest their routes).
    """
    routes = request.app.router.routes
    return [m for m in HTTP_METHODS
            if any(r.matches({**request.scope, "method": m})[0] == Match.FULL for r in routes)]


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
        except CodedHTTPException as exc:  # the body limit, where no route's error handling caught it
            status["code"] = exc.status_code
            await JSONResponse({"detail": exc.detail, "code": exc.code}, status_code=exc.status_code)(scope, receive, send)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(name, scope["method"], str(status["code"])).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - t0)


class SettingsMiddleware:
    """Run everything the app does (requests, and its lifespan with the jobs it starts) under its own settings.

    Why: code deep in a request reads `get_settings()` (audit pseudonyms' key, the retention
    policy, the holders); it must get the settings this app was built with, not the process's
    (`cadence.settings.bind_settings`). One context-variable set per request.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with bind_settings(self.settings):
            await self.app(scope, receive, send)


def signing_key(settings: Settings) -> Ed25519PrivateKey:
    if settings.server_signing_key:
        raw = b64d(settings.server_signing_key, field="server_signing_key", canonical=False)
        if len(raw) != 32:
            raise ValueError("server_signing_key: an Ed25519 seed is 32 bytes")
        return Ed25519PrivateKey.from_private_bytes(raw)
    if settings.environment != "development":
        raise ValueError("server_signing_key: required outside development (CADENCE_SERVER_SIGNING_KEY)")
    log.warning("no CADENCE_SERVER_SIGNING_KEY: decision tokens are signed with a key made at start-up")
    return Ed25519PrivateKey.generate()


def load_fusion(settings: Settings, registry_root: Path | None) -> Any:
    """The calibrated `FusionEngine` the server starts with, else None (uncalibrated evidence is left out)."""
    return FusionSource(fusion_path(settings, registry_root)).current()


def _lifespan(settings: Settings, fusion: Any = None) -> Any:
    """Start-up work that must run inside the worker's event loop.

    - size the thread pool of the sync handlers (anyio's default of 40 threads only adds GIL
      contention and pooled connections on a 2-core box);
    - load the scorers once, so the first requests do not pay for it;
    - freeze what start-up allocated (imports, models) out of the garbage collector's reach:
      a full collection over it took ~100 ms, a pause every queued request would wait behind.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        state: AppState = app.state.cadence
        for modality in MODALITIES:
            try:
                active = state.provider.get(modality)
            except Exception as exc:  # noqa: BLE001 - a broken model must not stop the API; requests report it
                log.warning("scorer for %s not loaded at start-up: %s", modality, exc)
                continue
            engine = fusion.current() if fusion is not None else None
            if engine is None or modality not in engine.calibrators:
                log.warning("%s: no fusion calibration for the served %s: its evidence is left out of decisions "
                            "(reason 'uncalibrated'), so they step up; `cadence models train --data-dir D` "
                            "calibrates (or `cadence models calibrate`)", modality, active.model_id)
            elif not engine.applies(modality, active.model_id):
                log.warning("%s: the fusion calibration was fitted for %s, not for the served %s, so it is not "
                            "applied: its evidence is left out of decisions (reason 'uncalibrated') "
                            "until it is calibrated (`cadence models calibrate`)", modality,
                            engine.fitted_for(modality), active.model_id)
        if state.held is not None:
            state.held.claim()  # this thread runs the event loop: it holds its connections
        if settings.api_pin_workers and is_worker_process():
            pin_worker()
        # the checkpointer switches itself off for anything but a SQLite file
        checkpointer = WalCheckpointer(app.state.engine, state.write_lock,
                                       on_restart_hold=app.state.metrics.wal_restart_hold.observe) \
            if settings.sqlite_background_checkpoint else None
        if checkpointer is not None:
            checkpointer.start(app.state.engine)
        app.state.checkpointer = checkpointer
        retention = RetentionScheduler(state.sessions, app.state.engine, settings.purge_interval_s, state.write_lock)
        retention.start()
        app.state.retention = retention
        sweeper = asyncio.create_task(_sweep_templates(state.provider.templates))
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            sweeper.cancel()
            with suppress(asyncio.CancelledError):
                await sweeper
            retention.stop()
            if checkpointer is not None:
                checkpointer.stop()
            if state.held is not None:
                state.held.close()
            for budget in (state.limiter, state.failures):
                if isinstance(budget, RedisRateLimiter):
                    budget.close()

    return lifespan


#: how often a worker drops the decoded templates nobody used for `TemplateCache.idle_s`
TEMPLATE_SWEEP_S = 60.0


async def _sweep_templates(cache: TemplateCache) -> None:
    """Drop idle decoded templates now and then, requests or none (an erased person's arrays go too)."""
    while True:
        await asyncio.sleep(TEMPLATE_SWEEP_S)
        cache.sweep()


def _field_message(err: dict[str, Any]) -> str:
    if err.get("type") == "json_invalid":  # its loc is ("body", <character position>), not a field
        pos = [p for p in err.get("loc", ()) if isinstance(p, int)]
        where = f" at character {pos[0]}" if pos else ""
        return f"body: not valid JSON{where} ({err.get('msg', 'invalid')})"
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
    return f"{loc or 'body'}: {err.get('msg', 'invalid')}"


#: the scopes API keys may carry (`server.api.deps.BankKey`, `AdminKey`)
API_SCOPES = frozenset({"bank", "admin"})
#: shortest API key accepted outside development
MIN_API_KEY_CHARS = 16


def check_settings(settings: Settings) -> None:
    """Refuse (ValueError naming the setting) what would make the server fail later, call by call.

    `create_app` runs it; `cadence serve` runs it once before starting several workers, which
    would otherwise each fail and be restarted forever.
    """
    production = settings.environment != "development"
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(settings.database_url)
    except (ArgumentError, ValueError):  # ValueError: a port that is no number
        url = None  # reported, naming the URL and the setting, where the engine is made
    if url is not None and url.get_backend_name() == "sqlite":
        # every worker and connection needs the one database file: an in-memory database is one per
        # connection (requests failed "no such table"); the URI form (file:...?uri=true) has no path
        # for the lock files beside the database, and its options (mode=ro, mode=memory) defeat the server
        database, query = url.database or "", {k: str(v).lower() for k, v in url.query.items()}
        if database in ("", ":memory:") or database.startswith("file::memory:") or query.get("mode") == "memory":
            raise ValueError(f"database_url: {settings.database_url!r} is an in-memory SQLite database, one per "
                             "connection and gone at exit; the server needs a file: sqlite:////path/to/cadence.sqlite")
        if query.get("mode") == "ro" or query.get("immutable") in ("1", "true"):
            raise ValueError(f"database_url: {settings.database_url!r} opens the database read-only; the server "
                             "writes to it (migrations, transactions, audit log): sqlite:////path/to/cadence.sqlite")
        if database.startswith("file:") or "uri" in query:
            raise ValueError(f"database_url: SQLite URI filenames ({settings.database_url!r}) are not supported by the "
                             "server; give the file as a path: sqlite:////path/to/cadence.sqlite")
    if production and not settings.require_signed_requests:  # the possession factor is the signature
        raise ValueError("require_signed_requests: unsigned device requests are refused outside development")
    if production and DEV_API_KEYS & set(settings.api_keys):
        raise ValueError("api_keys: development API keys are refused outside development")
    for key, scopes in settings.api_keys.items():
        if unknown := set(scopes) - API_SCOPES:
            raise ValueError(f"api_keys: unknown scope(s) {sorted(unknown)} (known: {sorted(API_SCOPES)})")
        if production and len(key) < MIN_API_KEY_CHARS:
            raise ValueError(f"api_keys: a key of {len(key)} characters is guessable; use at least {MIN_API_KEY_CHARS}")
    from compliance.keys import KeyConfigError, hmac_key
    from compliance.keys import signing_key as audit_signing_key

    try:  # every audited call pseudonymises with it: refuse now rather than fail each call with a 500
        hmac_key(settings)
        if production:  # the retention purge signs a checkpoint when it prunes the audit log
            audit_signing_key(settings)
    except KeyConfigError as exc:
        raise ValueError(str(exc)) from exc
    if production or settings.server_signing_key:
        signing_key(settings)
    if settings.purge_interval_s > 0:  # the scheduled purge would fail only at its first run, a day later
        from compliance.retention import PolicyError, load_policy

        try:
            load_policy(settings.retention_policy)
        except PolicyError as exc:
            raise ValueError(f"retention_policy: {exc} (CADENCE_RETENTION_POLICY)") from exc
    from fusion.policy import default_policy

    default_policy()  # a broken fusion/policy.yaml: one ValueError naming file and field, before any worker


def create_app(settings: Settings | None = None, *, init_db: bool = True) -> FastAPI:
    """Build the app: engine, scorer provider, signing key, routes, error handlers, metrics."""
    settings = settings or get_settings()
    if not logging.getLogger().handlers:  # a worker process of `cadence serve --workers N` builds the app
        # before anything configured logging: its start-up warnings would lose their level and logger
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    check_settings(settings)
    # one pooled connection per handler thread, plus the event loop's two held ones on a SQLite
    # file (`HeldConnections`): none made and dropped under load
    pool = {} if ":memory:" in settings.database_url else {"pool_size": settings.api_threads + 4, "max_overflow": 8}
    engine = make_engine(settings.database_url, **pool)
    sqlite = engine.dialect.name == "sqlite"
    if sqlite:
        serialize_sqlite_writers(engine)
    if init_db:
        from server.migrate import upgrade

        upgrade(engine)
    for mod in settings.holder_modules:
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            log.warning("holder module %s not importable: %s", mod, exc)
    # the configured folder even before it exists: `cadence models train` may create it while the
    # server runs, and the provider and fusion source pick it up as they pick up an activation
    registry_root = Path(settings.model_registry) if settings.model_registry else None
    fusion = FusionSource(fusion_path(settings, registry_root))
    # redirect_slashes off: Starlette answered `/v1/health/` with a 307 to a URL built from the
    # client's Host header (an open redirect, and a signed device request redirected to a path it
    # did not sign); a path the API does not serve is a 404 `not_found` like any other
    app = FastAPI(title="Cadence transaction-approval API", version="1", lifespan=_lifespan(settings, fusion),
                  redirect_slashes=False, responses=ERROR_RESPONSES,
                  description="Behavioural evidence (features only) + device possession -> approve / step-up / deny.")
    metrics = Metrics()
    limiter, failures = make_limiters(settings.rate_limit_redis_url, settings.device_rate_per_s)
    for budget in (limiter, failures):
        if isinstance(budget, RedisRateLimiter):
            budget.on_fallback = metrics.rate_limit_fallbacks.labels(budget.name).inc
    app.state.cadence = AppState(settings=settings, sessions=make_sessionmaker(engine),
                                 provider=ScorerProvider(registry_root), signing_key=signing_key(settings),
                                 metrics=metrics,
                                 read_sessions=make_sessionmaker(engine.execution_options(cadence_read_only=True)),
                                 limiter=limiter, failures=failures,
                                 write_lock=write_lock(engine),
                                 held=HeldConnections(engine) if sqlite and ":memory:" not in settings.database_url else None,
                                 decide=fusion.decide,
                                 inline_handlers=(settings.api_inline_handlers if settings.api_inline_handlers is not None
                                                  else sqlite),
                                 calibrate=fusion.calibrate,
                                 fusion=fusion)
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.database_health = health.DatabaseHealth()
    for r in (health, devices, users, transactions, sessions, models, admin):
        app.include_router(r.router)
    if settings.require_signed_requests:
        _document_required_signatures(app)

    def refused(request: Request, status: int, code: str | None = None) -> None:
        """A device request refused before or at its signature check counts against its address.

        One that names no device (401 `device_required`, its body read and parsed first) is
        charged to the address alone: left out, it was a free way to make the server parse bodies.
        """
        if status in (401, 422):
            device = request.headers.get(HEADER_DEVICE)
            if device is not None or code == "device_required":
                charge_failure(app.state.cadence, client_address(request), device)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        # the security-flags metric counts stored flags: a replay's route stored one (`record_replay`)
        # before raising it; other refusals store none (a bot-like enrolment is refused, not flagged)
        if isinstance(exc, EvidenceReplay):
            metrics.flags.labels("evidence_replay").inc()
        refused(request, exc.status, exc.code)
        return JSONResponse({"detail": exc.detail, "code": exc.code}, status_code=exc.status,
                            headers=getattr(exc, "headers", None))

    async def _database_error(request: Request, exc: Exception) -> JSONResponse:
        """503 `database_unavailable` when the database cannot be used; anything else stays a 500.

        One line in the log per failure (the driver's exception and message), not a traceback
        per request while the database is down; the transaction was rolled back by its unit of
        work before this runs. Covers the lean hot path too (its route handler raises here).
        """
        reason = database_unavailable(exc)
        if reason is None:  # a programming error (constraint, SQL): the 500 and its traceback
            raise exc
        health.database_health(app).failed(reason)
        log.error("database unavailable (%s): %s %s: %s", reason, request.method, request.url.path,
                  describe_database_error(exc))
        return await _api_error(request, DatabaseUnavailable(reason))

    app.add_exception_handler(sa_exc.DBAPIError, _database_error)
    app.add_exception_handler(sa_exc.TimeoutError, _database_error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or HTTP_CODES.get(exc.status_code, "http_error")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return JSONResponse({"detail": _http_detail(request, exc), "code": code}, status_code=exc.status_code,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        refused(request, 422)
        errors = exc.errors()
        detail = "; ".join(_field_message(e) for e in errors[:5])
        safe = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors[:20]]
        return JSONResponse({"detail": detail, "code": "validation_error", "errors": safe}, status_code=422)

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(SettingsMiddleware, settings=settings)  # outermost: the lifespan passes it too
    return app
