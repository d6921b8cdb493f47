"""Review B of compliance: the purge never prunes over tampering, damaged rows are no crash, and more.

Seal refuses what verify reports, a non-UTF-8 policy is named, CLI errors are one plain line.
Tampering is plain SQL on the rows, as an attacker with database access would do it; the tests
that take a `db_url` run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from cadence.cli import app
from cadence.settings import get_settings
from compliance.audit import AuditChainError, append_audit, entry_hash, prune_before, seal, verify_chain
from compliance.models import AuditCheckpoint, AuditEntry, AuditHead
from compliance.retention import PolicyError, load_policy, purge, scheduled_purge

from .conftest import FakeEvidence, FakeHolder

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
OLD = datetime(2018, 1, 1, 9, 0, tzinfo=UTC)
N = 6
wide = CliRunner(env={"COLUMNS": "400"})
narrow = CliRunner(env={"COLUMNS": "80"})


def _chain(factory: sessionmaker[Session], n: int = N, *, start: datetime = NOW - 10 * DAY) -> None:
    with factory() as s, s.begin():
        for i in range(n):
            append_audit(s, event="decision.made", actor="server", subject=f"u{i % 2}", payload={"i": i},
                         now=start + i * DAY)


def _use(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADENCE_DATABASE_URL", url)
    get_settings.cache_clear()


def _count(factory: sessionmaker[Session], model: type) -> int:
    with factory() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


# ------------------------------------------------------------------ 1. the purge never prunes over tampering


def _back_date(engine: Engine, upto: int) -> None:
    """Make a recent prefix look older than the audit window (the reported attack)."""
    with engine.begin() as conn:
        conn.execute(update(AuditEntry).where(AuditEntry.seq <= upto).values(ts=OLD))


def test_purge_refuses_to_prune_back_dated_entries_and_purges_the_rest(
    factory: sessionmaker[Session], engine: Engine, fake_holder: FakeHolder,
) -> None:
    """Back-dated entries were pruned under a signed checkpoint, and `verify` then said OK."""
    _chain(factory)
    with factory() as s, s.begin():
        s.add(FakeEvidence(user_id="old", modality="gait", created_at=NOW - 40 * DAY))
    _back_date(engine, 3)
    with factory() as s:
        with pytest.raises(AuditChainError, match="refusing to prune a broken chain: entry seq=1: content does not match"):
            prune_before(s, load_policy().audit_cutoff(NOW), dry_run=True)
    with factory() as s, s.begin():
        removed = purge(s, load_policy(), now=NOW)
    assert removed == {"fake.evidence": 1, "fake.templates": 0, "compliance.consents": 0, "compliance.audit": 0}
    assert removed.audit_refused is not None and "entry seq=1" in removed.audit_refused
    assert _count(factory, AuditEntry) == N + 1 and _count(factory, AuditCheckpoint) == 0
    assert _count(factory, FakeEvidence) == 0  # the other data still goes
    with factory() as s:
        res = verify_chain(s)
        entry = s.scalars(select(AuditEntry.payload).where(AuditEntry.event == "retention.purge")).one()
    assert res.first_broken is not None and res.first_broken.seq == 1  # the tampering is still there to see
    assert "entry seq=1" in json.loads(entry)["audit_not_pruned"]  # and the refusal is on record


def test_purge_refuses_a_consistent_rewrite_a_seal_contradicts(factory: sessionmaker[Session], engine: Engine) -> None:
    """Back-dated and re-hashed to the head: only the signed seal knows; pruning would bury the evidence."""
    _chain(factory)
    with factory() as s, s.begin():
        seal(s, now=NOW - DAY)
    with engine.begin() as conn:
        rows = conn.execute(select(AuditEntry.__table__).order_by(AuditEntry.seq)).mappings().all()
        prev = "0" * 64
        for r in rows:
            ts = OLD if r["seq"] <= 3 else r["ts"].replace(tzinfo=UTC)
            h = entry_hash(seq=r["seq"], ts=ts, event=r["event"], actor=r["actor"], subject=r["subject"],
                           payload=r["payload"], prev_hash=prev)
            conn.execute(update(AuditEntry).where(AuditEntry.seq == r["seq"]).values(ts=ts, prev_hash=prev, hash=h))
            prev = h
        conn.execute(update(AuditHead).values(hash=prev))
    with factory() as s, s.begin():
        removed = purge(s, load_policy(), now=NOW)
    assert removed["compliance.audit"] == 0 and "differs from the signed seal" in (removed.audit_refused or "")
    assert _count(factory, AuditCheckpoint) == 1  # the seal only: no prune checkpoint


def test_cli_purge_says_the_audit_log_was_not_pruned(
    db_url: str, factory: sessionmaker[Session], engine: Engine, fake_holder: FakeHolder, monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = datetime.now(UTC)
    _chain(factory, start=now - 10 * DAY)
    with factory() as s, s.begin():
        s.add(FakeEvidence(user_id="old", modality="gait", created_at=now - 40 * DAY))
    _back_date(engine, 3)
    _use(db_url, monkeypatch)
    for args in (["--json"], []):
        res = narrow.invoke(app, ["compliance", "purge", *args])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        line = next(x for x in res.output.splitlines() if x.startswith("error:"))
        assert "audit log not pruned" in line and "entry seq=1" in line and "cadence audit verify" in line, res.output
    assert _count(factory, FakeEvidence) == 0 and _count(factory, AuditCheckpoint) == 0
    verify = wide.invoke(app, ["audit", "verify"])
    assert verify.exit_code == 1 and "first broken entry seq=1" in verify.output, verify.output


def test_the_scheduled_purge_logs_the_refusal(sqlite_factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture) -> None:
    now = datetime.now(UTC)
    _chain(sqlite_factory, start=now - 10 * DAY)
    with sqlite_factory() as s, s.begin():
        s.execute(update(AuditEntry).where(AuditEntry.seq <= 2).values(ts=OLD))
    with caplog.at_level(logging.ERROR, logger="compliance.retention"):
        removed = scheduled_purge(sqlite_factory)
    assert removed["compliance.audit"] == 0
    assert any("audit log not pruned" in r.getMessage() and "entry seq=1" in r.getMessage() for r in caplog.records), caplog.text
    assert _count(sqlite_factory, AuditEntry) == N + 1  # the purge's own entry, nothing pruned


# ------------------------------------------------------------------ 2. damaged stored values are broken entries, not a crash


@pytest.mark.parametrize("sql, named", [
    ("UPDATE compliance_audit SET event = X'FF00' WHERE seq = 5", "entry seq=5: stored event"),
    ("UPDATE compliance_audit SET payload = X'FF00' WHERE seq = 5", "entry seq=5: stored payload"),
    ("UPDATE compliance_audit SET subject = X'FF00' WHERE seq = 5", "entry seq=5: stored subject"),
    ("UPDATE compliance_audit_head SET seq = 'abc'", f"entry seq={N}: the head row is unreadable"),
    ("UPDATE compliance_audit_head SET hash = X'FF00'", f"entry seq={N}: the head row is unreadable"),
    ("UPDATE compliance_audit_checkpoint SET seq = 'abc'", "checkpoint 1 (seal of seq abc): seq 'abc' is unreadable"),
    ("UPDATE compliance_audit_checkpoint SET signature = X'00'", f"checkpoint 1 (seal of seq {N}): signature b'\\x00' is unreadable"),
])
def test_damaged_rows_are_reported_by_verify_and_refused_by_seal(
    sql: str, named: str, sqlite_factory: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SQLite keeps any type in any column: bytes in `event` crashed the hash, 'abc' the comparisons."""
    _chain(sqlite_factory)
    with sqlite_factory() as s, s.begin():
        seal(s)
        s.execute(text(sql))
    _use(f"sqlite:///{tmp_path / 'c.sqlite'}", monkeypatch)
    verify = wide.invoke(app, ["audit", "verify"])
    assert verify.exit_code == 1 and named in verify.output and "Traceback" not in verify.output, verify.output
    as_json = wide.invoke(app, ["audit", "verify", "--json"])
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["ok"] is False, as_json.output
    sealed = wide.invoke(app, ["audit", "seal"])
    assert sealed.exit_code == 1 and "refusing to seal" in sealed.output and named in sealed.output, sealed.output
    assert _count(sqlite_factory, AuditCheckpoint) == 1  # nothing sealed over it


# ------------------------------------------------------------------ 3. the export of a person with a damaged audit row


@pytest.mark.parametrize("column, value, shown", [
    ("payload", "not json", {"payload": "not json"}),
    ("ts", "garbage", {"ts": "garbage"}),
    ("payload", b"\xff\xfe", {"payload": "\\xff\\xfe"}),
])
def test_export_keeps_a_damaged_audit_entry_as_raw_text(
    column: str, value: object, shown: dict[str, str], sqlite_factory: sessionmaker[Session], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`json.loads(payload)` / the ORM's time parsing raised: HTTP 500 and a CLI traceback."""
    from compliance.subjects import export_user

    _chain(sqlite_factory)
    with sqlite_factory() as s, s.begin():
        s.execute(text(f"UPDATE compliance_audit SET {column} = :v WHERE seq = 3"), {"v": value})
    with sqlite_factory() as s:
        entries = export_user(s, "u0")["audit"]["entries"]
    assert [e["seq"] for e in entries] == [1, 3, 5]
    damaged = entries[1]
    assert damaged["damaged"] is True and {k: damaged[k] for k in shown} == shown, damaged
    assert "damaged" not in entries[0] and entries[0]["payload"] == {"i": 0}
    assert entries[0]["ts"] == (NOW - 10 * DAY).isoformat()
    _use(f"sqlite:///{tmp_path / 'c.sqlite'}", monkeypatch)
    res = wide.invoke(app, ["compliance", "export", "u0"])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert json.loads(res.stdout)["audit"]["entries"][1]["damaged"] is True


# ------------------------------------------------------------------ 4. seal refuses what verify reports


def test_seal_refuses_an_entry_edited_before_the_last_seal(factory: sessionmaker[Session], engine: Engine,
                                                           db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the entries after the newest seal were re-checked: an edit before it was sealed over."""
    _chain(factory)
    with factory() as s, s.begin():
        seal(s)
    with engine.begin() as conn:
        conn.execute(update(AuditEntry).where(AuditEntry.seq == 2).values(payload='{"i":99}'))
    _use(db_url, monkeypatch)
    verify = wide.invoke(app, ["audit", "verify"])
    sealed = wide.invoke(app, ["audit", "seal"])
    reason = "entry seq=2: content does not match its hash"
    assert verify.exit_code == 1 and reason in verify.output, verify.output
    assert sealed.exit_code == 1 and reason in sealed.output and "Traceback" not in sealed.output, sealed.output
    assert _count(factory, AuditCheckpoint) == 1


def test_seal_refuses_a_forged_older_checkpoint(factory: sessionmaker[Session], engine: Engine) -> None:
    """A forged checkpoint below the newest valid one was skipped; verify reports it."""
    _chain(factory, 3)
    with factory() as s, s.begin():
        seal(s)
    _chain(factory, 2)
    with factory() as s, s.begin():
        seal(s)
    with engine.begin() as conn:
        conn.execute(update(AuditCheckpoint).where(AuditCheckpoint.id == 1).values(signature="00" * 64))
    with factory() as s:
        assert "signature does not verify" in (verify_chain(s).first_broken or pytest.fail()).reason
        with pytest.raises(AuditChainError, match="refusing to seal a broken chain: entry seq=3: checkpoint 1"):
            seal(s)


def test_seal_ignores_entries_appended_while_it_checks(sqlite_factory: sessionmaker[Session]) -> None:
    """The head row is read first: entries appended during the walk are not a broken tail, and the seal signs that head."""
    import compliance.audit as audit_mod

    _chain(sqlite_factory, 3)
    real_walk = audit_mod._walk
    appended: list[object] = []

    def walk_while_appending(*args: object, **kw: object) -> object:
        if not appended:
            with sqlite_factory() as other, other.begin():
                appended.append(append_audit(other, event="decision.made", actor="server", subject=None, payload={}))
        return real_walk(*args, **kw)  # type: ignore[arg-type]

    with sqlite_factory() as s, s.begin(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(audit_mod, "_walk", walk_while_appending)
        cp = seal(s)
    assert appended and cp.seq == 3
    with sqlite_factory() as s:
        assert verify_chain(s).ok


def test_seal_still_refuses_entries_past_an_edited_head_row(factory: sessionmaker[Session], engine: Engine) -> None:
    """The check stops at the head row; an entry past it that the head row never recorded is still refused."""
    _chain(factory)
    with engine.begin() as conn:
        h = conn.execute(select(AuditEntry.hash).where(AuditEntry.seq == N - 1)).scalar_one()
        conn.execute(update(AuditHead).values(seq=N - 1, hash=h))
    reason = f"entry seq={N}: the head records seq {N - 1} but the chain ends at seq {N} (head row or tail edited)"
    with factory() as s:
        assert f"first_broken entry seq={N}: {(verify_chain(s).first_broken or pytest.fail()).reason}".endswith(reason)
        with pytest.raises(AuditChainError, match=re.escape(reason)):
            seal(s)


# ------------------------------------------------------------------ 5. a policy file that is not UTF-8


def test_a_policy_that_is_not_utf8_is_named(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from cadence.settings import Settings
    from server.app import check_settings

    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("version: café\n".encode("latin-1"))
    with pytest.raises(PolicyError, match=f"^policy: {bad} is not UTF-8 text"):
        load_policy(bad)
    with pytest.raises(ValueError, match=f"^retention_policy: policy: {bad} is not UTF-8 text .*CADENCE_RETENTION_POLICY"):
        check_settings(Settings(environment="development", retention_policy=bad, _env_file=None))  # type: ignore[call-arg]
    _use(db_url, monkeypatch)
    res = wide.invoke(app, ["compliance", "purge", "--policy", str(bad)])
    assert res.exit_code == 2 and "not UTF-8" in res.output and "Traceback" not in res.output, res.output


# ------------------------------------------------------------------ 6. + 7. CLI errors: one plain line, also for writes


def _error_line(output: str) -> str:
    """The one `error:` line, last in the output (a wrapped message would go on below it)."""
    lines = [x for x in output.splitlines() if x.strip()]
    errors = [i for i, x in enumerate(lines) if x.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == len(lines) - 1, output
    return lines[-1]


@pytest.mark.parametrize("folder", ["[/]", "[prod]"])
def test_a_missing_database_path_with_brackets_is_one_plain_line(folder: str, tmp_path: Path) -> None:
    """`[/]` crashed the printer (MarkupError), `[prod]` vanished, and long lines wrapped at 80 columns."""
    path = tmp_path / folder / ("a-long-database-file-name-" * 3 + ".sqlite")
    for command in (["audit", "verify"], ["compliance", "purge"]):
        res = narrow.invoke(app, [*command, "--database-url", f"sqlite:///{path}"])
        assert res.exit_code == 2, res.output
        assert f"no database at {path}:" in _error_line(res.output)


def test_missing_tables_and_key_errors_are_one_line(tmp_path: Path, sqlite_factory: sessionmaker[Session],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    other = tmp_path / "[prod]" / "other.sqlite"
    other.parent.mkdir()
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE unrelated (id INTEGER)")
    res = narrow.invoke(app, ["audit", "verify", "--database-url", f"sqlite:///{other}"])
    assert res.exit_code == 2 and "[prod]" in _error_line(res.output) and "cadence serve" in res.output, res.output
    _chain(sqlite_factory)
    _use(f"sqlite:///{tmp_path / 'c.sqlite'}", monkeypatch)
    monkeypatch.setenv("CADENCE_ENVIRONMENT", "production")
    get_settings.cache_clear()
    for command in (["audit", "seal"], ["audit", "verify"], ["compliance", "export", "u0"],
                    ["compliance", "erase", "u0", "-y"]):
        res = narrow.invoke(app, command)
        assert res.exit_code == 2 and "refused outside" in _error_line(res.output), (command, res.output)


@pytest.mark.parametrize("command", [["compliance", "purge"], ["compliance", "erase", "u0", "-y"], ["audit", "seal"]])
def test_a_read_only_database_is_one_line_not_a_traceback(command: list[str], sqlite_factory: sessionmaker[Session],
                                                          tmp_path: Path) -> None:
    _chain(sqlite_factory)
    url = f"sqlite:///file:{tmp_path / 'c.sqlite'}?mode=ro&uri=true"
    res = narrow.invoke(app, [*command, "--database-url", url])
    assert res.exit_code == 2 and "attempt to write a readonly database" in _error_line(res.output), res.output
    assert _count(sqlite_factory, AuditEntry) == N


def test_a_connection_lost_at_commit_is_one_line(sqlite_factory: sessionmaker[Session], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import OperationalError

    _chain(sqlite_factory)

    def lost(self: object, *args: object, **kw: object) -> None:
        raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr("sqlalchemy.orm.SessionTransaction.commit", lost)
    res = narrow.invoke(app, ["audit", "seal", "--database-url", f"sqlite:///{tmp_path / 'c.sqlite'}"])
    assert res.exit_code == 2 and "server closed the connection unexpectedly" in _error_line(res.output), res.output
    assert _count(sqlite_factory, AuditCheckpoint) == 0


# ------------------------------------------------------------------ 8. database URLs that do not parse


@pytest.mark.parametrize("url, says", [
    ("postgresql://u:s3cret@127.0.0.1:notaport/db", "postgresql://u:***@127.0.0.1:notaport/db"),
    ("postgresql+nodriver://u:s3cret@127.0.0.1/db", "no driver for it here"),
    ("foo[/x]://y", "foo[/x]://y"),
    ("sqlite:////tmp/cadence-no-such-[/x]/a.sqlite", "no database at /tmp/cadence-no-such-[/x]/a.sqlite"),
])
def test_bad_database_urls_are_one_line_without_the_password(url: str, says: str) -> None:
    for command in (["audit", "verify"], ["compliance", "export", "u0"]):
        res = narrow.invoke(app, [*command, "--database-url", url])
        assert res.exit_code == 2 and says in _error_line(res.output) and "s3cret" not in res.output, res.output


def test_admin_export_of_a_person_with_a_damaged_audit_row_is_200(server_api: tuple[Any, Any]) -> None:
    """`GET /v1/admin/users/{id}/export` answered 500 on a payload that is no JSON."""
    from server.client.api import DeviceClient

    api, client = server_api
    DeviceClient("http://testserver", user_id="alice", http=client).register()
    with api.state.engine.begin() as conn:
        conn.execute(text("UPDATE compliance_audit SET payload = 'not json', ts = 'garbage'"))
    r = client.get("/v1/admin/users/alice/export", headers={"X-API-Key": "dev-admin-key"})
    assert r.status_code == 200, r.text
    entries = r.json()["data"]["audit"]["entries"]
    assert entries and all(e["damaged"] and e["payload"] == "not json" and e["ts"] == "garbage" for e in entries)


def test_an_erased_person_still_exports_their_audit_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What docs/compliance.md says: a second erasure is "no data held", the export holds the audit entries.

    And `wrote PATH` names a path with brackets (it crashed the printer).
    """
    from cadence.db import Base, make_engine
    from compliance import subjects
    from server.holders import ServerHolder
    from server.models import User

    url = f"sqlite:///{tmp_path / 'server.sqlite'}"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    with Session(engine) as s, s.begin():
        s.add(User(id="pat"))
        append_audit(s, event="decision.made", actor="server", subject="pat", payload={"i": 1})
    engine.dispose()
    subjects.register_holder(ServerHolder())
    monkeypatch.setenv("CADENCE_HOLDER_MODULES", '["server.holders"]')
    _use(url, monkeypatch)
    assert wide.invoke(app, ["compliance", "erase", "pat", "-y"]).exit_code == 0
    again = wide.invoke(app, ["compliance", "erase", "pat", "-y"])
    assert again.exit_code == 1 and "no data held for pat" in again.output, again.output
    out = tmp_path / "[" / "]" / "pat.json"
    out.parent.mkdir(parents=True)
    res = narrow.invoke(app, ["compliance", "export", "pat", "--out", str(out)])
    assert res.exit_code == 0 and f"wrote {out}" in res.output, res.output
    data = json.loads(out.read_text())
    assert data["data"] == {"server": {}} and data["consents"] == []
    assert [e["event"] for e in data["audit"]["entries"]] == ["decision.made", "subject.erase"]


def test_a_seal_kept_outside_is_counted_once(sqlite_factory: sessionmaker[Session], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`verify --checkpoint cp.json` of the seal stored in the database said "2 signed checkpoint(s)"."""
    _chain(sqlite_factory)
    _use(f"sqlite:///{tmp_path / 'c.sqlite'}", monkeypatch)
    sealed = wide.invoke(app, ["audit", "seal", "--out", str(tmp_path / "cp1.json")])
    assert sealed.exit_code == 0, sealed.output
    alone = wide.invoke(app, ["audit", "verify"])
    both = wide.invoke(app, ["audit", "verify", "--checkpoint", str(tmp_path / "cp1.json")])
    assert alone.exit_code == both.exit_code == 0, both.output
    assert "1 signed checkpoint(s)" in alone.output and "1 signed checkpoint(s)" in both.output, both.output
