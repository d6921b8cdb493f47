"""Helpers for tests that check no process they started is left running."""

from __future__ import annotations

import time


def alive(pids: list[int]) -> list[int]:
    """Those of `pids` running (not zombies); one that exits while looked at is not."""
    import psutil

    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.Error:
            pass
    return out


def still_alive(pids: list[int], deadline_s: float = 10.0) -> list[int]:
    """`alive(pids)` once they all exited or `deadline_s` passed (a SIGKILL takes a moment to land)."""
    deadline = time.monotonic() + deadline_s
    while (running := alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return running


def cmdline(pid: int) -> str:
    """`pid`'s command line, "" once it has exited (it may between listing and reading)."""
    import psutil

    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""
