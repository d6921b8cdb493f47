"""Review round 2 of compliance: keys, retention policy, seal, subject requests, export, audit payloads.

Each test names the defect it guards against; all run on SQLite (the logic is not dialect-specific).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from cadence.cli import app
from cadence.db import Base, make_engine, make_sessionmaker
from cadence.settings import Settings, get_settings
from compliance import subjects
from compliance.audit import AuditChainError, append_audit, seal, verify_chain
from compliance.consent import grant_consent, policy_text
from compliance.keys import KeyConfigError, hmac_key, pseudonym, signing_key
from compliance.models import AuditCheckpoint, AuditEntry, AuditHead
from compliance.retention import PolicyError, RetentionPolicy, load_policy, parse_policy
from server.holders import ServerHolder
from server.models import (
    AuthSession,
    Device,
    EnrolmentWindow,
    EvidenceSeen,
    RequestNonce,
    SecurityFlag,
    Template,
    Transaction,
    User,
)
from server.services import compliance_hooks as hooks

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
runner = CliRunner(env={"COLUMNS": "400"})


@pytest.fixture
def server_db(tmp_path: Path) -> Iterator[tuple[str, sessionmaker[Session]]]:
    """A SQLite database with every table (server and compliance), the server holder registered."""
    url = f"sqlite:///{tmp_path / 'server.sqlite'}"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    subjects.register_holder(ServerHolder())
    yield url, make_sessionmaker(engine)
    engine.dispose()


def _use_db(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADENCE_DATABASE_URL", url)
    monkeypatch.setenv("CADENCE_HOLDER_MODULES", '["server.holders"]')
    get_settings.cache_clear()


def _chain(factory: sessionmaker[Session], n: int = 5) -> None:
    with factory() as s, s.begin():
        for i in range(n):
            append_audit(s, event="decision.made", actor="server", subject=f"u{i % 2}", payload={"i": i})


# ------------------------------------------------------------------ 1. key settings naming a missing file


def test_a_key_setting_naming_a_missing_file_is_refused_not_decoded() -> None:
    """"/var/lib/cadence/hmackey" is valid base64: it was decoded and used as the key, in production too."""
    prod = Settings(environment="production", audit_hmac_key="/var/lib/cadence/hmackey", _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(KeyConfigError, match="audit_hmac_key: cannot read key file /var/lib/cadence/hmackey"):
        hmac_key(prod)
    with pytest.raises(KeyConfigError, match="cannot read key file keys/signing.key"):
        signing_key(Settings(audit_signing_key="keys/signing.key", _env_file=None))  # type: ignore[call-arg]


def test_inline_keys_are_strict_base64_and_key_files_still_work(tmp_path: Path) -> None:
    seed = bytes(range(200, 232))  # its base64 holds '/' and '+' inside: still an inline key
    inline = base64.b64encode(seed).decode()
    assert "/" in inline[1:] and not inline.startswith("/")
    assert signing_key(Settings(audit_signing_key=inline, _env_file=None)).public_key() == \
        Ed25519PrivateKey.from_private_bytes(seed).public_key()  # type: ignore[call-arg]
    with pytest.raises(KeyConfigError, match="not hex, base64"):  # lenient decoding dropped the '!' and '$'
        hmac_key(Settings(audit_hmac_key="c2VjcmV0!c2VjcmV0$c2VjcmV0c2VjcmV0", _env_file=None))  # type: ignore[call-arg]
    key_file = tmp_path / "hmac.key"
    key_file.write_text("ab" * 32 + "\n")
    assert hmac_key(Settings(audit_hmac_key=str(key_file), _env_file=None)) == bytes.fromhex("ab" * 32)  # type: ignore[call-arg]
    # base64 wrapped at 64 columns, as `openssl rand -base64 64` writes it
    wrapped = tmp_path / "wrapped.key"
    text = base64.b64encode(bytes(range(64))).decode()
    wrapped.write_text(text[:64] + "\n" + text[64:] + "\n")
    assert hmac_key(Settings(audit_hmac_key=str(wrapped), _env_file=None)) == bytes(range(64))  # type: ignore[call-arg]


# ------------------------------------------------------------------ 2. + 7. the retention policy's sections and bounds


def _policy(**override: Any) -> dict[str, Any]:
    raw: dict[str, Any] = dict(load_policy().raw)
    for k, v in override.items():
        if v is None:
            raw.pop(k)
        else:
            raw[k] = v
    return raw


@pytest.mark.parametrize(("raw", "named"), [
    (_policy(transactions=None, transaction={"days": 400}), "transaction: unknown section"),
    (_policy(sessionsx={"days": 30}), "sessionsx: unknown section"),
    (_policy(sessions=None), "sessions.days: missing"),
    (_policy(security_flags=None), "security_flags.days: missing"),
    (_policy(sessions=30), "sessions: must be a mapping"),
    (_policy(transactions={"days": 400, "dayz": 1}), "transactions.dayz: unknown key"),
    # each purge's audit entry names the version: one past an entry's size failed every purge
    (_policy(version="v" * 70_000), "version: must be 1 to 200 printable characters"),
    (_policy(version=" "), "version: must be 1 to 200"),
    (_policy(version="2026\n11"), "version: must be 1 to 200"),
])
def test_every_shipped_section_is_required_and_no_other(raw: dict[str, Any], named: str) -> None:
    """A typo (`transaction:`) kept transactions forever; a scalar or unknown section was accepted."""
    with pytest.raises(PolicyError, match=f"^{re.escape(named)}"):
        parse_policy(raw)


@pytest.mark.parametrize(("raw", "named"), [
    (_policy(audit={"years": 5000}), "audit.years: must be an integer from 1 to 100"),
    (_policy(transactions={"days": 10_000_000_000}), "transactions.days: must be an integer from 0 to 36500"),
    (_policy(evidence={"days": 36_501}), "evidence.days"),
])
def test_out_of_range_periods_are_refused_at_load(raw: dict[str, Any], named: str) -> None:
    """They loaded at server start, then the purge crashed (year out of range, OverflowError)."""
    with pytest.raises(PolicyError, match=f"^{re.escape(named)}"):
        parse_policy(raw)


def test_cli_purge_names_an_out_of_range_policy(tmp_path: Path, server_db: tuple[str, sessionmaker[Session]],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _use_db(server_db[0], monkeypatch)
    bad = tmp_path / "policy.yaml"
    bad.write_text(Path("compliance/retention.yaml").read_text().replace("years: 7", "years: 5000"))
    res = runner.invoke(app, ["compliance", "purge", "--policy", str(bad)])
    assert res.exit_code == 2 and "audit.years" in res.output and "Traceback" not in res.output, res.output


def test_server_purge_refuses_a_policy_without_its_kinds(server_db: tuple[str, sessionmaker[Session]]) -> None:
    """It skipped kinds the policy lacked, keeping those rows forever without a word."""
    with server_db[1]() as s, pytest.raises(PolicyError, match="transactions, evidence, sessions, security_flags"):
        ServerHolder().purge(s, RetentionPolicy(version="bare"), now=NOW)


# ------------------------------------------------------------------ 3. seal applies verify's head-row check


def test_seal_refuses_a_chain_whose_tail_was_deleted(server_db: tuple[str, sessionmaker[Session]],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url, factory = server_db
    _chain(factory)
    with factory() as s, s.begin():
        s.execute(delete(AuditEntry).where(AuditEntry.seq > 3))  # the head row still says seq 5
    with factory() as s, pytest.raises(AuditChainError, match="entry seq=4: missing: the head records seq 5"):
        seal(s)
    _use_db(url, monkeypatch)
    verify = runner.invoke(app, ["audit", "verify"])
    sealed = runner.invoke(app, ["audit", "seal"])
    reason = "entry seq=4: missing: the head records seq 5 but the chain ends at seq 3 (tail deleted)"
    assert verify.exit_code == 1 and reason in verify.output, verify.output
    assert sealed.exit_code == 1 and reason in sealed.output and "Traceback" not in sealed.output, sealed.output
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(AuditCheckpoint)) == 0


def test_seal_refuses_a_chain_without_its_head_row(server_db: tuple[str, sessionmaker[Session]]) -> None:
    factory = server_db[1]
    _chain(factory)
    with factory() as s, s.begin():
        s.execute(delete(AuditHead))
    with factory() as s:
        assert "the head row is missing" in verify_chain(s).problems[0].reason
        with pytest.raises(AuditChainError, match="the head row is missing"):
            seal(s)


def test_seal_out_refuses_a_missing_folder_as_export_does(tmp_path: Path, server_db: tuple[str, sessionmaker[Session]],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    url, factory = server_db
    _chain(factory)
    _use_db(url, monkeypatch)
    target = tmp_path / "new" / "dir" / "cp.json"
    res = runner.invoke(app, ["audit", "seal", "--out", str(target)])
    assert res.exit_code == 2 and "does not exist" in res.output, res.output
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------ 4. continuous authentication is use


def test_a_template_scored_in_a_session_is_not_inactive(server_db: tuple[str, sessionmaker[Session]]) -> None:
    """Last payment 300 days ago, but a session scored an hour ago: the template is in use."""
    factory = server_db[1]
    old = NOW - timedelta(days=400)
    with factory() as s, s.begin():
        for uid, session_age in (("in-session", timedelta(hours=1)), ("idle", timedelta(days=300))):
            s.add(User(id=uid))
            s.flush()
            s.add(Template(user_id=uid, modality="gait", feature_version="v", feature_dim=2, model_id="m", data={},
                           n_windows=1, updated_at=old))
            s.add(_tx(uid, NOW - timedelta(days=300)))
            s.add(AuthSession(id=f"s-{uid}", user_id=uid, created_at=NOW - session_age, updated_at=NOW - session_age,
                              last_scored_at=NOW - session_age))
    with factory() as s, s.begin():
        done = ServerHolder().purge(s, {"template_inactive_days": 180}, now=NOW)
        assert done["server_template"] == 1
        assert s.scalars(select(Template.user_id)).all() == ["in-session"]


# ------------------------------------------------------------------ 5. only identifier fields are pseudonymised


def test_a_user_id_equal_to_a_payload_word_only_replaces_identifier_fields(sqlite_factory: sessionmaker[Session]) -> None:
    """User id "gait" turned the consent payload's modality "gait" into a pseudonym."""
    v = policy_text("authentication").version
    with sqlite_factory() as s, s.begin():
        grant_consent(s, user_id="gait", modality="gait", purpose="authentication", policy_version=v)
        e = append_audit(s, event="decision.made", actor="server", subject="EUR",
                         payload={"currency": "EUR", "user_id": "EUR", "subject": ["EUR"], "outcome": "approve"})
    stored = json.loads(e.payload)
    assert stored == {"currency": "EUR", "user_id": pseudonym("EUR"), "subject": [pseudonym("EUR")], "outcome": "approve"}
    with sqlite_factory() as s:
        grant = s.scalars(select(AuditEntry.payload).where(AuditEntry.event == "consent.grant")).one()
    assert json.loads(grant)["modality"] == "gait"


# ------------------------------------------------------------------ 6. no guessable payee, no free-text platform


def test_token_redemption_audits_a_keyed_payee_pseudonym(server_db: tuple[str, sessionmaker[Session]]) -> None:
    """`payee_sha256` was sha256(json(payee)): hashing a guessed name found it after erasure."""
    from server.services.transactions import redeem_token, token_claims
    from server.signing import make_token

    factory = server_db[1]
    key = Ed25519PrivateKey.generate()
    with factory() as s, s.begin():
        s.add(User(id="ann"))
        s.flush()
        s.add(_tx("ann", NOW, payee="Jordan Lee"))
    body = SimpleNamespace(token=make_token(key, token_claims("tx-ann", "ann", "approve", "12.50", "EUR", "Jordan Lee")),
                           user_id="ann", transaction_id="tx-ann", amount=12.5, currency="EUR", payee="Jordan Lee",
                           redeem=True)
    with factory() as s, s.begin():
        assert redeem_token(s, key.public_key(), body, actor="bank")["redeemed"] is True
    with factory() as s:
        text = s.scalars(select(AuditEntry.payload).where(AuditEntry.event == "token.redeemed")).one()
    assert json.loads(text)["payee"] == hooks.payee_alias("Jordan Lee") != pseudonym("Jordan Lee")
    assert "Jordan" not in text and hashlib.sha256(b'"Jordan Lee"').hexdigest() not in text
    assert hooks.digest("Jordan Lee") not in text


@pytest.mark.parametrize(("platform", "family"), [
    ("android", "android"), ("Android 14 (Pixel 7 of Alice Smith)", "android"), ("iOS 17.2", "ios"),
    ("iPhone of Bob", "ios"), ("desktop", "desktop"), ("Linux x86_64", "desktop"), ("macOS", "desktop"),
    ("Windows 11", "desktop"), ("", "other"), ("Alice's fridge", "other"),
])
def test_platform_families(platform: str, family: str) -> None:
    assert hooks.platform_family(platform) == family


def test_audit_through_the_hooks_keeps_only_the_platform_family(sqlite_factory: sessionmaker[Session]) -> None:
    """devices.py passed the client's free text to `hooks.audit`; the hooks now keep its family only."""
    with sqlite_factory() as s, s.begin():
        hooks.audit(s, event="device.registered", actor="bank", subject="zoe",
                    payload={"device": hooks.device_alias("d1"), "platform": "Android 14 - Zoe Miller's Pixel"})
        draft = hooks.draft_audit(event="device.registered", actor="bank", subject="zoe", payload={"platform": "iPhone"})
        stored = s.scalars(select(AuditEntry.payload)).one()
    assert json.loads(stored)["platform"] == "android" and json.loads(draft.payload) == {"platform": "ios"}


def test_device_registration_audits_the_platform_family_only(server_api: tuple[Any, Any]) -> None:
    """The client's free-text `platform` stayed in the audit log after erasure."""
    from server.client.api import DeviceClient

    api, client = server_api
    dev = DeviceClient("http://testserver", user_id="zoe", http=client)
    dev.register(platform="Android 14 - Zoe Miller's Pixel")
    assert client.delete("/v1/admin/users/zoe", headers={"X-API-Key": "dev-admin-key"}).status_code == 200
    with api.state.engine.connect() as conn:
        payloads = conn.execute(select(AuditEntry.payload).where(AuditEntry.event == "device.registered")).scalars().all()
    assert [json.loads(p)["platform"] for p in payloads] == ["android"]
    assert "Zoe" not in payloads[0] and "Pixel" not in payloads[0]
    assert hooks.device_registered_payload("d1", "pk", "iPad of Zoe") == {
        "device": hooks.device_alias("d1"), "key_sha256": hooks.digest("pk"), "platform": "ios"}


# ------------------------------------------------------------------ 8. the export: every stored field, one time format


_ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00$")


def _times(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key, value) of the export whose key names a time (`*_at`, `ts`)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _times(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _times(v, key)
    elif key.endswith("_at") or key == "ts":
        yield key, value


def _seed_person(factory: sessionmaker[Session], uid: str = "pat") -> None:
    v = policy_text("authentication").version
    with factory() as s, s.begin():
        s.add(User(id=uid, created_at=NOW))
        s.flush()
        s.add(Device(id=f"dev-{uid}", user_id=uid, public_key="pk", platform="android", attestation={}, active=False,
                     created_at=NOW))
        s.flush()
        s.add(RequestNonce(device_id=f"dev-{uid}", nonce="n1", seen_at=NOW.timestamp()))
        s.add(Template(user_id=uid, modality="gait", feature_version="v", feature_dim=7, model_id="m", data={},
                       n_windows=1, updated_at=NOW))
        s.add(EnrolmentWindow(user_id=uid, modality="gait", feature_version="v", quality=1.0, values=[0.0],
                              created_at=NOW - timedelta(days=1)))
        tx = _tx(uid, NOW)
        tx.token_redeemed_at = NOW + timedelta(minutes=1)
        s.add(tx)
        s.add(AuthSession(id=f"s-{uid}", user_id=uid, created_at=NOW, updated_at=NOW))
        s.add(SecurityFlag(user_id=uid, kind="k", detail="d", created_at=NOW))
        s.add(EvidenceSeen(user_id=uid, window_hash="h" * 64, modality="gait", seen_at=NOW))
        grant_consent(s, user_id=uid, modality="gait", purpose="authentication", policy_version=v, now=NOW)


def test_export_holds_every_stored_field_in_one_time_format(server_db: tuple[str, sessionmaker[Session]]) -> None:
    """Fields were left out, and times mixed str(datetime) without zone, +00:00 and Z."""
    factory = server_db[1]
    _seed_person(factory)
    with factory() as s:
        data = subjects.export_user(s, "pat")
    server = data["data"]["server"]
    assert server["transactions"][0]["token_redeemed_at"] == (NOW + timedelta(minutes=1)).isoformat()
    assert server["devices"][0]["active"] is False
    assert server["enrolment_windows"][0]["created_at"] == (NOW - timedelta(days=1)).isoformat()
    assert server["templates"][0]["updated_at"] == NOW.isoformat() and server["templates"][0]["feature_dim"] == 7
    assert server["request_nonces"] == [{"device_id": "dev-pat", "nonce": "n1", "seen_at": NOW.isoformat()}]
    times = list(_times(data))
    assert {k for k, _ in times} >= {"created_at", "updated_at", "seen_at", "token_redeemed_at", "granted_at", "ts",
                                      "exported_at"}
    bad = [(k, v) for k, v in times if v is not None and not _ISO_UTC.match(v)]
    assert not bad, bad
    assert "user_id" not in json.dumps(server["devices"])  # the record, less the id the request named


# ------------------------------------------------------------------ 9. unknown users are named, not "erased"


def test_cli_erase_and_export_of_an_unknown_user_fail(server_db: tuple[str, sessionmaker[Session]],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url, factory = server_db
    _seed_person(factory)
    _use_db(url, monkeypatch)
    for command in (["compliance", "erase", "typo@x", "-y"], ["compliance", "export", "typo@x"]):
        res = runner.invoke(app, command)
        assert res.exit_code == 1 and "no data held for typo@x" in res.output, res.output
        assert "Traceback" not in res.output
    with factory() as s:
        assert s.scalar(select(func.count()).where(AuditEntry.event == "subject.erase")) == 0  # no entry for nothing
    assert runner.invoke(app, ["compliance", "erase", "pat", "-y"]).exit_code == 0
    again = runner.invoke(app, ["compliance", "erase", "pat", "-y"])  # already erased: nothing held
    assert again.exit_code == 1 and "no data held for pat" in again.output, again.output
    with factory() as s:
        assert s.scalar(select(func.count()).where(AuditEntry.event == "subject.erase")) == 1


def test_admin_erase_and_export_of_an_unknown_user_are_404(server_api: tuple[Any, Any]) -> None:
    from server.client.api import DeviceClient

    api, client = server_api
    admin = {"X-API-Key": "dev-admin-key"}
    DeviceClient("http://testserver", user_id="kim", http=client).register()
    for r in (client.delete("/v1/admin/users/typo", headers=admin),
              client.get("/v1/admin/users/typo/export", headers=admin)):
        assert r.status_code == 404 and r.json()["code"] == "unknown_user", r.text
        assert "user_id" in r.json()["detail"]
    assert client.get("/v1/admin/users/kim/export", headers=admin).status_code == 200
    assert client.delete("/v1/admin/users/kim", headers=admin).status_code == 200
    assert client.delete("/v1/admin/users/kim", headers=admin).status_code == 404
    with api.state.engine.connect() as conn:
        erasures = conn.execute(select(func.count()).where(AuditEntry.event == "subject.erase")).scalar()
    assert erasures == 1


# ------------------------------------------------------------------ 10. entries deleted at the start


def test_deleted_first_entries_are_named_from_the_first_missing(sqlite_factory: sessionmaker[Session]) -> None:
    """It said "first broken entry seq=3 ... chain starts at seq 4"; seq 1..3 are what went."""
    _chain(sqlite_factory, 6)
    with sqlite_factory() as s, s.begin():
        s.execute(delete(AuditEntry).where(AuditEntry.seq <= 3))
    with sqlite_factory() as s:
        res = verify_chain(s)
    assert res.first_broken is not None and res.first_broken.seq == 1
    assert "entries seq 1..3 are not in the chain, which starts at seq 4" in res.first_broken.reason


def test_entries_deleted_after_a_prune_are_named_from_after_its_checkpoint(sqlite_factory: sessionmaker[Session]) -> None:
    from compliance.audit import prune_before

    with sqlite_factory() as s, s.begin():
        for i in range(6):
            append_audit(s, event="decision.made", actor="server", subject=None, payload={"i": i},
                         now=NOW - timedelta(days=10 - i))
        assert prune_before(s, NOW - timedelta(days=8, hours=12)) == 2  # seq 1, 2 pruned and signed
        s.execute(delete(AuditEntry).where(AuditEntry.seq <= 4))  # then 3 and 4 deleted by hand
    with sqlite_factory() as s:
        res = verify_chain(s)
    assert res.first_broken is not None and res.first_broken.seq == 3, res.problems
    assert "entries seq 3..4" in res.first_broken.reason


def _tx(uid: str, created: datetime, payee: str = "p") -> Transaction:
    return Transaction(id=f"tx-{uid}", user_id=uid, idempotency_key=f"k-{uid}", request_hash="h", amount="12.50",
                       currency="EUR", payee=payee, channel="app", outcome="approve", status="approved", risk=0.1,
                       tier="low", response={}, created_at=created)
