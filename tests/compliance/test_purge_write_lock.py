"""The CLI's purge and erasure hold the database's write lock from the first statement of their write transaction.

The server's engine begins every write transaction with BEGIN IMMEDIATE
(`server.sqlite_writers.serialize_sqlite_writers`); the CLI's plain engine left it to pysqlite,
which runs SELECTs outside any transaction until the first INSERT, UPDATE or DELETE. So what
`cadence compliance purge` and `erase` read before their first write was not in their
transaction: a server purge could prune the audit entries that the CLI's purge had just found
unchanged (both then recorded the same entries as pruned, under two prune checkpoints), and a
consent granted between the erasure's count and its delete was erased but left out of the
``subject.erase`` record. (No SQLITE_BUSY here: with no snapshot held, the first write waits on
the busy timeout; a deferred BEGIN would have failed at once, which `test_a_cli_purge_beside_a_busy_server`
guards against.) Here a hook on the CLI's engine lets the server commit at a fixed point of
the write transaction, as a running `cadence serve` would; it now waits for the CLI instead.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

import cadence.db
from cadence.cli import app
from cadence.db import make_engine, make_sessionmaker
from cadence.settings import get_settings
from compliance import audit
from compliance.consent import grant_consent, policy_text
from compliance.models import AuditCheckpoint, AuditEntry, ConsentRecord
from compliance.retention import PurgeCounts, scheduled_purge
from server.sqlite_writers import serialize_sqlite_writers

from .conftest import FakeEvidence, FakeHolder

DAY = timedelta(days=1)
OLD = 3  # audit entries past the default policy's 7 years
ALICE = "alice-7f3a91"
#: how long the hook lets the server's commit take: ample when nothing holds the lock
WAIT_S = 1.0
#: the first statement of the purge's and the erasure's write transactions (no holder, or one that only deletes)
CONSENT_COUNT = ("SELECT count(*)", "FROM compliance_consent")


def _chain(factory: sessionmaker[Session], now: datetime) -> None:
    """OLD entries due, then three recent ones."""
    with factory() as s, s.begin():
        for i in range(OLD + 3):
            ts = now - 9 * 365 * DAY + i * DAY if i < OLD else now - (10 - i) * DAY
            audit.append_audit(s, event="decision.made", actor="server", subject=f"u{i % 2}", payload={"i": i}, now=ts)


@pytest.fixture
def server(db_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on the database as `cadence serve` opens it (SQLite: BEGIN IMMEDIATE writers)."""
    engine = make_engine(db_url)
    if engine.dialect.name == "sqlite":
        serialize_sqlite_writers(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


class _ServerDuring:
    """Runs `act` (the server's write) in a thread once the CLI's engine runs a statement holding all of `words`.

    It waits up to WAIT_S for the thread: the write commits at that point unless the CLI holds
    the write lock, and then it commits after the CLI's transaction.
    """

    def __init__(self, words: tuple[str, ...], when: str, act: Callable[[], Any]) -> None:
        self.words, self.when, self.act = words, when, act
        self.results: list[Any] = []
        self.errors: list[BaseException] = []
        self.thread: threading.Thread | None = None

    def _run(self) -> None:
        try:
            self.results.append(self.act())
        except BaseException as exc:  # noqa: BLE001 - reported by `join`
            self.errors.append(exc)

    def listen(self, engine: Engine) -> None:
        def fire(_conn: Any, _cur: Any, statement: str, *_: Any) -> None:
            if self.thread is None and all(w in statement for w in self.words):
                self.thread = threading.Thread(target=self._run)
                self.thread.start()
                self.thread.join(WAIT_S)

        event.listen(engine, self.when, fire)

    def join(self) -> Any:
        assert self.thread is not None, f"no statement of the CLI held {self.words}"
        self.thread.join(60)
        assert not self.thread.is_alive() and not self.errors, self.errors
        return self.results[0]


@pytest.fixture
def cli(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Callable[[_ServerDuring], None]:
    """Points the CLI at the database; calling it hooks `_ServerDuring` on the engine the CLI makes."""
    monkeypatch.setenv("CADENCE_DATABASE_URL", db_url)
    get_settings.cache_clear()

    def hook(during: _ServerDuring) -> None:
        made = cadence.db.make_engine

        def make(url: str, **kw: Any) -> Engine:
            engine = made(url, **kw)
            during.listen(engine)
            return engine

        monkeypatch.setattr(cadence.db, "make_engine", make)

    return hook


def _purge_payloads(factory: sessionmaker[Session]) -> list[dict[str, Any]]:
    with factory() as s:
        return [json.loads(p) for p in s.scalars(select(AuditEntry.payload).where(AuditEntry.event == "retention.purge"))]


def test_a_server_purge_cannot_prune_what_the_cli_purge_is_pruning(
        factory: sessionmaker[Session], server: sessionmaker[Session], cli: Callable[[_ServerDuring], None]) -> None:
    """Between the CLI's check that the entries due are unchanged and its prune, the server's scheduled purge prunes them.

    Before: both recorded the 3 entries as pruned, under two prune checkpoints. PostgreSQL was
    never affected (the check reads the rows FOR UPDATE).
    """
    _chain(factory, datetime.now(UTC))
    during = _ServerDuring(("INSERT INTO compliance_audit_checkpoint",), "before_cursor_execute",
                           lambda: scheduled_purge(server))
    cli(during)
    res = CliRunner().invoke(app, ["compliance", "purge", "--json"])
    assert res.exit_code == 0, res.output
    other: PurgeCounts = during.join()
    assert json.loads(res.stdout)["removed"]["compliance.audit"] == OLD
    assert other["compliance.audit"] == 0  # found them pruned once the CLI's transaction ended
    assert sorted(p["removed"]["compliance.audit"] for p in _purge_payloads(factory)) == [0, OLD]
    with factory() as s:
        assert s.scalar(select(func.count()).where(AuditCheckpoint.kind == "prune")) == 1
        assert audit.verify_chain(s).ok


def _sqlite_only(db_url: str, why: str) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip(why)


def test_a_server_write_during_the_cli_purge_waits_for_it(
        factory: sessionmaker[Session], server: sessionmaker[Session], db_url: str,
        cli: Callable[[_ServerDuring], None]) -> None:
    """The server commits right after the first read of the purge's write transaction.

    A deferred transaction would fail there with "database is locked" (SQLITE_BUSY_SNAPSHOT, exit 2);
    pysqlite's autocommit reads let the server in. Now the server's decision waits and lands after the purge.
    """
    _sqlite_only(db_url, "PostgreSQL has no database-wide write lock: appends queue on the head row")
    _chain(factory, datetime.now(UTC))

    def decide() -> int:
        with server() as s, s.begin():
            return audit.append_audit(s, event="decision.made", actor="server", subject="u9", payload={}).seq

    during = _ServerDuring(CONSENT_COUNT, "after_cursor_execute", decide)
    cli(during)
    res = CliRunner().invoke(app, ["compliance", "purge", "--json"])
    assert res.exit_code == 0, res.output
    decided = during.join()
    with factory() as s:
        purged = s.scalar(select(AuditEntry.seq).where(AuditEntry.event == "retention.purge"))
        assert audit.verify_chain(s).ok
    assert purged is not None and decided == purged + 1


def test_a_cli_purge_beside_a_busy_server(factory: sessionmaker[Session], server: sessionmaker[Session],
                                          fake_holder: FakeHolder, cli: Callable[[_ServerDuring], None]) -> None:
    """Purges with rows due while the server commits decisions without pause: every run succeeds, nothing is lost."""
    now = datetime.now(UTC)
    _chain(factory, now)
    stop, decisions = threading.Event(), [0]

    def decide() -> None:
        while not stop.is_set():
            with server() as s, s.begin():
                audit.append_audit(s, event="decision.made", actor="server", subject="u9", payload={})
            decisions[0] += 1

    writer = threading.Thread(target=decide)
    writer.start()
    try:
        for run in range(3):
            with factory() as s, s.begin():
                s.add_all(FakeEvidence(user_id="old", modality="gait", created_at=now - 40 * DAY) for _ in range(5))
            res = CliRunner().invoke(app, ["compliance", "purge", "--json"])
            assert res.exit_code == 0, res.output
            assert json.loads(res.stdout)["removed"]["fake.evidence"] == 5, (run, res.output)
    finally:
        stop.set()
        writer.join(30)
    assert decisions[0] > 0
    with factory() as s:
        assert s.scalar(select(func.count()).where(AuditEntry.event == "decision.made")) == 3 + decisions[0]
        assert audit.verify_chain(s).ok


def test_a_consent_granted_during_the_cli_erasure_is_recorded_or_kept(
        factory: sessionmaker[Session], server: sessionmaker[Session], db_url: str, fake_holder: FakeHolder,
        cli: Callable[[_ServerDuring], None]) -> None:
    """The server records a consent between the erasure's count of consents and its delete.

    Before: it was deleted but not counted (``compliance.consents``: 1 of 2 in ``subject.erase``).
    Now it waits, commits after the erasure, and is kept.
    """
    _sqlite_only(db_url, "on PostgreSQL the server's holder locks the person's rows first (`ServerHolder.lock`)")
    version = policy_text("authentication").version
    with factory() as s, s.begin():
        grant_consent(s, user_id=ALICE, modality="keystroke", purpose="authentication", policy_version=version)

    def grant() -> None:
        with server() as s, s.begin():
            grant_consent(s, user_id=ALICE, modality="touch", purpose="authentication", policy_version=version)

    during = _ServerDuring(CONSENT_COUNT, "after_cursor_execute", grant)
    cli(during)
    res = CliRunner().invoke(app, ["compliance", "erase", ALICE, "--yes"])
    assert res.exit_code == 0, res.output
    during.join()
    with factory() as s:
        erased = json.loads(s.scalars(select(AuditEntry.payload).where(AuditEntry.event == "subject.erase")).one())
        kept = s.scalar(select(func.count()).select_from(ConsentRecord).where(ConsentRecord.user_id == ALICE))
    assert erased["removed"]["compliance.consents"] + kept == 2, (erased, kept)
