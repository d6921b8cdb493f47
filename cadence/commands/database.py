"""Database errors at a command's start turned into one line that names the database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console


def shown(url: str) -> str:
    """`url` without its password (as given when it does not parse)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


@contextmanager
def database_errors(url: str) -> Iterator[None]:
    """Exit 2 with the reason when `url` cannot be parsed, its driver is missing, it is unreachable or not a database."""
    from sqlalchemy import exc

    from server.migrate import SchemaError

    try:
        yield
    except exc.ArgumentError as e:
        Console(stderr=True).print(f"[red]error:[/red] database URL {url!r} (--database-url or CADENCE_DATABASE_URL): {e}", soft_wrap=True)
        raise typer.Exit(2) from e
    except (exc.NoSuchModuleError, ImportError) as e:  # unknown dialect, or its DBAPI driver not installed
        Console(stderr=True).print(f"[red]error:[/red] database {shown(url)}: no driver for it here: {e}", soft_wrap=True)
        raise typer.Exit(2) from e
    except (exc.OperationalError, exc.InterfaceError) as e:
        reason = " ".join(str(e.orig or e).split())
        Console(stderr=True).print(f"[red]error:[/red] cannot open database {shown(url)}: {reason}", soft_wrap=True)
        raise typer.Exit(2) from e
    except SchemaError as e:  # a migration that failed (rolled back), or a database of a newer release or another application
        Console(stderr=True).print(f"[red]error:[/red] database {shown(url)}: {e}", soft_wrap=True)
        raise typer.Exit(2) from e
    except exc.DatabaseError as e:  # e.g. SQLite's "file is not a database": a file of something else
        reason = " ".join(str(e.orig or e).split())
        Console(stderr=True).print(f"[red]error:[/red] database {shown(url)} is not usable: {reason}", soft_wrap=True)
        raise typer.Exit(2) from e
