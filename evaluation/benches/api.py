"""`cadence bench api`: latency and throughput of `authorize` under load, on loopback.

The server runs as `cadence serve` (2 uvicorn workers by default, ``CADENCE_BENCH_API_WORKERS``,
each pinned to a CPU of its own unless ``CADENCE_BENCH_API_PIN=0``) in its own processes on a fresh SQLite (WAL) database; a
SYNTHETIC population is enrolled; then the same open-loop load (a fixed arrival rate) is
sent first to `authorize` with three-modality evidence and then to the trivial
`/v1/health` (250 requests/s by default, ``CADENCE_BENCH_API_RATE``; 20 s a phase, 6 s with
``--quick``, ``CADENCE_BENCH_API_SECONDS``). With
``CADENCE_BENCH_API_DATABASE_URL`` set to a PostgreSQL database, the server runs there instead,
in a schema of its own that is dropped afterwards (production's store, same load). p50/p99 and throughput of both, their p99 ratio and the error count go to
``OUT/api.json``, with what else shaped the tails: the host's own stalls during each phase
and its speed on a fixed unit of work (`evaluation.host_stalls`) and how late the generator started requests on their schedule.
Accuracy fields of the common schema do not apply (no scores).
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from evaluation.bench import BenchContext, BenchError, BenchOutput, register
from evaluation.host_stalls import HostStallProbe


def _env_number(name: str, default: str, cast: type[float] | type[int], low: float, high: float) -> float:
    """`$name` (or `default`) as a number in [low, high]; a `BenchError` naming the variable otherwise."""
    raw = os.environ.get(name, default).strip() or default
    try:
        value = cast(raw)
    except ValueError:
        raise BenchError(f"{name}={raw!r}: not a{'n integer' if cast is int else ' number'}") from None
    if not low <= value <= high:  # NaN fails too
        raise BenchError(f"{name}={raw!r}: must be between {low:g} and {high:g}")
    return value


def _env_flag(name: str, default: bool) -> bool:
    """`$name` as a yes/no flag (1/0, true/false, yes/no, on/off); a `BenchError` naming it otherwise."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise BenchError(f"{name}={raw!r}: expected 1 or 0 (true/false, yes/no)")


@contextmanager
def _database(url: str, work: Path) -> Iterator[tuple[str, str]]:
    """(URL, description) of a fresh database: SQLite in `work`, or a throw-away PostgreSQL schema at `url`.

    The schema (``cadence_bench_<random>``) is chosen through the URL's ``options``, so every
    server worker uses it; it is dropped with everything in it when the bench ends.
    """
    if not url:
        yield f"sqlite:///{work / 'api.sqlite'}", "SQLite WAL (fresh)"
        return
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from cadence.commands.database import shown
    from cadence.db import make_engine

    name = "CADENCE_BENCH_API_DATABASE_URL"
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # not echoed: it may hold a password
        raise BenchError(f"{name}: not a database URL (dialect+driver://user@host:port/database)") from None
    if parsed.get_backend_name() != "postgresql":
        raise BenchError(f"{name}: {shown(url)} is not PostgreSQL (the embedded SQLite is the default: leave it unset)")
    if "options" in parsed.query:
        raise BenchError(f"{name}: name the database only; the bench makes a schema of its own (drop options=)")
    schema = f"cadence_bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(url, isolation_level="AUTOCOMMIT")
    try:
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        except SQLAlchemyError as exc:
            reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
            raise BenchError(f"{name}: cannot use {shown(url)}: {reason}") from None
        try:
            yield (parsed.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False),
                   f"PostgreSQL {parsed.render_as_string(hide_password=True)} (fresh schema)")
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


def _own_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@register("api", "Transaction API: authorize p50/p99 latency and throughput vs a trivial endpoint (loopback)")
def bench_api(ctx: BenchContext) -> BenchOutput:
    from server.demo import fit_calibration, synthetic_people
    from server.loadgen import authorize_requests, enrol_population, run_phase, server_process, sigterm_unwinds

    # 1e-3 .. 1e5 requests/s; a rate of 0 would send nothing and report NaN latencies
    rate = float(_env_number("CADENCE_BENCH_API_RATE", "250", float, 1e-3, 1e5))
    workers = int(_env_number("CADENCE_BENCH_API_WORKERS", "2", int, 1, 64))
    # one CPU per worker (server/affinity.py), as on a host whose cores serve the API alone
    pin = _env_flag("CADENCE_BENCH_API_PIN", True)
    # each phase's length: 20 s (6 s with --quick) unless ``CADENCE_BENCH_API_SECONDS`` says otherwise
    seconds = float(_env_number("CADENCE_BENCH_API_SECONDS", "6" if ctx.quick else "20", float, 0.5, 3600))
    n = int(rate * seconds)
    if n < 1:
        raise BenchError(f"CADENCE_BENCH_API_RATE={rate:g}: under one request in the {seconds:g} s phase")
    n_users = 4 if ctx.quick else 12
    database_url = os.environ.get("CADENCE_BENCH_API_DATABASE_URL", "").strip()
    # SIGTERM (timeout, a CI cancel) unwinds like Ctrl-C: server, stall probe and work folder go
    with sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="cadence-bench-api-") as tmp, \
            _database(database_url, Path(tmp)) as (db_url, db_label):
        work = Path(tmp)
        fit_calibration(synthetic_people(ctx.seed, 6, first=200), None).save(work / "fusion-calibration.json")
        env = {"CADENCE_FUSION_CALIBRATION": str(work / "fusion-calibration.json"), "CADENCE_DATABASE_URL": db_url,
               "CADENCE_API_WORKERS": str(workers), "CADENCE_API_PIN_WORKERS": "1" if pin else "0"}
        with server_process(work, env=env) as srv, HostStallProbe(work / "stalls.txt") as probe:
            pop = enrol_population(srv.url, n_users, seed=ctx.seed)
            warm = authorize_requests(pop, 50, tag="warm")
            run_phase(srv.url, warm, rate=100.0, n=len(warm), spread=workers)
            run_phase(srv.url, None, rate=100.0, n=50, spread=workers)
            reqs = authorize_requests(pop, n, tag="load")
            t0 = time.perf_counter()
            c0, w0, g0 = srv.cpu_seconds(), srv.worker_cpu_seconds(), _own_cpu()
            m0 = time.monotonic()
            auth = run_phase(srv.url, reqs, rate=rate, n=n, spread=workers)
            m1 = time.monotonic()
            c1, w1, g1 = srv.cpu_seconds(), srv.worker_cpu_seconds(), _own_cpu()
            triv = run_phase(srv.url, None, rate=rate, n=n, spread=workers)
            m2 = time.monotonic()
            c2 = srv.cpu_seconds()
            total = time.perf_counter() - t0
        # read after the probe stopped (the with block): its file is complete
        stalls = {"authorize": probe.summary(m0, m1), "trivial": probe.summary(m1, m2)}
        speed = {"authorize": probe.work_summary(m0, m1), "trivial": probe.work_summary(m1, m2)}
    rows = []
    for name, res in (("authorize", auth), ("health", triv)):
        rows.append({"method": name, "window": "3 modalities" if name == "authorize" else "-",
                     "p50_ms": round(res.pct(50), 3), "p99_ms": round(res.pct(99), 3),
                     "per_s": round(res.n / res.seconds, 1), "n": res.n, "errors": res.errors})
    extra = {
        "authorize_p50_ms": round(auth.pct(50), 3),
        "authorize_p99_ms": round(auth.pct(99), 3),
        "trivial_p50_ms": round(triv.pct(50), 3),
        "trivial_p99_ms": round(triv.pct(99), 3),
        "p99_ratio": round(auth.pct(99) / triv.pct(99), 3),
        "authorize_per_s": round(auth.n / auth.seconds, 1),
        "trivial_per_s": round(triv.n / triv.seconds, 1),
        "errors": auth.errors + triv.errors,
        "error_kinds": {"authorize": auth.error_kinds, "trivial": triv.error_kinds},
        "server_workers": workers,
        "server_workers_pinned": pin,
        "offered_rate_per_s": rate,
        # server CPU per request (all workers): what the load costs independent of queueing
        "authorize_server_cpu_ms": round(1000.0 * (c1 - c0) / max(auth.n, 1), 3),
        "trivial_server_cpu_ms": round(1000.0 * (c2 - c1) / max(triv.n, 1), 3),
        # how the authorize load spread over the workers (an idle worker means an unbalanced accept)
        "authorize_worker_cpu_s": [round(w1.get(pid, 0.0) - w0.get(pid, 0.0), 2) for pid in sorted(w1)],
        # how the kernel's accept spread the generator's connections over the workers (requests
        # are then balanced per request: least in flight)
        "authorize_connections_per_worker": sorted(auth.connections.values(), reverse=True),
        # what the load generator itself cost (it shares the machine's cores with the server)
        "load_generator_cpu_ms_per_request": round(1000.0 * (g1 - g0) / max(auth.n, 1), 3),
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
        # the host's own stalls during each phase (evaluation/host_stalls.py): a sleeper process
        # woken more than threshold_ms late; such stalls delay every request in flight
        "host_stalls": stalls,
        # how fast the host ran a fixed unit of Python during each phase (the probe's own timer):
        # a median well above the tenth percentile means neighbours were sharing the cores
        "host_work_ms": speed,
        # how late the generator started requests on their schedule (uvloop's timers have 1 ms
        # resolution): included in both latencies, so a larger share of the trivial one's
        "send_lateness_ms": {name: {"p50": round(float(np.percentile(res.send_lateness_ms, 50)), 3),
                                    "p99": round(float(np.percentile(res.send_lateness_ms, 99)), 3)}
                             for name, res in (("authorize", auth), ("trivial", triv)) if res.send_lateness_ms},
        "load_seconds": round(total, 2),
    }
    decisions: dict[str, int] = {}
    for r in auth.responses.values():
        decisions[r["decision"]] = decisions.get(r["decision"], 0) + 1
    extra["authorize_decisions"] = decisions
    protocol = {"kind": "open-loop load on loopback", "offered_rate_per_s": rate, "requests_per_phase": n,
                "users": n_users, "evidence": "keystroke + touch + gait windows (SYNTHETIC)",
                "database": db_label, "server": f"cadence serve (uvicorn, {workers} workers, own processes"
                          f"{', one CPU each' if pin else ''})",
                "load_generator": "server.rawhttp: pre-serialised requests over 32 keep-alive connections (uvloop), "
                                  "each to the server process with the fewest requests in flight"}
    return BenchOutput(protocol=protocol, train_subjects=[], eval_subjects=[], rows=rows, extra=extra,
                       headline=("p99_ratio", "authorize_per_s", "errors", "authorize_server_cpu_ms"))
