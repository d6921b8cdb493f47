"""Worker CPU pinning: each worker of a group claims a CPU of its own, and frees it on exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from server import affinity

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                                reason="needs Linux and at least 2 CPUs (sched_setaffinity)")

_CHILD = """
import os, sys, time
from pathlib import Path
from server.affinity import pin_worker
cpu = pin_worker(sys.argv[1], Path(sys.argv[2]))
print(cpu, sorted(os.sched_getaffinity(0)), flush=True)
sys.stdin.readline()  # hold the CPU until told to go
"""


def _worker(group: str, lock_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _CHILD, group, str(lock_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])


def _answer(proc: subprocess.Popen[str]) -> tuple[str, str]:
    assert proc.stdout is not None
    cpu, _, mask = proc.stdout.readline().strip().partition(" ")
    return cpu, mask


def test_workers_take_distinct_cpus_and_a_successor_reuses_a_freed_one(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    procs = [_worker("g1", tmp_path) for _ in range(len(cpus) + 1)]
    try:
        answers = [_answer(p) for p in procs]
        pinned = [int(cpu) for cpu, _ in answers if cpu != "None"]
        assert sorted(pinned) == cpus  # one worker per CPU ...
        assert [cpu for cpu, _ in answers].count("None") == 1  # ... and the one too many stays unpinned
        for cpu, mask in answers:
            assert mask == (f"[{cpu}]" if cpu != "None" else str(cpus))
        first = procs[[c for c, _ in answers].index(str(cpus[0]))]
        first.communicate("\n", timeout=30)  # a worker exits: its CPU is free again
        successor = _worker("g1", tmp_path)
        procs.append(successor)
        assert _answer(successor)[0] == str(cpus[0])
        other_group = _worker("g2", tmp_path)  # another server's workers do not compete with these
        procs.append(other_group)
        assert _answer(other_group)[0] == str(cpus[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.communicate("\n", timeout=30)


def test_a_single_process_server_is_not_a_worker() -> None:
    assert affinity.is_worker_process() is False


_UNPIN_CHILD = """
import json, os, sys, threading
from pathlib import Path
from server.affinity import pin_worker, unpin_this_thread
before = sorted(os.sched_getaffinity(0))
assert unpin_this_thread() is False  # not pinned yet: nothing to undo
cpu = pin_worker(sys.argv[1], Path(sys.argv[2]))
seen = {}
def background():
    seen["unpinned"] = unpin_this_thread()
    seen["mask"] = sorted(os.sched_getaffinity(0))
t = threading.Thread(target=background)
t.start(); t.join()
print(json.dumps({"cpu": cpu, "before": before, "main": sorted(os.sched_getaffinity(0)), **seen}), flush=True)
"""


def test_a_pinned_workers_background_thread_gets_every_cpu_back_and_the_worker_stays_pinned(tmp_path: Path) -> None:
    out = json.loads(subprocess.run([sys.executable, "-c", _UNPIN_CHILD, "g-unpin", str(tmp_path)], capture_output=True,
                                    text=True, timeout=60, cwd=Path(__file__).resolve().parents[2], check=True).stdout)
    assert out["cpu"] is not None
    assert out["unpinned"] is True
    assert out["mask"] == out["before"]  # the thread runs anywhere the process could before pinning
    assert out["main"] == [out["cpu"]]  # the worker itself (and its request handler) stays on its CPU
