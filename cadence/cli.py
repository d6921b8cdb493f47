"""The `cadence` console script: one typer app gathering every command module."""

from __future__ import annotations

import typer

from cadence.commands import bench

app = typer.Typer(
    name="cadence",
    help="Cadence: open multi-modal behavioural biometrics for transaction approval.",
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
