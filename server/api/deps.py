"""Dependencies that routes read like a sentence: `State`, `Uow`, `BankKey`, `AdminKey`, `Signed`."""

from __future__ import annotations

import functools
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from cadence.db import HeldConnections, transaction
from cadence.settings import Settings
from fusion.policy import Decision, ModalityEvidence
from fusion.policy import decide as policy_decide
from server.errors import ApiError
from server.metrics import Metrics
from server.services import compliance_hooks as hooks
from server.services.devices import RateLimiter, consume_nonce, retired_nonce, verify_device_request
from server.services.scoring import ScorerProvider
from server.services.shared_limits import RedisRateLimiter
from server.signing import HEADER_DEVICE, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP, body_digest

T = TypeVar("T")


@dataclass
class AppState:
    """What `create_app` builds once and every request shares."""

    settings: Settings
    sessions: sessionmaker[Session]
    provider: ScorerProvider
    signing_key: Ed25519PrivateKey
    metrics: Metrics
    #: sessions for read-only phases (plain BEGIN on SQLite: no write lock taken)
    read_sessions: sessionmaker[Session] | None = None
    #: per-device request rate limit (429), charged once a request's signature verified
    limiter: RateLimiter | RedisRateLimiter | None = None
    #: per-client-address budget of refused device requests (401, 422): a sender of unsigned or
    #: malformed requests is throttled by its own address, never by the device id it claims
    failures: RateLimiter | RedisRateLimiter | None = None
    #: held around each write transaction on SQLite: one writer per process waits on this
    #: lock instead of in SQLite's sleeping busy handler (which backs off up to 100 ms)
    write_lock: AbstractContextManager[Any] = field(default_factory=nullcontext)
    #: the event loop's held connections (embedded SQLite file) instead of a pool checkout per transaction
    held: HeldConnections | None = None
    #: where `decide` and `calibrate` get the current fusion engine (`server.fusion_source.FusionSource`)
    fusion: Any = None

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction (commit on success, rollback on error)."""
        if self.held is not None and self.held.here():
            scope = self.held.transaction()
        else:
            scope = transaction(self.sessions)
        with self.write_lock, scope as session:
            yield session

    def read(self) -> AbstractContextManager[Session]:
        """One read-only transaction (plain BEGIN on SQLite: no write lock taken)."""
        if self.held is not None and self.held.here():
            return self.held.transaction(read_only=True)
        return transaction(self.read_sessions or self.sessions)

    #: run hot synchronous handlers on the event loop itself instead of the thread pool
    inline_handlers: bool = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a synchronous handler body: inline, or in the thread pool.

        Inline suits the embedded SQLite store: statements are in-process and microseconds
        long, writers are serialised anyway, and the thread hop (plus handing the GIL back
        and forth with the event loop) was a third of an authorize call's latency. A network
        database (PostgreSQL) keeps the thread pool so that one request's round trips do not
        stall the others.
        """
        if self.inline_handlers:
            return fn(*args)
        return await run_in_threadpool(fn, *args)

    #: fusion + policy: `fusion.engine.FusionEngine.decide` when calibrated, else `fusion.policy.decide`
    decide: Callable[..., Decision] = policy_decide
    #: score -> calibrated LLR per modality evidence (identity without a calibration file)
    calibrate: Callable[[ModalityEvidence], ModalityEvidence] = lambda e: e


async def get_state(request: Request) -> AppState:
    """Async on purpose: a sync dependency costs a worker-thread hop per request."""
    return request.app.state.cadence


State = Annotated[AppState, Depends(get_state)]


async def get_uow(state: State) -> Callable[[], AbstractContextManager[Session]]:
    """A unit-of-work factory: ``with uow() as session:`` is one database transaction."""
    return state.write


Uow = Annotated[Callable[[], AbstractContextManager[Session]], Depends(get_uow)]


def _key_scopes(state: AppState, key: str | None) -> set[str]:
    if not key:
        return set()
    for known, scopes in state.settings.api_keys.items():
        if hmac.compare_digest(known.encode(), key.encode()):
            return set(scopes)
    return set()


def bank_key_sent(state: AppState, request: Request) -> bool:
    """Whether the request carries a known API key: the bank backend, not a device.

    Such a request is not charged to the device and refused-request budgets: on a route that
    serves both (reading a session), the bank's read was refused with 429 whenever devices
    sharing its address (a proxy, a NAT) had used up that address's budget. Only a key the
    server knows counts, so a flooder cannot escape the budget by sending any X-API-Key.
    """
    key = request.headers.get("x-api-key")
    return bool(key) and bool(_key_scopes(state, key))


def require_scope(scope: str) -> Callable[..., Awaitable[str]]:
    async def dep(state: State, x_api_key: Annotated[str | None, Header()] = None) -> str:
        scopes = _key_scopes(state, x_api_key)
        if not x_api_key or not scopes:
            raise ApiError(401, "api_key_required", "X-API-Key: missing or unknown API key")
        if scope not in scopes:
            raise ApiError(403, "scope_required", f"X-API-Key: this key lacks the {scope!r} scope")
        return f"apikey:{scope}"

    return dep


BankKey = Annotated[str, Depends(require_scope("bank"))]
AdminKey = Annotated[str, Depends(require_scope("admin"))]


@dataclass(frozen=True)
class CallingDevice:
    """A registered device whose signature verified."""

    device_id: str
    user_id: str

    @property
    def actor(self) -> str:
        return device_actor(self.device_id)


def device_actor(device_id: str | None) -> str:
    """The audit actor of a device request: the device's keyed pseudonym, never its id."""
    return f"device:{hooks.device_alias(device_id or '')}"


@dataclass
class DeviceRequest:
    """A request from a device; `transaction()` authenticates it inside the unit of work.

    Signature, clock skew and nonce are checked in the same database transaction as the
    request's own writes: one transaction per request, and a committed request can never be
    replayed. A request refused after its signature verified has its nonce recorded on its own
    (`refused`), so its bytes are accepted once whatever the answer.
    """

    state: AppState
    method: str
    path: str
    body: bytes
    device_id: str | None
    timestamp: str | None
    nonce: str | None
    signature: str | None
    client: str | None = None
    _device: CallingDevice | None = None
    #: whether the nonce needs no more recording: stored by a committed transaction, or found
    #: stored already (a replay) or unstorable (the device erased meanwhile)
    _nonce_settled: bool = False

    @functools.cached_property
    def body_sha256(self) -> str:
        """The body's digest, hashed once for the signature check and the idempotency record."""
        return body_digest(self.body)

    @property
    def device(self) -> CallingDevice:
        if self._device is None:
            raise RuntimeError("device is known only inside transaction()")
        return self._device

    @functools.cached_property
    def actor(self) -> str:
        return device_actor(self.device_id)

    def _verify(self, session: Session, *, signature: bool, check_retired: bool = True) -> CallingDevice:
        settings = self.state.settings
        dev = verify_device_request(session, device_id=self.device_id, timestamp=self.timestamp,
                                    nonce=self.nonce, signature=self.signature, method=self.method,
                                    path=self.path, body=self.body, max_skew_s=settings.signature_max_skew_s,
                                    require_signature=signature and settings.require_signed_requests,
                                    body_sha256=self.body_sha256, check_retired=check_retired)
        charge_device(self.state, dev.id)
        self._device = CallingDevice(dev.id, dev.user_id)
        return self._device

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only phase: the signature is verified, nothing is written (no write lock).

        Retired nonces are looked up in `transaction()` instead: an erasure and a new
        registration of this device id may commit between the two phases, and only the write
        transaction, where the nonce is consumed, sees them in order.
        """
        with self.state.read() as session:
            self._verify(session, signature=True, check_retired=False)
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """The request's one write transaction; the nonce is consumed in it."""
        settings = self.state.settings
        with self.state.write() as session:
            # verified in a read phase already: the nonce's foreign key still needs the device
            two_phase = self._device is not None
            dev = self._device or self._verify(session, signature=True)
            if settings.require_signed_requests and self.nonce is not None:
                try:
                    if two_phase and retired_nonce(session, dev.device_id, self.nonce):
                        raise ApiError(401, "replayed_request",
                                       "X-Cadence-Nonce: this request was already received (replay refused)")
                    consume_nonce(session, dev.device_id, self.nonce, float(self.timestamp or 0),
                                  max_skew_s=settings.signature_max_skew_s)
                except ApiError:  # a replay of a captured request: it must not use up the device's rate
                    self._nonce_settled = True
                    if self.state.limiter is not None:
                        self.state.limiter.refund(dev.device_id)
                    raise
            yield session
        self._nonce_settled = True  # committed (a body that raised rolled the nonce back with the rest)

    async def refused(self, exc: ApiError) -> ApiError:
        """What to answer a request refused with `exc`; its nonce is recorded first if its signature verified.

        The refusal rolled its transaction back, nonce included: the captured bytes could be sent
        again inside the skew window, each send using up the device's rate, and be accepted once
        the refusal no longer held (enrolment reopened, say). Recorded, a resend is a replay: 401
        `replayed_request`, refunded, also where the refusal comes before the nonce is looked at
        (`authorize`'s read phase), which recording it finds. Refusals before the signature
        verified (401, 429) record nothing, nor does a 5xx (the database may be what failed); the
        successful path never comes here.
        """
        if exc.status < 500 and self._device is not None and not self._nonce_settled:
            return await self.state.run(self._spend_nonce) or exc
        return exc

    def _spend_nonce(self) -> ApiError | None:
        """Record the nonce alone, in a short transaction of its own (`refused`); the replay refusal if it was seen."""
        if self.nonce is None or not self.state.settings.require_signed_requests:
            return None
        try:
            with self.transaction():
                pass
        except ApiError as exc:  # recorded already (a replay), or the device erased meanwhile
            return exc if exc.code == "replayed_request" else None
        return None


#: request scope key: the device's and address's rate were checked already for this request
RATE_CHECKED = "cadence.rate_checked"


def check_rate(state: AppState, device_id: str | None, client: str | None = None) -> None:
    """429 before any parsing when the device, or the sending address, has used up its budget.

    Only looks: the device's budget is charged once the request's signature verified
    (`charge_device`) and the address's by each refused request (`charge_failure`), so a
    stranger who sends requests naming someone else's device cannot use up that device's rate.
    """
    if state.limiter is not None and device_id and state.limiter.exhausted(device_id):
        raise ApiError(429, "rate_limited", f"X-Cadence-Device: more than {state.limiter.rate:g} requests/s from this device")
    if state.failures is not None and client and state.failures.exhausted(client):
        # an address past its budget of refused requests. A device that verified here before still
        # gets through (a flooder behind the same NAT or gateway must not stop everyone's payments),
        # unless requests naming it from this address were refused too (someone else using its id)
        known = device_id is not None and state.limiter is not None and state.limiter.known(device_id)
        if not known or state.failures.exhausted(f"{client} {device_id}"):
            raise ApiError(429, "rate_limited",
                           f"client: more than {state.failures.rate:g} refused requests/s from this address")


def charge_device(state: AppState, device_id: str) -> None:
    """Count a verified request against its device's rate (per process, or shared through Redis); 429 past it."""
    if state.limiter is not None and not state.limiter.allow(device_id):
        raise ApiError(429, "rate_limited", f"X-Cadence-Device: more than {state.limiter.rate:g} requests/s from this device")


def charge_failure(state: AppState, client: str | None, device_id: str | None = None) -> None:
    """Count a refused device request (bad signature, invalid body) against the sending address.

    Also against the address with the device it named (see `check_rate`).
    """
    if state.failures is not None and client:
        state.failures.allow(client)
        if device_id:
            state.failures.allow(f"{client} {device_id}")


def signed_path(request: Request) -> str:
    """The request target the signature must cover: the path as sent, and its query string.

    Not decoded, so an encoded `%3F` cannot end it early; with the query, since clients send
    none, an added one fails the signature instead of riding along unsigned.
    """
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if raw else request.url.path
    query = request.scope.get("query_string", b"")
    return f"{path}?{query.decode('latin-1')}" if query else path


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


#: the headers that authenticate a device request, as the server hands them over (lower-case bytes) -> their names
_SIGNED_HEADERS = {n.lower().encode(): n for n in (HEADER_DEVICE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)}


def _each_once(request: Request) -> None:
    """400 when a request repeats one of the headers that authenticate it.

    The server reads the first of two; a proxy or a log that keeps the last would name another
    device (or nonce) than the one whose signature was verified. Four counts in C over the
    header names: ~1 us on the hot path.
    """
    names = [k for k, _ in request.scope["headers"]]
    for raw, name in _SIGNED_HEADERS.items():
        times = names.count(raw)
        if times > 1:
            raise ApiError(400, "duplicate_header", f"{name}: sent {times} times; a signed request carries each of "
                                                    "its headers once")


def signed_request(state: AppState, request: Request, body: bytes) -> DeviceRequest:
    """What authenticates a device request, read from its headers (checked by `DeviceRequest`).

    The caller checks the device's rate (`check_rate`) first, before parsing the body, as the
    `Signed` dependency does. A request that repeats one of these headers is refused (`_each_once`).
    """
    _each_once(request)
    h = request.headers
    return DeviceRequest(state, request.method, signed_path(request), body, h.get(HEADER_DEVICE),
                         h.get(HEADER_TIMESTAMP), h.get(HEADER_NONCE), h.get(HEADER_SIGNATURE),
                         client_address(request))


async def device_request(
    request: Request,
    state: State,
    x_cadence_device: Annotated[str | None, Header()] = None,
    x_cadence_timestamp: Annotated[str | None, Header()] = None,
    x_cadence_nonce: Annotated[str | None, Header()] = None,
    x_cadence_signature: Annotated[str | None, Header()] = None,
) -> AsyncIterator[DeviceRequest]:
    """Collect what authenticates a device request (the header parameters document the contract).

    A refusal the route raises once the signature verified spends the nonce (`DeviceRequest.refused`).
    """
    if not request.scope.get(RATE_CHECKED) and not bank_key_sent(state, request):  # `CadenceRoute` checks first
        check_rate(state, x_cadence_device, client_address(request))
    req = signed_request(state, request, await request.body())
    try:
        yield req
    except ApiError as exc:
        answer = await req.refused(exc)
        if answer is not exc:
            raise answer from exc
        raise


Signed = Annotated[DeviceRequest, Depends(device_request)]


def same_user(device: CallingDevice, user_id: str) -> None:
    if device.user_id != user_id:
        raise ApiError(403, "wrong_user", f"user_id: device {device.device_id!r} is not bound to user {user_id!r}")
