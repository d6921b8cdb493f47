"""Consent ledger: no consent, no scoring; revoking authentication consent deletes the template."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from compliance.audit import verify_chain
from compliance.consent import (
    PURPOSES,
    ConsentError,
    consents_of,
    grant_consent,
    policy_text,
    require_consent,
    revoke_consent,
)
from compliance.models import AuditEntry

from .conftest import FakeHolder, FakeTemplate

T0 = datetime(2026, 11, 1, tzinfo=UTC)
V = policy_text("authentication").version


def test_scoring_without_consent_is_refused(sqlite_factory: sessionmaker[Session]) -> None:
    with sqlite_factory() as s, s.begin():
        with pytest.raises(ConsentError) as err:
            require_consent(s, user_id="u1", modality="keystroke")
        assert "keystroke" in str(err.value) and "authentication" in str(err.value)
        assert isinstance(err.value, PermissionError)
        # consent for another modality or purpose does not count
        grant_consent(s, user_id="u1", modality="touch", purpose="authentication", policy_version=V)
        grant_consent(s, user_id="u1", modality="keystroke", purpose="federated_training", policy_version=policy_text("federated_training").version)
        grant_consent(s, user_id="u2", modality="keystroke", purpose="authentication", policy_version=V)
        with pytest.raises(ConsentError):
            require_consent(s, user_id="u1", modality="keystroke")
        grant_consent(s, user_id="u1", modality="keystroke", purpose="authentication", policy_version=V)
        require_consent(s, user_id="u1", modality="keystroke")  # now allowed


def test_revoking_authentication_deletes_that_template_only(sqlite_factory: sessionmaker[Session], fake_holder: FakeHolder) -> None:
    with sqlite_factory() as s, s.begin():
        for m in ("keystroke", "gait"):
            grant_consent(s, user_id="u1", modality=m, purpose="authentication", policy_version=V, now=T0)
            s.add(FakeTemplate(user_id="u1", modality=m, last_used_at=T0))
        s.add(FakeTemplate(user_id="u2", modality="keystroke", last_used_at=T0))
        s.flush()
        removed = revoke_consent(s, user_id="u1", modality="keystroke", purpose="authentication", now=T0 + timedelta(days=1))
        assert removed == {"consents": 1, "fake.templates": 1}
        left = s.execute(select(FakeTemplate.user_id, FakeTemplate.modality).order_by(FakeTemplate.user_id, FakeTemplate.modality)).all()
        assert [tuple(r) for r in left] == [("u1", "gait"), ("u2", "keystroke")]
        with pytest.raises(ConsentError):
            require_consent(s, user_id="u1", modality="keystroke")
        require_consent(s, user_id="u1", modality="gait")
        hist = consents_of(s, "u1")
        ks = [c for c in hist if c["modality"] == "keystroke"]
        assert len(ks) == 1 and ks[0]["active"] is False and ks[0]["revoked_at"].startswith("2026-11-02")


def test_revoking_federated_training_keeps_the_template(sqlite_factory: sessionmaker[Session], fake_holder: FakeHolder) -> None:
    fv = policy_text("federated_training").version
    with sqlite_factory() as s, s.begin():
        grant_consent(s, user_id="u1", modality="touch", purpose="federated_training", policy_version=fv)
        s.add(FakeTemplate(user_id="u1", modality="touch", last_used_at=T0))
        assert revoke_consent(s, user_id="u1", modality="touch", purpose="federated_training") == {"consents": 1}
        assert s.scalar(select(func.count()).select_from(FakeTemplate)) == 1


def test_grants_are_idempotent_and_audited(sqlite_factory: sessionmaker[Session]) -> None:
    with sqlite_factory() as s, s.begin():
        a = grant_consent(s, user_id="u1", modality="gait", purpose="authentication", policy_version=V)
        b = grant_consent(s, user_id="u1", modality="gait", purpose="authentication", policy_version=V)
        assert a.id == b.id and len(consents_of(s, "u1")) == 1
        revoke_consent(s, user_id="u1", modality="gait", purpose="authentication")
        grant_consent(s, user_id="u1", modality="gait", purpose="authentication", policy_version=V)
        assert [c["active"] for c in consents_of(s, "u1")] == [False, True]
        events = s.scalars(select(AuditEntry.event).order_by(AuditEntry.seq)).all()
        assert events == ["consent.grant", "consent.revoke", "consent.grant"]
        assert verify_chain(s).ok


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"modality": "voice", "purpose": "authentication", "policy_version": V}, "modality"),
        ({"modality": "gait", "purpose": "marketing", "policy_version": V}, "purpose"),
        ({"modality": "gait", "purpose": "authentication", "policy_version": "1999-01-01"}, "policy_version"),
    ],
)
def test_bad_grants_name_the_field(sqlite_factory: sessionmaker[Session], kwargs: dict[str, str], field: str) -> None:
    with sqlite_factory() as s, s.begin():
        with pytest.raises(ValueError, match=f"^{field}:"):
            grant_consent(s, user_id="u1", **kwargs)


def test_every_purpose_has_a_plain_language_policy() -> None:
    for p in PURPOSES:
        t = policy_text(p)
        assert t.purpose == p and t.version and len(t.text.split()) > 60
