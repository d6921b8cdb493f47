"""Ctrl-C during a simulation stops it within seconds and leaves none of its processes behind."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

SCRIPT = r"""
import os, signal, subprocess, sys, time
from federated.simulation import stop_on_interrupt
with stop_on_interrupt():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # as Ray's processes
    print(child.pid, flush=True)
    time.sleep(120)  # a simulation that would not notice the interrupt
"""


def test_an_interrupted_simulation_exits_130_and_stops_what_it_started() -> None:
    p = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        child = int(p.stdout.readline())  # type: ignore[union-attr]
        t0 = time.monotonic()
        p.send_signal(2)  # SIGINT, as Ctrl-C sends it
        rc = p.wait(timeout=30)
        assert rc == 130 and time.monotonic() - t0 < 15
        assert "interrupted: stopping the simulation" in p.stderr.read()  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the simulation's child process was left running"
            time.sleep(0.1)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
