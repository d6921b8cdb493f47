"""`cadence audit verify` through the CLI: any edit, deletion or reordering is named.

Tampering is done the way an attacker with database access would: plain SQL on the rows.
Runs on SQLite and on PostgreSQL (skipped with the reason when that is not reachable).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from cadence.cli import app
from compliance.audit import AuditChainError, append_audit, digest, entry_hash, prune_before, seal
from compliance.models import AuditCheckpoint, AuditEntry, AuditHead

N = 5
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
runner = CliRunner()


def _chain(factory: sessionmaker[Session], n: int = N) -> None:
    with factory() as s, s.begin():
        for i in range(n):
            append_audit(
                s,
                event="decision.made",
                actor="server",
                subject=f"user-{i % 2}",
                payload={
                    "outcome": "approve" if i % 3 else "step_up",
                    "inputs": digest(f"window-{i}".encode()),
                    "model_versions": {"keystroke": "ks-2026.11"},
                    "reasons": [{"modality": "keystroke", "code": "KS_MATCH", "contribution": 1.25}],
                },
                now=T0 + timedelta(minutes=i),
            )


def _verify(db_url: str, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    monkeypatch.setenv("CADENCE_DATABASE_URL", db_url)
    from cadence.settings import get_settings

    get_settings.cache_clear()
    res = runner.invoke(app, ["audit", "verify", *args])
    return res.exit_code, res.output


def test_untouched_chain_verifies(factory: sessionmaker[Session], db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _chain(factory)
    code, out = _verify(db_url, monkeypatch)
    assert code == 0, out
    assert f"audit chain OK: {N} entries (seq 1..{N})" in out


@pytest.mark.parametrize("seq", range(1, N + 1))
def test_edited_row_is_named(seq: int, factory: sessionmaker[Session], engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _chain(factory)
    with engine.begin() as conn:
        conn.execute(update(AuditEntry).where(AuditEntry.seq == seq).values(payload='{"outcome":"approve"}'))
    code, out = _verify(db_url, monkeypatch)
    assert code == 1, out
    assert f"first broken entry seq={seq}:" in out
    assert "edited" in out


@pytest.mark.parametrize("seq", range(1, N + 1))
def test_deleted_row_is_named(seq: int, factory: sessionmaker[Session], engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _chain(factory)
    with engine.begin() as conn:
        conn.execute(delete(AuditEntry).where(AuditEntry.seq == seq))
    code, out = _verify(db_url, monkeypatch)
    assert code == 1, out
    assert f"first broken entry seq={seq}: missing" in out


@pytest.mark.parametrize("seq", range(1, N))
def test_reordered_rows_are_named(seq: int, factory: sessionmaker[Session], engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Swap the contents of positions seq and seq+1 (every column but the position)."""
    _chain(factory)
    cols = ["ts", "event", "actor", "subject", "payload", "prev_hash", "hash"]
    with engine.begin() as conn:
        a, b = (conn.execute(select(*[getattr(AuditEntry, c) for c in cols]).where(AuditEntry.seq == q)).one() for q in (seq, seq + 1))
        conn.execute(update(AuditEntry).where(AuditEntry.seq == seq).values(dict(zip(cols, b, strict=True))))
        conn.execute(update(AuditEntry).where(AuditEntry.seq == seq + 1).values(dict(zip(cols, a, strict=True))))
    code, out = _verify(db_url, monkeypatch)
    assert code == 1, out
    assert f"first broken entry seq={seq}:" in out


def test_renumbering_to_reorder_is_named(factory: sessionmaker[Session], engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reordering by swapping positions (seq values) of entries 2 and 3."""
    _chain(factory)
    with engine.begin() as conn:
        conn.execute(update(AuditEntry).where(AuditEntry.seq == 2).values(seq=-2))
        conn.execute(update(AuditEntry).where(AuditEntry.seq == 3).values(seq=2))
        conn.execute(update(AuditEntry).where(AuditEntry.seq == -2).values(seq=3))
    code, out = _verify(db_url, monkeypatch)
    assert code == 1 and "first broken entry seq=2:" in out, out


def _rewrite_tail(engine: Engine, from_seq: int) -> None:
    """An attacker who knows the hashing (no secret in it) edits an entry and re-hashes the rest."""
    with engine.begin() as conn:
        rows = conn.execute(select(AuditEntry.__table__).where(AuditEntry.seq >= from_seq).order_by(AuditEntry.seq)).mappings().all()
        prev = conn.execute(select(AuditEntry.hash).where(AuditEntry.seq == from_seq - 1)).scalar_one()
        for r in rows:
            payload = '{"outcome":"approve"}' if r["seq"] == from_seq else r["payload"]
            h = entry_hash(seq=r["seq"], ts=r["ts"].replace(tzinfo=UTC), event=r["event"], actor=r["actor"], subject=r["subject"], payload=payload, prev_hash=prev)
            conn.execute(update(AuditEntry).where(AuditEntry.seq == r["seq"]).values(payload=payload, prev_hash=prev, hash=h))
            prev = h
        conn.execute(update(AuditHead).values(hash=prev))


def test_consistent_rewrite_is_caught_by_the_seal(factory: sessionmaker[Session], engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _chain(factory)
    with factory() as s, s.begin():
        seal(s)
    _rewrite_tail(engine, 2)
    code, out = _verify(db_url, monkeypatch)
    assert code == 1 and f"first broken entry seq={N}: differs from the signed seal" in out, out


def _truncate_after_seal(factory: sessionmaker[Session], engine: Engine) -> None:
    """Seal, then cut the last two entries and fix the head row: only the signed seal still knows."""
    _chain(factory)
    with factory() as s, s.begin():
        seal(s)
    with engine.begin() as conn:
        conn.execute(delete(AuditEntry).where(AuditEntry.seq > N - 2))
        h = conn.execute(select(AuditEntry.hash).where(AuditEntry.seq == N - 2)).scalar_one()
        conn.execute(update(AuditHead).values(seq=N - 2, hash=h))


def _checkpoints(factory: sessionmaker[Session]) -> list[tuple[str, int]]:
    with factory() as s:
        return [(r.kind, r.seq) for r in s.execute(select(AuditCheckpoint.kind, AuditCheckpoint.seq).order_by(AuditCheckpoint.id))]


def test_truncation_after_seal_is_named(factory: sessionmaker[Session], engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _truncate_after_seal(factory, engine)
    code, out = _verify(db_url, monkeypatch)
    assert code == 1 and f"first broken entry seq={N - 1}: missing" in out and "truncated" in out, out


def test_truncation_after_seal_is_not_sealed_over(factory: sessionmaker[Session], engine: Engine, db_url: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`audit seal` stopped its check at the (rewound) head row and signed seq N-2 over what `verify` reports."""
    _truncate_after_seal(factory, engine)
    monkeypatch.setenv("CADENCE_DATABASE_URL", db_url)
    from cadence.settings import get_settings

    get_settings.cache_clear()
    res = runner.invoke(app, ["audit", "seal"])
    assert res.exit_code == 1, res.output
    assert (f"error: refusing to seal a broken chain: entry seq={N - 1}: missing: a signed seal covers seq {N} "
            f"but the chain ends at seq {N - 2} (tail truncated)") in res.output, res.output
    assert _checkpoints(factory) == [("seal", N)]  # no new checkpoint


@pytest.mark.parametrize("due", [N - 2, 1], ids=["every entry due", "a prefix due"])
def test_truncation_after_seal_is_not_pruned_over(due: int, factory: sessionmaker[Session], engine: Engine) -> None:
    """The purge's check stops after the entries due, as the seal's does at the head row: the same hole."""
    _truncate_after_seal(factory, engine)
    cutoff = T0 + timedelta(minutes=due - 1, seconds=30)  # entries 1..due are older
    with factory() as s, pytest.raises(AuditChainError, match=(
            f"refusing to prune a broken chain: entry seq={N - 1}: missing: a signed seal covers seq {N} but the "
            rf"chain ends at seq {N - 2} \(tail truncated\)")):
        prune_before(s, cutoff)
    assert _checkpoints(factory) == [("seal", N)]


def test_external_checkpoint_catches_deleted_seals(
    factory: sessionmaker[Session], engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`cadence audit seal --out` keeps a copy off the database; deleting the seal row is not enough."""
    _chain(factory)
    monkeypatch.setenv("CADENCE_DATABASE_URL", db_url)
    from cadence.settings import get_settings

    get_settings.cache_clear()
    cp_file = tmp_path / "checkpoint.json"
    res = runner.invoke(app, ["audit", "seal", "--out", str(cp_file)])
    assert res.exit_code == 0, res.output
    assert json.loads(cp_file.read_text())["seq"] == N
    with engine.begin() as conn:
        conn.execute(delete(AuditCheckpoint))
        conn.execute(delete(AuditEntry).where(AuditEntry.seq == N))
        h = conn.execute(select(AuditEntry.hash).where(AuditEntry.seq == N - 1)).scalar_one()
        conn.execute(update(AuditHead).values(seq=N - 1, hash=h))
    assert _verify(db_url, monkeypatch)[0] == 0  # the database alone now looks consistent
    code, out = _verify(db_url, monkeypatch, "--checkpoint", str(cp_file))
    assert code == 1 and f"first broken entry seq={N}: missing" in out, out


def test_forged_seal_is_refused(factory: sessionmaker[Session], engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _chain(factory)
    with factory() as s, s.begin():
        seal(s)
    with engine.begin() as conn:
        conn.execute(update(AuditCheckpoint).values(seq=N - 1))
    code, out = _verify(db_url, monkeypatch)
    assert code == 1 and "signature does not verify" in out, out


def test_missing_tables_give_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as conn:  # a database, but not one the server has migrated
        conn.execute("CREATE TABLE unrelated (id INTEGER)")
    code, out = _verify(f"sqlite:///{path}", monkeypatch)
    out = out.replace("\n", "")  # rich wraps long lines
    assert code == 2 and "compliance_audit" in out and "cadence serve" in out


def test_missing_database_file_is_named_not_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "typo.sqlite"
    code, out = _verify(f"sqlite:///{path}", monkeypatch)
    out = out.replace("\n", "")
    assert code == 2 and "no database at" in out and "typo.sqlite" in out
    assert not path.exists()


def test_seal_refuses_an_unwritable_out_before_sealing(
    factory: sessionmaker[Session], db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _chain(factory)
    monkeypatch.setenv("CADENCE_DATABASE_URL", db_url)
    from cadence.settings import get_settings

    get_settings.cache_clear()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for target in (blocker / "cp.json", tmp_path):  # parent is a file; target is a folder
        res = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["audit", "seal", "--out", str(target)])
        assert res.exit_code == 2 and "--out" in res.output, res.output
    with factory() as s:
        assert s.scalar(select(AuditCheckpoint.seq)) is None  # nothing was sealed


@pytest.mark.parametrize("column, where, named", [
    ("compliance_audit.ts", "seq = 3", "first broken entry seq=3: stored time 'not a time' is unreadable"),
    ("compliance_audit_checkpoint.created_at", "id = 1", f"first broken entry seq={N}: checkpoint 1 (seal of seq {N}): created_at"),
])
def test_an_unreadable_stored_time_is_tampering_not_a_crash(
    column: str, where: str, named: str, factory: sessionmaker[Session], engine: Engine, db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's timestamp columns refuse such values")
    from sqlalchemy import text

    _chain(factory)
    with factory() as s, s.begin():
        seal(s)
    table, col = column.split(".")
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {table} SET {col} = 'not a time' WHERE {where}"))
    code, out = _verify(db_url, monkeypatch)
    assert code == 1 and named in out and "Traceback" not in out, out
    res = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["audit", "seal"])  # refuses what verify reports, no crash
    assert res.exit_code == 1 and "refusing to seal" in res.output and named.split("first broken ", 1)[1] in res.output, res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("command", [["audit", "seal"], ["compliance", "export", "user-1"],
                                     ["compliance", "erase", "user-1", "--yes"]])
def test_missing_production_keys_exit_2_in_every_command(
    command: list[str], factory: sessionmaker[Session], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cadence.settings import get_settings

    _chain(factory)
    monkeypatch.setenv("CADENCE_DATABASE_URL", db_url)
    monkeypatch.setenv("CADENCE_ENVIRONMENT", "production")
    get_settings.cache_clear()
    res = CliRunner(env={"COLUMNS": "400"}).invoke(app, command)
    assert res.exit_code == 2 and "refused outside environment='development'" in res.output, res.output
    assert "Traceback" not in res.output
