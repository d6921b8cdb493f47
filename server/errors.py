"""One exception type for every refusal the API makes: status, machine code, human reason."""

from __future__ import annotations


class ApiError(Exception):
    """Raised by services; the app turns it into ``{"detail": ..., "code": ...}`` with `status`."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


#: seconds a client is told to wait (Retry-After) when the database cannot be used
RETRY_AFTER_S = 5
#: SQLite's primary result codes that say the database cannot be used now, not that a statement
#: is wrong (SQLITE_ERROR, a syntax error or a missing table, stays a 500)
_SQLITE_UNAVAILABLE = {5: "busy", 6: "locked", 7: "out of memory", 8: "read-only", 10: "I/O error",
                       11: "damaged", 13: "disk full", 14: "cannot be opened", 15: "locking protocol",
                       26: "not a database"}


class DatabaseUnavailable(ApiError):
    """503 `database_unavailable`: the database cannot be used now (unreachable, disk full, ...).

    Carries a Retry-After header; the reason is short and names no host, file or statement.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(503, "database_unavailable", f"database: unavailable ({reason}); retry later")
        self.reason = reason
        self.headers = {"Retry-After": str(RETRY_AFTER_S)}


def database_unavailable(exc: BaseException) -> str | None:
    """A short reason when `exc` says the database cannot be used now; None for anything else.

    Unavailable: no connection (PostgreSQL unreachable or gone, the pool exhausted), a full
    disk, an I/O error, a busy or read-only database. Not: constraint violations, SQL errors
    and the like, which are the code's own failures (500).
    """
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection came free in time
        return "no connection free"
    if not isinstance(exc, sa_exc.DBAPIError):
        return None
    orig = exc.orig
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):  # SQLite: its result code says which (every error is an OperationalError there)
        return _SQLITE_UNAVAILABLE.get(code & 0xFF)
    if exc.connection_invalidated:
        return "connection lost"
    if not isinstance(exc, sa_exc.OperationalError):
        return None
    sqlstate = getattr(orig, "sqlstate", None) or ""  # PostgreSQL (psycopg); None before any connection
    if sqlstate == "53100":
        return "disk full"
    if sqlstate.startswith("53"):
        return "out of resources"
    if sqlstate.startswith("57P"):
        return "shutting down"
    if sqlstate.startswith("40"):
        return "transaction conflict"
    if sqlstate == "57014":
        return "statement timed out"
    if sqlstate == "55P03":
        return "busy"  # lock_not_available (lock_timeout)
    # no SQLSTATE: the connection never came up; class 08: connection exceptions. Anything else
    # (program limits, ...) is the code's own failure: a 500
    return "not reachable" if not sqlstate or sqlstate.startswith("08") else None


def describe_database_error(exc: BaseException) -> str:
    """One line for the log: the driver's exception class and message (no traceback, no SQL)."""
    orig = getattr(exc, "orig", None) or exc
    message = " ".join(str(orig).split())
    if len(message) > 300:
        message = message[:297] + "..."
    return f"{type(orig).__module__}.{type(orig).__qualname__}: {message}"
