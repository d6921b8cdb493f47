"""The server applies the retention policy on its own, in one worker per database."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.server.conftest import built_app, evidence, make_settings, new_device
from tests.server.test_storage import db_url  # noqa: F401  (the SQLite / PostgreSQL fixture)


def _old_transaction(client: TestClient, windows: dict) -> None:
    """One transaction of 'old', dated 2020: past the policy's 400 days."""
    dev = new_device(client, "old")
    dev.grant_consent("gait")
    dev.enrol(windows["owner"]["gait"][:5])
    dev.authorize(amount="5.00", payee="ACME", evidence=[evidence(windows, "owner", 6)[2]])
    with client.app.state.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(text("UPDATE server_transaction SET created_at = '2020-01-01 00:00:00'"))


def _count(app, sql: str) -> int:  # type: ignore[no-untyped-def]
    with app.state.engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar())


def test_one_worker_per_database_owns_the_purge(db_url: str, tmp_path: Path) -> None:  # noqa: F811
    settings = make_settings(tmp_path, database_url=db_url, purge_interval_s=3600)
    with built_app(settings) as app, built_app(settings) as twin, TestClient(app), TestClient(twin):
        assert app.state.retention.owner and not twin.state.retention.owner
        app.state.retention.stop()  # the owner leaves (a rolling deploy)
        assert twin.state.retention.claim()  # the next interval's try takes the job over


@pytest.mark.postgres
def test_deployments_in_other_schemas_of_one_database_each_own_their_purge(tmp_path: Path) -> None:
    """The lock was one per database: a second deployment (staging beside production) never purged."""
    from tests.pg import pg_schema_url

    with pg_schema_url("cadence_purge_a") as a, pg_schema_url("cadence_purge_b") as b:
        with built_app(make_settings(tmp_path / "a", database_url=a, purge_interval_s=3600)) as first, \
                built_app(make_settings(tmp_path / "b", database_url=b, purge_interval_s=3600)) as second, \
                TestClient(first), TestClient(second):
            assert first.state.retention.owner and second.state.retention.owner


def test_a_run_purges_what_is_due_and_is_audited(tmp_path: Path, calibration_file: Path, windows) -> None:  # type: ignore[no-untyped-def]
    with built_app(make_settings(tmp_path, fusion_calibration=calibration_file, purge_interval_s=3600)) as app:
        with TestClient(app) as client:
            _old_transaction(client, windows)
            removed = app.state.retention.run_once()
            assert removed is not None and removed["server.server_transaction"] == 1
            assert _count(app, "SELECT count(*) FROM server_transaction") == 0
            assert _count(app, "SELECT count(*) FROM compliance_audit WHERE event = 'retention.purge'") == 1


def test_the_schedule_runs_by_itself(tmp_path: Path, calibration_file: Path, windows) -> None:  # type: ignore[no-untyped-def]
    with built_app(make_settings(tmp_path, fusion_calibration=calibration_file, purge_interval_s=0.05)) as app:
        with TestClient(app) as client:
            _old_transaction(client, windows)
            deadline = time.monotonic() + 30  # a hang guard, not a speed target
            while _count(app, "SELECT count(*) FROM server_transaction") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _count(app, "SELECT count(*) FROM server_transaction") == 0
