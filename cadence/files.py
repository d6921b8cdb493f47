"""Files written whole: whether one can be written (asked before work whose result would be lost) and atomic writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` through an owner-only temporary file of this writer's own, in the same folder.

    Synced, then renamed: a reader or a crash sees the old file or the new one, never half a
    key or pointer, and two writers (threads of one server) never share a temporary file. The
    result is owner-only (0600), as `tempfile.mkstemp` creates it.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
