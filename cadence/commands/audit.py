"""`cadence audit verify|seal`: check the hash-chained audit log, sign its head."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import Engine, inspect
from sqlalchemy.orm import Session, sessionmaker

from cadence.commands.errors import error_line, fail
from cadence.console import out_console

app = typer.Typer()
audit_app = typer.Typer(help="Tamper-evident audit log: verify the chain, seal its head.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


def sqlite_file_missing(url: str) -> Path | None:
    """The file of a SQLite URL when it does not exist or is empty (None for other databases and in-memory ones).

    An empty file is no database either: opening it would turn it into one (SQLite writes its
    header and the write-ahead log), which a command that only reads must not do.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is no number
        return None  # reported, naming the setting, when the engine is made
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:" or u.database.startswith("file:"):
        return None
    path = Path(u.database)
    return None if path.exists() and (not path.is_file() or path.stat().st_size > 0) else path


@contextmanager
def compliance_engine(database_url: str | None = None, *, server_tables: bool = False) -> Iterator[Engine]:
    """An engine on the configured database, checked before any work; exits 2 if unusable.

    Unusable: a SQLite file that does not exist (opening it would create an empty database
    and hide the mistake), unreachable, or without the compliance tables. With
    `server_tables` (the command reads the server's tables through the data holders) also
    at a schema revision other than this code's: commands never migrate, the server does.
    The audit tables alone are the same at every revision, so auditing an older copy works.
    """
    from cadence.commands.database import database_errors, shown
    from cadence.db import make_engine
    from cadence.settings import get_settings
    from compliance.models import TABLES
    from server.migrate import schema_problem

    if database_url is not None and not database_url.strip():  # '' would silently mean CADENCE_DATABASE_URL
        raise typer.BadParameter("empty database URL (leave the option out for CADENCE_DATABASE_URL)",
                                 param_hint="--database-url")
    url = database_url or get_settings().database_url
    missing_file = sqlite_file_missing(url)
    if missing_file is not None:
        fail(f"no database at {missing_file}: point --database-url (or CADENCE_DATABASE_URL) at the server's "
             "database, or start the server once (`cadence serve` creates and migrates it)")
    with database_errors(url):
        engine = make_engine(url)
    try:
        with database_errors(url):
            names = set(inspect(engine).get_table_names())
            problem = schema_problem(engine) if server_tables else None
        missing = [t.name for t in TABLES if t.name not in names]
        if missing:
            fail(f"database {shown(url)} has no {', '.join(missing)} table(s): "
                 "start the server once on it (`cadence serve` migrates the database at start-up)")
        if problem:
            fail(f"{shown(url)}: {problem}")
        yield engine
    finally:
        engine.dispose()


@contextmanager
def compliance_factory(database_url: str | None = None, *, server_tables: bool = False) -> Iterator[sessionmaker[Session]]:
    """Sessions on the configured database, for a command of more than one transaction; exits 2 if unusable.

    The command's work and its commits run inside `database_errors` too: a read-only SQLite
    file or a connection lost half-way is one error line (exit 2), not a traceback.
    """
    from cadence.commands.database import database_errors
    from cadence.db import make_sessionmaker
    from cadence.settings import get_settings

    with compliance_engine(database_url, server_tables=server_tables) as engine, \
            database_errors(database_url or get_settings().database_url, opening=False):
        yield make_sessionmaker(engine)


@contextmanager
def compliance_session(database_url: str | None = None, *, commit: bool = True,
                       server_tables: bool = False) -> Iterator[Session]:
    """A transaction on the configured database (rolled back when not `commit`); exits 2 if unusable (`compliance_factory`)."""
    with compliance_factory(database_url, server_tables=server_tables) as factory:
        if commit:
            with factory() as session, session.begin():
                yield session
        else:
            with factory() as session:
                try:
                    yield session
                finally:
                    session.rollback()


DbUrl = Annotated[str | None, typer.Option("--database-url", help="SQLAlchemy URL (default: CADENCE_DATABASE_URL).")]


@audit_app.command("verify")
def verify(
    checkpoint: Annotated[
        list[Path] | None, typer.Option("--checkpoint", help="Checkpoint JSON kept outside the database (from `cadence audit seal`); repeatable.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    database_url: DbUrl = None,
) -> None:
    """Recompute the whole chain and every seal; exit 1 naming the first broken entry."""
    from compliance.audit import AuditError, checkpoint_from_dict, read_snapshot, verify_chain
    from compliance.keys import KeyConfigError

    external = []
    for p in checkpoint or []:
        try:
            external.append(checkpoint_from_dict(json.loads(p.read_text("utf-8"))))
        except (OSError, ValueError, AuditError) as exc:
            raise typer.BadParameter(f"{p}: {exc}", param_hint="--checkpoint") from exc
    # one snapshot: a prune that a purge commits while the walk is half-way would read as deleted entries
    with compliance_session(database_url, commit=False) as session:
        read_snapshot(session)
        try:
            result = verify_chain(session, external=external)
        except KeyConfigError as exc:
            fail(exc)
    out = out_console()
    if as_json:
        out.print_json(json.dumps(result.to_dict()))
    elif result.ok:
        out.print(
            f"audit chain OK: {result.entries} entries (seq {result.first_seq or 0}..{result.head_seq}), "
            f"{result.checkpoints} signed checkpoint(s), head {result.head_hash[:16]}",
            soft_wrap=True,
        )
    else:  # the reasons quote stored values, which may hold brackets: no markup read from them
        fb = result.first_broken
        assert fb is not None
        out.print(f"audit chain BROKEN: first broken entry seq={fb.seq}: {fb.reason}", soft_wrap=True, markup=False)
        for other in result.problems[1:10]:
            out.print(f"  also entry seq={other.seq}: {other.reason}", soft_wrap=True, markup=False)
    if not result.ok:
        raise typer.Exit(1)


@audit_app.command("seal")
def seal_cmd(
    out: Annotated[Path | None, typer.Option("--out", help="Also write the checkpoint JSON here (keep it off this database).")] = None,
    database_url: DbUrl = None,
) -> None:
    """Sign the chain head with the audit key and print the checkpoint JSON (store it elsewhere too)."""
    from compliance.audit import AuditChainError, checkpoint_dict, seal_in_snapshots
    from compliance.keys import KeyConfigError

    if out is not None:  # checked before sealing: a seal that cannot be kept elsewhere is half done
        from cadence.commands.paths import ensure_writable_file

        ensure_writable_file(out, "--out")  # a missing folder is refused, as `compliance export --out` does
    with compliance_factory(database_url) as factory:
        try:  # verified in a snapshot of its own, then signed in a short transaction
            cp = seal_in_snapshots(factory)
        except AuditChainError as exc:  # a broken chain: the same exit code as `verify` finding it
            error_line(exc)
            raise typer.Exit(1) from exc
        except KeyConfigError as exc:  # configuration, like `verify`'s
            fail(exc)
        text = json.dumps(checkpoint_dict(cp), indent=2)
    if out is not None:
        out.write_text(text + "\n", "utf-8")
    typer.echo(text)
