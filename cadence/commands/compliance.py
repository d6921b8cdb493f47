"""`cadence compliance purge|export|erase`: retention and data-subject requests from the shell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.orm import Session

from cadence.commands.audit import DbUrl, compliance_factory, compliance_session
from cadence.commands.errors import error_line, fail
from cadence.console import out_console

app = typer.Typer()
compliance_app = typer.Typer(help="Consent, retention and data-subject requests (GDPR Art. 17/20).", no_args_is_help=True)
app.add_typer(compliance_app, name="compliance")

_err = Console(stderr=True)


def _holders() -> None:
    from cadence.settings import get_settings
    from compliance.subjects import load_holder_modules, registered_holders

    wanted = get_settings().holder_modules
    missing = sorted(set(wanted) - set(load_holder_modules(wanted)))
    if missing:  # an erasure or export that skipped a holder would be silently incomplete
        fail(f"data holder module(s) {', '.join(missing)} (CADENCE_HOLDER_MODULES) cannot be imported: their data "
             "would be left out; fix the setting")
    if not registered_holders():
        _err.print("[yellow]note:[/yellow] no data holders registered (settings.holder_modules): only consent and audit tables are covered",
                   soft_wrap=True)


def _refuse_unheld_server_data(session: Session) -> None:
    """Exit 2 when the server's tables hold rows its data holder would not reach (`unheld_server_tables`)."""
    from server.services.compliance_hooks import unheld_server_tables

    tables = unheld_server_tables(session)
    if tables:
        fail(f"the database holds the server's data ({', '.join(tables)}) but its data holder is not loaded "
             "(CADENCE_HOLDER_MODULES lacks server.holders): that data would be left out; fix the setting")


@compliance_app.command("purge")
def purge_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be removed; change nothing.")] = False,
    policy: Annotated[Path | None, typer.Option("--policy", help="Retention policy YAML (default: CADENCE_RETENTION_POLICY, else the packaged policy).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print counts as JSON.")] = False,
    database_url: DbUrl = None,
) -> None:
    """Apply the retention policy: remove what outlived it and report counts per table."""
    from compliance.keys import KeyConfigError
    from compliance.retention import PolicyError, load_policy, run_purge

    try:
        pol = load_policy(policy)
    except PolicyError as exc:
        raise typer.BadParameter(str(exc), param_hint="--policy") from exc
    _holders()
    with compliance_factory(database_url, server_tables=True) as factory:
        with factory() as session:
            _refuse_unheld_server_data(session)
        try:  # the audit entries due are verified in a snapshot of their own, then the purge's transaction
            removed = run_purge(factory, pol, dry_run=dry_run, actor="cli")
        except (KeyConfigError, PolicyError) as exc:  # a key, or a holder finding the policy lacks its kind
            fail(exc)
    if as_json:
        report: dict[str, object] = {"dry_run": dry_run, "policy_version": pol.version, "removed": removed}
        if removed.audit_refused is not None:
            report["audit_not_pruned"] = removed.audit_refused
        typer.echo(json.dumps(report))
    else:
        title = f"retention purge (policy {escape(pol.version)}){' - DRY RUN, nothing removed' if dry_run else ''}"
        table = Table(title=title)
        table.add_column("table")
        table.add_column("would remove" if dry_run else "removed", justify="right")
        for name, n in removed.items():
            table.add_row(escape(name), str(n))
        out_console().print(table)
    if removed.audit_refused is not None:  # the rest was purged (and committed); the log needs a person
        error_line(f"audit log not pruned: {removed.audit_refused}; run `cadence audit verify`")
        raise typer.Exit(1)


def _user_id(user: str) -> None:
    """A user id must name someone: an empty or blank one is a usage error, not a lookup."""
    if not user.strip():
        raise typer.BadParameter("must be a non-empty user id", param_hint="USER")
    if user != user.strip():  # pasted from a ticket: "no data held for dave" would close a request wrongly
        raise typer.BadParameter(f"{user!r} starts or ends with white space, which no user id the API takes "
                                 f"does; did you mean {user.strip()!r}?", param_hint="USER")
    try:
        user.encode("utf-8")
    except UnicodeEncodeError:  # bytes of another encoding on the command line: no id the server stores
        raise typer.BadParameter("is not UTF-8 text (bytes of another encoding?)", param_hint="USER") from None


def _nothing_held(user: str) -> NoReturn:
    """Exit 1 for an id nothing is held about: a typo must not read as a finished request.

    An already-erased person holds nothing either, so a repeated erasure ends here too.
    """
    error_line(f"no data held for {user}")
    raise typer.Exit(1)


@compliance_app.command("export")
def export_cmd(
    user: Annotated[str, typer.Argument(help="User id.")],
    out: Annotated[Path | None, typer.Option("--out", help="Write the JSON here instead of stdout.")] = None,
    database_url: DbUrl = None,
) -> None:
    """Everything held about USER as JSON (GDPR Art. 20)."""
    from cadence.commands.paths import ensure_writable_file
    from compliance.keys import KeyConfigError
    from compliance.subjects import export_user
    from server.services.compliance_hooks import holds_data

    _user_id(user)
    if out is not None:  # checked before the export: no work lost to a bad path
        ensure_writable_file(out, "--out")
    _holders()
    with compliance_session(database_url, server_tables=True) as session:
        _refuse_unheld_server_data(session)
        try:
            data = export_user(session, user)
        except KeyConfigError as exc:  # the audit entries about USER are found by keyed pseudonym
            fail(exc)
    if not holds_data(data):
        _nothing_held(user)
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    if out is not None:
        out.write_text(text + "\n", "utf-8")
        typer.echo(f"wrote {out}", err=True)
    else:
        typer.echo(text)


@compliance_app.command("erase")
def erase_cmd(
    user: Annotated[str, typer.Argument(help="User id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    database_url: DbUrl = None,
) -> None:
    """Erase USER (GDPR Art. 17): devices, templates, enrolment windows, evidence, transactions, sessions, nonces and consents; the audit log keeps only pseudonyms."""
    from cadence.db import begin_write
    from compliance.keys import KeyConfigError
    from compliance.subjects import erase_user

    _user_id(user)
    if not yes:
        typer.confirm(f"Erase every record of {user!r}? This cannot be undone", abort=True)
    _holders()
    with compliance_session(database_url, server_tables=True) as session:
        begin_write(session)  # SQLite: what it counts is what it deletes (no server write in between)
        _refuse_unheld_server_data(session)
        try:
            removed = erase_user(session, user, actor="cli")
        except KeyConfigError as exc:
            fail(exc)
        if not any(removed.values()):  # raised inside the transaction: its audit entry is rolled back
            _nothing_held(user)
    table = Table(title=f"erased {escape(user)}")
    table.add_column("table")
    table.add_column("removed", justify="right")
    for name, n in removed.items():
        table.add_row(escape(name), str(n))
    out_console().print(table)
