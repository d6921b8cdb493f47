"""How the server's SQLite writers take turns, and when the write-ahead log is checkpointed.

- `serialize_sqlite_writers`: every write transaction begins with BEGIN IMMEDIATE.
- `SQLiteWriteLock` / `write_lock`: writers of all worker processes queue on one lock file.
- `WalCheckpointer`: the log is checkpointed in the background, not inside a request's commit.

By default SQLite checkpoints when the WAL passes 1000 pages, in whichever connection
commits next. An authorize call writes about 18 pages (decision, evidence hashes, nonce,
audit entry and their indexes; 26 before the evidence hashes were keyed by user), so every
~40-55th request paid for copying the log back into
the database file and two fsyncs: a 13-20 ms stall on an otherwise 3 ms request, the
largest part of the API's p99.

Here the server's connections never auto-checkpoint (`PRAGMA wal_autocheckpoint=0`) and one
thread per database (whichever worker process holds `<db>.checkpointer`) does the work:
- every `interval_s`, a PASSIVE checkpoint: copies and syncs without blocking anyone;
- every `restart_s`, a RESTART checkpoint while holding the server's write lock. Under a
  steady stream of writes a PASSIVE checkpoint never lets the log start over (a writer
  always begins before it finishes), so without this the file grows by ~100 KB per request.
  Writers wait for it on the lock, where they wake at once; it polls for readers still on the
  old log every 0.5 ms rather than sleeping in SQLite's busy handler (1, 2, 5, 10 ms steps).
  What it has left to do under the lock is kept small: each PASSIVE round syncs the database
  file it copied into (SQLite does so only after a checkpoint that reached the log's end,
  which never happens under steady writes), and before the lock a short catch-up round and a
  sync of both files leave it the last few frames to copy and sync (`tick`).
Between checkpoints the thread also asks the kernel, every `writeback_s`, to start writing the
log's dirty pages to disk (`sync_file_range`, Linux; it waits for nothing). The checkpoint's
own fsync then finds little left to write: measured under the API bench's load, PASSIVE
checkpoints took 3.6-5.1 ms on average instead of 9.5-10.2 ms, and fewer requests waited behind one.
Other processes (CLI, migrations) keep SQLite's default, so the WAL cannot grow without bound
while the server is down; the thread checkpoints once more when the server stops.

The thread leaves its worker's pinned CPU (`server.affinity.unpin_this_thread`), and each
PASSIVE round runs in a short-lived thread of the SCHED_IDLE class (Linux): a round copies a
second of log (5,500-6,100 pages under the API bench's load) in 4-18 ms, and on the worker's
own CPU the request handler took turns with it. Traced under the API bench's load, requests
of the checkpointing worker that overlapped a PASSIVE round made up 10-22 % of the slowest
1 % (five runs), and 2-4 % with the round at idle priority on any CPU (two runs; BENCHMARKS.md,
API, "Eighth round"). The RESTART stays at normal priority: it holds the write lock, and
waiting for CPU there would keep every writer waiting. Before the RESTART takes the lock the
log is flushed (`sync_log`), and the RESTART keeps one connection (`_restart_connection`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import URL

from cadence.db import begin_sqlite
from server.affinity import unpin_this_thread

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: writers queue in SQLite's busy handler, auto-checkpoint stays on
    fcntl = None  # type: ignore[assignment]


def try_flock(path: str) -> int | None:
    """A descriptor holding an exclusive `flock` on `path` (created if needed); None if another process has it.

    The lock lasts until the descriptor is closed: how one worker process per database file
    claims a background job.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd

log = logging.getLogger(__name__)


def _same_file(fd: int, st: os.stat_result) -> bool:
    """Whether descriptor `fd` is open on the file `st` describes."""
    try:
        fst = os.fstat(fd)
    except OSError:
        return False
    return (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino)


def _fdatasync(fd: int) -> bool:
    """Flush `fd`'s data to disk; False if the call fails."""
    try:
        os.fdatasync(fd)
    except OSError:
        return False
    return True


def _checkpoint_on(conn: sqlite3.Connection, mode: str) -> tuple[int, int, int] | None:
    """`PRAGMA wal_checkpoint(mode)` on `conn`: (busy, log frames, checkpointed frames), None if refused."""
    try:
        row = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
    except sqlite3.Error as exc:  # busy or locked: the next round catches up
        log.debug("wal checkpoint %s skipped: %s", mode, exc)
        return None
    log.debug("wal checkpoint %s -> %s", mode, row)
    return tuple(row) if row else None


def sqlite_file(url: URL) -> str | None:
    """The database file of a SQLite URL in the plain path form, beside which the lock files go.

    None for other databases, an in-memory one (``sqlite://``, ``:memory:``) and the URI form
    (``file:...?uri=true``): its ``url.database`` is no path (``file::memory:`` left lock files
    named ``file::memory:.purge`` in the working directory). The server refuses both forms
    (`server.app.check_settings`); without a file, locks stay within the process.
    """
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:") or str(url.query.get("uri", "")).lower() in ("true", "1"):
        return None
    return database


def idle_priority() -> bool:
    """Move the calling thread to the SCHED_IDLE class (Linux): it runs on CPU time no one else wants.

    One way only: an unprivileged thread may not leave SCHED_IDLE again, so this is for threads
    that do nothing else afterwards. False where the class does not exist or is refused.
    """
    if not hasattr(os, "SCHED_IDLE"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: the calling thread
    except OSError:
        return False
    return True


SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages, wait for nothing


def _sync_file_range() -> Any:
    """The C library's `sync_file_range`, or None where there is none (not Linux)."""
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
        return fn
    except (OSError, AttributeError):
        return None


def serialize_sqlite_writers(engine: Engine) -> None:
    """Begin every SQLite transaction with BEGIN IMMEDIATE.

    pysqlite's default deferred transactions let two requests read, then both try to write:
    one fails with SQLITE_BUSY at once (no busy wait for a stale snapshot), i.e. a 500 under
    load. Taking the write lock up front makes them queue on the busy timeout instead, and
    makes SAVEPOINTs and commits behave as SQLAlchemy expects.
    """

    @event.listens_for(engine, "connect")
    def _no_pysqlite_transactions(dbapi_conn, _rec):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None

    # straight on the DBAPI connection (`begin_sqlite`): this runs on every request, and SQLAlchemy's
    # execution path (context, events, result) costs several times the statement itself. A
    # transaction already open was begun by a held connection's unit of work, which the ORM joins
    event.listen(engine, "begin", begin_sqlite)


class SQLiteWriteLock:
    """Serialise SQLite writers across threads *and* worker processes on a lock file.

    SQLite lets one writer in at a time; a second `BEGIN IMMEDIATE` from another process
    waits in SQLite's busy handler, which sleeps 1, 2, 5, 10 ms... between tries, so a clash
    with a write of half a millisecond cost at least a millisecond. `flock` wakes the waiter
    the moment the lock is released. SQLite's own locking stays in force underneath: other
    writers (CLI, migrations) that do not take this lock are still serialised correctly.
    """

    def __init__(self, database: str) -> None:
        self._thread = threading.Lock()
        self._path = f"{database}.write-lock"
        self._fd: int | None = None

    def __enter__(self) -> None:
        self._thread.acquire()
        try:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread.release()


def write_lock(engine: Engine) -> Any:
    """The lock held around each write transaction: none needed outside SQLite."""
    if engine.dialect.name != "sqlite":
        return nullcontext()
    database = sqlite_file(engine.url)
    if database is None or fcntl is None:
        return threading.Lock()
    return SQLiteWriteLock(str(Path(database).resolve()))


class WalCheckpointer:
    def __init__(self, engine: Engine, write_lock: AbstractContextManager[Any] | None = None, *,
                 interval_s: float = 1.0, restart_s: float = 5.0, writeback_s: float | None = 0.05,
                 restart_busy_s: float = 0.02, restart_poll_s: float = 0.0005,
                 on_restart_hold: Callable[[float], None] | None = None) -> None:
        self.database = sqlite_file(engine.url) or ""
        self.write_lock = write_lock or nullcontext()
        self.interval_s, self.restart_s, self.restart_busy_s = interval_s, restart_s, restart_busy_s
        self.restart_poll_s = restart_poll_s
        #: told how long each RESTART held the write lock, in seconds (the server's metrics)
        self.on_restart_hold = on_restart_hold
        self._writeback = _sync_file_range() if writeback_s else None
        self.writeback_s = writeback_s if self._writeback is not None else None
        self.enabled = fcntl is not None and engine.dialect.name == "sqlite" and self.database != ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._owner_fd: int | None = None
        self._conn: sqlite3.Connection | None = None
        self._db_fd: int | None = None  # SQLite's own descriptor of the database file (`_database_fd`)
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
        if self._owner_fd is None:
            self._owner_fd = try_flock(f"{self.database}.checkpointer")
        return self._owner_fd is not None

    def checkpoint(self, mode: str = "PASSIVE", *, timeout: float = 0.05) -> tuple[int, int, int] | None:
        """One checkpoint on a connection of its own: (busy, log frames, checkpointed frames)."""
        conn = sqlite3.connect(self.database, timeout=timeout, isolation_level=None)
        try:
            return _checkpoint_on(conn, mode)
        finally:
            conn.close()

    def passive(self) -> tuple[int, int, int] | None:
        """A PASSIVE checkpoint, and the database file synced, from a short-lived thread at idle priority.

        See `idle_priority`, and `sync_database` for why the sync.
        """
        out: list[tuple[int, int, int] | None] = []

        def run() -> None:
            idle_priority()
            out.append(self.checkpoint("PASSIVE"))
            self.sync_database()

        thread = threading.Thread(target=run, name="cadence-wal-passive", daemon=True)
        thread.start()
        thread.join()
        return out[0] if out else None

    def tick(self, *, restart: bool) -> bool:
        """One round: a PASSIVE checkpoint, then (if `restart`) a RESTART under the write lock.

        Returns False when the RESTART was due but readers kept it from starting the log over
        (the caller tries again next round).
        """
        if not self._own():
            return True
        self.passive()  # the bulk of the copying and syncing, blocking no one
        if not restart:
            return True
        # Writers wait on the lock meanwhile: the copy of what the rounds before left, its
        # fsyncs, and readers still on the old log finishing (a read phase lasts a few ms). So
        # first, blocking no one: copy what came in during the idle-priority round (at normal
        # priority: a few ms), and put the database file and the log on disk.
        self._catch_up()
        self.sync_database()
        self.sync_log()
        with self.write_lock:
            t0 = time.perf_counter()
            try:
                return self._restart()
            finally:
                if self.on_restart_hold is not None:
                    self.on_restart_hold(time.perf_counter() - t0)

    def _catch_up(self) -> None:
        """A PASSIVE checkpoint on the RESTART's connection (`_restart_connection`), here and now.

        Skipped when busy: the RESTART copies the rest.
        """
        _checkpoint_on(self._restart_connection(), "PASSIVE")

    def sync_database(self) -> bool:
        """Flush the database file to disk now; False if it cannot be (no file, no descriptor, no fdatasync).

        SQLite syncs the database file only after a checkpoint that reached the end of the log.
        Under a steady stream of writes a PASSIVE round never does, so every page it copied stayed
        dirty until the RESTART, whose sync then flushed them all with every writer waiting:
        14-17 ms of its 14-19 ms hold in a standalone repro of the API bench's write load
        (BENCHMARKS.md, API, "Twenty-seventh round"). Synced here, outside the lock, that sync
        has only the last few pages left.
        """
        fd = self._database_fd()
        return fd is not None and _fdatasync(fd)

    def _database_fd(self) -> int | None:
        """A descriptor of the database file that SQLite opened (the RESTART's connection): synced, never closed here.

        Closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's
        own included. With this process's locks gone, another process's last connection takes the
        database as unused, checkpoints it and deletes the log under this one's connections: two
        server workers then each see a database of their own. So the file is never opened here;
        the descriptor is found by inode in /proc/self/fd (Linux; None elsewhere: no sync).
        """
        if not hasattr(os, "fdatasync") or not os.path.isfile(self.database):
            return None
        self._restart_connection()  # holds the file open from now until `stop`
        try:
            want = os.stat(self.database)
        except OSError:
            return None
        if self._db_fd is not None and _same_file(self._db_fd, want):
            return self._db_fd
        self._db_fd = None
        try:
            names = os.listdir("/proc/self/fd")
        except OSError:
            return None
        for name in names:
            if name.isdigit() and _same_file(int(name), want):
                self._db_fd = int(name)
                break
        return self._db_fd

    def sync_log(self) -> bool:
        """Flush the log to disk now, outside the write lock; False if there is no log (or no fdatasync).

        The RESTART syncs the log under the lock before copying from it; synced here first, that
        sync only has the frames written in between to flush.
        """
        return hasattr(os, "fdatasync") and self._on_log(_fdatasync)

    def _on_log(self, fn: Callable[[int], bool]) -> bool:
        """`fn` on a read-only descriptor of the log; False if there is no log or the call fails.

        Opening and closing the log is safe: SQLite locks the database and -shm files, never the log.
        """
        try:
            fd = os.open(f"{self.database}-wal", os.O_RDONLY)
        except OSError:  # no log yet (or just removed)
            return False
        try:
            return fn(fd)
        except OSError:
            return False
        finally:
            os.close(fd)

    def _restart(self) -> bool:
        """RESTART, retried every `restart_poll_s` until readers leave the old log or `restart_busy_s` passes.

        Not SQLite's busy handler: it sleeps 1, 2, 5, 10 ms between tries, so waiting out one
        read phase of ~3 ms took 8-18 ms, all of it with every writer locked out. Only the
        first try copies and syncs; the later ones find nothing left and only check the readers.
        """
        conn = self._restart_connection()
        deadline = time.monotonic() + self.restart_busy_s
        while True:
            try:
                row = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            except sqlite3.Error as exc:  # locked by a writer outside the server: next round
                log.debug("wal checkpoint RESTART skipped: %s", exc)
                return False
            if row is not None and row[0] == 0:
                return True
            if time.monotonic() >= deadline:
                log.debug("wal checkpoint RESTART: readers still on the log after %s s", self.restart_busy_s)
                return False
            time.sleep(self.restart_poll_s)

    def _restart_connection(self) -> sqlite3.Connection:
        """The RESTART's connection, kept from one round to the next (closed by `stop`).

        A new connection also syncs the database's directory the first time it syncs the log
        (SQLite, Unix): one more fsync, 0.25-0.34 ms traced under load, while every writer waits.
        """
        if self._conn is None:
            self._conn = sqlite3.connect(self.database, timeout=0, isolation_level=None, check_same_thread=False)
        return self._conn

    def start_writeback(self) -> bool:
        """Let the kernel start writing the log's dirty pages now (no waiting); False if it cannot."""
        writeback = self._writeback
        if writeback is None:
            return False
        return self._on_log(lambda fd: int(writeback(fd, 0, 0, SYNC_FILE_RANGE_WRITE)) == 0)

    def _run(self) -> None:
        # Standing by while another worker checkpoints, the thread only asks once a round
        # whether that one has gone (it asked every `writeback_s`, 20 times a second) and stays
        # on its worker's CPU: each wake-up takes the interpreter lock from the request handler.
        unpinned = False
        last_restart = last_tick = time.monotonic()
        step = min(self.interval_s, self.writeback_s or self.interval_s)
        self._own()  # the first to start claims the database at once
        while not self._stop.wait(step if self._owner_fd is not None else self.interval_s):
            if not self._own():
                continue
            if not unpinned:  # a pinned worker's CPU is its request handler's
                unpinned = True
                unpin_this_thread()
            now = time.monotonic()
            if now - last_tick < self.interval_s:
                self.start_writeback()
                continue
            last_tick = now
            restart = now - last_restart >= self.restart_s
            if self.tick(restart=restart) and restart:
                last_restart = time.monotonic()

    def start(self, engine: Engine) -> None:
        if not self.enabled or self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cadence-wal-checkpoint", daemon=True)
        self._thread.start()
        engine.dispose()  # pooled connections made before now still auto-checkpoint: drop them

    def stop(self) -> None:
        """Stop the thread (one last checkpoint) and give up being the database's checkpointer."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
            self.checkpoint("PASSIVE")
        self._db_fd = None  # SQLite's: closed with its connection
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._owner_fd is not None:
            os.close(self._owner_fd)  # closing releases the flock
            self._owner_fd = None
