"""`cadence bench api --quick`: a real 2-worker server under open-loop load on loopback.

Timing targets live in the benchmark, not here: this checks that the JSON carries the fields
the issue names, that no request failed, and that the load reached both workers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_bench_api_quick_reports_the_issue_fields(tmp_path: Path) -> None:
    from evaluation.bench import BenchContext, run_bench

    ctx = BenchContext(data_dir=None, out=tmp_path, quick=True, progress=False)
    run_bench("api", ctx, print_table=False)
    doc = json.loads((tmp_path / "api.json").read_text())
    extra = doc  # the issue's fields sit at the top level of api.json
    for key in ("authorize_p99_ms", "trivial_p99_ms", "p99_ratio", "authorize_per_s", "errors"):
        assert isinstance(extra[key], (int, float)), key
    assert extra["errors"] == 0, extra["error_kinds"]
    assert extra["p99_ratio"] == pytest.approx(extra["authorize_p99_ms"] / extra["trivial_p99_ms"], rel=1e-2)
    rows = {r["method"]: r for r in doc["results"]}
    assert sum(extra["authorize_decisions"].values()) == rows["authorize"]["n"]  # every request got a decision
    busy = [s for s in extra["authorize_worker_cpu_s"] if s > 0.05]
    assert len(busy) == 2, f"the authorize load should reach both workers: {extra['authorize_worker_cpu_s']}"
    assert set(rows) == {"authorize", "health"}
    conns = extra["authorize_connections_per_worker"]
    assert len(conns) == 2 and sum(conns) == 32  # every connection knows which worker holds it
    # the host's own stalls and the generator's schedule slip are reported beside the latencies
    for phase in ("authorize", "trivial"):
        assert set(extra["host_stalls"][phase]) == {"count", "total_ms", "max_ms", "threshold_ms"}
        assert extra["send_lateness_ms"][phase]["p50"] <= extra["send_lateness_ms"][phase]["p99"]
        speed = extra["host_work_ms"][phase]  # a timed unit every ~50 ms: dozens in a 6 s phase
        assert speed["n"] >= 20 and 0 < speed["p10_ms"] <= speed["p50_ms"] <= speed["p90_ms"], speed
