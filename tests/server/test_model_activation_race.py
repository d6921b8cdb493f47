"""Concurrent model activations: the audit log's last activation is the model that serves.

Two server workers (two apps on one database and registry) activate at once; the registry's
lock is held from the ACTIVE file's switch until the audit entry is committed, so the entries
come in the order the file changed. An activation whose audit entry cannot be written is undone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from modalities.base import ScaledManhattan
from modalities.registry import ModelRegistry
from server.app import create_app
from tests.pg import BACKENDS, backend_url
from tests.server.conftest import make_settings

ADMIN = {"X-API-Key": "dev-admin-key"}


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with backend_url(request.param, tmp_path, "cadence_activate") as url:
        yield url


def _publish(root: Path, n: int) -> list[str]:
    reg = ModelRegistry(root)
    return [reg.publish("gait", ScaledManhattan(min_scale=0.01 * (i + 1)), metrics={}, card="# c", source="t")
            for i in range(n)]


def _last_activation(app: Any) -> str | None:
    with app.state.engine.connect() as conn:
        row = conn.execute(text("SELECT payload FROM compliance_audit WHERE event = 'model.activated' "
                                "ORDER BY seq DESC LIMIT 1")).first()
    return json.loads(row[0])["version"] if row is not None else None


def test_concurrent_activations_audit_the_version_that_serves(db_url: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker A switches ACTIVE to v0001 and is slow to audit; worker B activates v0002 meanwhile.

    Without the lock B's entry was written first and A's last: the log named v0001 while v0002
    served.
    """
    v1, v2 = _publish(tmp_path / "registry", 2)
    settings = make_settings(tmp_path, database_url=db_url)
    a_switched = threading.Event()
    real_replace = os.replace

    def slow_replace(src: Any, dst: Any) -> None:
        content = Path(src).read_text().strip() if Path(dst).name == "ACTIVE" else None
        real_replace(src, dst)
        if content == v1:  # worker A: ACTIVE switched, its audit entry not yet written
            a_switched.set()
            time.sleep(0.5)

    monkeypatch.setattr(os, "replace", slow_replace)
    app_a, app_b = create_app(settings), create_app(settings)
    try:
        with TestClient(app_a) as worker_a, TestClient(app_b) as worker_b:
            results: dict[str, int] = {}

            def activate_a() -> None:
                results["a"] = worker_a.post("/v1/models/gait/activate", json={"version": v1}, headers=ADMIN).status_code

            thread = threading.Thread(target=activate_a)
            thread.start()
            assert a_switched.wait(30)
            results["b"] = worker_b.post("/v1/models/gait/activate", json={"version": v2}, headers=ADMIN).status_code
            thread.join(30)
            assert results == {"a": 200, "b": 200}
            active = (tmp_path / "registry" / "gait" / "ACTIVE").read_text().strip()
            assert _last_activation(app_a) == active == v2
            for worker in (worker_a, worker_b):
                assert worker.get("/v1/models/gait/active").json()["model_id"] == f"registry:{active}"
    finally:
        app_a.state.engine.dispose()
        app_b.state.engine.dispose()


def test_an_activation_whose_audit_entry_fails_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No activation goes unrecorded: the audit write fails (database unusable), ACTIVE is put back."""
    from server.api.routes import models as models_route
    from tests.server.test_database_unavailable import disk_full

    v1, v2 = _publish(tmp_path / "registry", 2)
    app = create_app(make_settings(tmp_path))
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            assert client.post("/v1/models/gait/activate", json={"version": v1}, headers=ADMIN).status_code == 200

            def failing_audit(*a: Any, **kw: Any) -> None:
                raise disk_full()

            monkeypatch.setattr(models_route.hooks, "audit", failing_audit)
            r = client.post("/v1/models/gait/activate", json={"version": v2}, headers=ADMIN)
            assert r.status_code == 503 and r.json()["code"] == "database_unavailable"
            assert (tmp_path / "registry" / "gait" / "ACTIVE").read_text().strip() == v1
            assert client.get("/v1/models/gait/active").json()["model_id"] == f"registry:{v1}"
            assert _last_activation(app) == v1
    finally:
        app.state.engine.dispose()


def test_the_registry_lock_holds_off_another_process(tmp_path: Path) -> None:
    """`ModelRegistry.activation` in one process (the CLI, another worker) makes the others wait."""
    v1, v2 = _publish(tmp_path, 2)
    code = ("import sys, time; from modalities.registry import ModelRegistry\n"
            "with ModelRegistry(sys.argv[1]).activation('gait', sys.argv[2]):\n"
            "    print('held', flush=True); time.sleep(1.0)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), v2], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        ModelRegistry(tmp_path).activate("gait", v1)
        waited = time.monotonic() - t0
    finally:
        assert holder.wait(30) == 0
    assert waited > 0.5  # it waited for the other process's activation to finish
    assert ModelRegistry(tmp_path).active("gait").version == v1  # type: ignore[union-attr]
    assert sorted(p.name for p in (tmp_path / "gait").iterdir()) == ["ACTIVE", v1, v2]  # no temp file left


def test_a_lock_file_made_by_another_user_is_still_usable_and_an_unusable_one_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock file another user created is opened read-only (flock needs no write access)."""
    import os

    import modalities.registry as registry

    reg = ModelRegistry(tmp_path / "registry")
    real_open = os.open

    def other_users(path, flags, *args):  # type: ignore[no-untyped-def]
        if str(path).endswith(registry.LOCK_FILE) and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    (tmp_path / "registry").mkdir()
    (tmp_path / "registry" / registry.LOCK_FILE).touch()
    monkeypatch.setattr(registry.os, "open", other_users)
    with reg.lock():
        pass

    def none(path, flags, *args):  # type: ignore[no-untyped-def]
        if str(path).endswith(registry.LOCK_FILE):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(registry.os, "open", none)
    with pytest.raises(registry.RegistryLockError, match="cannot take the registry's lock"), reg.lock():
        pass
