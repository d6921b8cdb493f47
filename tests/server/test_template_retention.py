"""Retention removes the templates of people who stopped using the service, and nothing else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from cadence.db import Base, make_engine, make_sessionmaker, transaction
from server.holders import ServerHolder
from server.models import EnrolmentWindow, Template, Transaction, User

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
