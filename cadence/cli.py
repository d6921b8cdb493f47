"""The `cadence` console script: one typer app gathering every command module."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import typer
from typer.core import TyperGroup

from cadence.commands import bench


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """A click error (a bad option or argument, a missing one, an unknown command) as one `error:` line.

    Why: typer prints them as a usage line, a hint and a boxed message (4 to 6 lines), where
    scripts and logs want the one line that names the option. The exit code stays click's (2 for
    usage errors). `--help`, Ctrl-C (130) and `typer.Exit` are no click errors: they pass
    untouched, and so does a bare `cadence` or `cadence models`, which prints the help.
    """
    from cadence.commands.errors import error_line

    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise
    except click.ClickException as exc:
        error_line(exc.format_message())
        raise click.exceptions.Exit(exc.exit_code) from exc


class CadenceGroup(TyperGroup):
    """The `cadence` group; here, not in `main`, so tests invoking `app` with CliRunner get the same errors."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        with _one_line_errors():  # the top level's own options and arguments
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line_errors():  # every command's, and the errors the commands raise
            return super().invoke(ctx)


app = typer.Typer(
    name="cadence",
    help="Cadence: open multi-modal behavioural biometrics for transaction approval.",
    cls=CadenceGroup,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command
)
app.add_typer(bench.app)

# Command groups that later parts of the system add; each module exposes `app`.
for _name in ("serve", "demo", "models", "audit", "compliance", "federated", "mobile"):
    try:
        _mod = __import__(f"cadence.commands.{_name}", fromlist=["app"])
    except ModuleNotFoundError as _exc:  # a command module not written yet
        if _exc.name != f"cadence.commands.{_name}":
            raise
        continue
    app.add_typer(_mod.app)


def main() -> None:
    """Console entry: the typer app, with a bad CADENCE_* setting or policy file reported in one line (exit 2)."""
    import sys

    from cadence.settings import SettingsError

    try:
        app()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except ValueError as exc:  # a broken fusion/policy.yaml, read at its first use
        policy = sys.modules.get("fusion.policy")  # loaded if it raised; not imported here (numpy)
        if policy is None or not isinstance(exc, policy.PolicyError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":  # `python -m cadence.cli`
    main()
