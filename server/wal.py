"""Checkpoint the SQLite write-ahead log in the background, not inside a request's commit.

By default SQLite checkpoints when the WAL passes 1000 pages, in whichever connection
commits next. An authorize call writes about 27 pages (decision, evidence hashes, nonce,
audit entry and their indexes), so every ~37th request paid for copying the log back into
the database file and two fsyncs: a 13-20 ms stall on an otherwise 3 ms request, the
largest part of the API's p99.

Here the server's connections never auto-checkpoint (`PRAGMA wal_autocheckpoint=0`) and one
thread per database (whichever worker process holds `<db>.checkpointer`) does the work:
- every `interval_s`, a PASSIVE checkpoint: copies and syncs without blocking anyone;
- every `restart_s`, a RESTART checkpoint while holding the server's write lock. Under a
  steady stream of writes a PASSIVE checkpoint never lets the log start over (a writer
  always begins before it finishes), so without this the file grows by ~100 KB per request.
  Writers wait for it (a few ms, once per `restart_s`) on the lock, where they wake at once.
Other processes (CLI, migrations) keep SQLite's default, so the WAL cannot grow without bound
while the server is down; the thread checkpoints once more when the server stops.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from sqlalchemy import Engine, event

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: SQLite's own auto-checkpoint stays on
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


class WalCheckpointer:
    def __init__(self, engine: Engine, write_lock: AbstractContextManager[Any] | None = None, *,
                 interval_s: float = 1.0, restart_s: float = 5.0) -> None:
        self.database = engine.url.database or ""
        self.write_lock = write_lock or nullcontext()
        self.interval_s, self.restart_s = interval_s, restart_s
        self.enabled = (fcntl is not None and engine.dialect.name == "sqlite"
                        and self.database not in ("", ":memory:"))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._owner_fd: int | None = None
        if self.enabled:
            event.listen(engine, "connect", self._on_connect)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _on_connect(self, dbapi_conn: Any, _record: Any) -> None:
        if self.running:  # only while the thread runs; otherwise SQLite's own default
            dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")

    def _own(self) -> bool:
        """Whether this process is the database's checkpointer (one per database file)."""
        if self._owner_fd is not None:
            return True
        fd = os.open(f"{self.database}.checkpointer", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._owner_fd = fd
        return True

    def checkpoint(self, mode: str = "PASSIVE", *, timeout: float = 0.05) -> tuple[int, int, int] | None:
        """One checkpoint on a connection of its own: (busy, log frames, checkpointed frames)."""
        conn = sqlite3.connect(self.database, timeout=timeout, isolation_level=None)
        try:
            row = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            log.debug("wal checkpoint %s -> %s", mode, row)
            return tuple(row) if row else None
        except sqlite3.Error as exc:  # busy or locked: the next round catches up
            log.debug("wal checkpoint %s skipped: %s", mode, exc)
            return None
        finally:
            conn.close()

    def tick(self, *, restart: bool) -> None:
        """One round: a PASSIVE checkpoint, then (if `restart`) a RESTART under the write lock."""
        if not self._own():
            return
        self.checkpoint("PASSIVE")  # the bulk of the copying and syncing, blocking no one
        if not restart:
            return
        for _ in range(5):
            # Writers wait on the lock meanwhile (one short copy and two fsyncs, ~8 ms here).
            # No busy wait: with a reader still on the log SQLite would sleep 1, 2, 5 ms...
            # holding writers out; give up at once and try again a moment later instead.
            with self.write_lock:
                row = self.checkpoint("RESTART", timeout=0.0)
            if row is not None and row[0] == 0:
                return
            self._stop.wait(0.02)

    def _run(self) -> None:
        last_restart = time.monotonic()
        while not self._stop.wait(self.interval_s):
            restart = time.monotonic() - last_restart >= self.restart_s
            self.tick(restart=restart)
            if restart:
                last_restart = time.monotonic()

    def start(self, engine: Engine) -> None:
        if not self.enabled or self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cadence-wal-checkpoint", daemon=True)
        self._thread.start()
        engine.dispose()  # pooled connections made before now still auto-checkpoint: drop them

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=10)
        self._thread = None
        self.checkpoint("PASSIVE")
        if self._owner_fd is not None:
            os.close(self._owner_fd)  # closing releases the flock
            self._owner_fd = None
