"""`cadence bench api --quick`: a real 2-worker server under open-loop load on loopback.

Timing targets live in the benchmark, not here: this checks that the JSON carries the fields
the issue names, that no request failed, and that the load reached both workers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_bench_api_quick_reports_the_issue_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from evaluation.bench import BenchContext, run_bench

    monkeypatch.setenv("CADENCE_BENCH_API_SECONDS", "2.5")  # the fields, not the figures: 625 requests a phase
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
    assert rows["authorize"]["n"] == rows["health"]["n"] == 625 == doc["protocol"]["requests_per_phase"]
    # the host's own stalls and the generator's schedule slip are reported beside the latencies
    for phase in ("authorize", "trivial"):
        assert set(extra["host_stalls"][phase]) == {"count", "total_ms", "max_ms", "threshold_ms"}
        assert extra["send_lateness_ms"][phase]["p50"] <= extra["send_lateness_ms"][phase]["p99"]
        speed = extra["host_work_ms"][phase]  # a timed unit every ~50 ms: dozens in a 2.5 s phase
        assert speed["n"] >= 15 and 0 < speed["p10_ms"] <= speed["p50_ms"] <= speed["p90_ms"], speed


@pytest.mark.slow
@pytest.mark.postgres
def test_bench_api_on_postgresql_runs_in_a_schema_of_its_own_and_drops_it(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`CADENCE_BENCH_API_DATABASE_URL`: the same load against production's store, leaving nothing behind."""
    from sqlalchemy import text

    from cadence.db import make_engine
    from evaluation.bench import BenchContext, run_bench
    from tests.pg import PG_URL, pg_unreachable

    why = pg_unreachable()
    if why:
        pytest.skip(why)
    monkeypatch.setenv("CADENCE_BENCH_API_DATABASE_URL", PG_URL)
    monkeypatch.setenv("CADENCE_BENCH_API_RATE", "100")  # PostgreSQL shares the 2 cores: a load it keeps up with
    monkeypatch.setenv("CADENCE_BENCH_API_SECONDS", "3")
    engine = make_engine(PG_URL)
    schemas = text("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'cadence_bench_%'")
    try:
        with engine.connect() as conn:
            before = set(conn.execute(schemas).scalars())
        run_bench("api", BenchContext(data_dir=None, out=tmp_path, quick=True, progress=False), print_table=False)
        with engine.connect() as conn:
            assert set(conn.execute(schemas).scalars()) == before  # its schema is gone
    finally:
        engine.dispose()
    doc = json.loads((tmp_path / "api.json").read_text())
    assert doc["protocol"]["database"].startswith("PostgreSQL") and "(fresh schema)" in doc["protocol"]["database"]
    assert doc["errors"] == 0, doc["error_kinds"]
    rows = {r["method"]: r for r in doc["results"]}
    assert sum(doc["authorize_decisions"].values()) == rows["authorize"]["n"] == 300


@pytest.mark.parametrize(("url", "says"), [
    ("mysql://root@127.0.0.1/test", "is not PostgreSQL"),
    ("not a url", "not a database URL"),
    ("postgres ql://u:secret@h/db", "not a database URL"),
    ("postgresql://u:secret@127.0.0.1:port/db", "not a database URL"),
    ("postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3Dx", "name the database only"),
    ("postgresql+psycopg://nobody:secret@127.0.0.1:1/none", "cannot use postgresql+psycopg://nobody:***@127.0.0.1:1/none"),
])
def test_bench_api_database_setting_refuses_what_it_cannot_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               url: str, says: str) -> None:
    """Refused before any server starts, in one line that hides the password."""
    from evaluation.bench import BenchContext, BenchError, run_bench

    monkeypatch.setenv("CADENCE_BENCH_API_DATABASE_URL", url)
    with pytest.raises(BenchError, match="CADENCE_BENCH_API_DATABASE_URL") as err:
        run_bench("api", BenchContext(data_dir=None, out=tmp_path, quick=True, progress=False), print_table=False)
    assert says in str(err.value) and "secret" not in str(err.value)


def test_the_bench_names_the_reason_of_each_refusal() -> None:
    # the CI run that broke the must-show reported only {'401': 596, '429': 369}: which 401 was it?
    from server.loadgen import _refusal

    assert _refusal(401, b'{"detail": "X-Cadence-Nonce: ...", "code": "replayed_request"}') == "401 replayed_request"
    assert _refusal(429, b'{"detail": "slow down", "code": "rate_limited"}') == "429 rate_limited"
    assert _refusal(502, b"<html>bad gateway</html>") == "502"  # not the API's answer: the status alone
    assert _refusal(400, b'{"code": "\\u001b[31mred"}') == "400"  # nothing unprintable reaches the report
    assert _refusal(400, b'[1, 2]') == "400"
