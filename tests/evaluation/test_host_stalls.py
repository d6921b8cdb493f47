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

    # no timed work (work_every=0): a stop landing in it would be counted as slow work, not as a stall
    opened = time.monotonic()
    with HostStallProbe(tmp_path / "s.txt", threshold_s=0.02, work_every=0) as probe:
        proc = probe._proc
        assert proc is not None and proc.poll() is None
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(0.06)
        os.kill(proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10.0
        while not any(s.late_s >= 0.04 for s in probe.stalls()) and time.monotonic() < deadline:  # reported once it runs
            time.sleep(0.01)
        end = time.monotonic()
    assert proc.poll() is not None  # stopped with the block
    # a stall is filed under the wake-up it delayed, which on a loaded host (a parallel test run) may
    # already have been due well before the stop: 10 ms before the stop missed it (flaky); the block's start does not
    seen = probe.summary(opened, end)
    assert seen["count"] >= 1 and seen["max_ms"] >= 40.0, seen


def test_work_summary_reads_only_work_lines_inside_the_window(tmp_path: Path) -> None:
    """Work lines ("w <time> <seconds>") and stall lines share the file; each reader takes its own."""
    path = tmp_path / "stalls.txt"
    lines = ["10.000000 0.012000"] + [f"w {10.0 + i * 0.05:.6f} {0.0001 * (1 + i % 10):.7f}" for i in range(100)]
    path.write_text("\n".join(lines) + "\nw 99.0")  # last line cut short
    probe = HostStallProbe(path, work_loops=5000)
    assert probe.summary(0.0, 100.0)["count"] == 1
    whole = probe.work_summary(0.0, 100.0)
    assert whole["n"] == 100 and whole["p10_ms"] == 0.2 and whole["p50_ms"] == 0.6 and whole["p90_ms"] == 1.0
    assert probe.work_summary(11.99, 12.21)["n"] == 5  # 12.00, 12.05, ..., 12.20
    assert probe.work_summary(50.0, 60.0) == {"n": 0}


def test_probe_times_its_work_and_a_stopped_process_makes_it_slow(tmp_path: Path) -> None:
    """The probe times a fixed unit of work; a 0.3 s stop shows as a slow unit or a late wake-up.

    The stop lands in the loop most of the time (it runs ~20 ms against a 2 ms sleep), else in
    the sleep, where it is a stall.
    """
    import signal

    with HostStallProbe(tmp_path / "s.txt", work_every=1, work_loops=300_000) as probe:
        proc = probe._proc
        assert proc is not None
        deadline = time.monotonic() + 10.0
        while len(probe.work_times()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        quiet = [d for _, d in probe.work_times()]
        n0 = len(quiet)
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGCONT)
        while len(probe.work_times()) < n0 + 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        times = [d for _, d in probe.work_times()]
        stalls = [st.late_s for st in probe.stalls()]
    assert len(times) >= n0 + 3 and min(quiet) > 0.002  # 300,000 Python steps take milliseconds anywhere
    assert max(times) >= min(quiet) + 0.25 or max(stalls, default=0.0) >= 0.25, (times, stalls)


def test_probe_starts_its_clock_before_it_shows_it_runs() -> None:
    """The caller takes the probe's file as the sign that it runs (`__enter__` waits for it).

    A stop landing between the file's creation and the probe's first clock reading would be
    invisible (seen in CI: 1 start in ~60 on a loaded host missed a 60 ms stop), so the clock
    is read first.
    """
    from evaluation import host_stalls

    source = host_stalls._PROBE
    assert source.index("last = time.monotonic()") < source.index("open(sys.argv[3]")
