"""Pin each worker process of `cadence serve` to a CPU of its own (Linux, opt-in).

Why: unpinned, the kernel lets both workers of a two-core host queue behind each other on
one core while the other runs the load generator or the WAL checkpointer; a request then
waits a scheduler slice (ms) with its handler half done. Measured under the API bench's load
(2 workers, 2 cores, generator on the same cores) the handler's own p99 dropped from ~6 to
~4 ms pinned (BENCHMARKS.md, API). Workers claim CPUs through lock files named after their
supervisor, so a restarted worker takes the CPU its predecessor left; workers beyond the CPU
count stay unpinned. Off by default (`CADENCE_API_PIN_WORKERS`): on a shared host pinning can
trap a worker on a busy core.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: the claimed CPU's lock file, open for the life of the process (closing it frees the CPU)
_claim: int | None = None
#: the CPUs the process could run on before it was pinned (None: not pinned)
_unpinned: frozenset[int] | None = None


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def pin_worker(group: str | None = None, lock_dir: Path | None = None) -> int | None:
    """Pin this process (all its threads) to the first free CPU of `group`; the CPU, or None.

    `group` names the set of workers sharing the CPUs: by default the supervisor's pid.
    """
    global _claim, _unpinned
    if _claim is not None or fcntl is None or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    group = group or str(os.getppid())
    lock_dir = lock_dir or Path(tempfile.gettempdir())
    for cpu in cpus:
        fd = os.open(lock_dir / f"cadence-cpu-{group}-{cpu}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        for tid in _threads():  # threads made later inherit the mask
            try:
                os.sched_setaffinity(tid, {cpu})
            except OSError:  # a thread that just ended
                pass
        _claim, _unpinned = fd, frozenset(cpus)
        log.info("worker %d pinned to CPU %d", os.getpid(), cpu)
        return cpu
    log.info("worker %d: every CPU already has a worker; not pinned", os.getpid())
    return None


def unpin_this_thread() -> bool:
    """Let the calling thread run on every CPU the process had before `pin_worker`; False if not pinned.

    For a pinned worker's background threads (the WAL checkpointer): on the worker's own CPU
    they take turns with the request handler, whose call then waits; unpinned, the kernel
    runs them on whichever CPU is free.
    """
    if _unpinned is None:
        return False
    try:
        os.sched_setaffinity(0, _unpinned)  # 0: the calling thread
    except OSError:
        return False
    return True


def is_worker_process() -> bool:
    """Whether this process was started by a supervisor (uvicorn's multi-worker mode)."""
    return multiprocessing.parent_process() is not None
