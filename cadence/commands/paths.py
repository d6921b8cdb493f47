"""Output paths checked before a command does its work, so a typo fails in a second, not after it."""

from __future__ import annotations

from pathlib import Path

import typer

from cadence.files import write_problem


def refuse_non_folder(path: Path, param_hint: str) -> None:
    """A usage error naming the option when `path` exists and is no folder (checked before anything is made)."""
    if path.exists() and not path.is_dir():
        raise typer.BadParameter(f"{path} is not a folder", param_hint=param_hint)


def ensure_writable_dir(path: Path, param_hint: str) -> None:
    """Create `path` if needed and prove a file can be written there; else a usage error naming the option."""
    refuse_non_folder(path, param_hint)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".cadence-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise typer.BadParameter(f"cannot write to {path}: {exc.strerror or exc}", param_hint=param_hint) from exc


def ensure_writable_file(path: Path, param_hint: str) -> None:
    """Prove the file `path` can be written (its folder exists, it is no folder); else a usage error."""
    problem = write_problem(path)
    if problem is not None:
        raise typer.BadParameter(problem, param_hint=param_hint)


def folder_option(value: str | None, param_hint: str) -> Path | None:
    """`value` as an existing folder (None stays None); '' (which would mean the current folder) is refused."""
    if value is None:
        return None
    if not value.strip():
        raise typer.BadParameter("empty path (use '.' for the current folder)", param_hint=param_hint)
    path = Path(value).expanduser()
    if not path.is_dir():
        raise typer.BadParameter(f"{path} is not a folder", param_hint=param_hint)
    return path


def path_option(value: str | None, param_hint: str) -> Path | None:
    """`value` as a path (None stays None); '' (which would mean the current folder) is refused."""
    if value is None:
        return None
    if not value.strip():
        raise typer.BadParameter("empty path (use '.' for the current folder)", param_hint=param_hint)
    return Path(value).expanduser()
