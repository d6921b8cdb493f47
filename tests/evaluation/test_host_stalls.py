"""The host-stall probe of `cadence bench api`: a sleeper process that reports its late wake-ups."""

from __future__ import annotations

import os
import time
from pathlib import Path

from evaluation.host_stalls import HostStallProbe


def test_summary_counts_only_stalls_inside_the_window(tmp_path: Path) -> None:
    path = tmp_path / "stalls.txt"
    path.write_text("10.000000 0.012000\n11.500000 0.030000\n20.000000 0.007000\n21.0000")  # last line cut short
    probe = HostStallProbe(path)
    assert probe.summary(9.0, 12.0) == {"count": 2, "total_ms": 42.0, "max_ms": 30.0, "threshold_ms": 5.0}
    assert probe.summary(12.0, 19.0) == {"count": 0, "total_ms": 0.0, "max_ms": 0.0, "threshold_ms": 5.0}
    assert probe.summary(0.0, 100.0)["count"] == 3


def test_probe_process_runs_only_inside_the_block_and_sees_a_stopped_host(tmp_path: Path) -> None:
    """Stopping the probe's own process (SIGSTOP) for 60 ms is a stall it must report."""
    import signal

    with HostStallProbe(tmp_path / "s.txt", threshold_s=0.02) as probe:
        proc = probe._proc
        assert proc is not None and proc.poll() is None
        start = time.monotonic()
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(0.06)
        os.kill(proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10.0
        while not any(s.late_s >= 0.04 for s in probe.stalls()) and time.monotonic() < deadline:  # reported once it runs
            time.sleep(0.01)
        end = time.monotonic()
    assert proc.poll() is not None  # stopped with the block
    seen = probe.summary(start - 0.01, end)
    assert seen["count"] >= 1 and seen["max_ms"] >= 40.0, seen
