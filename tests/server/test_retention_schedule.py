"""The server applies the retention policy on its own, in one worker per database."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import text

from server.app import create_app
from tests.server.conftest import evidence, make_settings, new_device


def test_the_server_purges_on_its_schedule_in_one_worker(tmp_path: Path, calibration_file: Path, windows) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, fusion_calibration=calibration_file, purge_interval_s=0.2)
    app, twin = create_app(settings), create_app(settings)
    try:
        with TestClient(app) as client, TestClient(twin):
            assert app.state.retention is not None and twin.state.retention is None  # the twin leaves it to app
            dev = new_device(client, "old")
            dev.grant_consent("gait")
            dev.enrol(windows["owner"]["gait"][:5])
            dev.authorize(amount="5.00", payee="ACME", evidence=[evidence(windows, "owner", 6)[2]])
            with app.state.engine.begin() as conn:  # 500 days ago: past transactions.days (400)
                conn.execute(text("UPDATE server_transaction SET created_at = '2020-01-01 00:00:00'"))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with app.state.engine.connect() as conn:
                    left = conn.execute(text("SELECT count(*) FROM server_transaction")).scalar()
                if left == 0:
                    break
                time.sleep(0.1)
            assert left == 0
            with app.state.engine.connect() as conn:
                events = conn.execute(text("SELECT event, actor FROM compliance_audit")).all()
            assert ("retention.purge", "retention") in events
    finally:
        app.state.engine.dispose()
        twin.state.engine.dispose()
