"""A purge that commits while another verification walks the audit chain is no tampering.

Verifying reads the checkpoints, the chain's first position, then the entries in pages of
1000. Read outside a snapshot (the CLI's plain transaction: autocommit SELECTs on SQLite, one
READ COMMITTED transaction on PostgreSQL), a prune that the server's scheduled purge commits
in between is half seen, as deleted entries: `cadence compliance purge` exited 1 and recorded
a permanent, false ``audit_not_pruned`` in the log; `audit seal` refused to seal and `audit
verify` reported the chain BROKEN. Here `audit._iter_entries` is wrapped so that the other
purge commits at a fixed point of the first walk: before its first page, or after the first
page (1000 entries). Real tampering is still refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from cadence.cli import app
from cadence.settings import get_settings
from compliance import audit
from compliance.models import AuditCheckpoint, AuditEntry
from compliance.retention import PurgeCounts, load_policy, purge, scheduled_purge
from server.sqlite_writers import serialize_sqlite_writers

DAY = timedelta(days=1)
#: walk points where the other purge commits: before the first page; after the first page (needs more than 1000 due)
POINTS = {"before the first page": (0, 3), "between two pages": (1000, 1001)}


def _chain(factory: sessionmaker[Session], old: int, new: int = 3) -> None:
    """`old` entries past the 7-year window (one second apart), then `new` recent ones."""
    now = datetime.now(UTC)
    with factory() as s, s.begin():
        for i in range(old + new):
            ts = now - 9 * 365 * DAY + i * timedelta(seconds=1) if i < old else now - (10 - i % 10) * DAY
            audit.append_audit(s, event="decision.made", actor="server", subject=f"u{i % 2}", payload={"i": i}, now=ts)


class _PurgeDuringWalk:
    """Stands in for `audit._iter_entries`: the first walk lets the server's purge commit after `at` entries."""

    def __init__(self, factory: sessionmaker[Session], at: int) -> None:
        self.factory, self.at = factory, at
        self.removed: list[PurgeCounts] = []
        self._iter = audit._iter_entries

    def _fire(self) -> None:
        if not self.removed:
            self.removed.append(PurgeCounts())  # its own walks go through here too: fire once
            self.removed[0] = scheduled_purge(self.factory)

    def __call__(self, session: Session, after_seq: int, upto: int | None = None) -> Iterator[Any]:
        if self.at == 0:
            self._fire()
        for n, row in enumerate(self._iter(session, after_seq, upto), 1):
            yield row
            if n == self.at:
                self._fire()


@pytest.fixture(params=list(POINTS))
def raced(request: pytest.FixtureRequest, factory: sessionmaker[Session], db_url: str,
          monkeypatch: pytest.MonkeyPatch) -> tuple[_PurgeDuringWalk, int]:
    """A chain with entries due, the CLI pointed at it, and the other purge armed; (hook, entries due)."""
    at, old = POINTS[request.param]
    _chain(factory, old)
    hook = _PurgeDuringWalk(factory, at)
    monkeypatch.setattr(audit, "_iter_entries", hook)
    monkeypatch.setenv("CADENCE_DATABASE_URL", db_url)
    get_settings.cache_clear()
    return hook, old


class _CountingVerify:
    """Stands in for `audit.verify_chain`, counting the walks."""

    def __init__(self) -> None:
        self.calls = 0
        self._verify = audit.verify_chain

    def __call__(self, *args: Any, **kw: Any) -> audit.VerifyResult:
        self.calls += 1
        return self._verify(*args, **kw)


def _entries(factory: sessionmaker[Session], event: str) -> list[dict[str, Any]]:
    with factory() as s:
        return [json.loads(p) for p in s.scalars(select(AuditEntry.payload).where(AuditEntry.event == event)
                                                 .order_by(AuditEntry.seq))]


def _intact(factory: sessionmaker[Session]) -> bool:
    with factory() as s:
        return audit.verify_chain(s).ok


def test_the_cli_purge_reports_no_tampering(raced: tuple[_PurgeDuringWalk, int], factory: sessionmaker[Session],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    hook, old = raced
    counting = _CountingVerify()
    monkeypatch.setattr(audit, "verify_chain", counting)
    res = CliRunner().invoke(app, ["compliance", "purge", "--json"])
    assert hook.removed and hook.removed[0]["compliance.audit"] == old  # the other purge pruned them mid-walk
    assert res.exit_code == 0, res.output
    assert counting.calls == 2  # its check, in a snapshot (no second look needed), and the other purge's
    assert "audit_not_pruned" not in res.output and '"compliance.audit": 0' in res.output, res.output
    purges = _entries(factory, "retention.purge")
    assert len(purges) == 2 and not any("audit_not_pruned" in p for p in purges), purges  # no false claim on record
    assert _intact(factory)


def test_the_cli_seal_seals(raced: tuple[_PurgeDuringWalk, int], factory: sessionmaker[Session],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    hook, old = raced
    counting = _CountingVerify()
    monkeypatch.setattr(audit, "verify_chain", counting)
    res = CliRunner().invoke(app, ["audit", "seal"])
    assert hook.removed and hook.removed[0]["compliance.audit"] == old
    assert res.exit_code == 0, res.output
    assert counting.calls == 2  # its walk (in a snapshot: nothing to look at again) and the other purge's
    assert json.loads(res.output)["kind"] == "seal"
    assert _intact(factory)


def test_the_cli_verify_finds_the_chain_intact(raced: tuple[_PurgeDuringWalk, int]) -> None:
    hook, old = raced
    res = CliRunner().invoke(app, ["audit", "verify"])
    assert hook.removed and hook.removed[0]["compliance.audit"] == old
    assert res.exit_code == 0 and "audit chain OK" in res.output, res.output


def test_a_purge_in_one_plain_transaction_looks_again_before_recording_a_refusal(
        raced: tuple[_PurgeDuringWalk, int], factory: sessionmaker[Session]) -> None:
    """`purge` verified in the caller's transaction (no snapshot): the break it read came from a prune committed during the walk."""
    hook, old = raced
    with factory() as s, s.begin():
        removed = purge(s, load_policy(), actor="cli")
    assert hook.removed and hook.removed[0]["compliance.audit"] == old
    assert removed.audit_refused is None and removed["compliance.audit"] == 0
    assert not any("audit_not_pruned" in p for p in _entries(factory, "retention.purge"))
    assert _intact(factory)


def test_a_seal_in_one_plain_transaction_looks_again_before_refusing(
        raced: tuple[_PurgeDuringWalk, int], factory: sessionmaker[Session]) -> None:
    hook, old = raced
    with factory() as s, s.begin():
        cp = audit.seal(s)
    assert hook.removed and hook.removed[0]["compliance.audit"] == old
    with factory() as s:
        head = s.scalar(select(func.max(AuditEntry.seq)))
    assert cp.kind == "seal" and cp.seq == head  # the head as it is after the other purge
    assert _intact(factory)


def test_tampering_is_still_refused(factory: sessionmaker[Session], db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry due edited: the purge records the refusal its snapshot found; the seal refuses after two snapshots."""
    _chain(factory, 3)
    with factory() as s, s.begin():
        s.execute(update(AuditEntry).where(AuditEntry.seq == 2).values(payload='{"i":99}'))
    monkeypatch.setenv("CADENCE_DATABASE_URL", db_url)
    get_settings.cache_clear()
    counting = _CountingVerify()
    monkeypatch.setattr(audit, "verify_chain", counting)
    res = CliRunner().invoke(app, ["compliance", "purge", "--json"])
    assert res.exit_code == 1 and "error: audit log not pruned: refusing to prune a broken chain: entry seq=2" in res.output
    assert counting.calls == 1  # the snapshot's check only: walking again under the write lock stalled every append
    assert "entry seq=2" in _entries(factory, "retention.purge")[-1]["audit_not_pruned"]
    counting.calls = 0
    res = CliRunner().invoke(app, ["audit", "seal"])
    assert res.exit_code == 1 and "refusing to seal a broken chain: entry seq=2" in res.output, res.output
    assert counting.calls == 2  # two snapshots
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(AuditCheckpoint)) == 0


@pytest.mark.parametrize("server", [False, True], ids=["plain engine", "server engine"])
def test_a_read_snapshot_does_not_see_a_commit_made_meanwhile(server: bool, factory: sessionmaker[Session],
                                                              engine: Engine) -> None:
    """What the verification relies on, on each database (SQLite: pysqlite's autocommit SELECTs, or the server's BEGIN)."""
    if server and engine.dialect.name != "sqlite":
        pytest.skip("one kind of engine on PostgreSQL")
    if server:
        serialize_sqlite_writers(engine)
    _chain(factory, 3)
    with factory() as reader:
        audit.read_snapshot(reader)
        before = reader.scalar(select(func.count()).select_from(AuditEntry))
        with factory() as s, s.begin():
            s.execute(delete(AuditEntry).where(AuditEntry.seq <= 3))
        assert reader.scalar(select(func.count()).select_from(AuditEntry)) == before == 6
    assert _intact(factory) is False  # committed: seen by a new transaction
