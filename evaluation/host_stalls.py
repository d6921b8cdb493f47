"""How often the machine itself stalled during a timed load: a sleeper process that notices oversleeping.

Why: on the shared 2-core VM every process, the server's and the load generator's alike, is
now and then held off the CPU for 10-40 ms (seen by a process that only sleeps 1 ms at a time
on an idle machine: several such stalls in 20 s). A stall delays every request in flight,
so a few of them decide a p99. `cadence bench api` records them beside its latencies, so a
reader can tell a slow server from a stalled host.

A shared host also slows code down without stopping it: when neighbours use the physical
cores, this VM's CPUs run at half speed for seconds at a time (seen here as a fixed loop taking
twice as long). Every 25th wake-up the probe times a fixed unit of pure-Python work, so a reader
can also tell a slow host from a slow server (`work_summary`).

The probe is a separate process (no share of the load generator's GIL) that sleeps
`period_s` at a time and reports each wake-up later than `threshold_s` past its due time,
on the system-wide monotonic clock (`time.monotonic`), which the caller also uses.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_PROBE = """
import sys, time
period, threshold, every, n = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[4]), int(sys.argv[5])
def unit(n):
    s = 0
    for i in range(n):
        s += i * i
    return s
k = 0
last = time.monotonic()
# the file appears only now, so a stop that lands once the caller has seen it counts against `last`
out = open(sys.argv[3], "w", buffering=1)
while True:
    time.sleep(period)
    now = time.monotonic()
    if now - last - period > threshold:
        out.write(f"{last + period:.6f} {now - last - period:.6f}\\n")
    last = now
    k += 1
    if every and k % every == 0:
        t = time.perf_counter()
        unit(n)
        out.write(f"w {now:.6f} {time.perf_counter() - t:.7f}\\n")
        last = time.monotonic()  # the work is not lateness
"""


@dataclass(frozen=True)
class Stall:
    """The probe woke `late_s` seconds after it was due at `due` (monotonic seconds)."""

    due: float
    late_s: float


class HostStallProbe:
    """Run the sleeper process for the duration of a `with` block; then `summary(start, end)`."""

    def __init__(self, path: Path, *, period_s: float = 0.002, threshold_s: float = 0.005, work_every: int = 25,
                 work_loops: int = 5000) -> None:
        self.path, self.period_s, self.threshold_s = path, period_s, threshold_s
        #: every `work_every` wake-ups the probe times `work_loops` steps of a fixed pure-Python loop:
        #: how fast the host runs code now (a shared host slows everything, not only in stalls)
        self.work_every, self.work_loops = work_every, work_loops
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> HostStallProbe:
        self.path.unlink(missing_ok=True)
        self._proc = subprocess.Popen([sys.executable, "-c", _PROBE, str(self.period_s), str(self.threshold_s),
                                       str(self.path), str(self.work_every), str(self.work_loops)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10.0
        while not self.path.exists() and self._proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)  # the probe opens its file once its clock runs: a stop from here on is seen
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None

    def _read(self) -> tuple[list[Stall], list[tuple[float, float]]]:
        """The probe's file in one pass: stall lines ("due late_s") and work lines ("w time seconds").

        A line cut short by terminate() is skipped.
        """
        stalls: list[Stall] = []
        work: list[tuple[float, float]] = []
        if not self.path.exists():
            return stalls, work
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "w":
                work.append((float(parts[1]), float(parts[2])))
            elif len(parts) == 2 and parts[0] != "w":
                stalls.append(Stall(float(parts[0]), float(parts[1])))
        return stalls, work

    def stalls(self) -> list[Stall]:
        return self._read()[0]

    def work_times(self) -> list[tuple[float, float]]:
        """(monotonic time, seconds) of each timed unit of the fixed work."""
        return self._read()[1]

    def work_summary(self, start: float, end: float) -> dict[str, float | int]:
        """Median and tenth/ninetieth percentiles (ms) of the fixed work's time between `start` and `end`.

        On a host that gives this VM its CPUs undivided the median sits near the tenth percentile;
        when neighbours share the physical cores it drifts up (twice as long: half the speed), and
        every latency measured in the window with it.
        """
        inside = sorted(d for t, d in self.work_times() if start <= t <= end)
        if not inside:
            return {"n": 0}

        def q(f: float) -> float:
            return round(1000.0 * inside[min(len(inside) - 1, int(f * len(inside)))], 4)

        return {"n": len(inside), "p10_ms": q(0.1), "p50_ms": q(0.5), "p90_ms": q(0.9), "loops": self.work_loops}

    def summary(self, start: float, end: float) -> dict[str, float | int]:
        """Count, total and longest stall (ms) that began between `start` and `end` (monotonic)."""
        inside = [s.late_s for s in self.stalls() if start <= s.due <= end]
        return {"count": len(inside), "total_ms": round(1000.0 * sum(inside), 1),
                "max_ms": round(1000.0 * max(inside, default=0.0), 1), "threshold_ms": round(1000.0 * self.threshold_s, 1)}
