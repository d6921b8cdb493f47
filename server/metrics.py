"""Prometheus metrics of one app instance (own registry, so tests can build many apps).

A server of several worker processes (`cadence serve --workers N`) counts in prometheus_client's
multi-process mode: each worker writes its counters into a shared folder
(`PROMETHEUS_MULTIPROC_DIR`, set by `shared_metrics_dir` before the workers start) and a scrape,
whichever worker answers it, sums every worker's (`exposition`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter as Tally
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from sqlalchemy import event
from sqlalchemy.orm import Session, object_session

from server.models import SecurityFlag

#: `Session.info` key of the tally `Metrics.counting_flags` keeps of the flags a unit of work stores
_FLAG_TALLY = "cadence.flag_tally"
#: prometheus_client's switch to multi-process mode: read when it is first imported, so it must be
#: set before a worker process imports it
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The shared metrics folder when this process counts in multi-process mode, else None."""
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()) or None


class MetricsDirError(ValueError):
    """The operator's `PROMETHEUS_MULTIPROC_DIR` cannot hold the workers' counters."""


@contextmanager
def shared_metrics_dir(workers: int) -> Iterator[Path | None]:
    """Where `workers` server processes keep their counters, for the duration of the block.

    One worker needs none (None). Several get a fresh private folder, removed afterwards, so a
    restart starts from zero as a single worker does; an operator who set `PROMETHEUS_MULTIPROC_DIR`
    keeps theirs (it must be a writable folder; emptying it between runs is theirs to do, as
    prometheus_client documents).
    """
    if workers <= 1:
        yield None
        return
    given = multiprocess_dir()
    if given:
        folder = Path(given)
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise MetricsDirError(f"{MULTIPROC_ENV}={given} is not a writable folder "
                                  "(the workers keep their metrics there)")
        yield folder
        return
    folder = Path(tempfile.mkdtemp(prefix="cadence-metrics-"))
    os.environ[MULTIPROC_ENV] = str(folder)
    try:
        yield folder
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


def exposition(registry: CollectorRegistry) -> bytes:
    """The text a scrape reads: every worker's counters summed in multi-process mode, else `registry`'s."""
    if multiprocess_dir():
        shared = CollectorRegistry()
        multiprocess.MultiProcessCollector(shared)
        return generate_latest(shared)
    return generate_latest(registry)


@event.listens_for(SecurityFlag, "after_insert")
def _flag_inserted(mapper: Any, connection: Any, target: SecurityFlag) -> None:
    """Count a flag row into its session's tally, when one is kept (nothing to do otherwise)."""
    session = object_session(target)
    tally = session.info.get(_FLAG_TALLY) if session is not None else None
    if tally is not None:
        tally[target.kind] += 1


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter("cadence_http_requests_total", "HTTP requests", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("cadence_http_request_seconds", "HTTP request latency", ["route"],
                                 registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
        self.decisions = Counter("cadence_decisions_total", "Transaction decisions", ["outcome", "tier"],
                                 registry=self.registry)
        #: one per `SecurityFlag` row stored, by its kind, counted once the row is committed: by
        #: `counting_flags` (sessions), after authorize's commit (its `implausible_input` reasons)
        #: and for each `EvidenceReplay` answered (flagged by `record_replay` before it is raised)
        self.flags = Counter("cadence_security_flags_total", "Security flags stored", ["kind"], registry=self.registry)
        #: rate-limit calls answered by the process's own budget because Redis could not be used
        self.rate_limit_fallbacks = Counter("cadence_rate_limit_fallbacks_total",
                                            "Rate-limit checks made locally while the shared Redis was unusable",
                                            ["budget"], registry=self.registry)
        #: how long the WAL checkpointer's RESTART held the SQLite write lock, every writer waiting
        #: (`server.sqlite_writers.WalCheckpointer`; none outside SQLite): under load 4-9 ms is normal
        #: (BENCHMARKS.md, API, "Twenty-seventh round"); tens of ms point at a slow disk
        self.wal_restart_hold = Histogram("cadence_sqlite_wal_restart_hold_seconds",
                                          "Time the WAL checkpoint's RESTART held the SQLite write lock",
                                          registry=self.registry,
                                          buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))

    @contextmanager
    def counting_flags(self, scope: AbstractContextManager[Session]) -> Iterator[Session]:
        """`scope`'s session (a unit of work); the flags it stores are counted once it committed.

        Nothing is counted when the block or the commit raises: the rows were rolled back.
        """
        tally: Tally[str] = Tally()
        with scope as session:
            session.info[_FLAG_TALLY] = tally
            try:
                yield session
                session.flush()  # rows added but not flushed yet are written now, while tallied
            finally:
                session.info.pop(_FLAG_TALLY, None)
        for kind, n in tally.items():
            self.flags.labels(kind).inc(n)
