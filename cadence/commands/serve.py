"""`cadence serve`: run the transaction-approval API with uvicorn (settings from CADENCE_*)."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cadence.commands.errors import fail

if TYPE_CHECKING:
    from sqlalchemy import Engine

app = typer.Typer()
#: the levels uvicorn knows
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: settings.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default: settings.port, 8000).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes (default: settings.api_workers).")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level: critical, error, warning, info, debug or trace.")] = "info",
    keep_alive: Annotated[int, typer.Option(min=1, help="Seconds an idle keep-alive connection stays open.")] = 5,
) -> None:
    """Serve the /v1 API (docs at /docs, OpenAPI at /openapi.json, metrics at /metrics)."""
    from cadence.commands.database import database_errors, shown
    from cadence.db import make_engine
    from cadence.settings import get_settings
    from server.app import check_settings, create_app
    from server.metrics import MetricsDirError, shared_metrics_dir
    from server.migrate import SchemaError, upgrade
    from server.signing import SignatureError

    if log_level.lower() not in LOG_LEVELS:
        raise typer.BadParameter(f"{log_level!r} is not one of {', '.join(LOG_LEVELS)}", param_hint="--log-level")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    try:  # once here: with several workers, each would fail on its own and be restarted forever
        check_settings(settings)
    except (ValueError, SignatureError) as exc:
        fail(exc)
    registry = settings.model_registry  # the fusion calibration and every model are read from it
    if registry.exists() and not registry.is_dir():
        fail(f"model registry {registry} is not a folder (CADENCE_MODEL_REGISTRY)")
    workers = workers if workers is not None else settings.api_workers
    if workers < 1:
        raise typer.BadParameter("must be >= 1", param_hint="--workers")
    host_option, port_option = "--host" if host is not None else "CADENCE_HOST", "--port" if port is not None else "CADENCE_PORT"
    host, port = host or settings.host, port or settings.port
    _check_bindable(host, port, host_option=host_option, port_option=port_option)  # before the database is touched
    with ExitStack() as stack:
        try:  # several workers: one set of counters, summed at each scrape (checked before the database is touched)
            stack.enter_context(shared_metrics_dir(workers))
        except MetricsDirError as exc:
            fail(exc)
        with database_errors(settings.database_url, source="CADENCE_DATABASE_URL"):
            engine = make_engine(settings.database_url)
            try:
                upgrade(engine)  # once, before any worker starts
                read_only = _read_only(engine)
            except SchemaError as exc:
                fail(exc)
            finally:
                engine.dispose()
        if read_only is not None:
            fail(f"database {shown(settings.database_url)} cannot be written ({read_only}): the server records every "
                 "request there; give it a writable database (for SQLite, the file and its folder) in CADENCE_DATABASE_URL")
        # access lines are logged at INFO: above that, skip building them (a visible share of a request)
        access_log = log_level.lower() in ("trace", "debug", "info")
        # forwarded headers only from the proxies named in the settings (uvicorn would trust loopback's)
        trusted = settings.forwarded_allow_ips or None
        _run(create_app, settings, host=host, port=port, workers=workers, log_level=log_level, keep_alive=keep_alive,
             access_log=access_log, trusted=trusted)


def _check_bindable(host: str, port: int, *, host_option: str, port_option: str) -> None:
    """Exit 2 with one line naming the option when the server could not listen on `host`:`port`.

    Checked before the database and the workers: uvicorn would otherwise end with its own
    "[Errno -2] Name or service not known" or "address already in use", naming neither.
    """
    import errno
    import socket

    from federated.deployment import DeploymentError, check_port_free

    try:
        check_port_free(host, port, "cadence serve")
    except DeploymentError as exc:
        cause = exc.__cause__
        reason = (getattr(cause, "strerror", None) or str(cause)) if cause is not None else str(exc)
        if isinstance(cause, socket.gaierror) or getattr(cause, "errno", None) == errno.EADDRNOTAVAIL:
            fail(f"{host_option}: cannot listen on {host!r} ({reason}): give an address of this machine, "
                 "e.g. 127.0.0.1, or 0.0.0.0 for every interface")
        fail(f"{port_option}: cannot listen on port {port} of {host} ({reason}): is another server running there? "
             f"Choose another {port_option}")


def _read_only(engine: Engine) -> str | None:
    """Why the server could not write to its database, or None when it can.

    At the schema's head start-up writes nothing, so a database open read-only (a read-only
    SQLite file or mount, a PostgreSQL standby) passed it, and every request then answered 503
    "retry later". A write that changes nothing, rolled back, finds it before any worker starts.
    """
    from sqlalchemy import exc, text

    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":  # another process writing now is no reason to wait 30 s, nor to refuse
            conn.exec_driver_sql("PRAGMA busy_timeout=250")
        if conn.dialect.name == "postgresql":
            on = conn.execute(text("SHOW transaction_read_only")).scalar() == "on"
            return "its sessions are read-only: transaction_read_only is on (a standby?)" if on else None
        if conn.dialect.name != "sqlite":
            return None
        try:
            conn.execute(text("DELETE FROM alembic_version WHERE 0 = 1"))  # SQLite's write lock and nothing else
        except exc.OperationalError as e:
            reason = str(e.orig)
            if "locked" in reason or "busy" in reason:  # another writer holds the lock: the file is writable
                return None
            if "readonly" not in reason:
                raise
            return reason
        finally:
            conn.rollback()
    return None


def _run(create_app: Any, settings: Any, *, host: str, port: int, workers: int, log_level: str, keep_alive: int,
         access_log: bool, trusted: str | None) -> None:
    """Run uvicorn: one app, or `workers` processes each building their own from the same CADENCE_* settings."""
    import uvicorn

    try:
        if workers == 1:
            uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, timeout_keep_alive=keep_alive,
                        access_log=access_log, proxy_headers=trusted is not None, forwarded_allow_ips=trusted)
        else:  # each worker builds its own app from the same CADENCE_* settings
            uvicorn.run("server.app:create_app", factory=True, host=host, port=port, workers=workers,
                        log_level=log_level, timeout_keep_alive=keep_alive, access_log=access_log,
                        proxy_headers=trusted is not None, forwarded_allow_ips=trusted)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
