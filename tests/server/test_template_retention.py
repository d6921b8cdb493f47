"""Retention removes the templates of people who stopped using the service, and nothing else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cadence.db import Base, make_engine, make_sessionmaker, transaction
from server.holders import ServerHolder
from server.models import EnrolmentWindow, Template, Transaction, User
from tests.server.test_storage import db_url  # noqa: F401  (the SQLite / PostgreSQL fixture)

NOW = datetime(2026, 11, 21, tzinfo=UTC)


def _user(session, uid: str, template_age_days: float, tx_age_days: float | None) -> None:
    session.add(User(id=uid))
    session.flush()
    t = NOW - timedelta(days=template_age_days)
    session.add(Template(user_id=uid, modality="gait", feature_version="v", feature_dim=2, model_id="m",
                         data={}, n_windows=1, updated_at=t))
    session.add(EnrolmentWindow(user_id=uid, modality="gait", feature_version="v", quality=1.0, values=[0.0, 1.0], created_at=t))
    if tx_age_days is not None:
        session.add(Transaction(id=f"tx-{uid}", user_id=uid, idempotency_key=f"k-{uid}", request_hash="h", amount="1.00",
                                currency="EUR", payee="p", channel="app", outcome="approve", status="done", risk=0.1,
                                tier="low", response={}, created_at=NOW - timedelta(days=tx_age_days)))


def test_inactive_templates_are_purged_and_active_ones_kept(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    Base.metadata.create_all(engine)
    factory = make_sessionmaker(engine)
    with transaction(factory) as s:
        _user(s, "idle", template_age_days=400, tx_age_days=300)  # nothing for 300 days: purge
        _user(s, "old-but-active", template_age_days=400, tx_age_days=3)  # enrolled long ago, pays weekly: keep
        _user(s, "new", template_age_days=10, tx_age_days=None)  # just enrolled: keep
    policy = {"template_inactive_days": 180}
    with transaction(factory) as s:
        dry = ServerHolder().purge(s, policy, now=NOW, dry_run=True)
    assert dry["server_template"] == 1 and dry["server_enrolment_window"] == 1
    with transaction(factory) as s:
        assert s.scalar(select(func.count()).select_from(Template)) == 3  # dry run removed nothing
        done = ServerHolder().purge(s, policy, now=NOW)
    assert done["server_template"] == 1 and done["server_enrolment_window"] == 1
    with transaction(factory) as s:
        left = sorted(s.scalars(select(Template.user_id)).all())
        assert left == ["new", "old-but-active"]
        assert sorted(s.scalars(select(EnrolmentWindow.user_id)).all()) == ["new", "old-but-active"]
        again = ServerHolder().purge(s, policy, now=NOW)
    assert again["server_template"] == 0  # idempotent
    engine.dispose()


def test_a_session_counts_as_use_only_when_its_evidence_counted(tmp_path: Path) -> None:
    """A session opened (or posted to with nothing usable) recently is no use of the templates; a scored one is."""
    from server.models import AuthSession

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    Base.metadata.create_all(engine)
    factory = make_sessionmaker(engine)
    with transaction(factory) as s:
        for uid, scored_days in (("opened-only", None), ("scored-long-ago", 300), ("scored-lately", 3)):
            _user(s, uid, template_age_days=400, tx_age_days=None)
            s.add(AuthSession(id=f"s-{uid}", user_id=uid, status="pending" if scored_days is None else "ok",
                              updated_at=NOW - timedelta(days=1),
                              last_scored_at=None if scored_days is None else NOW - timedelta(days=scored_days)))
    with transaction(factory) as s:
        done = ServerHolder().purge(s, {"template_inactive_days": 180}, now=NOW)
    assert done["server_template"] == 2
    with transaction(factory) as s:
        assert s.scalars(select(Template.user_id)).all() == ["scored-lately"]
    engine.dispose()


def test_posting_scored_evidence_records_when(client, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    """The server sets `last_scored_at` when a post's evidence counts, not when a session is opened."""
    from server.models import AuthSession

    sid = enrolled.signed("POST", "/v1/sessions", {"user_id": enrolled.user_id}).json()["session_id"]
    db = client.app.state.cadence.sessions
    with db() as s:
        assert s.get(AuthSession, sid).last_scored_at is None
    unusable = windows["owner"]["gait"][12].to_dict()
    unusable["quality"] = 0.0
    assert enrolled.signed("POST", f"/v1/sessions/{sid}/evidence", {"windows": [unusable]}).status_code == 200
    with db() as s:
        assert s.get(AuthSession, sid).last_scored_at is None
    assert enrolled.signed("POST", f"/v1/sessions/{sid}/evidence",
                           {"windows": [windows["owner"]["gait"][13].to_dict()]}).json()["scored_windows"] == 1
    with db() as s:
        assert s.get(AuthSession, sid).last_scored_at is not None


def test_migration_0008_dates_the_sessions_that_scored(db_url: str) -> None:  # noqa: F811
    """Existing sessions that scored (any status but `pending`) take their `updated_at`; pending ones stay NULL."""
    from sqlalchemy import text

    from server.migrate import downgrade, upgrade

    engine = make_engine(db_url)
    try:
        upgrade(engine, "0007")
        with engine.begin() as c:
            c.execute(text("INSERT INTO server_user (id, locked, consecutive_failures, enrolment_open, created_at) "
                           "VALUES ('u', false, 0, true, :t)"), {"t": NOW})
            for sid, status in (("a", "ok"), ("b", "pending")):
                c.execute(text("INSERT INTO server_auth_session (id, user_id, status, risk, state, created_at, updated_at) "
                               "VALUES (:i, 'u', :s, 0.5, '{}', :t, :t)"), {"i": sid, "s": status, "t": NOW})
        upgrade(engine)
        with engine.begin() as c:
            got = dict(c.execute(text("SELECT id, last_scored_at FROM server_auth_session")).all())
        assert got["a"] is not None and got["b"] is None
        downgrade(engine, "0007")
        upgrade(engine)
    finally:
        downgrade(engine)
        engine.dispose()


def test_decoded_templates_leave_a_workers_memory_once_unused(client, enrolled, windows,  # type: ignore[no-untyped-def]
                                                              monkeypatch) -> None:
    """A withdrawn or erased person's decoded arrays stayed in every worker's cache until it restarted."""
    import time

    import server.app as server_app
    from server.services.scoring import TemplateCache
    from tests.server.conftest import decision_evidence

    cache: TemplateCache = client.app.state.cadence.provider.templates
    assert enrolled.authorize(amount="12.00", payee="shop", evidence=decision_evidence(windows))["decision"]
    assert len(cache) == 3  # keystroke, touch and gait arrays of alice, decoded for that decision
    enrolled._check(enrolled.signed("POST", "/v1/users/alice/consents",  # no request uses them again
                                    {"modality": "keystroke", "purpose": "authentication", "granted": False}))
    assert len(cache) == 3
    clock = [time.monotonic() + cache.idle_s + 1]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    assert cache.sweep() == 3 and len(cache) == 0
    # the app sweeps on its own, with or without requests
    monkeypatch.undo()
    monkeypatch.setattr(server_app, "TEMPLATE_SWEEP_S", 0.02)
    with TestClient(server_app.create_app(client.app.state.cadence.settings)) as other:
        other_cache: TemplateCache = other.app.state.cadence.provider.templates
        other_cache.put(("t", "u", "m"), {"mean": np.zeros(2)})
        other_cache.idle_s = 0.0
        deadline = time.monotonic() + 10
        while len(other_cache) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(other_cache) == 0
        other.app.state.engine.dispose()
