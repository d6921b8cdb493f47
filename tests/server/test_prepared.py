"""`cadence.prepared` runs the hot path's statements as SQLAlchemy would, on both backends.

Each statement's answer on the DBAPI fast path is compared with `Connection.execute`'s on the
same data: JSON, timezone-aware datetimes and booleans come back converted by the same column
types; literals in a statement (`id == 1`), IN lists and batches of rows work; a unique-key
clash is SQLAlchemy's `IntegrityError`; statements the fast path cannot reproduce exactly
(Python-side column defaults) go through SQLAlchemy.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from sqlalchemy import Table, select
from sqlalchemy.exc import IntegrityError

from cadence import prepared
from cadence.db import Base, make_engine, make_sessionmaker, transaction
from compliance.audit import _HEAD_FOR_UPDATE, append_audit, verify_chain
from server.models import Template, User
from server.services.evidence import _SEEN, _SEEN_INSERT
from server.services.transactions import _TEMPLATE_INFO, _TX_BY_KEY, _TX_INSERT, _USER_STATE, _USER_STATE_LOCKED
from tests.server.test_storage import db_url  # noqa: F401  (the SQLite / PostgreSQL fixture)

T0 = datetime(2026, 11, 21, 12, 30, 15, 123456, tzinfo=UTC)


def _both(session, stmt, params=None):  # type: ignore[no-untyped-def]
    fast = prepared.execute(session, stmt, params).all()
    slow = session.connection().execute(stmt, params).all()
    return fast, [tuple(r) for r in slow]


def test_fast_path_answers_as_sqlalchemy_does(db_url: str) -> None:  # noqa: F811
    engine = make_engine(db_url)
    Base.metadata.create_all(engine)
    factory = make_sessionmaker(engine)
    try:
        with transaction(factory) as s:
            s.add_all([User(id="u1", locked=True, consecutive_failures=3), User(id="u2")])
            s.flush()
            s.add(Template(user_id="u1", modality="touch", feature_version="v1", feature_dim=3, model_id="m",
                           data={"mean": [1.5, 2.0]}, n_windows=4, updated_at=T0))
        with transaction(factory) as s:
            fast, slow = _both(s, _USER_STATE, {"u": "u1"})
            assert [tuple(r) for r in fast] == slow == [(True, 3, True)]
            assert fast[0].locked is True and fast[0].consecutive_failures == 3 and fast[0].enrolment_open is True
            fast, slow = _both(s, _USER_STATE_LOCKED, {"u": "u1"})  # FOR UPDATE on PostgreSQL, left out on SQLite
            assert [tuple(r) for r in fast] == slow == [(True, 3, True)]
            fast, slow = _both(s, _TEMPLATE_INFO, {"u": "u1"})
            assert [tuple(r) for r in fast] == slow
            assert fast[0].updated_at == T0 or fast[0].updated_at.replace(tzinfo=UTC) == T0  # SQLite keeps no zone
            assert str(fast[0].updated_at) == str(slow[0][5])  # the template cache key is built from it

            prepared.execute(s, _TX_INSERT, dict(
                id="t1", user_id="u1", device_id=None, idempotency_key="k1", request_hash="h", amount="9.50",
                currency="EUR", payee="ACME", channel="app", outcome="approve", status="approved", risk=0.25,
                tier="low", response={"decision": "approve", "reasons": [{"code": "ok"}]}, created_at=T0))
            fast, slow = _both(s, _TX_BY_KEY, {"u": "u1", "k": "k1"})
            assert [tuple(r) for r in fast] == slow == [("h", {"decision": "approve", "reasons": [{"code": "ok"}]})]
            assert prepared.execute(s, _TX_BY_KEY, {"u": "u1", "k": "nope"}).first() is None

            seen = [{"window_hash": f"{i:064x}", "user_id": "u2", "modality": "gait", "seen_at": T0 + timedelta(seconds=i)}
                    for i in range(4)]
            assert prepared.execute(s, _SEEN_INSERT, seen).rowcount in (4, -1)
            probe = {"u": "u2", "h": [f"{i:064x}" for i in (0, 3, 9)]}
            via_sqlalchemy = s.connection().execute(_SEEN, probe).scalars().all()
            assert sorted(prepared.execute(s, _SEEN, probe).scalars().all()) == sorted(via_sqlalchemy)
            assert len(via_sqlalchemy) == 2
            for hashes in ([f"{3:064x}"], [], [f"{i:064x}" for i in range(5)], [f"{1:064x}", "x"]):  # SQL per length
                got = prepared.execute(s, _SEEN, {"u": "u2", "h": hashes}).scalars()
                assert sorted(got) == sorted(s.connection().execute(_SEEN, {"u": "u2", "h": hashes}).scalars().all())
            assert prepared.execute(s, _SEEN, {"u": "u1", "h": probe["h"]}).first() is None  # per user
            assert prepared.execute(s, _HEAD_FOR_UPDATE).first() is None  # `id == 1`: a literal of the statement
        with pytest.raises(IntegrityError), transaction(factory) as s:
            prepared.execute(s, _SEEN_INSERT, [seen[0]])
        with transaction(factory) as s:  # the failed transaction left nothing behind
            ids = select(cast(Table, User.__table__).c.id)
            assert sorted(prepared.execute(s, ids).scalars()) == ["u1", "u2"]
            assert prepared.execute(s, _SEEN, probe).scalars().all() != []  # the earlier commit stands
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()


def test_audit_chain_built_on_the_fast_path_verifies(db_url: str) -> None:  # noqa: F811
    engine = make_engine(db_url)
    Base.metadata.create_all(engine)
    factory = make_sessionmaker(engine)
    try:
        for i in range(3):
            with transaction(factory) as s:
                append_audit(s, event="decision", actor="device:d1", subject="u1", payload={"n": i, "risk": 0.5})
        with transaction(factory) as s:
            report = verify_chain(s)
        assert report.ok and report.entries == 3
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()


def test_statements_needing_python_defaults_go_through_sqlalchemy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'd.sqlite'}")
    Base.metadata.create_all(engine)
    factory = make_sessionmaker(engine)
    try:
        users = cast(Table, User.__table__)
        insert = users.insert()
        assert prepared.prepared(insert, engine.dialect, ("id",)) is None  # created_at etc. default in Python
        with transaction(factory) as s:
            prepared.execute(s, insert, {"id": "u9"})
            row = prepared.execute(s, select(users.c.locked, users.c.created_at).where(users.c.id == "u9")).first()
        assert row.locked is False and row.created_at is not None
    finally:
        engine.dispose()
