"""The server applies the retention policy on a schedule (`CADENCE_PURGE_INTERVAL_S`; 0 = off).

One worker process per database does it: a worker takes a non-blocking `flock` on a lock
file named after the database, and the others leave the job to it. Each run is
`compliance.retention.scheduled_purge`: one transaction, audited as ``retention.purge``,
idempotent, so a run that overlaps `cadence compliance purge` from cron removes nothing twice.
A failing run (a missing audit signing key when the audit log needs pruning, an unreachable
database) is logged and retried at the next interval; it never stops the API.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


def _lock_path(database_url: str) -> str:
    """Beside a SQLite file (like its WAL); for a server database, in the temp folder by URL."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return f"{url.database}.purge"
    digest = hashlib.sha256(url.render_as_string(hide_password=True).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"cadence-purge-{digest}.lock")


class RetentionScheduler:
    """A daemon thread that purges every `interval_s` seconds, in one worker per database."""

    def __init__(self, factory: sessionmaker[Session], database_url: str, interval_s: float,
                 write_lock: AbstractContextManager[Any] | None = None) -> None:
        self.factory, self.interval_s = factory, interval_s
        self.write_lock = write_lock or nullcontext()
        self.lock_path = _lock_path(database_url)
        self.runs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None

    def _own(self) -> bool:
        """Whether this process runs the purge for the database (the first to lock the file)."""
        if fcntl is None:
            return True
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def start(self) -> bool:
        """Start the thread if purging is on and this worker owns it; returns whether it started."""
        if self.interval_s <= 0 or not self._own():
            return False
        self._thread = threading.Thread(target=self._loop, name="cadence-retention", daemon=True)
        self._thread.start()
        return True

    def run_once(self) -> dict[str, int] | None:
        from compliance.retention import scheduled_purge

        try:
            with self.write_lock:
                removed = scheduled_purge(self.factory)
        except Exception as exc:  # noqa: BLE001 - logged and retried; retention must not stop the API
            log.error("scheduled retention purge failed (retried in %.0f s): %s", self.interval_s, exc)
            return None
        self.runs += 1
        if any(removed.values()):
            log.info("retention purge removed %s", {k: v for k, v in removed.items() if v})
        return removed

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.run_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None
