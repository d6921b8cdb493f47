"""Authorize a transaction: idempotency, lockout, scoring per modality, fusion, signed token."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from cadence import prepared
from compliance.audit import AuditDraft
from fusion.policy import Decision, ModalityEvidence, decide
from modalities.base import Template as TemplateArrays
from modalities.reading import decision_windows
from server.errors import ApiError
from server.models import SecurityFlag, Template, Transaction, User
from server.schemas import AuthorizeRequest, FeatureWindowIn
from server.services import compliance_hooks as hooks
from server.services.enrolment import current_template
from server.services.evidence import (
    check_unseen,
    check_versions,
    claim_hashes,
    group_windows,
    implausible,
    insert_hashes,
    scored,
)
from server.services.scoring import ActiveScorer, ScorerProvider, template_from_json
from server.signing import body_digest, make_token

TOKEN_TTL_S = 300
# built once: statement construction is a visible share of a request's CPU time
_TX = Transaction.__table__.c
_TX_BY_KEY = select(_TX.request_hash, _TX.response).where(_TX.user_id == bindparam("u"), _TX.idempotency_key == bindparam("k"))
_T = Template.__table__.c
_TEMPLATE_INFO = select(_T.id, _T.modality, _T.feature_version, _T.feature_dim,
                        _T.model_id, _T.updated_at).where(_T.user_id == bindparam("u"))
_TEMPLATE_DATA = select(_T.data).where(_T.id == bindparam("id"))
_HAS_TEMPLATE = select(_T.id).where(_T.user_id == bindparam("u")).limit(1)
_TX_INSERT = cast(Table, Transaction.__table__).insert()


def _template(session: Session, provider: ScorerProvider, active: ActiveScorer, user_id: str, modality: str,
              info: Any, persist: bool) -> tuple[Any, TemplateArrays | None]:
    """(template info, arrays) with decoded arrays from the provider's cache when current."""
    if info is None:
        return None, None
    if info.model_id != active.model_id:  # built by another model: rebuild (rare)
        return current_template(session, active, user_id, modality, None, persist=persist)
    key = (info.id, str(info.updated_at), info.model_id)
    arrays = provider.templates.get(key)
    if arrays is None:
        data = prepared.execute(session, _TEMPLATE_DATA, {"id": info.id}).scalar()
        if data is None:  # erased between the two reads
            return None, None
        arrays = template_from_json(data)
        provider.templates.put(key, arrays)
    return info, arrays


def request_hash(body: AuthorizeRequest, raw: bytes | None = None, *, raw_sha256: str | None = None) -> str:
    """SHA-256 of the request: of the exact bytes the device signed when the API has them.

    An idempotent retry resends the signed bytes, so hashing them needs no re-serialisation
    (a visible share of the call), and the audit's `request_sha256` can be checked against the
    signed request itself. Callers without the bytes (scripts) hash the validated body's JSON.
    """
    if raw is not None:
        return raw_sha256 if raw_sha256 is not None else body_digest(raw)
    return body_digest(body.model_dump_json().encode())


def find_idempotent(session: Session, body: AuthorizeRequest, req_hash: str | None = None) -> dict[str, Any] | None:
    """The stored response for this (user, idempotency key), or 409 if the key was used for another body."""
    tx = prepared.execute(session, _TX_BY_KEY, {"u": body.user_id, "k": body.idempotency_key}).first()
    if tx is None:
        return None
    if tx.request_hash != (req_hash or request_hash(body)):
        raise ApiError(409, "idempotency_conflict",
                       "idempotency_key: already used for a different request body")
    return tx.response


@dataclass
class Assessment:
    """What the read phase found out about a request's evidence (nothing written yet)."""

    user_id: str
    evidence: list[ModalityEvidence] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)
    items: list[tuple[int, FeatureWindowIn]] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    #: the request's field that carried the windows (authorize `evidence`, sessions `windows`)
    body_field: str = "evidence"

    def digests(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for (_, w), d in zip(self.items, self.hashes):
            out.setdefault(w.modality, []).append(d)
        return out


def assess_evidence(session: Session, provider: ScorerProvider, user_id: str, windows: list[FeatureWindowIn],
                    *, field: str = "evidence", persist_templates: bool = True) -> Assessment:
    """Check and score evidence windows per modality (reads only unless templates are rebuilt).

    Refuses (4xx) missing consent, mismatched feature versions or dimensions and replayed
    windows; flags physically implausible windows and leaves them out of the scores. A
    modality with fewer read windows than its calibration's unit (`decision_windows`: touch
    5 swipes) is left out with reason `too_few_for_decision`: one swipe's score read on a 5-swipe
    calibration would count as far stronger evidence than it is.
    """
    out = Assessment(user_id, body_field=field)
    groups = group_windows(windows)
    infos = {r.modality: r for r in prepared.execute(session, _TEMPLATE_INFO, {"u": user_id})} if groups else {}
    ready = []
    hooks.require_consents(session, user_id=user_id, modalities=list(groups))
    for modality, items in groups.items():
        active = provider.get(modality)
        tpl, arrays = _template(session, provider, active, user_id, modality, infos.get(modality), persist_templates)
        # a template the serving model cannot read (older feature version) asks for re-enrolment below;
        # the windows are checked against what the model reads, so the app's current ones are not refused
        readable = tpl if tpl is not None and arrays is not None else None
        check_versions(modality, items, active, field=field,
                       expect_version=readable.feature_version if readable else None,
                       expect_dim=readable.feature_dim if readable else None)
        ready.append((modality, items, active, tpl, arrays))
        out.items.extend(items)
    out.hashes = check_unseen(session, user_id, out.items, field=field)
    for modality, items, active, tpl, arrays in ready:
        out.models[modality] = active.model_id
        bad = [(i, why) for i, w in items if (why := implausible(w))]
        for i, why in bad:
            out.flags.append(f"{field}[{i}]: {why}")
            out.extra.append({"modality": modality, "code": "implausible_input", "contribution": 0.0})
        usable = [w for i, w in items if i not in {j for j, _ in bad} and scored(w)]
        if len(usable) + len(bad) < len(items) and not usable:  # only windows this modality does not read
            out.extra.append({"modality": modality, "code": "not_scored", "contribution": 0.0})
        if tpl is None:
            out.extra.append({"modality": modality, "code": "not_enrolled", "contribution": 0.0})
            continue
        if arrays is None:
            out.extra.append({"modality": modality, "code": "reenrolment_required", "contribution": 0.0})
            continue
        if not usable:
            continue
        if len(usable) < decision_windows(modality):  # the calibration's unit: fewer would read overconfident
            out.extra.append({"modality": modality, "code": "too_few_for_decision", "contribution": 0.0})
            continue
        X = np.stack([w.array() for w in usable])
        scores = active.scorer.compare(arrays, X)
        # plain sums: np.mean on a handful of values costs ~8 µs of dispatch each, twice per modality
        out.evidence.append(ModalityEvidence(modality=modality, score=math.fsum(scores) / len(scores),
                                             quality=math.fsum(w.quality for w in usable) / len(usable),
                                             n_windows=len(usable), scorer=active.scorer.name,
                                             model_version=active.model_id))
    return out


def record_evidence(session: Session, a: Assessment, *, checked: bool = False,
                    transaction_id: str | None = None) -> dict[str, list[str]]:
    """Write phase: claim the windows' hashes and store flags.

    With `checked` (the read phase looked them up) only the insert runs: a window that
    arrived in between fails on the primary key instead (IntegrityError). `transaction_id`
    names the authorize call that carried the windows: once it is approved, they may adapt
    the template (`server.services.enrolment.enrol`).
    """
    if checked:
        insert_hashes(session, a.user_id, a.items, a.hashes, transaction_id)
    else:
        claim_hashes(session, a.user_id, a.items, a.hashes, field=a.body_field)
    for detail in a.flags:
        session.add(SecurityFlag(user_id=a.user_id, kind="implausible_input", detail=detail))
    return a.digests()


def token_claims(tx_id: str, body_user: str, decision: str, amount: str, currency: str, payee: str) -> dict[str, Any]:
    now = int(time.time())
    return {"tx": tx_id, "sub": body_user, "decision": decision, "amount": amount, "currency": currency,
            "payee": payee, "iat": now, "exp": now + TOKEN_TTL_S}


@dataclass
class Plan:
    """The read phase's outcome: either a stored answer or a decision waiting to be written."""

    stored: dict[str, Any] | None = None
    request_hash: str = ""
    assessment: Assessment | None = None
    decision: Decision | None = None
    #: the transaction id and its signed token, made before the write lock is taken (signing is CPU only)
    tx_id: str = ""
    token: str = ""
    #: what the write phase stores, built for the user's failure count as read (rebuilt if it changed)
    outcome: Outcome | None = None


@dataclass
class Outcome:
    """The stored answer and its audit entry, built before the write lock (serialising is CPU only)."""

    #: the user's consecutive failed authentications this outcome was built for
    failures: int
    status: str
    response: dict[str, Any]
    audit: AuditDraft


_U = User.__table__.c
_USER_STATE = select(_U.locked, _U.consecutive_failures, _U.enrolment_open).where(_U.id == bindparam("u"))
#: the write phase's read of the same row, locked on PostgreSQL until the commit: concurrent
#: denials of one user are counted one after another, never over each other (SQLite's
#: writers are serialised by its write lock already, and the dialect leaves FOR UPDATE out)
_USER_STATE_LOCKED = _USER_STATE.with_for_update()


def _check_user(user: Any, body: AuthorizeRequest, lockout_failures: int) -> Any:
    if user is None:
        raise ApiError(404, "unknown_user", f"user_id: {body.user_id!r} has no registered device")
    if user.locked:
        raise ApiError(423, "user_locked", f"user_id: locked after {lockout_failures} consecutive failed "
                                           "authentications; an administrator must unlock it")
    return user


def plan_authorize(session: Session, provider: ScorerProvider, body: AuthorizeRequest, *, lockout_failures: int,
                   decider: Callable[..., Decision] = decide, raw: bytes | None = None,
                   signing_key: Ed25519PrivateKey | None = None, raw_sha256: str | None = None,
                   actor: str | None = None, currency_rates: Mapping[str, float] | None = None) -> Plan:
    """Read phase of `authorize`: idempotency, lockout, consent, scoring and fusion (no writes).

    Kept out of the write transaction so that, on SQLite, the write lock is held only for
    the few inserts of `commit_authorize`, not for the scoring. `currency_rates` (the settings'
    `tier_currency_rates`; None: any currency at par) prices the amount for its tier.
    """
    req_hash = request_hash(body, raw, raw_sha256=raw_sha256)
    stored = find_idempotent(session, body, req_hash)
    if stored is not None:
        return Plan(stored=stored, request_hash=req_hash)
    rate = 1.0 if currency_rates is None else currency_rates.get(body.currency)
    if rate is None:
        raise ApiError(422, "unsupported_currency",
                       f"currency: {body.currency!r} is not one this server prices its risk tiers in "
                       f"({', '.join(sorted(currency_rates or {}))}; setting tier_currency_rates)")
    user = _check_user(prepared.execute(session, _USER_STATE, {"u": body.user_id}).first(), body, lockout_failures)
    a = assess_evidence(session, provider, body.user_id, body.evidence, persist_templates=False)
    decision, tx_id = decider(a.evidence, amount=float(body.amount) * rate), str(uuid.uuid4())
    plan = Plan(None, req_hash, a, decision, tx_id=tx_id)
    if signing_key is not None:
        plan.token = _token(signing_key, tx_id, body, decision.outcome)
        if actor is not None:
            plan.outcome = _outcome(plan, body, user.consecutive_failures, lockout_failures, actor)
    return plan


def _outcome(plan: Plan, body: AuthorizeRequest, failures: int, lockout_failures: int, actor: str) -> Outcome:
    """The response and audit entry of `plan` for a user with `failures` consecutive failures."""
    assert plan.assessment is not None and plan.decision is not None
    decision, a = plan.decision, plan.assessment
    reasons = [{"modality": r.modality, "code": r.code, "contribution": r.contribution} for r in decision.reasons] + a.extra
    if decision.outcome == "deny" and failures + 1 >= lockout_failures:
        reasons.append({"modality": "none", "code": "locked", "contribution": 0.0})
    status = {"approve": "approved", "deny": "denied", "step_up": "step_up_pending"}[decision.outcome]
    response = {
        "transaction_id": plan.tx_id, "user_id": body.user_id, "decision": decision.outcome, "status": status,
        "risk": round(float(decision.risk), 6), "tier": decision.tier, "amount": f"{body.amount:.2f}",
        "currency": body.currency, "payee": body.payee, "reasons": reasons, "model_versions": a.models,
        "token": plan.token, "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
    audit = hooks.draft_audit(event="decision", actor=actor, subject=body.user_id,
                              payload={"transaction_id": plan.tx_id, "request_sha256": plan.request_hash,
                                       "window_hashes": a.digests(), "models": a.models, "outcome": decision.outcome,
                                       "risk": response["risk"], "tier": decision.tier,
                                       "reasons": [r["code"] for r in reasons],
                                       "fused_llr": round(decision.fused_llr, 4)})
    return Outcome(failures, status, response, audit)


def device_view(response: dict[str, Any]) -> dict[str, Any]:
    """What the device is told of a decision: the risk to one decimal and the reason codes, no LLRs.

    Whoever holds the device key could otherwise hill-climb features on the exact risk or a
    modality's LLR contribution, one unfinished step-up per probe (a tester climbed from a
    step-up to an approval in ~840 probes with no failure counted). The stored answer keeps
    the exact figures for the bank (`GET /v1/transactions/{id}`, bank key).
    """
    out = dict(response)
    out["risk"] = round(float(response["risk"]), 1)
    out["reasons"] = [{**r, "contribution": None} for r in response["reasons"]]
    return out


def _token(signing_key: Ed25519PrivateKey, tx_id: str, body: AuthorizeRequest, outcome: str) -> str:
    return make_token(signing_key, token_claims(tx_id, body.user_id, outcome, f"{body.amount:.2f}", body.currency,
                                                body.payee))


def commit_authorize(session: Session, plan: Plan, signing_key: Ed25519PrivateKey, body: AuthorizeRequest,
                     *, device_id: str | None, lockout_failures: int, actor: str) -> dict[str, Any]:
    """Write phase of `authorize` (one transaction): stores the decision, evidence hashes and audit entry.

    What may have changed since the read phase is guarded by the database: a concurrent twin
    with the same idempotency key or the same evidence window fails on a unique key
    (IntegrityError, answered by the route), and the lockout state and the consents of the
    scored modalities are read again here (a withdrawal that landed in between is a 403, as it
    would have been a moment later: withdrawal takes effect at once, docs/compliance.md).
    """
    if plan.stored is not None:
        return plan.stored
    assert plan.assessment is not None and plan.decision is not None
    user = _check_user(prepared.execute(session, _USER_STATE_LOCKED, {"u": body.user_id}).first(), body,
                       lockout_failures)
    if plan.assessment.models:  # a consent withdrawn since the read phase: no decision rests on that modality
        hooks.require_consents(session, user_id=body.user_id, modalities=list(plan.assessment.models))
    plan.tx_id = plan.tx_id or str(uuid.uuid4())
    record_evidence(session, plan.assessment, checked=True, transaction_id=plan.tx_id)
    decision = plan.decision
    plan.token = plan.token or _token(signing_key, plan.tx_id, body, decision.outcome)
    out = plan.outcome
    if out is None or out.failures != user.consecutive_failures:  # another request changed the count meanwhile
        out = plan.outcome = _outcome(plan, body, user.consecutive_failures, lockout_failures, actor)
    changes: dict[str, Any] = {}
    if user.enrolment_open and prepared.execute(session, _HAS_TEMPLATE, {"u": body.user_id}).first() is not None:
        changes["enrolment_open"] = False  # the first decision on an enrolled user closes it
    if decision.outcome == "deny":
        failures = user.consecutive_failures + 1
        changes.update(consecutive_failures=failures, locked=failures >= lockout_failures)
    elif decision.outcome == "approve" and user.consecutive_failures:
        changes.update(consecutive_failures=0)
    if changes:
        session.execute(update(User).where(User.id == body.user_id).values(**changes))
    response = out.response
    # Core insert with bound parameters: `insert().values(...)` rebuilds a cache key per call
    prepared.execute(session, _TX_INSERT, dict(
        id=plan.tx_id, user_id=body.user_id, device_id=device_id, idempotency_key=body.idempotency_key,
        request_hash=plan.request_hash, amount=response["amount"], currency=body.currency, payee=body.payee,
        channel=body.channel, outcome=decision.outcome, status=out.status, risk=float(decision.risk),
        tier=decision.tier, response=response, created_at=datetime.now(UTC)))
    hooks.append_draft(session, out.audit)
    session.flush()
    return response


def authorize(session: Session, provider: ScorerProvider, signing_key: Ed25519PrivateKey, body: AuthorizeRequest,
              *, device_id: str | None, lockout_failures: int, actor: str,
              decider: Callable[..., Decision] = decide) -> dict[str, Any]:
    """Both phases in the caller's one transaction (tests, scripts)."""
    plan = plan_authorize(session, provider, body, lockout_failures=lockout_failures, decider=decider)
    return commit_authorize(session, plan, signing_key, body, device_id=device_id, lockout_failures=lockout_failures,
                            actor=actor)


def count_step_up(user: User, success: bool, lockout_failures: int) -> None:
    """A step-up's outcome on the user's failure count (PSD2 RTS Art. 4): passed resets it, failed adds one.

    The one rule for a payment's and a continuous session's step-up; the caller holds the
    user's row lock, so concurrent failures are counted one after another.
    """
    if success:
        user.consecutive_failures = 0
    else:
        user.consecutive_failures += 1
        user.locked = user.consecutive_failures >= lockout_failures


def complete_step_up(session: Session, signing_key: Ed25519PrivateKey, tx_id: str, *, success: bool,
                     lockout_failures: int, actor: str) -> dict[str, Any]:
    """The bank reports the outcome of the step-up (e.g. a one-time code) for a pending transaction.

    The user and then the transaction are read with row locks (PostgreSQL), so two reports of
    one step-up cannot both pass, and a user locked meanwhile is not approved through it. The
    user row comes first, as in every other writer (erasure: device, user, then its rows), so
    a step-up and an erasure of the same person never deadlock.
    """
    owner = session.scalar(select(_TX.user_id).where(_TX.id == tx_id))
    user = session.get(User, owner, with_for_update=True) if owner is not None else None
    tx = session.get(Transaction, tx_id, with_for_update=True, populate_existing=True)
    if tx is None or user is None:  # never there, or erased before the locks were ours
        raise ApiError(404, "unknown_transaction", f"transaction_id: {tx_id!r} not found")
    if tx.status != "step_up_pending":
        raise ApiError(409, "not_pending", f"transaction_id: status is {tx.status!r}, not step_up_pending")
    if user.locked and success:  # a failed step-up is still recorded: the transaction is denied
        raise ApiError(423, "user_locked", f"transaction_id: its user is locked after {lockout_failures} consecutive "
                                           "failed authentications; an administrator must unlock it first")
    outcome = "approve" if success else "deny"
    count_step_up(user, success, lockout_failures)
    response = dict(tx.response)
    response["status"] = tx.status = "approved_after_step_up" if success else "denied_after_step_up"
    response["decision"] = tx.outcome = outcome
    response["token"] = make_token(signing_key, token_claims(tx.id, tx.user_id, outcome, tx.amount, tx.currency, tx.payee))
    tx.response = response
    hooks.audit(session, event="step_up", actor=actor, subject=tx.user_id,
                payload={"transaction_id": tx.id, "success": success})
    return response


#: token claim -> the request field it must equal (the claim names as the token carries them)
_TOKEN_BINDING = (("sub", "user_id"), ("tx", "transaction_id"), ("amount", "amount"), ("currency", "currency"),
                  ("payee", "payee"))


def redeem_token(session: Session, public_key: Any, body: Any, *, actor: str) -> dict[str, Any]:
    """Dynamic linking: is this token an approval of exactly this user's this payment, unspent?

    The token must verify, be unexpired, approve, and name the user, transaction, amount,
    currency and payee the bank is executing. With `body.redeem` (the default) the
    transaction's token is then spent in the same statement that checks it is unspent, so
    one approval executes one payment however often, and by whom, it is presented; the
    redemption is audited. `body.redeem=False` only checks, the stored transaction too: a token
    already spent, or whose transaction was erased, is not valid either way.
    """
    from server.signing import SignatureError, verify_token

    try:
        claims = verify_token(public_key, body.token)
    except (SignatureError, ValueError) as exc:
        return {"valid": False, "reason": str(exc)}
    if claims.get("exp", 0) < time.time():
        return {"valid": False, "reason": "token: expired", "claims": claims}
    wanted = {"user_id": body.user_id, "transaction_id": body.transaction_id, "amount": f"{body.amount:.2f}",
              "currency": body.currency, "payee": body.payee}
    for claim, field_name in _TOKEN_BINDING:
        if claims.get(claim) != wanted[field_name]:
            return {"valid": False, "reason": f"{field_name}: token was issued for {claims.get(claim)!r}", "claims": claims}
    if claims.get("decision") != "approve":
        return {"valid": False, "reason": f"decision: {claims.get('decision')}", "claims": claims}
    if not body.redeem:  # only a check, but of the token as it stands: a spent or erased one is no longer valid
        why = _unspendable(session.get(Transaction, body.transaction_id), body.user_id)
        if why is not None:
            return {"valid": False, "reason": why, "claims": claims}
        return {"valid": True, "claims": claims, "redeemed": False}
    spent = session.execute(update(Transaction)
                            .where(Transaction.id == body.transaction_id, Transaction.user_id == body.user_id,
                                   Transaction.token_redeemed_at.is_(None))
                            .values(token_redeemed_at=datetime.now(UTC))).rowcount  # type: ignore[attr-defined]
    if not spent:
        tx = session.get(Transaction, body.transaction_id)
        return {"valid": False, "reason": _unspendable(tx, body.user_id) or "token: already redeemed", "claims": claims}
    hooks.audit(session, event="token.redeemed", actor=actor, subject=body.user_id,
                payload={"transaction_id": body.transaction_id, "amount": wanted["amount"], "currency": body.currency,
                         "payee": hooks.payee_alias(body.payee)})  # keyed: a plain hash of a name is guessable
    return {"valid": True, "claims": claims, "redeemed": True}


def _unspendable(tx: Transaction | None, user_id: str) -> str | None:
    """Why a verified token's transaction cannot be paid with it (gone, another user's, spent), or None."""
    if tx is None or tx.user_id != user_id:
        return "transaction_id: no such transaction of this user"
    if tx.token_redeemed_at is not None:
        return f"token: already redeemed at {tx.token_redeemed_at}"
    return None


def response_json(response: dict[str, Any]) -> str:
    return json.dumps(response, sort_keys=True)
