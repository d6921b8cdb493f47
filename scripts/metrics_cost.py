"""CPU cost of the metric updates one authorize call makes, per prometheus_client mode.

`python scripts/metrics_cost.py single|multi`: in-process counters (one server worker) or the
multi-process mode a server of several workers counts in (`server.metrics.shared_metrics_dir`).
The mode is chosen when prometheus_client is first imported, hence one process per mode.
"""

from __future__ import annotations

import os
import sys
import tempfile
import timeit


def main(mode: str) -> None:
    if mode not in ("single", "multi"):
        raise SystemExit("usage: python scripts/metrics_cost.py single|multi")
    with tempfile.TemporaryDirectory(prefix="cadence-metrics-cost-") as folder:
        if mode == "multi":
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        _measure(mode)


def _measure(mode: str) -> None:
    from server.metrics import Metrics

    m = Metrics()

    def one_call() -> None:  # what MetricsMiddleware and the authorize route count per call
        m.requests.labels("/v1/transactions/authorize", "POST", "200").inc()
        m.latency.labels("/v1/transactions/authorize").observe(0.003)
        m.decisions.labels("approve", "low").inc()

    one_call()
    n = 20_000
    best = min(timeit.repeat(one_call, number=n, repeat=7)) / n * 1e6
    print(f"{mode}: {best:.2f} us per authorize call's metric updates (best of 7 x {n:,})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
