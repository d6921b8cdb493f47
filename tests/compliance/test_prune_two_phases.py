"""The purge verifies the audit entries it prunes before its write transaction, then only checks them.

Re-hashing a long prefix inside the write transaction stalled every writer on SQLite (one
writer at a time, and the server's own write lock around it): 20,000 entries held the lock
0.5 s. Now `check_audit` verifies in a read-only transaction first and the write phase only
compares what is stored with what was verified; a change in between is verified again, and
refused when it is tampering. Tampering is plain SQL, as an attacker with database access does it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from cadence.cli import app
from cadence.db import Base, make_engine, make_sessionmaker
from cadence.settings import get_settings
from compliance import audit
from compliance.models import TABLES, AuditCheckpoint, AuditEntry, AuditHead
from compliance.retention import AuditCheck, PurgeCounts, check_audit, load_policy, purge, scheduled_purge
from server.retention_schedule import RetentionScheduler
from server.sqlite_writers import serialize_sqlite_writers, write_lock

from .conftest import FakeBase, FakeEvidence, FakeHolder

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
OLD = 3  # entries seq 1..OLD are past the default policy's 7 years; seq OLD+1.. are recent


def _chain(factory: sessionmaker[Session], *, now: datetime = NOW, old: int = OLD, new: int = 3) -> None:
    with factory() as s, s.begin():
        for i in range(old + new):
            ts = now - 9 * 365 * DAY + i * DAY if i < old else now - (10 - i) * DAY
            audit.append_audit(s, event="decision.made", actor="server", subject=f"u{i % 2}", payload={"i": i}, now=ts)


def _count(factory: sessionmaker[Session], model: type) -> int:
    with factory() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _checked(factory: sessionmaker[Session]) -> AuditCheck:
    """The first phase, in a transaction of its own."""
    with factory() as s:
        checked = check_audit(s, load_policy(), now=NOW)
    assert checked.plan is not None and checked.plan.count == OLD and checked.refused is None
    return checked


class _Probe:
    """Wraps `audit.verify_chain`: records, at each call, whether a write lock is held and whether another writer gets in."""

    def __init__(self, database: Path, held: Any = None) -> None:
        self.database, self.held = database, held
        self.calls: list[tuple[bool, bool]] = []
        self._verify = audit.verify_chain

    def __call__(self, *args: Any, **kw: Any) -> audit.VerifyResult:
        other = sqlite3.connect(self.database, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # what every writer of the server begins with
            other.execute("ROLLBACK")
            writable = True
        except sqlite3.OperationalError:  # database is locked
            writable = False
        finally:
            other.close()
        self.calls.append((bool(self.held and self.held.locked), writable))
        return self._verify(*args, **kw)


class _RecordingLock:
    """The app's write lock, remembering whether it is held."""

    def __init__(self, lock: Any) -> None:
        self.lock, self.locked = lock, False

    def __enter__(self) -> None:
        self.lock.__enter__()
        self.locked = True

    def __exit__(self, *exc: object) -> None:
        self.locked = False
        self.lock.__exit__(*exc)


@pytest.fixture
def server_engine(tmp_path: Path) -> Iterator[Engine]:
    """A SQLite file set up as the server's: every write transaction begins IMMEDIATE."""
    eng = make_engine(f"sqlite:///{tmp_path / 'server.sqlite'}")
    Base.metadata.create_all(eng, tables=list(TABLES))
    FakeBase.metadata.create_all(eng)
    serialize_sqlite_writers(eng)
    yield eng
    eng.dispose()


def test_the_scheduled_purge_verifies_outside_the_write_lock(server_engine: Engine, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """It verified under the app's write lock and in a BEGIN IMMEDIATE transaction: every writer waited."""
    factory = make_sessionmaker(server_engine)
    _chain(factory, now=datetime.now(UTC))
    lock = _RecordingLock(write_lock(server_engine))
    probe = _Probe(tmp_path / "server.sqlite", lock)
    monkeypatch.setattr(audit, "verify_chain", probe)
    removed = RetentionScheduler(factory, server_engine, 3600, lock).run_once()
    assert removed is not None and removed["compliance.audit"] == OLD
    assert probe.calls == [(False, True)]  # once, before the lock; the write phase only compares
    with factory() as s:
        assert audit.verify_chain(s).ok


def test_the_cli_purge_verifies_before_its_first_delete(sqlite_factory: sessionmaker[Session], tmp_path: Path,
                                                        fake_holder: FakeHolder, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cadence compliance purge` verified after the holders' deletes had taken SQLite's write lock."""
    now = datetime.now(UTC)
    _chain(sqlite_factory, now=now)
    with sqlite_factory() as s, s.begin():
        s.add(FakeEvidence(user_id="old", modality="gait", created_at=now - 40 * DAY))
    probe = _Probe(tmp_path / "c.sqlite")
    monkeypatch.setattr(audit, "verify_chain", probe)
    monkeypatch.setenv("CADENCE_DATABASE_URL", f"sqlite:///{tmp_path / 'c.sqlite'}")
    get_settings.cache_clear()
    res = CliRunner().invoke(app, ["compliance", "purge", "--json"])
    assert res.exit_code == 0, res.output
    assert '"compliance.audit": 3' in res.output and '"fake.evidence": 1' in res.output
    assert probe.calls == [(False, True)]  # another writer got in while it verified


def _tamper(factory: sessionmaker[Session]) -> None:
    """An entry due edited by hand: the purge must refuse to prune, at every run."""
    with factory() as s, s.begin():
        s.execute(update(AuditEntry).where(AuditEntry.seq == 2).values(payload='{"i":99}'))


def _last_purge(factory: sessionmaker[Session]) -> dict[str, Any]:
    with factory() as s:
        payload = s.scalars(select(AuditEntry.payload).where(AuditEntry.event == "retention.purge")
                            .order_by(AuditEntry.seq.desc())).first()
    assert payload is not None
    return dict(json.loads(payload))


def test_a_tampered_chain_is_refused_outside_the_write_lock(server_engine: Engine, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal was verified again under the app's write lock at every run: every writer waited for the walk."""
    factory = make_sessionmaker(server_engine)
    _chain(factory, now=datetime.now(UTC))
    _tamper(factory)
    lock = _RecordingLock(write_lock(server_engine))
    probe = _Probe(tmp_path / "server.sqlite", lock)
    monkeypatch.setattr(audit, "verify_chain", probe)
    removed = RetentionScheduler(factory, server_engine, 3600, lock).run_once()
    assert isinstance(removed, PurgeCounts) and removed["compliance.audit"] == 0
    assert "refusing to prune a broken chain: entry seq=2" in (removed.audit_refused or "")
    assert probe.calls == [(False, True)]  # once, in the snapshot before the lock; recorded as found there
    assert "entry seq=2" in _last_purge(factory)["audit_not_pruned"]


class _AppendProbe:
    """Wraps `audit.verify_chain`: records, at each call, whether another transaction could append to the chain now."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.calls: list[bool] = []
        self._verify = audit.verify_chain

    def __call__(self, *args: Any, **kw: Any) -> audit.VerifyResult:
        self.calls.append(self._appendable())
        return self._verify(*args, **kw)

    def _appendable(self) -> bool:
        if self.engine.dialect.name == "sqlite":  # SQLite's write lock
            other = sqlite3.connect(str(self.engine.url.database), timeout=0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
                return True
            except sqlite3.OperationalError:
                return False
            finally:
                other.close()
        with self.engine.connect() as conn:  # the head row, on which every PostgreSQL appender queues
            try:
                conn.execute(select(AuditHead.seq).where(AuditHead.id == 1).with_for_update(nowait=True))
                return True
            except OperationalError:
                return False
            finally:
                conn.rollback()


def test_appends_are_not_held_while_a_tampered_chain_is_refused(factory: sessionmaker[Session], engine: Engine,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`scheduled_purge` on each database: the refusal found in the snapshot is recorded without walking again."""
    _chain(factory, now=datetime.now(UTC))
    _tamper(factory)
    probe = _AppendProbe(engine)
    monkeypatch.setattr(audit, "verify_chain", probe)
    for _ in range(2):  # refused again at the next run, the same way
        removed = scheduled_purge(factory)
        assert removed["compliance.audit"] == 0 and "entry seq=2" in (removed.audit_refused or "")
        assert "entry seq=2" in _last_purge(factory)["audit_not_pruned"]
    assert probe.calls == [True, True]  # one walk a run, while appends went on


def test_a_prune_committed_during_the_write_phase_walk_is_no_refusal(sqlite_factory: sessionmaker[Session],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Plan stale (a prune meanwhile), verified again in the write transaction while a third purge commits: not recorded.

    That walk reads outside a snapshot (pysqlite's SELECTs before the transaction's first
    write), so the third purge's prune is half seen as deleted entries; the prune marks, not
    a second walk, tell it from tampering. SQLite only: on PostgreSQL the write phase holds
    the rows due (FOR UPDATE), so the third purge would wait for it.
    """
    now = datetime.now(UTC)
    _chain(sqlite_factory, now=now)
    with sqlite_factory() as s:
        checked = check_audit(s, load_policy(), now=now)
        third_ts = s.scalar(select(AuditEntry.ts).where(AuditEntry.seq == 3))
    assert checked.plan is not None and checked.plan.count == OLD and third_ts is not None
    with sqlite_factory() as s, s.begin():  # another purge prunes seq 1..2: the plan is stale
        assert audit.prune_before(s, third_ts) == 2
    verifies = _Counting(audit.verify_chain)
    monkeypatch.setattr(audit, "verify_chain", verifies)
    walk = audit._iter_entries
    third: list[PurgeCounts] = []

    def iter_entries(session: Session, after_seq: int, upto: int | None = None) -> Iterator[Any]:
        if not third:  # the first walk of the write phase: the third purge prunes seq 3 and commits
            third.append(PurgeCounts())
            third[0] = scheduled_purge(sqlite_factory)
        yield from walk(session, after_seq, upto)

    monkeypatch.setattr(audit, "_iter_entries", iter_entries)
    with sqlite_factory() as s, s.begin():
        removed = purge(s, load_policy(), now=now, audit_check=checked)
    assert third[0]["compliance.audit"] == 1 and third[0].audit_refused is None
    assert removed["compliance.audit"] == 0 and removed.audit_refused is None
    assert verifies.calls == 2  # the write phase's walk (which half saw the prune) and the third purge's; no other
    assert "audit_not_pruned" not in _last_purge(sqlite_factory)
    monkeypatch.undo()
    with sqlite_factory() as s:
        assert audit.verify_chain(s).ok


class _Counting:
    """Wraps a function, counting the calls."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args: Any, **kw: Any) -> Any:
        self.calls += 1
        return self.fn(*args, **kw)


@pytest.mark.parametrize("change", ["an entry due re-hashed", "an entry due deleted", "the first kept entry relinked"])
def test_a_change_between_verifying_and_pruning_is_caught(change: str, factory: sessionmaker[Session], engine: Engine) -> None:
    """The write phase compares the stored hashes with the verified ones; a difference is verified again, and refused."""
    _chain(factory)
    checked = _checked(factory)
    with engine.begin() as conn:
        if change == "an entry due re-hashed":
            conn.execute(update(AuditEntry).where(AuditEntry.seq == 2).values(hash="f" * 64))
        elif change == "an entry due deleted":
            conn.execute(delete(AuditEntry).where(AuditEntry.seq == 2))
        else:
            conn.execute(update(AuditEntry).where(AuditEntry.seq == OLD + 1).values(prev_hash="e" * 64))
    before = _count(factory, AuditEntry)
    with factory() as s, s.begin():
        removed = purge(s, load_policy(), now=NOW, audit_check=checked)
    assert removed["compliance.audit"] == 0
    assert "refusing to prune a broken chain: entry seq=" in (removed.audit_refused or ""), removed.audit_refused
    assert _count(factory, AuditEntry) == before + 1 and _count(factory, AuditCheckpoint) == 0  # the purge's entry only
    with factory() as s:
        assert not audit.verify_chain(s).ok  # still there to see


def test_an_append_between_the_phases_needs_no_second_verification(factory: sessionmaker[Session],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole log was due; the server appended meanwhile (linked to the last entry due): pruned, nothing re-hashed."""
    _chain(factory, new=0)
    with factory() as s:
        checked = check_audit(s, load_policy(), now=NOW)
    assert checked.plan is not None and checked.plan.kept is None
    _chain(factory, old=0, new=1)
    calls: list[int] = []
    monkeypatch.setattr(audit, "verify_chain", lambda *a, **kw: calls.append(1))
    with factory() as s, s.begin():
        removed = purge(s, load_policy(), now=NOW, audit_check=checked)
    assert removed["compliance.audit"] == OLD and removed.audit_refused is None and not calls
    monkeypatch.undo()
    with factory() as s:
        assert audit.verify_chain(s).ok


def test_an_entry_put_after_them_meanwhile_must_link_to_them(factory: sessionmaker[Session], engine: Engine) -> None:
    """The whole log was due; an entry that does not link to the last one due appeared: not pruned under a signature."""
    _chain(factory, new=0)
    with factory() as s:
        checked = check_audit(s, load_policy(), now=NOW)
    _chain(factory, old=0, new=1)
    with engine.begin() as conn:
        conn.execute(update(AuditEntry).where(AuditEntry.seq == OLD + 1).values(prev_hash="e" * 64))
    with factory() as s, s.begin():
        removed = purge(s, load_policy(), now=NOW, audit_check=checked)
    assert removed["compliance.audit"] == 0 and f"entry seq={OLD + 1}:" in (removed.audit_refused or "")
    assert _count(factory, AuditCheckpoint) == 0


def test_a_purge_between_the_phases_is_no_refusal(factory: sessionmaker[Session]) -> None:
    """Another purge (cron beside the server) pruned the entries meanwhile: nothing left to do, nothing to report."""
    _chain(factory)
    checked = _checked(factory)
    with factory() as s, s.begin():
        assert purge(s, load_policy(), now=NOW)["compliance.audit"] == OLD
    with factory() as s, s.begin():
        removed = purge(s, load_policy(), now=NOW, audit_check=checked)
    assert removed["compliance.audit"] == 0 and removed.audit_refused is None
    with factory() as s:
        assert audit.verify_chain(s).ok and _count(factory, AuditCheckpoint) == 1


def test_scheduled_purge_prunes_what_it_verified(factory: sessionmaker[Session]) -> None:
    """Both phases on each database (PostgreSQL's first is a REPEATABLE READ, read-only transaction)."""
    _chain(factory, now=datetime.now(UTC))
    removed = scheduled_purge(factory)
    assert removed["compliance.audit"] == OLD and removed.audit_refused is None
    with factory() as s:
        res = audit.verify_chain(s)
    assert res.ok and res.first_seq == OLD + 1, res.problems


def test_the_first_scheduled_purge_counts_from_the_last_purge_on_record_not_from_start(
        server_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first run waited a whole interval after each start: a server redeployed daily never purged."""
    import server.retention_schedule as schedule

    factory = make_sessionmaker(server_engine)
    scheduler = RetentionScheduler(factory, server_engine, 86_400)
    assert scheduler.first_wait() == 86_400  # an empty log: nothing can be due
    with factory() as s, s.begin():  # data, never purged: a day after the log began (a fresh database: not now)
        audit.append_audit(s, event="decision.made", actor="server", subject=None, payload={},
                           now=datetime.now(UTC) - timedelta(hours=2))
    assert 21.9 * 3600 < scheduler.first_wait() <= 22 * 3600
    with factory() as s, s.begin():
        s.execute(update(AuditEntry).values(ts=datetime.now(UTC) - timedelta(days=3)))  # an old one, never purged
    assert scheduler.first_wait() == schedule.FIRST_RUN_DELAY_S
    with factory() as s, s.begin():
        audit.append_audit(s, event="retention.purge", actor="cli", subject=None, payload={},
                           now=datetime.now(UTC) - timedelta(hours=1))
    assert 22.9 * 3600 < scheduler.first_wait() <= 23 * 3600  # a day after the last one
    with factory() as s, s.begin():  # the newest counts; an overdue purge runs soon, not at once
        audit.append_audit(s, event="retention.purge", actor="server", subject=None, payload={},
                           now=datetime.now(UTC) - timedelta(hours=23, minutes=59, seconds=30))
    assert scheduler.first_wait() == schedule.FIRST_RUN_DELAY_S
    # the loop takes its first wait from there: an hourly purge last run a day ago runs within the delay
    monkeypatch.setattr(schedule, "FIRST_RUN_DELAY_S", 0.05)
    scheduler = RetentionScheduler(factory, server_engine, 3600)
    ran = threading.Event()
    monkeypatch.setattr(scheduler, "run_once", lambda: ran.set())
    assert scheduler.start()
    try:
        assert ran.wait(20)
    finally:
        scheduler.stop()
