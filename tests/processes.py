"""Helpers for tests that check no process they started is left running."""

from __future__ import annotations

import time
from collections.abc import Callable


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


def sigterm_when(args: list[str], ready: Callable[[], bool], *, env: dict[str, str], what: str,
                 wait_s: float = 120.0, exit_s: float = 120.0) -> tuple[int, str, str]:
    """Start `args` in its own session, SIGTERM it once `ready()`; (exit status, stdout, stderr).

    Fails the test if it ended before `ready()` held. Whatever happens, the whole process group
    is killed on the way out: the test stops what it starts.
    """
    import os
    import signal
    import subprocess

    p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + wait_s
        while not ready() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert p.poll() is None, f"{what} ended before it could be stopped: " + p.communicate()[1][-2000:]
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=exit_s)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return p.returncode, out, err
