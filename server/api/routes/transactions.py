"""/v1/transactions: authorize (signed device), step-up completion and token checks (bank)."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError

from server.api.deps import (
    AppState,
    BankKey,
    DeviceRequest,
    Signed,
    State,
    Uow,
    check_rate,
    client_address,
    same_user,
    signed_request,
)
from server.api.routing import CadenceRoute, json_body, lean
from server.errors import ApiError
from server.models import Transaction
from server.schemas import AuthorizeRequest, AuthorizeResponse, StepUpComplete, TokenVerify
from server.services import transactions as svc
from server.services.evidence import EvidenceReplay, find_replay, record_replay
from server.services.transactions import find_idempotent
from server.signing import HEADER_DEVICE, b64e

router = APIRouter(prefix="/v1/transactions", tags=["transactions"], route_class=CadenceRoute)
TxId = Path(min_length=1, max_length=36, pattern=r"^[A-Za-z0-9-]+$")


async def _authorize_lean(request: Request) -> Response:
    """`authorize` without FastAPI's per-request dependency solving (the hot path)."""
    state: AppState = request.app.state.cadence
    check_rate(state, request.headers.get(HEADER_DEVICE), client_address(request))  # 429 before parsing, as `Signed`
    body, raw = await json_body(request, AuthorizeRequest)
    req = signed_request(state, request, raw)
    try:
        out, fresh = await state.run(_authorize, body, req, state)
    except ApiError as exc:
        answer = await req.refused(exc)  # its nonce is spent, as the `Signed` routes' are
        if answer is not exc:
            raise answer from exc
        raise
    if fresh:  # an idempotent retry answers the stored decision: not a new one
        state.metrics.decisions.labels(out["decision"], out["tier"]).inc()
        flagged = sum(r["code"] == "implausible_input" for r in out["reasons"])
        if flagged:
            state.metrics.flags.labels("implausible_input").inc(flagged)
    return JSONResponse(svc.device_view(out))  # the exact risk and LLRs are the bank's to read


@router.post("/authorize", response_model=AuthorizeResponse)
@lean(_authorize_lean)
async def authorize(body: AuthorizeRequest, req: Signed, state: State) -> Any:
    """Decide a transaction from behavioural evidence; same idempotency key + body = same decision.

    Served by `_authorize_lean`; this signature documents the body and headers it reads.
    """
    raise NotImplementedError  # pragma: no cover - never called (see `lean`)


def _authorize(body: AuthorizeRequest, req: DeviceRequest, state: AppState) -> tuple[dict[str, Any], bool]:
    """The decision, and whether this call made it (False: an idempotent retry's stored answer)."""
    lockout = state.settings.lockout_failures
    try:
        with req.read() as session:  # scoring and fusion outside the write lock
            same_user(req.device, body.user_id)
            plan = svc.plan_authorize(session, state.provider, body, lockout_failures=lockout, decider=state.decide,
                                      currency_rates=state.settings.tier_currency_rates,
                                      raw=req.body, raw_sha256=req.body_sha256, signing_key=state.signing_key,
                                      actor=req.actor)
        with req.transaction() as session:
            return svc.commit_authorize(session, plan, state.signing_key, body, device_id=req.device.device_id,
                                        lockout_failures=lockout, actor=req.actor), plan.stored is None
    except EvidenceReplay as exc:
        # a concurrent twin (same key, same body) that committed between this call's idempotency
        # lookup and its replay check carried these very windows: answer with its decision
        stored = _twin_answer(req, body)
        if stored is not None:
            return stored, False
        record_replay(req.transaction, exc, req.actor)
        raise
    except ApiError as exc:
        # consents are read again in the write phase: a twin that committed before a withdrawal
        # decided this very call (same key, same body), and its answer stands
        if exc.code == "consent_required" and (stored := _twin_answer(req, body)) is not None:
            return stored, False
        raise
    except IntegrityError:
        # a concurrent request with the same idempotency key won the race: answer with its decision
        # (409 idempotency_conflict if it carried another body, as a call after it gets)
        stored = _twin_answer(req, body, other_body_is_conflict=True)
        if stored is not None:
            return stored, False
        # not the key: the same evidence window raced in another request, which committed first.
        # Flagged and audited as the replay it is when it comes after that request
        with state.read() as session:
            replay = find_replay(session, body.user_id, body.evidence, field="evidence")
        if replay is None:
            raise ApiError(409, "evidence_replay",
                           "evidence: a concurrent request carried the same window; replayed evidence is refused") from None
        record_replay(req.transaction, replay, req.actor)
        raise replay from None


class _NoTwin(Exception):
    """No stored decision for this key and body: the twin's write transaction is rolled back."""


def _twin_answer(req: DeviceRequest, body: AuthorizeRequest, *,
                 other_body_is_conflict: bool = False) -> dict[str, Any] | None:
    """The stored decision of an earlier call with this idempotency key and body, if there is one.

    Looked up in the request's write transaction, so its nonce is consumed as any answered
    request's is: the winner's own signed bytes sent again in the race (a captured request
    replayed) are refused as `replayed_request`, not answered with the winner's token. A key
    reused for another body is no twin: its replayed windows stay refused and flagged (or,
    with `other_body_is_conflict`, it is refused as `idempotency_conflict`).
    """
    try:
        with req.transaction() as session:
            stored = find_idempotent(session, body, req.body_sha256)
            if stored is None:
                raise _NoTwin  # nothing written: the refusal that follows records this nonce
            return stored
    except _NoTwin:
        return None
    except ApiError as exc:
        if exc.code != "idempotency_conflict" or other_body_is_conflict:
            raise
        return None


@router.post("/{transaction_id}/step-up", response_model=AuthorizeResponse)
def step_up(body: StepUpComplete, uow: Uow, state: State, actor: BankKey, transaction_id: str = TxId) -> dict[str, Any]:
    """The bank reports whether the step-up challenge succeeded."""
    with uow() as session:
        return svc.complete_step_up(session, state.signing_key, transaction_id, success=body.success,
                                    lockout_failures=state.settings.lockout_failures, actor=actor)


@router.get("/{transaction_id}", response_model=AuthorizeResponse)
def get_transaction(uow: Uow, actor: BankKey, transaction_id: str = TxId) -> dict[str, Any]:
    with uow() as session:
        tx = session.get(Transaction, transaction_id)
        if tx is None:
            raise ApiError(404, "unknown_transaction", f"transaction_id: {transaction_id!r} not found")
        return tx.response


@router.post("/verify-token")
def verify(body: TokenVerify, uow: Uow, state: State, actor: BankKey) -> dict[str, Any]:
    """Check, and by default spend, a decision token for the payment being executed (dynamic linking)."""
    with uow() as session:
        return svc.redeem_token(session, state.signing_key.public_key(), body, actor=actor)


@router.get("/signing-key/public")
def public_key(state: State) -> dict[str, str]:
    """The server's Ed25519 public key that signs decision tokens (base64url, raw 32 bytes)."""
    raw = state.signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"alg": "Ed25519", "public_key": b64e(raw)}
