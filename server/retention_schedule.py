"""The server applies the retention policy on a schedule (`CADENCE_PURGE_INTERVAL_S`; 0 = off).

One worker process per database does it (the one that takes the database's lock, see
`RetentionScheduler`); the others leave the job to it. Each run is
`compliance.retention.scheduled_purge`: one transaction, audited as ``retention.purge``,
idempotent, so a run that overlaps `cadence compliance purge` from cron removes nothing twice.
The audit entries due are verified before the app's write lock is taken (re-hashing them
under it stalled every request that writes), in a read-only snapshot of their own
(`compliance.retention.run_purge`).
A failing run (a missing audit signing key when the audit log needs pruning, an unreachable
database) is logged and retried at the next interval; it never stops the API.

The first run is due one interval after the last purge on record (the newest ``retention.purge``
audit entry, the server's or `cadence compliance purge`'s; with none, the log's first entry), and never sooner than
`FIRST_RUN_DELAY_S` after start: counting the interval from each start, a server redeployed
more often than daily never purged at all.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from server.sqlite_writers import fcntl, sqlite_file, try_flock

log = logging.getLogger(__name__)


#: the least wait after start before a purge that is already due (start-up stays light)
FIRST_RUN_DELAY_S = 60.0

#: PostgreSQL advisory-lock class of the purge job (a fixed 32-bit number, "cade" in ASCII); the
#: second key is the schema's hash, so deployments in different schemas of one database (staging
#: beside production, or each test) each have their own purge, not one of them all
ADVISORY_KEY = 0x63616465
_LOCK = text("SELECT pg_try_advisory_lock(:k, hashtext(current_schema()))")
_UNLOCK = text("SELECT pg_advisory_unlock(:k, hashtext(current_schema()))")


class RetentionScheduler:
    """A daemon thread that purges every `interval_s` seconds, in one worker per database.

    The worker that owns the job holds a lock for as long as it runs: on a SQLite file a
    `flock` on a file beside the database, on PostgreSQL a session advisory lock on a
    connection of its own (so one worker of all hosts sharing the database). An in-memory
    database belongs to one process anyway.
    """

    def __init__(self, factory: sessionmaker[Session], engine: Engine, interval_s: float,
                 write_lock: AbstractContextManager[Any] | None = None) -> None:
        self.factory, self.engine, self.interval_s = factory, engine, interval_s
        self.write_lock = write_lock or nullcontext()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self._conn: Connection | None = None
        self._owned = False

    @property
    def owner(self) -> bool:
        """Whether this process holds the job's lock (and purges) now."""
        return self._owned

    def claim(self) -> bool:
        """Take the job's lock if no one holds it; keep it while held (and its connection lives)."""
        if self._owned and self._conn is not None and not self._conn_alive():
            self._release()  # a lock on a lost connection is gone: another instance may hold it now
        if self._owned:
            return True
        url = self.engine.url
        if url.get_backend_name() == "postgresql":
            try:
                conn = self.engine.connect()
                got = bool(conn.execute(_LOCK, {"k": ADVISORY_KEY}).scalar())
                conn.commit()  # the lock is the session's; the connection stays open while it is held
            except Exception:  # noqa: BLE001 - the database is away: try again next interval
                log.warning("retention purge: cannot reach the database to take the job's lock", exc_info=True)
                return False
            if got:
                self._conn = conn
            else:
                conn.close()
            self._owned = got
        elif (database := sqlite_file(url)) is None or fcntl is None:  # in memory: one process's anyway
            self._owned = True
        else:
            self._fd = try_flock(f"{database}.purge")
            self._owned = self._fd is not None
        return self._owned

    def _conn_alive(self) -> bool:
        assert self._conn is not None
        try:
            self._conn.execute(text("SELECT 1"))
            self._conn.commit()
            return True
        except Exception:  # noqa: BLE001 - any failure means the session, and its lock, are gone
            return False

    def _release(self) -> None:
        """Give the lock up; never raises (a dead connection has released it already)."""
        self._owned = False
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
        if self._conn is not None:
            try:  # unlock explicitly: closing only returns the connection (and its session) to the pool
                self._conn.execute(_UNLOCK, {"k": ADVISORY_KEY})
                self._conn.commit()
            except Exception:  # noqa: BLE001
                log.info("retention purge: the lock's connection was already gone")
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass
            self._conn = None

    def start(self) -> bool:
        """Start the thread if purging is on; returns whether this worker holds the lock now.

        Every worker runs it: the lock's holder purges, the others try for the lock each
        interval, so the job moves to another worker or host when its holder stops.
        """
        if self.interval_s <= 0:
            return False
        self.claim()
        # in a copy of the starter's context: the app's settings (`cadence.settings.bind_settings`) hold there too
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._loop,),
                                        name="cadence-retention", daemon=True)
        self._thread.start()
        return self._owned

    def run_once(self) -> dict[str, int] | None:
        from compliance.retention import scheduled_purge

        try:  # the lock is taken inside, after the audit entries due are verified (read-only, outside it)
            removed = scheduled_purge(self.factory, write_lock=self.write_lock)
        except Exception:  # noqa: BLE001 - logged and retried; retention must not stop the API
            log.exception("scheduled retention purge failed (retried in %.0f s)", self.interval_s)
            return None
        if any(removed.values()):
            log.info("retention purge removed %s", {k: v for k, v in removed.items() if v})
        return removed

    def first_wait(self) -> float:
        """Seconds from start to the first run: one interval after the last purge on record.

        With none on record, one interval after the audit log's first entry (a fresh database is
        not purged a minute after start, an old one never purged is). At least `FIRST_RUN_DELAY_S`
        and at most the interval; that delay alone when the record cannot be read.
        """
        from datetime import timedelta

        from compliance.models import AuditEntry, utcnow

        soon = min(self.interval_s, FIRST_RUN_DELAY_S)
        try:
            with self.factory() as session:
                last = session.scalar(select(AuditEntry.ts).where(AuditEntry.event == "retention.purge")
                                      .order_by(AuditEntry.seq.desc()).limit(1))
                if last is None:  # never purged: count from the log's first entry (when the data began)
                    last = session.scalar(select(AuditEntry.ts).where(AuditEntry.seq >= 1)
                                          .order_by(AuditEntry.seq).limit(1))
        except Exception:  # noqa: BLE001 - no record to go by: purge soon (it is idempotent)
            log.warning("retention purge: cannot read when the last purge ran; the first runs in %.0f s", soon,
                        exc_info=True)
            return soon
        if last is None:  # an empty log: nothing was written yet, nothing can be due
            return self.interval_s
        due = (last + timedelta(seconds=self.interval_s) - utcnow()).total_seconds()
        return min(self.interval_s, max(soon, due))

    def _loop(self) -> None:
        wait = self.first_wait()
        while not self._stop.wait(wait):
            if self.claim():
                self.run_once()
            wait = self.interval_s

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._release()
