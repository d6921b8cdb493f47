"""Data-subject requests: export everything (Art. 20), erase everything but pseudonymous audit (Art. 17)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, inspect, text
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from cadence.cli import app
from cadence.settings import get_settings
from compliance.audit import append_audit, digest, verify_chain
from compliance.consent import grant_consent, policy_text
from compliance.keys import pseudonym
from compliance.subjects import erase_user, export_user

from .conftest import FakeEvidence, FakeHolder, FakeTemplate

ALICE, BOB = "alice-7f3a91", "bob-22c0e4"
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _seed(factory: sessionmaker[Session]) -> None:
    v = policy_text("authentication").version
    with factory() as s, s.begin():
        for uid in (ALICE, BOB):
            for m in ("keystroke", "touch"):
                grant_consent(s, user_id=uid, modality=m, purpose="authentication", policy_version=v, now=T0)
                s.add(FakeTemplate(user_id=uid, modality=m, last_used_at=T0))
                s.add(FakeEvidence(user_id=uid, modality=m, created_at=T0 + timedelta(hours=1)))
            append_audit(
                s, event="decision.made", actor="server", subject=uid,
                payload={"user": uid, "outcome": "approve", "inputs": digest(b"x"), "reasons": ["KS_MATCH"]},
                now=T0 + timedelta(hours=2),
            )


def _cells_mentioning(engine: Engine, needle: str) -> list[str]:
    """Every (table, column) cell in the whole database whose text contains `needle`."""
    hits = []
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')).mappings():
                hits += [f"{table}.{col}" for col, val in row.items() if val is not None and needle in str(val)]
    return hits


def test_after_erasure_no_row_references_the_user(factory: sessionmaker[Session], engine: Engine, fake_holder: FakeHolder) -> None:
    _seed(factory)
    assert _cells_mentioning(engine, ALICE)  # the check can see the id before erasure
    with factory() as s, s.begin():
        removed = erase_user(s, ALICE)
    assert removed == {"compliance.consents": 2, "fake.templates": 2, "fake.evidence": 2}
    assert _cells_mentioning(engine, ALICE) == []
    # Bob is untouched, the audit trail still verifies and still holds Alice's entries by pseudonym
    assert len(_cells_mentioning(engine, BOB)) == 2 + 2 + 2  # consents, templates, evidence (audit is pseudonymous)
    with factory() as s:
        assert verify_chain(s).ok
        data = export_user(s, ALICE)
    assert data["consents"] == [] and data["data"] == {"fake": {"templates": [], "evidence": []}}
    assert [e["event"] for e in data["audit"]["entries"]] == ["consent.grant", "consent.grant", "decision.made", "subject.erase"]


def test_export_holds_everything_as_json(factory: sessionmaker[Session], fake_holder: FakeHolder) -> None:
    _seed(factory)
    with factory() as s:
        data = export_user(s, ALICE)
    json.dumps(data)  # plain JSON
    assert data["user_id"] == ALICE
    assert sorted(c["modality"] for c in data["consents"]) == ["keystroke", "touch"]
    assert len(data["data"]["fake"]["templates"]) == 2 and len(data["data"]["fake"]["evidence"]) == 2
    dec = [e for e in data["audit"]["entries"] if e["event"] == "decision.made"]
    assert len(dec) == 1 and dec[0]["payload"]["user"] == pseudonym(ALICE)  # the id never reached the log
    assert data["audit"]["pseudonym"] == pseudonym(ALICE) != pseudonym(BOB)


def test_cli_export_and_erase(db_url: str, factory: sessionmaker[Session], engine: Engine, fake_holder: FakeHolder, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _seed(factory)
    monkeypatch.setenv("CADENCE_DATABASE_URL", db_url)
    get_settings.cache_clear()
    runner = CliRunner()
    res = runner.invoke(app, ["compliance", "export", ALICE])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["consents"][0]["purpose"] == "authentication"
    res = runner.invoke(app, ["compliance", "erase", ALICE], input="n\n")
    assert res.exit_code != 0 and _cells_mentioning(engine, ALICE)  # declined: nothing erased
    res = runner.invoke(app, ["compliance", "erase", ALICE, "--yes"])
    assert res.exit_code == 0, res.output
    assert "compliance.consents" in res.output and "fake.templates" in res.output
    assert _cells_mentioning(engine, ALICE) == []
    assert runner.invoke(app, ["audit", "verify"]).exit_code == 0
