"""Audit log rules the CLI tests do not cover: payload hygiene, pseudonyms, sealing, keys, concurrency."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from cadence.settings import Settings
from compliance.audit import AuditChainError, AuditError, append_audit, digest, seal, verify_chain
from compliance.keys import KeyConfigError, hmac_key, pseudonym, signing_key
from compliance.models import AuditEntry


def test_subject_is_stored_only_as_pseudonym(sqlite_factory: sessionmaker[Session]) -> None:
    with sqlite_factory() as s, s.begin():
        e = append_audit(s, event="enrol.done", actor="server", subject="carol-91", payload={"user_id": "carol-91", "nested": {"user": ["carol-91", 3]}})
        assert e.subject == pseudonym("carol-91") and "carol-91" not in e.payload
        assert len(e.subject) == 32 and e.prev_hash == "0" * 64


def test_raw_behaviour_is_refused(sqlite_factory: sessionmaker[Session]) -> None:
    with sqlite_factory() as s, s.begin():
        with pytest.raises(AuditError, match=r"^payload\.features: a list of 40 numbers"):
            append_audit(s, event="decision.made", actor="server", subject=None, payload={"features": [0.1] * 40})
        with pytest.raises(AuditError, match=r"^payload\.score: must be finite"):
            append_audit(s, event="decision.made", actor="server", subject=None, payload={"score": float("nan")})
        with pytest.raises(AuditError, match=r"^event:"):
            append_audit(s, event="Decision Made", actor="server", subject=None, payload={})
        with pytest.raises(AuditError, match=r"^payload\.blob:"):
            append_audit(s, event="decision.made", actor="server", subject=None, payload={"blob": b"\x00"})
        # what belongs in an entry is fine: hashes, versions, reason codes
        append_audit(s, event="decision.made", actor="server", subject=None, payload={"inputs": digest(b"\x00" * 400), "reasons": ["KS_LOW"] * 3})


def test_seal_refuses_a_broken_chain(sqlite_factory: sessionmaker[Session]) -> None:
    with sqlite_factory() as s, s.begin():
        for i in range(3):
            append_audit(s, event="decision.made", actor="server", subject=None, payload={"i": i})
        seal(s)
        append_audit(s, event="decision.made", actor="server", subject=None, payload={"i": 3})
        s.execute(update(AuditEntry).where(AuditEntry.seq == 4).values(payload='{"i":9}'))
        with pytest.raises(AuditChainError, match="seq=4"):
            seal(s)


def test_development_keys_are_refused_outside_development() -> None:
    prod = Settings(environment="production", _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(KeyConfigError, match="audit_hmac_key"):
        hmac_key(prod)
    with pytest.raises(KeyConfigError, match="audit_signing_key"):
        signing_key(prod)
    ok = Settings(environment="production", audit_hmac_key="ab" * 32, audit_signing_key="cd" * 32, _env_file=None)  # type: ignore[call-arg]
    assert hmac_key(ok) == bytes.fromhex("ab" * 32)
    assert signing_key(ok).public_key() != signing_key(Settings(_env_file=None)).public_key()  # type: ignore[call-arg]
    with pytest.raises(KeyConfigError, match="32 bytes"):
        signing_key(Settings(audit_signing_key="cd" * 8, _env_file=None))  # type: ignore[call-arg]


def test_seals_by_an_unknown_key_fail(sqlite_factory: sessionmaker[Session]) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    with sqlite_factory() as s, s.begin():
        append_audit(s, event="decision.made", actor="server", subject=None, payload={})
        seal(s, Ed25519PrivateKey.generate())
        res = verify_chain(s)
    assert not res.ok and "unknown key" in res.problems[0].reason


def test_concurrent_appenders_never_fork(factory: sessionmaker[Session], db_url: str) -> None:
    """Writers in parallel transactions: PostgreSQL queues them on the head row; none is lost."""
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite serialises writers itself; a stale writer fails cleanly instead of queueing")
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(10):
                with factory() as s, s.begin():
                    append_audit(s, event="decision.made", actor=f"w{k}", subject=None, payload={"i": i}, now=datetime.now(UTC))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with factory() as s:
        res = verify_chain(s)
        assert res.ok and res.entries == 30, res.problems
        assert s.scalars(select(AuditEntry.seq).order_by(AuditEntry.seq)).all() == list(range(1, 31))


def test_rows_numbered_below_the_chain_are_reported_not_sealed_exported_or_a_stop_to_pruning(
        factory: sessionmaker[Session]) -> None:
    """A row inserted by hand at seq 0 or below was never walked by verify, which said OK.

    Seal signed over it, the person's export showed it as history, and a recent one stopped the
    audit log's pruning for good.
    """
    from datetime import timedelta

    from compliance.audit import entries_for, plan_prune

    with factory() as s, s.begin():
        for i in range(3):
            append_audit(s, event="decision.made", actor="server", subject="alice", payload={"i": i},
                         now=datetime(2015, 1, 1, tzinfo=UTC) if i == 0 else None)
    with factory() as s, s.begin():
        assert verify_chain(s).ok
    with factory() as s, s.begin():
        s.add(AuditEntry(seq=-8, ts=datetime.now(UTC), event="consent.grant", actor="server",
                         subject=pseudonym("alice"), payload="{}", prev_hash="x", hash="y"))
    with factory() as s, s.begin():
        res = verify_chain(s)
        assert not res.ok and res.first_broken is not None and res.first_broken.seq == -8
        assert "outside the chain" in res.first_broken.reason
        with pytest.raises(AuditChainError, match="seq=-8"):
            seal(s)
        exported = entries_for(s, "alice")
        assert [(e["seq"], e.get("damaged", False)) for e in exported] == [(-8, True), (1, False), (2, False), (3, False)]
        # the forged recent row no longer hides the 2015 entry from the purge: the broken chain is refused, loudly
        with pytest.raises(AuditChainError, match="seq=-8"):
            plan_prune(s, datetime.now(UTC) - timedelta(days=365), dry_run=True)
