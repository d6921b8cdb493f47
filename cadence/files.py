"""Whether a file can be written, asked before work whose result would be lost otherwise."""

from __future__ import annotations

from pathlib import Path


def write_problem(path: Path) -> str | None:
    """Why the file `path` cannot be written (it is a folder, its folder is missing, no permission); None if it can.

    An existing file is opened for appending and left as it was; a new one is created and removed.
    """
    if path.is_dir():
        return f"cannot write {path}: it is a folder; give a file name"
    if not path.parent.is_dir():
        return f"cannot write {path}: folder {path.parent} does not exist"
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
        if not existed:
            path.unlink()
    except OSError as exc:
        return f"cannot write {path}: {exc.strerror or exc}"
    return None
