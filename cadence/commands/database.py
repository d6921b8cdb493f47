"""Database errors at a command's start turned into one line that names the database."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from cadence.commands.errors import fail

#: the password of a URL that does not parse: ``scheme://user:PASSWORD@``, up to the last ``@`` (a
#: password may hold ``/``, ``#``, ``?`` and ``@`` themselves, as base64 secrets do)
_PASSWORD = re.compile(r"(://[^:/@?#]*:).*@")


def shown(url: str) -> str:
    """`url` without its password (one that does not parse has what stands between ``user:`` and ``@`` masked).

    A SQLite URL holds no password and is shown as given: rendering it again would
    percent-encode its path (``[prod]`` as ``%5Bprod%5D``).
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is no number
        return _PASSWORD.sub(r"\1***@", url)
    return url if parsed.get_backend_name() == "sqlite" else parsed.render_as_string(hide_password=True)


def url_problem(url: str) -> str | None:
    """Why `url` is not a database URL, or None when it parses."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError:
        return "not a database URL (dialect+driver://user:password@host:port/database)"
    except ValueError as exc:  # make_url's own: int() of a port that is no number
        return f"not a database URL ({exc}{': a port is a number' if 'int()' in str(exc) else ''})"
    return None


def _read_only_hint(url: str, reason: str) -> str:
    """How to read a SQLite file in a folder this process cannot write (a backup on a read-only mount).

    SQLite in WAL mode writes a `-shm` file beside the database even to read it, so it answered
    only "unable to open database file" of a file that is there.
    """
    import os

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from server.sqlite_writers import sqlite_file

    try:
        database = sqlite_file(make_url(url))
    except (ArgumentError, ValueError):  # not a URL we can read a path from: no hint
        return ""
    if database is None or "unable to open" not in reason or not os.path.isfile(database):
        return ""
    folder = os.path.dirname(os.path.abspath(database))
    if os.access(folder, os.W_OK) and not _read_only_mount(folder):
        return ""
    return (f" (its folder {folder} cannot be written, and SQLite writes a -shm file beside the database even to "
            f"read it; for a read-only copy use --database-url 'sqlite:///file:{os.path.abspath(database)}"
            "?mode=ro&immutable=1&uri=true')")


def _read_only_mount(folder: str) -> bool:
    import os

    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


@contextmanager
def database_errors(url: str, *, source: str = "--database-url or CADENCE_DATABASE_URL", opening: bool = True) -> Iterator[None]:
    """Exit 2 with the reason when `url` cannot be parsed, its driver is missing, it is unreachable or not a database.

    `source` names where the URL came from. With `opening` false the block works on a database
    already open (a command's transaction): a lost connection or a read-only file is named as
    such, not as a database that cannot be opened. Messages are one plain line (`fail`): a
    URL or path may hold brackets, which rich would read as markup.
    """
    from sqlalchemy import exc

    from server.migrate import SchemaError

    try:
        yield
    except (exc.NoSuchModuleError, ImportError) as e:  # unknown dialect, or its DBAPI driver not installed
        fail(f"database {shown(url)}: no driver for it here: {e}")
    except (exc.ArgumentError, ValueError) as e:
        problem = url_problem(url)
        if problem is not None:  # the URL itself (a ValueError from anything else is not ours to report)
            fail(f"database URL {shown(url)!r} ({source}): {problem}")
        if isinstance(e, ValueError):
            raise
        fail(f"database {shown(url)}: {e}")
    except (exc.OperationalError, exc.InterfaceError) as e:
        reason = str(e.orig or e) + _read_only_hint(url, str(e.orig or e))
        fail(f"cannot open database {shown(url)}: {reason}" if opening else f"database {shown(url)}: {reason}")
    except SchemaError as e:  # a migration that failed (rolled back), or a database of a newer release or another application
        fail(f"database {shown(url)}: {e}")
    except exc.DatabaseError as e:  # e.g. SQLite's "file is not a database": a file of something else
        fail(f"database {shown(url)} is not usable: {e.orig or e}")
