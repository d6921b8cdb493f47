"""Ctrl-C during a simulation stops it within seconds and leaves none of its processes behind."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

SCRIPT = r"""
import os, signal, subprocess, sys, tempfile, time
from federated.simulation import stop_on_interrupt
quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # the test reads this script's pipes to EOF
mine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], **quiet)  # started before: not Ray's
folder = tempfile.TemporaryDirectory(prefix="cadence-fed-")  # the bench's feature files
with stop_on_interrupt():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], **quiet)  # as Ray's processes
    print(child.pid, mine.pid, folder.name, flush=True)
    time.sleep(120)  # a simulation that would not notice the interrupt
"""


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_an_interrupted_simulation_exits_130_and_stops_what_it_started() -> None:
    p = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        child_s, mine_s, folder = p.stdout.readline().split()  # type: ignore[union-attr]
        child, mine = int(child_s), int(mine_s)
        t0 = time.monotonic()
        p.send_signal(2)  # SIGINT, as Ctrl-C sends it
        rc = p.wait(timeout=30)
        assert rc == 130 and time.monotonic() - t0 < 15
        assert "interrupted: stopping the simulation" in p.stderr.read()  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while _running(child):
            assert time.monotonic() < deadline, "the simulation's child process was left running"
            time.sleep(0.1)
        assert _running(mine), "a process started before the simulation was killed"
        psutil.Process(mine).kill()
        assert not Path(folder).exists(), "the temporary folder of feature files was left behind"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
