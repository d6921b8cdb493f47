"""Crash safety: no decision lost or duplicated when the server is killed mid-load.

The server is SIGKILLed during a load of authorize calls, restarted on the same database,
and every request is retried with its idempotency key: on the embedded SQLite and on the
real PostgreSQL that production uses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from cadence.db import make_engine
from server.loadgen import authorize_requests, enrol_population, resign, run_phase, start_server
from tests.pg import BACKENDS, backend_url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with backend_url(request.param, tmp_path, "cadence_crash") as url:
        yield url


@pytest.mark.slow
def test_kill_mid_load_loses_and_duplicates_nothing(tmp_path: Path, calibration_file: Path, database_url: str) -> None:
    env = {"CADENCE_FUSION_CALIBRATION": str(calibration_file), "CADENCE_DATABASE_URL": database_url}
    srv = start_server(tmp_path, env=env)
    try:
        pop = enrol_population(srv.url, 3, seed=7)
        devices = {d.user_id: d for d in pop.devices}
        reqs = authorize_requests(pop, 240, tag="crash")
        answered: dict = {}
        t = threading.Thread(target=run_phase, args=(srv.url, reqs),
                             kwargs={"rate": 80.0, "n": len(reqs), "responses": answered})
        t.start()
        deadline = time.monotonic() + 60
        while len(answered) < 20 and time.monotonic() < deadline:  # kill once the load is well under way
            time.sleep(0.02)
        srv.kill()
        t.join(timeout=120)
        assert 0 < len(answered) < len(reqs), "the kill should land mid-load"
    finally:
        srv.stop()

    srv2 = start_server(tmp_path, env=env)
    try:
        with httpx.Client(base_url=srv2.url, timeout=30) as http:
            for p in reqs:
                again = resign(p, devices[p.user])
                r = http.post(p.path, content=again.body, headers=again.headers)
                assert r.status_code == 200, r.text
                body = r.json()
                if p.key in answered:  # answered before the crash: the very same decision comes back
                    assert body["transaction_id"] == answered[p.key]["transaction_id"]
                    assert body["decision"] == answered[p.key]["decision"]
    finally:
        srv2.stop()

    engine = make_engine(database_url)
    try:
        with engine.connect() as db:
            rows = db.execute(text("SELECT idempotency_key, count(*) FROM server_transaction "
                                   "WHERE idempotency_key LIKE 'crash-%' GROUP BY idempotency_key")).all()
            ids = {r[0] for r in db.execute(text("SELECT id FROM server_transaction"))}
    finally:
        engine.dispose()
    assert len(rows) == len(reqs) and all(n == 1 for _, n in rows)
    assert all(a["transaction_id"] in ids for a in answered.values())
