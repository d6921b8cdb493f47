"""One-line CLI errors (`error: <reason>` on stderr, exit 2: bad input or state, not a crash) and warnings."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text


def error_line(message: object) -> None:
    """Print `message` as one `error:` line on stderr (no markup read from it, no wrapping)."""
    _line("error:", "red", message)


def warning_line(message: object) -> None:
    """Print `message` as one `warning:` line on stderr (no markup read from it, no wrapping)."""
    _line("warning:", "yellow", message)


def _line(label: str, style: str, message: object) -> None:
    Console(stderr=True).print(Text.assemble((label, style), " ", " ".join(str(message).split())), soft_wrap=True)


def fail(message: object) -> NoReturn:
    """`error_line(message)`, then exit 2; call inside `except ... as exc` to keep the cause."""
    error_line(message)
    raise typer.Exit(2)
