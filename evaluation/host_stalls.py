"""How often the machine itself stalled during a timed load: a sleeper process that notices oversleeping.

Why: on the shared 2-core VM every process, the server's and the load generator's alike, is
now and then held off the CPU for 10-40 ms (seen by a process that only sleeps 1 ms at a time
on an idle machine: several such stalls in 20 s). A stall delays every request in flight,
so a few of them decide a p99. `cadence bench api` records them beside its latencies, so a
reader can tell a slow server from a stalled host.

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
period, threshold = float(sys.argv[1]), float(sys.argv[2])
out = open(sys.argv[3], "w", buffering=1)
last = time.monotonic()
while True:
    time.sleep(period)
    now = time.monotonic()
    if now - last - period > threshold:
        out.write(f"{last + period:.6f} {now - last - period:.6f}\\n")
    last = now
"""


@dataclass(frozen=True)
class Stall:
    """The probe woke `late_s` seconds after it was due at `due` (monotonic seconds)."""

    due: float
    late_s: float


class HostStallProbe:
    """Run the sleeper process for the duration of a `with` block; then `summary(start, end)`."""

    def __init__(self, path: Path, *, period_s: float = 0.002, threshold_s: float = 0.005) -> None:
        self.path, self.period_s, self.threshold_s = path, period_s, threshold_s
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> HostStallProbe:
        self.path.unlink(missing_ok=True)
        self._proc = subprocess.Popen([sys.executable, "-c", _PROBE, str(self.period_s), str(self.threshold_s),
                                       str(self.path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10.0
        while not self.path.exists() and self._proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)  # the probe opens its file just before its loop: running from here on
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None

    def stalls(self) -> list[Stall]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:  # a line cut short by terminate() is skipped
                out.append(Stall(float(parts[0]), float(parts[1])))
        return out

    def summary(self, start: float, end: float) -> dict[str, float | int]:
        """Count, total and longest stall (ms) that began between `start` and `end` (monotonic)."""
        inside = [s.late_s for s in self.stalls() if start <= s.due <= end]
        return {"count": len(inside), "total_ms": round(1000.0 * sum(inside), 1),
                "max_ms": round(1000.0 * max(inside, default=0.0), 1), "threshold_ms": round(1000.0 * self.threshold_s, 1)}
