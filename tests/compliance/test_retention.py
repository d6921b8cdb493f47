"""Retention purge removes exactly what the policy says and nothing else; idempotent; dry run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from cadence.cli import app
from cadence.settings import get_settings
from compliance.audit import append_audit, verify_chain
from compliance.consent import grant_consent, policy_text, revoke_consent
from compliance.models import AuditCheckpoint, AuditEntry, ConsentRecord
from compliance.retention import PolicyError, load_policy, purge

from .conftest import FakeEvidence, FakeHolder, FakeTemplate

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def _seed(factory: sessionmaker[Session]) -> None:
    """Rows just inside and just outside every window of the default policy."""
    v = policy_text("authentication").version
    with factory() as s, s.begin():
        # audit: 7 years back is 2019-11-21 12:00; two entries older, two newer
        for i, ts in enumerate([NOW.replace(year=2019) - 2 * DAY, NOW.replace(year=2019) - DAY, NOW.replace(year=2019) + DAY, NOW - DAY]):
            append_audit(s, event="decision.made", actor="server", subject="u-audit", payload={"i": i}, now=ts)
        for uid, age in (("old-evidence", 31), ("new-evidence", 29)):
            s.add(FakeEvidence(user_id=uid, modality="keystroke", created_at=NOW - age * DAY))
        for uid, age in (("idle-template", 181), ("used-template", 179)):
            s.add(FakeTemplate(user_id=uid, modality="touch", last_used_at=NOW - age * DAY))
        # consents: long-active (kept), revoked 366 days ago (purged), revoked 364 days ago (kept)
        grant_consent(s, user_id="active", modality="gait", purpose="authentication", policy_version=v, now=NOW - 1000 * DAY)
        for uid, age in (("revoked-long-ago", 366), ("revoked-recently", 364)):
            grant_consent(s, user_id=uid, modality="gait", purpose="authentication", policy_version=v, now=NOW - 400 * DAY)
            revoke_consent(s, user_id=uid, modality="gait", purpose="authentication", now=NOW - age * DAY)


def _state(factory: sessionmaker[Session]) -> dict[str, list]:
    with factory() as s:
        return {
            "evidence": sorted(s.scalars(select(FakeEvidence.user_id)).all()),
            "templates": sorted(s.scalars(select(FakeTemplate.user_id)).all()),
            "consents": sorted(s.scalars(select(ConsentRecord.user_id)).all()),
            "audit": s.execute(select(AuditEntry.seq, AuditEntry.event).order_by(AuditEntry.seq)).all(),
        }


def test_default_policy_values() -> None:
    p = load_policy()
    assert (p.evidence_days, p.template_inactive_days, p.revoked_consent_days, p.audit_years) == (30, 180, 365, 7)


def test_holders_read_their_sections_as_attributes() -> None:
    """A holder asks `policy.<kind>` for days (e.g. the server's transactions); unknown kinds are absent."""
    p = load_policy()
    assert (p.evidence, p.transactions, p.sessions, p.security_flags) == (30, 400, 30, 365)
    assert getattr(p, "templates", None) is None and p.days("no_such_kind") is None


def test_purge_removes_exactly_what_the_policy_says(factory: sessionmaker[Session], fake_holder: FakeHolder) -> None:
    _seed(factory)
    before = _state(factory)
    with factory() as s, s.begin():
        dry = purge(s, load_policy(), now=NOW, dry_run=True)
    assert _state(factory) == before  # dry run changes nothing
    with factory() as s, s.begin():
        removed = purge(s, load_policy(), now=NOW)
    assert removed == dry == {"fake.evidence": 1, "fake.templates": 1, "compliance.consents": 1, "compliance.audit": 2}
    after = _state(factory)
    assert after["evidence"] == ["new-evidence"]
    assert after["templates"] == ["used-template"]
    assert after["consents"] == ["active", "revoked-recently"]
    # the two oldest audit entries went; every other one stayed, plus the purge's own entry
    kept = [r for r in before["audit"] if r[0] > 2]
    assert after["audit"][:-1] == kept and after["audit"][-1][1] == "retention.purge"
    with factory() as s:
        res = verify_chain(s)
        assert res.ok and res.first_seq == 3, res.problems  # the signed prune anchor vouches for seq 2
        assert s.scalars(select(AuditCheckpoint.kind)).all() == ["prune"]
    # idempotent: nothing more to remove
    with factory() as s, s.begin():
        assert set(purge(s, load_policy(), now=NOW).values()) == {0}
    assert _state(factory)["evidence"] == ["new-evidence"]


def test_deleting_the_prune_anchor_is_detected(factory: sessionmaker[Session]) -> None:
    _seed(factory)
    with factory() as s, s.begin():
        purge(s, load_policy(), now=NOW)
    with factory() as s, s.begin():
        s.execute(AuditCheckpoint.__table__.delete())
    with factory() as s:
        res = verify_chain(s)
    # the first missing entry is named (seq 1), not the one before the kept chain
    assert not res.ok and res.first_broken is not None and res.first_broken.seq == 1
    assert "entries seq 1..2 are not in the chain" in res.first_broken.reason


def test_custom_policy_file(tmp_path: Path, factory: sessionmaker[Session], fake_holder: FakeHolder) -> None:
    _seed(factory)
    f = tmp_path / "policy.yaml"
    f.write_text("version: strict\nevidence: {days: 1}\ntemplates: {inactive_days: 10000}\nconsents: {revoked_days: 0}\naudit: {years: 50}\n"
                 "transactions: {days: 400}\nsessions: {days: 30}\nsecurity_flags: {days: 365}\n")
    with factory() as s, s.begin():
        removed = purge(s, load_policy(f), now=NOW)
    assert removed == {"fake.evidence": 2, "fake.templates": 0, "compliance.consents": 2, "compliance.audit": 0}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("version: x\nevidence: {days: 0}\ntemplates: {inactive_days: 1}\nconsents: {revoked_days: 1}\naudit: {years: 1}\n", "evidence.days"),
        ("version: x\nevidence: {days: 30}\nconsents: {revoked_days: 1}\naudit: {years: 1}\n", "templates.inactive_days"),
        ("evidence: {days: 30}\n", "version"),
        ("- not a mapping\n", "retention policy"),
        ("version: [unclosed\n", "policy"),
    ],
)
def test_bad_policy_names_the_field(tmp_path: Path, body: str, field: str) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(body)
    with pytest.raises(PolicyError, match=f"^{field}"):
        load_policy(f)


def test_cli_purge_dry_run_then_real(db_url: str, factory: sessionmaker[Session], fake_holder: FakeHolder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Through `cadence compliance purge` (clock = now, so seed relative to the real date)."""
    now = datetime.now(UTC)
    with factory() as s, s.begin():
        s.add_all([FakeEvidence(user_id="a", modality="gait", created_at=now - 40 * DAY), FakeEvidence(user_id="b", modality="gait", created_at=now - DAY)])
    monkeypatch.setenv("CADENCE_DATABASE_URL", db_url)
    get_settings.cache_clear()
    runner = CliRunner()
    res = runner.invoke(app, ["compliance", "purge", "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    assert '"fake.evidence": 1' in res.stdout and '"dry_run": true' in res.stdout
    assert len(_state(factory)["evidence"]) == 2
    res = runner.invoke(app, ["compliance", "purge"])
    assert res.exit_code == 0 and "fake.evidence" in res.output, res.output
    assert _state(factory)["evidence"] == ["b"]
    res = runner.invoke(app, ["compliance", "purge", "--json"])
    assert '"fake.evidence": 0' in res.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\n")
    res = runner.invoke(app, ["compliance", "purge", "--policy", str(bad)])
    assert res.exit_code == 2 and "evidence.days" in res.output
