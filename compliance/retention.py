"""Retention: a YAML policy of how long each kind of data lives, and `purge` that applies it.

The policy is data, not code, so operators and auditors read one short file. `purge` is
idempotent (a second run removes nothing), reports counts per table, has a dry run, and runs
in the caller's transaction; `run_purge` is the one-call form (verified in a snapshot, then
purged) that `cadence compliance purge` and, as `scheduled_purge`, the server's scheduler run
(`server/retention_schedule.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from cadence.db import begin_write
from compliance import audit
from compliance.models import ConsentRecord, utcnow

log = logging.getLogger(__name__)
#: the longest policy `version` (each ``retention.purge`` audit entry names it)
MAX_VERSION_CHARS = 200
#: the longest refusal reason kept in the ``retention.purge`` entry (it quotes stored values)
MAX_REASON_CHARS = 500


class PolicyError(ValueError):
    """The retention policy file is unreadable or a field is missing or out of range."""


@dataclass(frozen=True)
class RetentionPolicy:
    """How long things live. `raw` keeps the whole file: holders read their sections' days from it."""

    version: str
    evidence_days: int = 30
    template_inactive_days: int = 180
    revoked_consent_days: int = 365
    audit_years: int = 7
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def days(self, kind: str) -> int | None:
        """Days to keep data of `kind` (a section of the file with a ``days`` key), else None."""
        sec = self.raw.get(kind)
        return int(sec["days"]) if isinstance(sec, Mapping) and "days" in sec else None

    def __getattr__(self, name: str) -> Any:
        """`policy.transactions` etc.: holders read their own sections' days as attributes."""
        if name.startswith("_") or name == "raw":
            raise AttributeError(name)
        value = self.days(name)
        if value is None:
            raise AttributeError(f"retention policy has no {name}.days")
        return value

    def evidence_cutoff(self, now: datetime) -> datetime:
        return now - timedelta(days=self.evidence_days)

    def template_cutoff(self, now: datetime) -> datetime:
        return now - timedelta(days=self.template_inactive_days)

    def revoked_consent_cutoff(self, now: datetime) -> datetime:
        return now - timedelta(days=self.revoked_consent_days)

    def audit_cutoff(self, now: datetime) -> datetime:
        """`audit_years` calendar years before `now` (29 Feb maps to 28 Feb)."""
        try:
            return now.replace(year=now.year - self.audit_years)
        except ValueError:
            return now.replace(year=now.year - self.audit_years, day=28)


#: every section of the shipped policy and its one key: all required, no others (a typo such as
#: ``transaction:`` would otherwise keep that data forever)
SECTIONS: dict[str, str] = {
    "evidence": "days", "templates": "inactive_days", "transactions": "days", "sessions": "days",
    "security_flags": "days", "consents": "revoked_days", "audit": "years",
}
#: sections that may be 0 (purge at once); the others keep data at least a day
_MAY_BE_ZERO = {"transactions", "sessions", "security_flags", "consents"}
#: upper bounds: 100 years. Larger values cannot be subtracted from a date (the purge crashed)
MAX_DAYS = 36_500
MAX_YEARS = 100


def _days(raw: Mapping[str, Any], section: str, key: str, *, minimum: int = 1) -> int:
    sec = raw.get(section)
    if sec is not None and not isinstance(sec, Mapping):
        raise PolicyError(f"{section}: must be a mapping with a {key!r} key, got {sec!r}")
    if sec is None or key not in sec:
        raise PolicyError(f"{section}.{key}: missing from the retention policy")
    unknown = sorted(str(k) for k in sec if k != key)
    if unknown:
        raise PolicyError(f"{section}.{unknown[0]}: unknown key (the {section} section has only {key!r})")
    value = sec[key]
    maximum = MAX_YEARS if key == "years" else MAX_DAYS
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise PolicyError(f"{section}.{key}: must be an integer from {minimum} to {maximum}, got {value!r}")
    return value


def parse_policy(raw: Any) -> RetentionPolicy:
    """Validate a parsed policy mapping; errors name the field.

    Every section of the shipped policy is required and no other is allowed, so a misspelt
    section fails at load (server start, `--policy`) instead of keeping data forever.
    """
    if not isinstance(raw, Mapping):
        raise PolicyError("retention policy: must be a YAML mapping")
    if "version" not in raw:
        raise PolicyError("version: missing from the retention policy")
    unknown = sorted(str(k) for k in raw if k != "version" and k not in SECTIONS)
    if unknown:
        raise PolicyError(f"{', '.join(unknown)}: unknown section(s) of the retention policy "
                          f"(known: {', '.join(SECTIONS)})")
    version = str(raw["version"])
    if not version.strip() or len(version) > MAX_VERSION_CHARS or not version.isprintable():
        # every purge's audit entry names it: one too long for an entry failed every run, removing nothing
        raise PolicyError(f"version: must be 1 to {MAX_VERSION_CHARS} printable characters "
                          f"(got {len(version)} characters)")
    days = {section: _days(raw, section, key, minimum=0 if section in _MAY_BE_ZERO else 1)
            for section, key in SECTIONS.items()}
    return RetentionPolicy(
        version=version,
        evidence_days=days["evidence"],
        template_inactive_days=days["templates"],
        revoked_consent_days=days["consents"],
        audit_years=days["audit"],
        raw=dict(raw),
    )


def load_policy(path: str | Path | None = None) -> RetentionPolicy:
    """Read a policy file; None = settings.retention_policy, else the packaged default."""
    if path is None:
        from cadence.settings import get_settings

        path = get_settings().retention_policy
    try:
        if path is None:
            text = resources.files("compliance").joinpath("retention.yaml").read_text("utf-8")
        else:
            text = Path(path).read_text("utf-8")
        raw = yaml.safe_load(text)
    except OSError as exc:
        raise PolicyError(f"policy: cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise PolicyError(f"policy: {path} is not UTF-8 text (byte {exc.start} cannot be decoded)") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy: {path} is not valid YAML: {exc}") from exc
    return parse_policy(raw)


def _purge_consents(session: Session, policy: RetentionPolicy, now: datetime, dry_run: bool) -> int:
    cond = (ConsentRecord.revoked_at.is_not(None), ConsentRecord.revoked_at < policy.revoked_consent_cutoff(now))
    n = session.scalar(select(func.count()).select_from(ConsentRecord).where(*cond)) or 0
    if n and not dry_run:
        session.execute(delete(ConsentRecord).where(*cond).execution_options(synchronize_session="fetch"))
    return int(n)


class PurgeCounts(dict[str, int]):
    """Rows removed per table; `audit_refused` says why the audit log was not pruned (None: it was, or had nothing due)."""

    audit_refused: str | None = None


@dataclass(frozen=True)
class AuditCheck:
    """The audit log's part of a purge, verified before the purge's write transaction (`check_audit`)."""

    cutoff: datetime
    #: the entries due, verified (None: nothing due, or refused)
    plan: audit.PrunePlan | None
    #: why the log is not pruned (its chain is broken); None: it is
    refused: str | None = None


def check_audit(session: Session, policy: RetentionPolicy, *, now: datetime, dry_run: bool = False) -> AuditCheck:
    """Find and verify the audit entries `policy` lets go at `now` (`audit.plan_prune`); only reads.

    Verifying re-hashes every entry due, so it belongs before the write transaction, which on
    SQLite every writer waits for, in a snapshot (`audit.read_snapshot`): `purge` then only
    checks that nothing verified changed. A missing signing key (unless `dry_run`) raises
    `KeyConfigError` here, before anything is purged.
    """
    cutoff = policy.audit_cutoff(now)
    try:
        return AuditCheck(cutoff, audit.plan_prune(session, cutoff, dry_run=dry_run))
    except audit.AuditChainError as exc:
        return AuditCheck(cutoff, None, str(exc)[:MAX_REASON_CHARS])


def purge(session: Session, policy: RetentionPolicy, *, now: datetime | None = None, dry_run: bool = False,
          actor: str = "retention", audit_check: AuditCheck | None = None) -> PurgeCounts:
    """Apply the policy: every holder's purge, old revoked consents, audit beyond its window.

    Returns counts per table (what a dry run *would* remove). Unless dry, appends one
    ``retention.purge`` audit entry with those counts, after pruning, so it is never pruned itself.
    A broken audit chain is not pruned (that would delete the tampered entries under a signed
    checkpoint) but the rest is still purged: the refusal is in `PurgeCounts.audit_refused` and
    in the entry (``audit_not_pruned``), and the callers report it.

    The audit log is verified first (`check_audit`): given `audit_check`, made in a snapshot
    (`audit.read_snapshot`) before this transaction (`run_purge`), this one only checks that
    nothing verified changed, and records the snapshot's refusal as it is (a snapshot cannot
    half see another purge). A break read outside a snapshot (without `audit_check`, or verified
    again here after a change) is recorded only if no prune committed during that walk
    (`audit.prune_marks`): such a prune looks like deleted entries, and a false tamper report
    would stay in the log for good. Then the log is left unpruned this once (the other purge
    pruned it) and nothing is reported; the chain is never walked again in here.
    """
    from compliance.subjects import registered_holders

    now = (now or utcnow()).astimezone(UTC)
    if audit_check is None:
        marks = audit.prune_marks(session)
        checked = check_audit(session, policy, now=now, dry_run=dry_run)
        if checked.refused is not None and audit.prune_marks(session) != marks:
            checked = AuditCheck(checked.cutoff, None)
    else:
        checked = audit_check
    removed = PurgeCounts()
    for h in registered_holders():
        for table, count in h.purge(session, policy, now=now, dry_run=dry_run).items():
            removed[f"{h.name}.{table}"] = int(count)
    removed["compliance.consents"] = _purge_consents(session, policy, now, dry_run)
    removed["compliance.audit"], removed.audit_refused = 0, checked.refused
    if checked.plan is not None:
        marks = audit.prune_marks(session)
        try:
            removed["compliance.audit"] = audit.prune_before(session, checked.cutoff, dry_run=dry_run, now=now,
                                                             plan=checked.plan)
        except audit.AuditChainError as exc:  # changed since it was verified, and broken when verified again
            if audit.prune_marks(session) == marks:
                removed.audit_refused = str(exc)[:MAX_REASON_CHARS]
    if not dry_run:
        payload: dict[str, Any] = {"policy_version": policy.version, "removed": dict(removed)}
        if removed.audit_refused is not None:
            payload["audit_not_pruned"] = removed.audit_refused
        audit.append_audit(session, event="retention.purge", actor=actor, subject=None, payload=payload, now=now)
    session.flush()
    return removed


def run_purge(factory: sessionmaker[Session], policy: RetentionPolicy, *, now: datetime | None = None,
              dry_run: bool = False, actor: str = "retention",
              write_lock: AbstractContextManager[Any] | None = None) -> PurgeCounts:
    """`purge` in two transactions of its own: the audit entries due verified in a read-only snapshot, then the purge.

    Why: verifying re-hashes every entry due, and on SQLite a write transaction holds the
    database's write lock, which every writer waits for; so the entries are verified first,
    before `write_lock` (the server's, held around each write transaction) and the write
    transaction are taken. The snapshot (`audit.read_snapshot`) keeps a prune that another
    purge commits meanwhile from being half seen as deleted entries. The write transaction
    holds SQLite's write lock from its first statement (`begin_write`), on the CLI's engine
    too: its checks that nothing verified changed, and what it then deletes, are one unit.
    A dry run rolls back.
    """
    now = (now or utcnow()).astimezone(UTC)
    with factory() as session:
        audit.read_snapshot(session)
        checked = check_audit(session, policy, now=now, dry_run=dry_run)
    with write_lock or nullcontext(), factory() as session:
        if not dry_run:  # the write lock from the first check on (SQLite); a dry run only reads
            begin_write(session)
        removed = purge(session, policy, now=now, dry_run=dry_run, actor=actor, audit_check=checked)
        if dry_run:
            session.rollback()
        else:
            session.commit()
    return removed


def scheduled_purge(factory: sessionmaker[Session], policy: RetentionPolicy | None = None, *,
                    write_lock: AbstractContextManager[Any] | None = None) -> PurgeCounts:
    """One purge (`run_purge`): what the server's scheduler runs (`server.retention_schedule`).

    An audit log left unpruned because its chain is broken is logged as an error here (the
    rest was purged, so the run itself succeeded); it is refused again at every run until repaired.
    """
    removed = run_purge(factory, policy or load_policy(), write_lock=write_lock)
    if removed.audit_refused is not None:
        log.error("retention purge: audit log not pruned: %s; run `cadence audit verify`", removed.audit_refused)
    return removed
