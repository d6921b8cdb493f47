"""Output paths checked before a command does its work, so a typo fails in a second, not after it."""

from __future__ import annotations

from pathlib import Path

import typer


def ensure_writable_dir(path: Path, param_hint: str) -> None:
    """Create `path` if needed and prove a file can be written there; else a usage error naming the option."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".cadence-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise typer.BadParameter(f"cannot write to {path}: {exc.strerror or exc}", param_hint=param_hint) from exc
