"""The app's API client: signed requests, retries with backoff, and an offline queue.

Every device request is signed with the device key over method, path, body hash, timestamp
and nonce (`device_key.canonical_request`, the server's scheme). Transient failures (network
errors, 5xx, 429) are retried with exponential backoff; a retry is re-signed with a fresh nonce
because the server refuses a nonce twice. Requests that may wait (consent changes and the
request to erase my data) are kept in a persistent queue when the server cannot take them yet
(no connection, 5xx, 429: `send_or_queue`);
`flush_queue` sends them before the next request and at app start, so a revoked consent reaches
the server before any new evidence does. Enrolment uploads are not queued (set-up says it
could not finish and the person retries), and a transaction never waits in a queue (a late
approval is worse than none). All routes are in `ROUTES`, so aligning with the server is a
one-place change.

A payment is interactive, so `authorize` waits less (`AUTHORIZE_TIMEOUT_S`, `AUTHORIZE_RETRIES`)
and is idempotent across taps: the first try of a payment fixes its idempotency key and its exact
body (evidence included), and every later try of the same payee, amount and currency re-sends that
body until the server has answered, so a reply lost on the way back is answered from the
server's record instead of making a second transaction (docs/api.md, "One request, one
transaction"). Such held payments are kept on disk (`HeldPayments`), several at once (one per
amount, currency and payee), so an app restart or another payment in between does not lose them.

Threads: the app calls the client from its worker thread; the queue is also written from the main
thread (intents saved before a job runs). `OfflineQueue` serialises each read-modify-write with a
lock and writes through a temporary file of its own (`tempfile.mkstemp`), and `flush_queue` holds
the client's lock, so two flushes never send the same request twice and a request pushed while a
flush runs is kept.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from mobile_client.device_key import DeviceKey
from mobile_client.files import atomic_write
from modalities.events import FeatureWindow

log = logging.getLogger(__name__)

ROUTES = {
    "register": "/v1/devices",
    "consent": "/v1/users/{user_id}/consents",
    "enrol": "/v1/users/{user_id}/enrolment",
    "authorize": "/v1/transactions/authorize",
    "step_up": "/v1/transactions/{transaction_id}/step-up",
    "transaction": "/v1/transactions/{transaction_id}",
    "erase": "/v1/users/{user_id}",
    "health": "/v1/health",
}
#: the literal segments of `ROUTES`; any other segment of a request path is an identifier (`route_shape`)
ROUTE_WORDS = frozenset(seg for route in ROUTES.values() for seg in route.split("/") if seg and "{" not in seg)
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
#: the phone's own code for a server address httpx cannot send to: nothing was sent, so nothing
#: waits in the queue and no payment may have gone through
UNUSABLE_URL = "unusable_server_url"
#: refusals of `authorize` that settle a payment held without an answer: the server gives them only
#: after it looked the idempotency key up and found no record of it (`plan_authorize` and its write
#: phase: no transaction was ever recorded for the key), or for what the very bytes re-sent are
#: (`validation_error`, `payload_too_large`: an earlier try of the same bytes was refused the same
#: way), or because the key holds another body (`idempotency_conflict`: never this one). Anything
#: else (429 `rate_limited`, a 401 such as `stale_request`, `wrong_user`, a 4xx without a code, a
#: 5xx) is answered before that look-up, or by something that is not the bank, and says nothing
#: about an earlier try: the payment stays held with its key.
SETTLING_CODES = frozenset({
    "idempotency_conflict", "unsupported_currency", "unknown_user", "user_locked", "consent_required",
    "evidence_replay", "feature_version_mismatch", "feature_dim_mismatch", "validation_error",
    "payload_too_large",
})
#: a payment is interactive: at most (1 + retries) x timeout plus backoff, about 16 s in all
AUTHORIZE_TIMEOUT_S = 7.5
AUTHORIZE_RETRIES = 1


def route_shape(path: str) -> str:
    """`path` with its identifiers (user, transaction) replaced by ``{id}``: what logs and error messages show.

    On a phone the log goes to logcat, which other apps and bug reports can read: no user id there.
    """
    return "/".join(seg if not seg or seg in ROUTE_WORDS else "{id}" for seg in path.split("/"))


def server_url(url: str) -> str:
    """`url` without its trailing "/", or ValueError: only an http(s) address with a host can be sent to."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"server address {url!r} is not a URL ({exc})") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"server address {url!r} cannot be used: give an http:// or https:// URL with a host, "
                         "e.g. http://127.0.0.1:8000")
    try:  # what httpx does at the first request: a typo like "bank..example" fails there, after consent or a payment
        parsed.host.encode("idna")
    except UnicodeError:
        raise ValueError(f"server address {url!r} cannot be used: {parsed.host!r} is not a valid host name") from None
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ValueError(f"server address {url!r} cannot be used: port {parsed.port} is not between 1 and 65535")
    return url.rstrip("/")


class ApiError(RuntimeError):
    """The server refused a request (4xx) or could not be reached after retries."""

    def __init__(self, message: str, status: int | None = None, detail: Any = None, *,
                 in_doubt: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        #: an earlier try of this request got no answer (network, 5xx), so the server may have
        #: recorded it although this answer is a refusal (a 429 after a lost answer, say)
        self.in_doubt = in_doubt

    @property
    def sent_nothing(self) -> bool:
        """The request never left the phone: its server address cannot be used (`UNUSABLE_URL`)."""
        return self.code == UNUSABLE_URL

    @property
    def offline(self) -> bool:
        return self.status is None and not self.sent_nothing

    @property
    def can_wait(self) -> bool:
        """The server could not take the request yet (no connection, 5xx, 429): it may wait in the queue."""
        return self.offline or (self.status is not None and self.status in RETRY_STATUS)

    @property
    def answer_unknown(self) -> bool:
        """The request may have been recorded by the server without the phone knowing its answer.

        No answer came back (network, 5xx), the answer could not be read, or an earlier try of it
        got no answer and this one was refused without saying whether that try was recorded
        (`in_doubt`: a 429 or a 401 after a lost answer; a payment then stays held).
        """
        if self.in_doubt:
            return True
        return not self.sent_nothing and (self.status is None or self.status >= 500 or self.code == "unreadable_answer")

    @property
    def settles_payment(self) -> bool:
        """Whether this refusal of `authorize` proves the bank recorded no transaction for the key it carried."""
        return self.status is not None and 400 <= self.status < 500 and self.code in SETTLING_CODES

    @property
    def code(self) -> str | None:
        """The server's machine code (`{"detail": ..., "code": ...}`), if it sent one."""
        return str(self.detail["code"]) if isinstance(self.detail, dict) and self.detail.get("code") else None

    @property
    def user_message(self) -> str:
        """What to show a person: plain words, never a status line or a raw JSON body."""
        if self.in_doubt and self.status is not None and self.status < 500 and self.code != "unreadable_answer":
            return f"{self._refusal_text()} An earlier try got no answer from your bank, so it may have gone through."
        return self._refusal_text()

    def _refusal_text(self) -> str:
        if self.code in CODE_TEXT:  # also the phone's own codes (an erasure waiting), which have no status
            return CODE_TEXT[self.code]
        if self.offline:
            return "Could not reach your bank. Check your connection and try again."
        if self.status is not None and (self.status >= 500 or self.status == 429):
            return "Your bank's service is busy or having a problem. Please try again in a moment."
        text = server_detail(self.detail)
        if text:
            return f"Your bank refused this: {text}"
        return f"Your bank refused this (error {self.status})."


def server_detail(body: Any) -> str:
    """The server's `detail` text: only from a JSON object whose `detail` is a string, else "".

    Anything else (a gateway's HTML page, a list of validation errors, a bare string) is never
    shown to the person nor logged: it may carry markup, request ids or other people's words.
    """
    text = body.get("detail") if isinstance(body, dict) else None
    return text.strip() if isinstance(text, str) else ""


class UnreadableAnswer(ApiError):
    """A 2xx answer whose body is not JSON: the server did what was asked, the phone cannot read what it said.

    Raised only where the caller needs the answer's content (a payment's decision, a step-up's
    status); a request that needs none counts as done (`ApiClient.request(needs_body=False)`).
    """


#: the outcomes an authorize answer can carry (server.schemas.AuthorizeResponse): anything else is unreadable
DECISIONS = ("approve", "step_up", "deny")


#: plain-language text for the server's machine codes a person can meet in the app
CODE_TEXT = {
    "enrolment_closed": "Set-up can no longer be changed from the app once you have paid with it. "
                        "Ask your bank to reopen it if you need to set up again.",
    "evidence_replay": "Your bank had already received this behaviour sample. Please try again.",
    "user_locked": "Your account is locked after several failed checks. Please contact your bank.",
    "failed_authentications": "After a failed check your data cannot be deleted from the app. Ask your bank to "
                              "delete it, or delete it here after your next successful payment.",
    "not_pending": "This payment is no longer waiting for a code.",
    "consent_required": "Your bank has no consent on record for this. Check your choices in Privacy.",
    "unknown_device": "Your bank does not recognise this phone. Please set the app up again.",
    "rate_limited": "Too many requests from this phone. Please wait a moment and try again.",
    "bank_confirms": "Your bank checks the code itself and will let you know.",
    "not_confirmed": "Your bank did not confirm this payment.",
    "erase_pending": "Your data is still being erased. This phone is paused until your bank confirms it: "
                     "see Privacy.",
    "unreadable_answer": "Your bank's answer could not be read, so this payment may have gone through.",
    "maybe_approved": "Your bank's answer to your code did not arrive, and the payment no longer waits for a code, "
                      "so your bank may already have approved it. Check your payments with your bank before "
                      "paying again.",
    UNUSABLE_URL: "Nothing was sent: this app's server address cannot be used. It needs to be set up with "
                  "your bank's http:// or https:// address.",
}


@dataclass
class Decision:
    """What the app shows after a transaction request."""

    transaction_id: str
    outcome: str  # approve | step_up | deny
    risk: float
    tier: str
    reasons: list[dict[str, Any]] = field(default_factory=list)
    amount: str = ""
    currency: str = ""
    payee: str = ""
    token: str = ""
    #: the windows this decision was made on (a retried payment re-sends its first try's windows)
    evidence: list[FeatureWindow] = field(default_factory=list)
    #: the idempotency key the payment went with
    idempotency_key: str = ""


class Queued:
    """What `send_or_queue` returns for a request left in the offline queue (`error` says why).

    False in a boolean test, like the `None` an empty answer decodes to, but told apart from a
    sent request with `isinstance`.
    """

    def __init__(self, error: ApiError) -> None:
        self.error = error

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"Queued({self.error})"


#: a held payment is let go after this long (seconds). By then the person can see on their
#: statement or in the bank's own app whether it went through; and a payment of the same amount to
#: the same payee a day later is most likely a new one (the weekly coffee), which re-sending
#: yesterday's body would answer with yesterday's decision instead of paying.
HELD_PAYMENT_MAX_AGE_S = 24 * 3600.0
#: this boot's identity (Linux, Android): a held payment is aged on CLOCK_BOOTTIME within the boot it was held in
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def boot_clock() -> tuple[str, float] | None:
    """The current boot's id and its CLOCK_BOOTTIME seconds (suspend counted); None where either cannot be read.

    Why: a held payment's age must be the time that really passed. The wall clock is the person's
    to set: back, it kept a held payment (re-sent for a new payment of the same amount and payee);
    forward, it let one go that the bank may have recorded (paying again then made a second one).
    """
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    if clock is None:
        return None
    try:
        boot = BOOT_ID_PATH.read_text(encoding="ascii").strip()
        return (boot, float(time.clock_gettime(clock))) if boot else None
    except (OSError, UnicodeError):
        return None


def payment_key(amount: str, currency: str, payee: str) -> tuple[str, str, str]:
    """What makes two tries the same payment: amount, currency and payee (its case and spacing ignored)."""
    return amount.strip(), currency.strip().upper(), " ".join(payee.split()).casefold()


@dataclass
class PendingPayment:
    """A payment sent without a definite answer: every retry of it re-sends these bytes, key included."""

    amount: str
    currency: str
    payee: str
    idempotency_key: str
    #: the exact bytes sent (the server compares the body's SHA-256)
    raw: bytes
    evidence: list[FeatureWindow]
    held_at: float = 0.0
    #: the boot it was held in and that boot's clock then (`boot_clock`); "" where unknown
    boot: str = ""
    held_boot_s: float = 0.0

    @property
    def body(self) -> dict[str, Any]:
        return dict(json.loads(self.raw))

    @property
    def key(self) -> tuple[str, str, str]:
        return payment_key(self.amount, self.currency, self.payee)

    @property
    def modalities(self) -> set[str]:
        return {w.modality for w in self.evidence}

    def to_json(self) -> dict[str, Any]:
        return {"amount": self.amount, "currency": self.currency, "payee": self.payee,
                "idempotency_key": self.idempotency_key, "body": self.raw.decode("utf-8"), "held_at": self.held_at,
                "boot": self.boot, "held_boot_s": self.held_boot_s}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PendingPayment:
        raw = str(d["body"]).encode("utf-8")
        body = json.loads(raw)
        evidence = [FeatureWindow.from_dict(w) for w in body.get("evidence", [])]
        return cls(str(d["amount"]), str(d["currency"]), str(d["payee"]), str(d["idempotency_key"]), raw, evidence,
                   float(d["held_at"]), str(d.get("boot", "")), float(d.get("held_boot_s", 0.0)))


class HeldPayments:
    """Payments sent without a definite answer, kept in a JSON file (replaced whole, atomically).

    One per (amount, currency, payee as `payment_key` reads it); several may be held at once.
    Entries older than `HELD_PAYMENT_MAX_AGE_S` are dropped when read: aged on the clock of the
    boot they were held in while it lasts (`boot_clock`: setting the wall clock changes nothing),
    by the wall clock after a restart of the phone. A file that cannot be read is logged and
    treated as empty (a payment then gets a new key: the screen told the person to check with
    their bank).
    """

    def __init__(self, path: Path | None, now: Callable[[], float] = time.time,
                 boot: Callable[[], tuple[str, float] | None] = boot_clock) -> None:
        self.path = Path(path) if path is not None else None
        self._now = now
        self._boot = boot
        self._lock = threading.RLock()
        self._memory: list[PendingPayment] = []

    def all(self) -> list[PendingPayment]:
        with self._lock:
            held = self._load()
            here = self._boot()
            fresh = [h for h in held if self._age(h, here) < HELD_PAYMENT_MAX_AGE_S]
            if len(fresh) != len(held):
                log.info("%d held payment(s) older than %.0f h let go", len(held) - len(fresh),
                         HELD_PAYMENT_MAX_AGE_S / 3600)
                self._save(fresh)
            return fresh

    def _age(self, held: PendingPayment, here: tuple[str, float] | None) -> float:
        """Seconds since `held` was held: on this boot's clock if it was held in this boot, else by the wall clock."""
        if here is not None and held.boot == here[0]:
            return here[1] - held.held_boot_s
        return self._now() - held.held_at

    def find(self, amount: str, currency: str, payee: str) -> PendingPayment | None:
        key = payment_key(amount, currency, payee)
        return next((h for h in self.all() if h.key == key), None)

    def hold(self, payment: PendingPayment) -> None:
        """Keep `payment` (replacing one of the same `key`), stamped with this boot's clock if not yet."""
        if not payment.boot and (here := self._boot()) is not None:
            payment.boot, payment.held_boot_s = here
        with self._lock:
            self._save([*(h for h in self.all() if h.key != payment.key), payment])

    def release(self, payment: PendingPayment) -> None:
        with self._lock:
            self._save([h for h in self.all() if h.idempotency_key != payment.idempotency_key])

    def drop(self, keep: Callable[[PendingPayment], bool]) -> list[PendingPayment]:
        """Drop the held payments `keep` says no to; returns them."""
        with self._lock:
            held = self.all()
            gone = [h for h in held if not keep(h)]
            if gone:
                self._save([h for h in held if keep(h)])
            return gone

    def clear(self) -> None:
        with self._lock:
            self._memory = []
            if self.path is not None:
                self.path.unlink(missing_ok=True)

    def _load(self) -> list[PendingPayment]:
        if self.path is None:
            return list(self._memory)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return [PendingPayment.from_json(d) for d in data]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.error("held payments in %s cannot be read (%s): treated as none", self.path, exc)
            return []

    def _save(self, held: list[PendingPayment]) -> None:
        if self.path is None:
            self._memory = list(held)
            return
        if not held:
            self.path.unlink(missing_ok=True)
            return
        atomic_write(self.path, json.dumps([h.to_json() for h in held]).encode("utf-8"))


@dataclass(frozen=True)
class Outcome:
    """What became of one queued request in `flush_queue`."""

    item: dict[str, Any]
    state: str  # sent | refused | waiting
    status: int | None = None
    code: str | None = None
    #: a refusal's reason in words for the person (`ApiError.user_message`); "" otherwise
    reason: str = ""

    @property
    def method(self) -> str:
        return str(self.item.get("method"))

    @property
    def path(self) -> str:
        return str(self.item.get("path"))


class FlushReport(list[Outcome]):
    """`flush_queue`'s answer: one `Outcome` per request that was queued, in queue order.

    Compares equal to an int as the number sent (what callers before this report counted).
    """

    @property
    def sent(self) -> int:
        return sum(o.state == "sent" for o in self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, int):
            return self.sent == other
        return list.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]

    def of(self, method: str, path: str) -> Outcome | None:
        return next((o for o in self if o.method == method and o.path == path), None)


def _ident(item: dict[str, Any]) -> str:
    """A queued request's identity (its id; lines of older builds have none: their whole content)."""
    return str(item.get("id") or json.dumps(item, sort_keys=True))


def windows_payload(windows: list[FeatureWindow]) -> list[dict[str, object]]:
    return [w.to_dict() for w in windows]


def _queued_item(line: str) -> dict[str, Any] | None:
    """One outbox line as a request, or None if it is not one (torn write, edited by hand)."""
    try:
        item = json.loads(line)
    except ValueError:
        return None
    if not (isinstance(item, dict) and isinstance(item.get("method"), str) and isinstance(item.get("path"), str)
            and isinstance(item.get("body"), dict | None)):
        return None
    return item


class QueueClosed(RuntimeError):
    """A write to the offline queue after the app closed it (a job that outlived the app's close)."""


class OfflineQueue:
    """Requests waiting for the network, persisted as JSON lines (no behaviour, features only).

    The file is only ever replaced whole (written to a temporary file, synced, renamed), so a
    crash mid-write leaves the old or the new queue, never half a line. A line that is not a
    request anyway (an older build's torn append, a hand edit) is moved to `<name>.bad` with a
    log line and the rest is kept: a damaged queue never stops the app.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        #: every read-modify-write of the file holds this (the worker and the main thread both write)
        self.lock = threading.RLock()
        #: set when the app closes (`close`): the file is then only read
        self.closed = False

    def close(self) -> None:
        """No more writes: the app has saved what each unfinished job was asked (its intent).

        A job still running when the app closed would otherwise queue its request after the
        later changes the app saved for it, and the bank would receive them out of order.
        """
        with self.lock:
            self.closed = True

    @property
    def bad_path(self) -> Path:
        return self.path.with_name(self.path.name + ".bad")

    def items(self) -> list[dict[str, Any]]:
        with self.lock:
            return self._items()

    def _items(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return []
        good: list[dict[str, Any]] = []
        bad: list[str] = []
        for line in text.splitlines():
            if not line.strip():
                continue
            item = _queued_item(line)
            if item is None:
                bad.append(line)
            else:
                good.append(item)
        if bad and not self.closed:
            log.warning("offline queue %s: %d unreadable line(s) moved to %s; the other %d request(s) stay queued",
                        self.path, len(bad), self.bad_path.name, len(good))
            with self.bad_path.open("a", encoding="utf-8") as fh:
                fh.write("".join(line + "\n" for line in bad))
            self.replace(good)
        return good

    def push(self, method: str, path: str, body: dict[str, Any],
             local: dict[str, Any] | None = None) -> dict[str, Any]:
        """Queue one request; `local` is kept beside it on this phone and never sent (see `annotate`)."""
        item = {"method": method, "path": path, "body": body, "queued_at": time.time(), "id": uuid.uuid4().hex}
        if local is not None:
            item["local"] = local
        with self.lock:
            self.replace([*self._items(), item])
        return item

    def annotate(self, ident: str, local: dict[str, Any]) -> None:
        """Replace the `local` note of the queued request with identity `ident` (`_ident`), if still queued.

        Why: a note may say what the bank held before the request (a consent's previous state), which
        an earlier request's refusal changes.
        """
        with self.lock:
            items = self._items()
            for item in items:
                if _ident(item) == ident:
                    item["local"] = local
                    self.replace(items)
                    return

    def mark_refused(self, refused: dict[str, Any]) -> None:
        """Mark the queued requests with these identities (`_ident` -> their `Outcome`) as refused.

        `flush_queue` reports a marked request as refused again without sending it, until its hooks
        have run and it is removed.
        """
        if not refused:
            return
        with self.lock:
            items = self._items()
            for item in items:
                o = refused.get(_ident(item))
                if o is not None:
                    item["refused"] = {"status": o.status, "code": o.code, "reason": o.reason}
            self.replace(items)

    def remove(self, idents: set[str]) -> None:
        """Drop the requests with these identities (`_ident`); any pushed meanwhile stay."""
        if not idents:
            return
        with self.lock:
            self.replace([i for i in self._items() if _ident(i) not in idents])

    def replace(self, items: list[dict[str, Any]]) -> None:
        with self.lock:
            if self.closed:
                raise QueueClosed(f"offline queue {self.path}: the app has closed; nothing more is queued")
            atomic_write(self.path, "".join(json.dumps(i) + "\n" for i in items).encode("utf-8"))

    def waiting(self) -> bool:
        """Anything queued? (no parsing: the flush that follows reads the file, and sets bad lines aside)"""
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def __len__(self) -> int:
        return len(self.items())

    def clear(self) -> None:
        with self.lock:
            if self.closed:
                raise QueueClosed(f"offline queue {self.path}: the app has closed; it is kept as it is")
            self.path.unlink(missing_ok=True)


class ApiClient:
    """Talks to the Cadence server as one device of one user."""

    def __init__(self, base_url: str, key: DeviceKey, device_id: str, user_id: str, queue: OfflineQueue,
                 *, retries: int = 3, backoff_s: float = 0.3, timeout_s: float = 10.0,
                 transport: httpx.BaseTransport | None = None, sleep: Callable[[float], None] = time.sleep,
                 bank_api_key: str | None = None, held: HeldPayments | None = None) -> None:
        self.base_url = server_url(base_url)  # ValueError now, not "offline" at the first request
        self.key = key
        self.device_id = device_id
        self.user_id = user_id
        self.queue = queue
        self.retries = retries
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, transport=transport)
        self.last_sync: float | None = None
        #: step-up completion is the bank backend's call (X-API-Key); a phone holds no such key in
        #: production. Demo and test builds set it so the one-time-code flow can finish end to end.
        self.bank_api_key = bank_api_key
        #: held by `flush_queue` (re-entrant: its requests run on the same thread)
        self.lock = threading.RLock()
        self._local = threading.local()  # `flushing`: this thread is inside `flush_queue`
        #: payments sent without a definite answer; a retry re-sends one (see `authorize`)
        self.held = held if held is not None else HeldPayments(queue.path.with_name("held_payments.json"))
        #: the outcome of each request `flush_queue` handled, by its identity (the last 100)
        self.outcomes: dict[str, Outcome] = {}
        #: called with each `flush_queue` report, under `lock` (`consent.watch_queue` undoes refused changes)
        self.flush_hooks: list[Callable[[FlushReport], object]] = []

    @property
    def pending_payment(self) -> PendingPayment | None:
        """The most recently held payment (sent without a definite answer), if any."""
        held = self.held.all()
        return max(held, key=lambda h: h.held_at) if held else None

    def close(self) -> None:
        """Close the connection and the offline queue (see `OfflineQueue.close`)."""
        self.queue.close()
        self._http.close()

    # ------------------------------------------------------------------ transport
    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *, signed: bool = True,
                extra_headers: dict[str, str] | None = None, retries: int | None = None,
                timeout_s: float | None = None, content: bytes | None = None, needs_body: bool = True) -> Any:
        """Send one request with retries; returns the decoded JSON (or None).

        `content`: the exact body bytes to send (instead of serialising `body`): a held payment.

        A 2xx answer whose body is not JSON (a proxy mangled it) means the server did it: with
        `needs_body=False` (consent, enrolment, erasure: the caller reads nothing in the answer)
        it counts as done and None is returned; otherwise `UnreadableAnswer` is raised (code
        `unreadable_answer`, `answer_unknown`). A refusal's body is read only as a JSON object
        with a string `detail` (`server_detail`); any other body is neither shown nor logged.

        What waited in the offline queue goes first, so the server sees changes in the order
        the person made them (a consent revoked offline, then a payment). `timeout_s` (default:
        the client's) bounds each attempt, the queue's included.
        """
        if not getattr(self._local, "flushing", False) and self.queue.waiting():
            self.flush_queue(timeout_s=timeout_s)
        retries = self.retries if retries is None else retries
        timeout: Any = httpx.USE_CLIENT_DEFAULT if timeout_s is None else timeout_s
        raw = content if content is not None else b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        last: Exception | None = None
        in_doubt = False  # a try got no answer (network, 5xx): the server may have recorded it
        route = route_shape(path)  # error messages are logged: no user id in them
        for attempt in range(retries + 1):
            headers = {"content-type": "application/json", **(extra_headers or {})}
            if signed:
                headers.update(self.key.sign_headers(self.device_id, method, path, raw))
            try:
                r = self._http.request(method, path, content=raw or None, headers=headers, timeout=timeout)
            except (httpx.UnsupportedProtocol, httpx.InvalidURL, UnicodeError) as exc:  # refused before sending: no retry helps
                raise ApiError(f"{method} {route}: the server address cannot be used ({exc})", None,
                               {"detail": str(exc), "code": UNUSABLE_URL}, in_doubt=in_doubt) from exc
            except httpx.TransportError as exc:
                last = exc
                in_doubt = True
            except RuntimeError as exc:
                if not self._http.is_closed:
                    raise
                last = exc  # the client was closed (the app is closing): as good as offline, so it is queued
                break
            else:
                # a 3xx is no answer from the server (httpx follows no redirect): a captive portal's
                # login page, a proxy. Counted as done, it dropped queued consents and settled erasures
                redirect = 300 <= r.status_code < 400
                if r.status_code < 300:
                    self.last_sync = time.time()
                    if not r.content:
                        return None
                    try:
                        return r.json()
                    except ValueError:  # the server answered 2xx: it did it, whatever the body became
                        if not needs_body:
                            log.warning("%s %s: the %d answer could not be read; nothing in it was needed, so "
                                        "it counts as done", method, route, r.status_code)
                            return None
                        log.error("%s %s: the %d answer could not be read", method, route, r.status_code)
                        raise UnreadableAnswer(f"{method} {route}: {r.status_code} answer could not be read",
                                               r.status_code, {"detail": "unreadable answer",
                                                               "code": "unreadable_answer"}) from None
                if not redirect and r.status_code not in RETRY_STATUS:
                    try:
                        detail: Any = r.json()
                    except ValueError:
                        detail = None  # not the server's JSON (a gateway's page): neither shown nor logged
                    if not isinstance(detail, dict):
                        detail = None
                    msg = server_detail(detail) or "(no readable detail)"
                    raise ApiError(f"{method} {route}: {r.status_code} {msg}", r.status_code, detail, in_doubt=in_doubt)
                last = (ApiError(f"{method} {route}: {r.status_code} redirect, not the server's answer", None)
                        if redirect else ApiError(f"{method} {route}: {r.status_code}", r.status_code))
                in_doubt = in_doubt or r.status_code >= 500
            if attempt < retries:
                self._sleep(self.backoff_s * (2 ** attempt))
        status = last.status if isinstance(last, ApiError) else None
        raise ApiError(f"{method} {route}: server unreachable ({last})", status, in_doubt=in_doubt)

    def send_or_queue(self, method: str, path: str, body: dict[str, Any],
                      local: Callable[[], dict[str, Any]] | None = None) -> Any:
        """Send now; or, when the server cannot take it yet, keep it in the offline queue.

        "Cannot take it yet" is no connection, a 5xx or a 429 after the retries (`ApiError.can_wait`):
        the request then waits and `Queued` is returned. A refusal (other 4xx) raises `ApiError`.
        `local` makes the note kept beside a queued request (`OfflineQueue.push`); it is called only
        then, after the flush that went first, whose hooks may have changed what it reads.
        While requests made earlier still wait after that flush, this one waits behind them
        without being sent: the server must see changes in the order the person made them (a
        consent switched off, still waiting, then on again and sent at once, would otherwise end
        off at the bank when the older change went through, and on here).
        """
        if self.queue.waiting():
            behind = next((o for o in self.flush_queue() if o.state == "waiting"), None)
            if behind is not None:
                exc = ApiError(f"{method} {route_shape(path)}: waits behind earlier requests the server could not "
                               "take yet", behind.status)
                return self._wait(method, path, body, local, exc)
        try:
            return self.request(method, path, body, needs_body=False)
        except ApiError as exc:
            if not exc.can_wait:
                raise
            return self._wait(method, path, body, local, exc)

    def _wait(self, method: str, path: str, body: dict[str, Any], local: Callable[[], dict[str, Any]] | None,
              why: ApiError) -> Queued:
        """Keep a request in the offline queue (with its `local` note) for the reason `why`."""
        log.info("queued %s %s: %s", method, route_shape(path), why)
        self.queue.push(method, path, body, local() if local is not None else None)
        return Queued(why)

    def flush_queue(self, timeout_s: float | None = None) -> FlushReport:
        """Send what waited; one `Outcome` per queued request: sent, refused (status and code) or waiting.

        One attempt per item: when the server is still unreachable (or cannot take it yet) that
        request and the rest stay queued ("waiting"), and the caller's own request is not delayed
        by a second round of retries. A refused request (4xx) is dropped and logged; the caller
        that cares (a waiting erasure) reads its outcome here or in `outcomes`; each of
        `flush_hooks` is called with the report (a refused consent change is undone on this phone
        there, whichever request's flush sent it). Holds `lock`: two threads never send the same
        request, and one pushed meanwhile stays queued.
        """
        with self.lock:
            items = self.queue.items()
            report = FlushReport()
            if not items:
                return report
            done: set[str] = set()
            self._local.flushing = True
            try:
                for i, item in enumerate(items):
                    mark = item.get("refused")
                    if isinstance(mark, dict):  # refused by an earlier flush whose hooks did not finish
                        if getattr(self._local, "in_hooks", False):
                            continue  # a hook's own request: that flush's hooks are hearing of it now
                        outcome = Outcome(item, "refused", mark.get("status"), mark.get("code"),
                                          str(mark.get("reason") or ""))
                    else:
                        try:
                            self.request(item["method"], item["path"], item["body"] or None, retries=0,
                                         timeout_s=timeout_s, needs_body=False)
                            outcome = Outcome(item, "sent", 200)
                        except ApiError as exc:
                            if exc.can_wait:
                                report.extend(Outcome(it, "waiting", exc.status) for it in items[i:])
                                break
                            log.warning("queued %s %s refused: %s", item["method"], route_shape(item["path"]), exc)
                            outcome = Outcome(item, "refused", exc.status, exc.code, exc.user_message)
                    report.append(outcome)
                    done.add(_ident(item))
                    self.outcomes[_ident(item)] = outcome
            finally:
                self._local.flushing = False
                # sent ones leave now; refused ones stay, marked, until the hooks have heard of them: a
                # phone that dies in between hears of them at its next flush (the undo of a refused
                # consent change, the person's notice) instead of never
                refused = {_ident(o.item): o for o in report if o.state == "refused"}
                self.queue.remove(done - set(refused))
                self.queue.mark_refused(refused)
            while len(self.outcomes) > 100:
                self.outcomes.pop(next(iter(self.outcomes)))
            if report:  # a hook's own flush may have had nothing but the refusals its caller is handling
                was, self._local.in_hooks = getattr(self._local, "in_hooks", False), True
                try:
                    self._run_flush_hooks(report)
                finally:
                    self._local.in_hooks = was
            self.queue.remove(set(refused))
        if report.sent:
            log.info("sent %d request(s) that waited offline", report.sent)
        return report

    def _run_flush_hooks(self, report: FlushReport) -> None:
        """Call each of `flush_hooks` (holding `lock`); one that fails is logged, the flush stands."""
        for hook in list(self.flush_hooks):
            try:
                hook(report)
            except Exception:  # noqa: BLE001 - what was sent stays sent; the next request must go on
                log.exception("a hook on the sent queue failed")

    # ------------------------------------------------------------------ resources
    def health(self) -> bool:
        try:
            self.request("GET", ROUTES["health"], signed=False, needs_body=False)
            return True
        except ApiError:
            return False

    def register(self, platform: str = "") -> Any:
        """Bind this device's key to the user.

        In production the bank backend makes this call after the customer logs in (it holds the
        API key); demo and test builds make it themselves.
        """
        from mobile_client.device_key import b64e

        proof = b64e(self.key.sign_raw(f"register\n{self.device_id}\n{self.user_id}".encode()))
        body = {"device_id": self.device_id, "user_id": self.user_id, "public_key": self.key.public_key_b64,
                "platform": platform, "attestation": {"app": "cadence-mobile"}, "proof": proof}
        headers = {"X-API-Key": self.bank_api_key} if self.bank_api_key else None
        return self.request("POST", ROUTES["register"], body, signed=False, extra_headers=headers, needs_body=False)

    def set_consent(self, modality: str, purpose: str, granted: bool) -> Any:
        from mobile_client.policy import policy

        body = {"modality": modality, "purpose": purpose, "granted": granted, "policy_version": policy(purpose).version}
        return self.send_or_queue("POST", ROUTES["consent"].format(user_id=self.user_id), body)

    def enrol(self, windows: list[FeatureWindow], confirmed_transaction_id: str | None = None) -> Any:
        """Enrol windows; with `confirmed_transaction_id`, that approved transaction's own evidence (adaptation)."""
        body: dict[str, Any] = {"windows": windows_payload(windows)}
        if confirmed_transaction_id is not None:
            body["confirmed_transaction_id"] = confirmed_transaction_id
        return self.request("POST", ROUTES["enrol"].format(user_id=self.user_id), body, needs_body=False)

    def authorize(self, amount: str, currency: str, payee: str, evidence: list[FeatureWindow],
                  idempotency_key: str | None = None) -> Decision:
        """Ask the server to decide one payment (fewer retries and a shorter wait: a person waits).

        Without an explicit `idempotency_key`, a payment of the same payee (case and spacing
        aside), amount and currency as one held without a definite answer (network error,
        timeout, 5xx, an answer that could not be read) is a retry of it: it re-sends that first
        try's body byte for byte, key and evidence included (the `evidence` passed now is not
        sent), so the server answers with the decision it stored, if it stored one. The held
        payment is written to disk before it is sent and let go only on an answer that settles it:
        a 2xx that was read, or a refusal that proves the bank recorded nothing for its key
        (`ApiError.settles_payment`). Any other refusal (429, a 401 such as `stale_request`, ...)
        lets a payment go only when no try of it can have been recorded (this call's own tries,
        all answered); a payment held from an earlier call stays held, and the error says so
        (`in_doubt`, hence `answer_unknown`). Any other payment gets a new key.
        """
        pending = self.held_payment(amount, currency, payee) if idempotency_key is None else None
        fresh = pending is None  # no earlier call sent it: only this call's tries can have reached the bank
        if pending is not None:
            log.info("payment retried with its first try's idempotency key and evidence")
        else:
            key = idempotency_key or uuid.uuid4().hex
            body = {"user_id": self.user_id, "amount": amount, "currency": currency, "payee": payee,
                    "channel": "app", "idempotency_key": key, "evidence": windows_payload(evidence)}
            pending = PendingPayment(amount, currency, payee, key, json.dumps(body, separators=(",", ":")).encode(),
                                     list(evidence), time.time())
            self.held.hold(pending)
        try:
            d = self.request("POST", ROUTES["authorize"], retries=AUTHORIZE_RETRIES, timeout_s=AUTHORIZE_TIMEOUT_S,
                             content=pending.raw)
        except UnreadableAnswer:  # a 2xx the phone cannot read: the bank may have recorded it
            log.error("payment answer could not be read: the payment stays held")
            raise
        except ApiError as exc:
            if exc.settles_payment or (fresh and not exc.answer_unknown):
                # nothing recorded for this key: the next try is a new payment with new evidence,
                # and the person is told the bank's reason, not "it may have gone through"
                self.held.release(pending)
                exc.in_doubt = False
            else:  # an earlier try may be recorded: the next one re-sends it, same key and bytes
                exc.in_doubt = True
                log.info("payment refused (%s) after a try without an answer: it stays held", exc.status)
            raise
        try:
            if d["decision"] not in DECISIONS:  # what the phone would act on: only the API's three outcomes
                raise ValueError(f"decision {str(d['decision'])[:40]!r} is none of {', '.join(DECISIONS)}")
            if not 0.0 <= float(d["risk"]) <= 1.0:  # NaN fails too
                raise ValueError(f"risk {d['risk']!r} is not between 0 and 1")
            decision = Decision(transaction_id=str(d["transaction_id"]), outcome=str(d["decision"]),
                                risk=float(d["risk"]), tier=d.get("tier", ""), reasons=list(d.get("reasons", [])),
                                amount=str(d.get("amount", pending.amount)),
                                currency=d.get("currency", pending.currency), payee=d.get("payee", pending.payee),
                                token=d.get("token", ""), evidence=list(pending.evidence),
                                idempotency_key=pending.idempotency_key)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # kept: the bank may have recorded it
            log.error("payment answer could not be read (%r): the payment stays held", exc)
            raise ApiError(f"POST {ROUTES['authorize']}: unreadable answer ({exc!r})", 200,
                           {"detail": "unreadable answer", "code": "unreadable_answer"}) from exc
        self.held.release(pending)
        self.last_sync = time.time()
        return decision

    def held_payment(self, amount: str, currency: str, payee: str) -> PendingPayment | None:
        """The payment a call with these details would re-send (one held without an answer), if any."""
        held = self.held.find(amount, currency, payee)
        if held is not None and json.loads(held.raw).get("user_id") != self.user_id:
            return None
        return held

    def drop_held_payments(self, modality: str) -> list[PendingPayment]:
        """Let go of the held payments whose evidence carries `modality` (its consent was revoked)."""
        return self.held.drop(lambda h: modality not in h.modalities)

    def forget_pending_payment(self) -> None:
        """Let go of every held payment (a reset of the app)."""
        self.held.clear()

    def complete_step_up(self, transaction_id: str, success: bool) -> Any:
        """Report the one-time-code result (as the bank backend would; needs `bank_api_key`)."""
        if not self.bank_api_key:
            raise ApiError("step-up completion is the bank's call: no bank API key on this build", 401,
                           {"detail": "no bank API key on this build", "code": "bank_confirms"})
        return self.request("POST", ROUTES["step_up"].format(transaction_id=transaction_id), {"success": success},
                            signed=False, extra_headers={"X-API-Key": self.bank_api_key})

    def transaction(self, transaction_id: str) -> Any:
        """The bank's record of one transaction (its `status`, `decision`; needs `bank_api_key`, as step-up does).

        What the app asks when a step-up report's answer was lost and a retry hears that the
        payment no longer waits for a code (`TransactionController.verify_code`).
        """
        if not self.bank_api_key:
            raise ApiError("looking a transaction up is the bank's call: no bank API key on this build", 401,
                           {"detail": "no bank API key on this build", "code": "bank_confirms"})
        return self.request("GET", ROUTES["transaction"].format(transaction_id=transaction_id), signed=False,
                            extra_headers={"X-API-Key": self.bank_api_key})

    def erase(self) -> Any:
        return self.request("DELETE", ROUTES["erase"].format(user_id=self.user_id), needs_body=False)
