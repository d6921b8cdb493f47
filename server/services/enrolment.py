"""Enrolment: quality gate, stored enrolment windows, templates rebuilt when the model changes."""

from __future__ import annotations

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from modalities.base import Template as TemplateArrays
from server.errors import ApiError
from server.models import EnrolmentWindow, Template, Transaction, User
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

#: enrolment windows kept per modality (oldest dropped): bounded drift adaptation
MAX_ENROL_WINDOWS = 200


def enrol(session: Session, provider: ScorerProvider, *, user_id: str, windows: list[FeatureWindowIn],
          min_windows: int, min_quality: float, actor: str,
          confirmed_transaction_id: str | None = None) -> EnrolResponse:
    """Add windows to the user's enrolment and (re)build each modality's template.

    New windows must never have been seen (replay protection) and must look human
    (`implausible`), and plain enrolment is accepted only while the user's enrolment is open
    (`User.enrolment_open`). Windows re-sent with `confirmed_transaction_id` must instead be
    exactly ones that approved transaction carried, not used for enrolment before
    (`claim_confirmed`).
    """
    user = session.get(User, user_id)
    if user is None:
        raise ApiError(404, "unknown_user", f"user_id: {user_id!r} has no registered device")
    if user.locked:
        raise ApiError(423, "user_locked", "user_id: locked after consecutive failed authentications; "
                                           "an administrator must unlock it before its enrolment changes")
    if confirmed_transaction_id is not None:
        confirmed_transaction(session, user_id, confirmed_transaction_id)
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
        good = [(i, w) for i, w in items if w.quality >= min_quality and scored(w)]  # taps are not enrolled
        digests[modality] = (claim_hashes(session, user_id, items) if confirmed_transaction_id is None
                             else claim_confirmed(session, user_id, confirmed_transaction_id, items))
        if tpl is not None and same is None:
            session.execute(delete(EnrolmentWindow).where(EnrolmentWindow.user_id == user_id,
                                                          EnrolmentWindow.modality == modality))
        for _, w in good:
            session.add(EnrolmentWindow(user_id=user_id, modality=modality, feature_version=w.feature_version,
                                        quality=w.quality, values=list(w.values)))
        session.flush()
        rows = list(session.scalars(select(EnrolmentWindow).where(EnrolmentWindow.user_id == user_id,
                                                                  EnrolmentWindow.modality == modality)
                                    .order_by(EnrolmentWindow.id)).all())
        if len(rows) > MAX_ENROL_WINDOWS:
            for r in rows[:-MAX_ENROL_WINDOWS]:
                session.delete(r)
            rows = rows[-MAX_ENROL_WINDOWS:]
        if len(rows) < min_windows:
            raise ApiError(422, "too_few_windows",
                           f"windows: {modality} needs at least {min_windows} windows of quality >= {min_quality}"
                           f"{' (swipes: taps are not enrolled)' if modality == 'touch' else ''} (have {len(rows)})")
        tpl = build_template(session, active, user_id, modality, rows, tpl)
        out.append(ModalityEnrolment(modality=modality, n_windows=tpl.n_windows, model_id=tpl.model_id,
                                     feature_version=tpl.feature_version))
    payload: dict[str, object] = {"window_hashes": digests, "models": {m.modality: m.model_id for m in out}}
    if confirmed_transaction_id is not None:
        payload["confirmed_transaction_id"] = confirmed_transaction_id
    hooks.audit(session, event="enrolment", actor=actor, subject=user_id, payload=payload)
    return EnrolResponse(user_id=user_id, modalities=out)


def _check_closed(modality: str, *, adapting: bool, has_template: bool) -> None:
    """After the first transaction a template only adapts: nothing enrols it anew (409 `enrolment_closed`).

    Not plain windows, and not confirmed evidence either when the modality has no template
    of this feature version: one approved transaction (perhaps approved by its step-up, with
    this modality scoring nothing) must not become a whole new template.
    """
    how = "POST /v1/admin/users/{id}/enrolment/reopen"
    if not adapting:
        raise ApiError(409, "enrolment_closed",
                       f"confirmed_transaction_id: enrolment closed with this user's first transaction; a {modality} "
                       f"template now adapts only to the evidence of an approved transaction, or after the bank "
                       f"reopens enrolment ({how})")
    if not has_template:
        raise ApiError(409, "enrolment_closed",
                       f"windows: {modality} has no template to adapt, and enrolment closed with this user's first "
                       f"transaction; a new template needs the bank to reopen enrolment ({how})")


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
                                             "only approved evidence (at once or after step-up) adapts a template")
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
