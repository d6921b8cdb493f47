"""An app pseudonymises its audit log with the key of the settings it was built with (and runs on them).

`create_app(settings)` (tests, `cadence demo`, an embedding) must not take the audit HMAC key
from the process's environment: its entries would be filed under another pseudonym than the
one its own export/erasure looks up, and a person's access request would miss them.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from cadence.settings import Settings, get_settings
from compliance import keys
from tests.server.conftest import built_app, make_settings, new_device

ENV_KEY = "11" * 32
ADMIN = {"X-API-Key": "dev-admin-key"}


def _alias(hex_key: str, user_id: str) -> str:
    """The pseudonym `user_id` has under `hex_key`, computed here, independently of compliance.keys."""
    return hmac.new(bytes.fromhex(hex_key), user_id.encode(), hashlib.sha256).hexdigest()[:32]


@pytest.fixture(autouse=True)
def _environment_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's settings carry a key of their own, unlike every app's here."""
    monkeypatch.setenv("CADENCE_AUDIT_HMAC_KEY", ENV_KEY)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _settings(tmp_path: Path, hex_key: str, **kw: Any) -> Settings:
    return make_settings(tmp_path, database_url=f"sqlite:///{tmp_path / f'{hex_key[:4]}.sqlite'}",
                         audit_hmac_key=hex_key, **kw)


def _subjects(app: Any) -> set[str]:
    with app.state.engine.connect() as conn:
        return {r[0] for r in conn.execute(text("SELECT subject FROM compliance_audit WHERE subject IS NOT NULL"))}


def test_entries_are_pseudonymised_and_exported_under_the_apps_key(tmp_path: Path) -> None:
    app_key = "22" * 32
    with built_app(_settings(tmp_path, app_key)) as app, TestClient(app) as client:
        new_device(client, "alice").grant_consent("gait")  # audited: consent.grant about alice
        assert _subjects(app) == {_alias(app_key, "alice")}
        r = client.get("/v1/admin/users/alice/export", headers=ADMIN)
    assert r.status_code == 200, r.text
    audit = r.json()["data"]["audit"]
    assert audit["pseudonym"] == _alias(app_key, "alice")
    assert "consent.grant" in [e["event"] for e in audit["entries"]]


def test_two_apps_in_one_process_each_use_their_own_key(tmp_path: Path) -> None:
    key_a, key_b = "33" * 32, "44" * 32
    with (built_app(_settings(tmp_path, key_a)) as app_a, built_app(_settings(tmp_path, key_b)) as app_b,
          TestClient(app_a) as a, TestClient(app_b) as b):
        dev_a, dev_b = new_device(a, "bob"), new_device(b, "bob")  # interleaved: no key leaks between them
        dev_a.grant_consent("gait")
        dev_b.grant_consent("touch")
        assert _subjects(app_a) == {_alias(key_a, "bob")} and _subjects(app_b) == {_alias(key_b, "bob")}
        for client in (a, b):
            entries = client.get("/v1/admin/users/bob/export", headers=ADMIN).json()["data"]["audit"]["entries"]
            assert [e["event"] for e in entries] == ["device.registered", "consent.grant"]


def test_the_retention_job_runs_under_the_apps_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler's thread is the app's too: what it audits about a person is found by their export.

    The policy and checkpoint-signing key it reads through `get_settings()` are the app's as well.
    """
    import compliance.retention

    app_key, seen, ran = "55" * 32, [], threading.Event()
    settings = _settings(tmp_path, app_key, purge_interval_s=0.05)

    def purge(*_: Any, **__: Any) -> dict[str, int]:
        seen.append((keys.pseudonym("carol"), get_settings()))
        ran.set()
        return {}

    monkeypatch.setattr(compliance.retention, "scheduled_purge", purge)
    with built_app(settings) as app, TestClient(app):
        assert ran.wait(10), "the retention job did not run"
    assert seen[0][0] == _alias(app_key, "carol")
    assert seen[0][1] is settings


def test_outside_any_app_the_process_settings_decide() -> None:
    """The CLI's `cadence audit` / `cadence compliance` run on get_settings(): the environment's key."""
    assert keys.pseudonym("dave") == _alias(ENV_KEY, "dave")
