"""Enrolment: quality gate, stored enrolment windows, templates rebuilt when the model changes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from modalities.base import Template as TemplateArrays
from server.errors import ApiError
from server.models import EnrolmentWindow, EvidenceSeen, Template, Transaction, User
from server.schemas import EnrolResponse, FeatureWindowIn, ModalityEnrolment
from server.services import compliance_hooks as hooks
from server.services.evidence import (
    check_versions,
    claim_confirmed,
    claim_hashes,
    group_windows,
    implausible,
    scored,
)
from server.services.scoring import ActiveScorer, ScorerProvider, template_from_json, template_to_json

#: enrolment windows kept per modality (`evicted` says which go past it)
MAX_ENROL_WINDOWS = 200
#: most adapted windows kept per modality: half the cap, so adaptation always has room (it
#: evicts the plain enrolment's oldest windows only up to this share) and the enrolment the
#: template began with keeps at least the other half
MAX_ADAPTED_WINDOWS = MAX_ENROL_WINDOWS // 2
#: most windows of one modality that one confirmed transaction adapts, over all its calls: an
#: impostor approved once (a false match, or a step-up he passed holding the phone) cannot
#: re-send a whole session of his behaviour into the owner's template
ADAPT_MAX_WINDOWS = 8
#: a modality's reason codes in a decision that say its own evidence matched the template
MATCHED = frozenset({"match", "strong_match"})


def enrol(session: Session, provider: ScorerProvider, *, user_id: str, windows: list[FeatureWindowIn],
          min_windows: int, min_quality: float, actor: str,
          confirmed_transaction_id: str | None = None) -> EnrolResponse:
    """Add windows to the user's enrolment and (re)build each modality's template.

    New windows must never have been seen (replay protection) and must look human
    (`implausible`), and plain enrolment is accepted only while the user's enrolment is open
    (`User.enrolment_open`). Windows re-sent with `confirmed_transaction_id` must instead be
    exactly ones that approved transaction carried, not used for enrolment before
    (`claim_confirmed`), of a modality whose own evidence matched in that decision
    (`modality_codes`), at most `ADAPT_MAX_WINDOWS` per modality and transaction. The stored
    windows are then cut to `MAX_ENROL_WINDOWS` (`evicted`); windows of this call that the cut
    drops (only plain enrolment past the cap: adapted windows always have room) are counted in
    `skipped` as `evicted`, never silently.

    The user's row is locked first (PostgreSQL; the order authorize, sessions and erasure take
    it in), so concurrent enrolments of one user run one after another: a window claimed by
    one is seen, or no longer confirmed evidence, by the next.
    """
    user = session.get(User, user_id, with_for_update=True)
    if user is None:
        raise ApiError(404, "unknown_user", f"user_id: {user_id!r} has no registered device")
    if user.locked:
        raise ApiError(423, "user_locked", "user_id: locked after consecutive failed authentications; "
                                           "an administrator must unlock it before its enrolment changes")
    tx = None if confirmed_transaction_id is None else confirmed_transaction(session, user_id, confirmed_transaction_id)
    out = []
    digests: dict[str, list[str]] = {}
    for modality, items in group_windows(windows).items():
        hooks.require_consent(session, user_id=user_id, modality=modality)
        active = provider.get(modality)
        tpl = session.scalar(select(Template).where(Template.user_id == user_id, Template.modality == modality))
        # a new feature version starts a fresh enrolment (old windows cannot be compared)
        same = tpl if tpl is not None and tpl.feature_version == items[0][1].feature_version else None
        # a template of a feature version the serving model no longer reads cannot be used at all:
        # its fresh enrolment (after a model upgrade) is accepted as the first one was
        stale = tpl is not None and active.feature_version not in (None, tpl.feature_version)
        if not user.enrolment_open and not stale:
            _check_closed(modality, adapting=confirmed_transaction_id is not None, has_template=same is not None)
        check_versions(modality, items, active, field="windows",
                       expect_version=None if same is None else same.feature_version,
                       expect_dim=None if same is None else same.feature_dim)
        for i, w in items:
            if why := implausible(w):
                raise ApiError(422, "implausible_input", f"windows[{i}]: {why}; bot-like input is not enrolled")
        good: list[tuple[int, FeatureWindowIn]] = []
        skipped: Counter[str] = Counter()
        for i, w in items:  # taps (windows the models do not read) and low quality are not enrolled
            if not scored(w):
                skipped["not_scored"] += 1
            elif not w.quality >= min_quality:
                skipped["low_quality"] += 1
            else:
                good.append((i, w))
        if tx is None:
            digests[modality] = claim_hashes(session, user_id, items)
        else:
            _check_adaptable(tx, modality, items, len(good))
            digests[modality] = claim_confirmed(session, user_id, tx.id, items)
            _check_adapted_total(session, tx, user_id, modality, len(good))
        if tpl is not None and same is None:
            session.execute(delete(EnrolmentWindow).where(EnrolmentWindow.user_id == user_id,
                                                          EnrolmentWindow.modality == modality))
        added = [EnrolmentWindow(user_id=user_id, modality=modality, feature_version=w.feature_version,
                                 quality=w.quality, values=list(w.values), transaction_id=None if tx is None else tx.id)
                 for _, w in good]
        session.add_all(added)
        session.flush()
        rows = _apply_cap(session, user_id, modality)
        kept = {r.id for r in rows}
        if lost := sum(r.id not in kept for r in added):  # never silently: only plain enrolment past the cap
            skipped["evicted"] = lost
        if len(rows) < min_windows:
            raise ApiError(422, "too_few_windows",
                           f"windows: {modality} needs at least {min_windows} windows of quality >= {min_quality}"
                           f"{' (swipes: taps are not enrolled)' if modality == 'touch' else ''} (have {len(rows)})")
        tpl = build_template(session, active, user_id, modality, rows, tpl)
        out.append(ModalityEnrolment(modality=modality, n_windows=tpl.n_windows, model_id=tpl.model_id,
                                     feature_version=tpl.feature_version, skipped=sum(skipped.values()),
                                     skipped_reasons=dict(skipped)))
    payload: dict[str, object] = {"window_hashes": digests, "models": {m.modality: m.model_id for m in out}}
    if confirmed_transaction_id is not None:
        payload["confirmed_transaction_id"] = confirmed_transaction_id
    hooks.audit(session, event="enrolment", actor=actor, subject=user_id, payload=payload)
    return EnrolResponse(user_id=user_id, modalities=out)


def modality_codes(tx: Transaction, modality: str) -> list[str]:
    """The reason codes `modality` got in the transaction's decision (its stored answer)."""
    reasons = tx.response.get("reasons", []) if isinstance(tx.response, dict) else []
    return [str(r.get("code")) for r in reasons if isinstance(r, dict) and r.get("modality") == modality]


def _check_adaptable(tx: Transaction, modality: str, items: list[tuple[int, FeatureWindowIn]], n_adapt: int) -> None:
    """Refuse adapting `modality` with this transaction's windows unless its own evidence matched, within the limit.

    Approval (at once, or after a passed step-up) proves the payment was confirmed, not that
    this modality's behaviour was the owner's: an impostor holding the phone passes the
    step-up too, and a strong mismatch approved on the other modalities is still someone
    else's behaviour. So the modality's code in that decision must be `match` or
    `strong_match` (409 `not_matched_evidence`), and at most `ADAPT_MAX_WINDOWS` of its
    windows adapt the template, counted over every call for the transaction: more in one call
    is refused (422 `adaptation_limit`), as is going past it over several (409,
    `_check_adapted_total`).
    """
    first = items[0][0]
    codes = modality_codes(tx, modality)
    if not MATCHED.intersection(codes):
        why = ", ".join(codes) or "no evidence of it"
        raise ApiError(409, "not_matched_evidence",
                       f"windows[{first}]: {modality} did not match in transaction {tx.id!r} ({why}); only evidence "
                       f"that matched adapts a template (an approval or a passed step-up confirms the payment, "
                       f"not whose behaviour this is)")
    if n_adapt > ADAPT_MAX_WINDOWS:
        raise ApiError(422, "adaptation_limit",
                       f"windows: {n_adapt} {modality} windows to adapt; at most {ADAPT_MAX_WINDOWS} windows of a "
                       f"modality adapt a template per confirmed transaction (send the {ADAPT_MAX_WINDOWS} to keep)")


def _check_adapted_total(session: Session, tx: Transaction, user_id: str, modality: str, n_adapt: int) -> None:
    """409 `adaptation_limit` when this call's `n_adapt` windows take the transaction's past `ADAPT_MAX_WINDOWS`.

    Counted from the stored windows it adapted before (the user's row lock orders the calls);
    checked after the claim, so windows already used are refused as such (`not_confirmed_evidence`).
    """
    done = session.scalar(select(func.count()).select_from(EnrolmentWindow).where(
        EnrolmentWindow.user_id == user_id, EnrolmentWindow.modality == modality,
        EnrolmentWindow.transaction_id == tx.id)) or 0
    if done + n_adapt > ADAPT_MAX_WINDOWS:
        raise ApiError(409, "adaptation_limit",
                       f"windows: transaction {tx.id!r} already adapted {done} {modality} windows; at most "
                       f"{ADAPT_MAX_WINDOWS} windows of a modality adapt a template per confirmed transaction "
                       f"({max(ADAPT_MAX_WINDOWS - done, 0)} more here)")


def evicted(adapted: Sequence[bool], *, cap: int | None = None, adapted_cap: int | None = None) -> list[int]:
    """Positions of the windows (oldest first; True = adapted) that the cap drops, oldest first.

    Adapted windows keep at most `adapted_cap` (`MAX_ADAPTED_WINDOWS`) places, however few
    windows there are in all: past it their oldest go. The plain enrolment (windows sent without `confirmed_transaction_id`) gets the
    rest of `cap` (`MAX_ENROL_WINDOWS`), its oldest evicted only to make room for adapted
    windows up to that share, so an adaptation always adapts and the plain enrolment keeps at
    least `cap - adapted_cap` windows (all of itself if fewer). Plain enrolment past the cap
    on its own keeps its newest windows. `cadence bench touch` applies the same function.
    """
    cap = MAX_ENROL_WINDOWS if cap is None else cap
    adapted_cap = min(MAX_ADAPTED_WINDOWS if adapted_cap is None else adapted_cap, cap)
    ad = [i for i, a in enumerate(adapted) if a]
    plain = [i for i, a in enumerate(adapted) if not a]
    keep_ad = ad[max(len(ad) - adapted_cap, 0):]
    keep = set(keep_ad) | set(plain[max(len(plain) - (cap - len(keep_ad)), 0):])
    return [i for i in range(len(adapted)) if i not in keep]


def _apply_cap(session: Session, user_id: str, modality: str) -> list[EnrolmentWindow]:
    """The modality's enrolment windows (oldest first), cut as `evicted` says (adapted ones to their share even below the cap).

    A transaction whose adapted windows are dropped adapts nothing more: its unclaimed
    evidence of the modality is released, so `ADAPT_MAX_WINDOWS` holds over the transaction's
    whole life, not only while its windows are kept.
    """
    rows = list(session.scalars(select(EnrolmentWindow).where(EnrolmentWindow.user_id == user_id,
                                                              EnrolmentWindow.modality == modality)
                                .order_by(EnrolmentWindow.id)).all())
    drop = [rows[i] for i in evicted([r.transaction_id is not None for r in rows])]
    if not drop:
        return rows
    for r in drop:
        session.delete(r)
    released = {r.transaction_id for r in drop if r.transaction_id is not None}
    if released:
        session.execute(update(EvidenceSeen).where(EvidenceSeen.user_id == user_id, EvidenceSeen.modality == modality,
                                                   EvidenceSeen.transaction_id.in_(released))
                        .values(transaction_id=None))
    gone = {r.id for r in drop}
    return [r for r in rows if r.id not in gone]


def _check_closed(modality: str, *, adapting: bool, has_template: bool) -> None:
    """After the first transaction a template only adapts: nothing enrols it anew (409 `enrolment_closed`).

    Not plain windows, and not confirmed evidence either when the modality has no template
    of this feature version: one approved transaction (perhaps approved by its step-up, with
    this modality scoring nothing) must not become a whole new template.
    """
    how = "POST /v1/admin/users/{id}/enrolment/reopen"
    if not adapting:
        raise ApiError(409, "enrolment_closed",
                       f"confirmed_transaction_id: required, plain enrolment is closed for this user (it closes at "
                       f"the first decision on an enrolled user, or when a continuous session is terminated); a "
                       f"{modality} template now adapts only to the evidence of an approved transaction, or after "
                       f"the bank reopens enrolment ({how})")
    if not has_template:
        raise ApiError(409, "enrolment_closed",
                       f"windows: {modality} has no template to adapt, and plain enrolment is closed for this user "
                       f"(it closes at the first decision on an enrolled user, or when a continuous session is "
                       f"terminated); a new template needs the bank to reopen enrolment ({how})")


def reopen_enrolment(session: Session, user_id: str, *, actor: str) -> None:
    """The bank reopens plain enrolment (e.g. after it re-verified the customer another way)."""
    user = session.get(User, user_id)
    if user is None:
        raise ApiError(404, "unknown_user", f"user_id: {user_id!r} not found")
    user.enrolment_open = True
    hooks.audit(session, event="enrolment.reopened", actor=actor, subject=user_id, payload={})


def confirmed_transaction(session: Session, user_id: str, tx_id: str) -> Transaction:
    """The user's transaction whose evidence may adapt the template: it must have been approved."""
    tx = session.get(Transaction, tx_id)
    if tx is None or tx.user_id != user_id:
        raise ApiError(404, "unknown_transaction", f"confirmed_transaction_id: {tx_id!r} is not a transaction of this user")
    if tx.outcome != "approve":
        raise ApiError(409, "not_confirmed", f"confirmed_transaction_id: the transaction's decision is {tx.outcome!r}; "
                                             "only an approved transaction's evidence (at once or after step-up), "
                                             "of a modality that matched in it, adapts a template")
    return tx


def build_template(session: Session, active: ActiveScorer, user_id: str, modality: str,
                   rows: list[EnrolmentWindow], tpl: Template | None) -> Template:
    X = np.asarray([r.values for r in rows], dtype=float)
    data = template_to_json(active.scorer.enroll(X))
    if tpl is None:
        tpl = Template(user_id=user_id, modality=modality)
        session.add(tpl)
    tpl.feature_version = rows[0].feature_version
    tpl.feature_dim = X.shape[1]
    tpl.model_id = active.model_id
    tpl.data = data
    tpl.n_windows = len(rows)
    session.flush()
    return tpl


def current_template(session: Session, active: ActiveScorer, user_id: str, modality: str,
                     tpl: Template | None = None, *, persist: bool = True) -> tuple[Template | None, TemplateArrays | None]:
    """The user's template for `modality` (pass it if already loaded).

    It is rebuilt from the stored enrolment windows if the serving model changed since.
    """
    if tpl is None:
        tpl = session.scalar(select(Template).where(Template.user_id == user_id, Template.modality == modality))
    if tpl is None:
        return None, None
    if tpl.model_id != active.model_id:
        rows = list(session.scalars(select(EnrolmentWindow).where(EnrolmentWindow.user_id == user_id,
                                                                  EnrolmentWindow.modality == modality,
                                                                  EnrolmentWindow.feature_version == tpl.feature_version)
                                    .order_by(EnrolmentWindow.id)).all())
        if active.feature_version not in (None, tpl.feature_version) or not rows:
            return tpl, None  # re-enrolment needed
        if not persist:  # read phase: rebuild in memory, stored on the next enrolment
            return tpl, active.scorer.enroll(np.asarray([r.values for r in rows], dtype=float))
        tpl = build_template(session, active, user_id, modality, rows, tpl)
    return tpl, template_from_json(tpl.data)
