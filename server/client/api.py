"""A small synchronous client of the /v1 API as a device (and, for set-up, the bank backend).

Every device call is signed with the device's Ed25519 key; bodies are serialised once so the
signed bytes are exactly the bytes sent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modalities.events import FeatureWindow
from modalities.reading import read_by_models
from server.signing import b64e, public_key_b64, registration_message, sign_request


class ApiCallError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


def amount_text(amount: Decimal | float | str) -> str:
    """The amount in the one spelling the API takes ("10.00"): `Decimal("1E+1")` and 10.0 are "10.00".

    An amount that is not whole cents (0.1 + 0.2, "10.001") is refused here, not rounded.
    """
    try:
        exact = Decimal(str(amount).strip())
        cents = exact.quantize(Decimal("0.01"))
    except ArithmeticError as exc:  # InvalidOperation: not a number, or too large to quantize
        raise ValueError(f"amount: {amount!r} is not a decimal amount") from exc
    if cents != exact:
        raise ValueError(f"amount: {amount!r} is not a whole number of cents")
    return f"{cents:.2f}"


#: the server's enrolment gate at its defaults (`cadence.settings`: `enrol_min_windows`,
#: `enrol_min_quality`): a plain enrolment request must leave each modality's template with at
#: least this many windows of at least this quality, or it is refused (422 `too_few_windows`)
ENROL_MIN_WINDOWS = 3
ENROL_MIN_QUALITY = 0.05
#: most windows one request may carry (`server.schemas.MAX_WINDOWS`)
MAX_WINDOWS = 64


def enrollable(w: FeatureWindow, min_quality: float = ENROL_MIN_QUALITY) -> bool:
    """Whether the server enrols `w`: quality at least `min_quality`, and a window its models read.

    The server's test (`server.services.evidence.scored`): the modality package's `scored` for
    windows of its feature version; a touch tap is not read (swipes only). A window that is not
    enrolled is still accepted (its digest is seen) but does not count toward the gate.
    """
    if w.quality < min_quality:
        return False
    return read_by_models(w.modality, w.feature_version, w.values)


def enrolment_parts(windows: Sequence[FeatureWindow], chunk: int = 16, *, min_windows: int = ENROL_MIN_WINDOWS,
                    min_quality: float = ENROL_MIN_QUALITY) -> list[list[FeatureWindow]]:
    """Requests of about `chunk` windows of one modality, the first holding `min_windows` the server enrols.

    The server refuses a part that leaves the template short of `min_windows` (422
    `too_few_windows`), so when the first `chunk` windows hold fewer (a touch session that
    began with taps), the next enrollable windows join the first part and as many of its
    windows the server would not enrol wait for a later part (the part keeps its size). The
    enrollable windows keep their order: the server stores the same windows in the same order.
    """
    chunk = max(1, min(chunk, MAX_WINDOWS))
    usable = [enrollable(w, min_quality) for w in windows]
    first = list(range(min(chunk, len(windows))))
    have = sum(usable[i] for i in first)
    if have < min_windows:
        pulled = [i for i in range(len(first), len(windows)) if usable[i]][:min_windows - have]
        spare = len(first) + len(pulled) - max(chunk, min(min_windows, MAX_WINDOWS))
        if spare > 0:  # the part stays within its size: windows it would not enrol go later
            waiting = set([i for i in reversed(first) if not usable[i]][:spare])
            first = [i for i in first if i not in waiting]
        first += pulled
    chosen = set(first)
    rest = [i for i in range(len(windows)) if i not in chosen]
    parts = [first] + [rest[a:a + chunk] for a in range(0, len(rest), chunk)]
    return [[windows[i] for i in part] for part in parts if part]


class DeviceClient:
    """One device of one user talking to the server."""

    def __init__(self, base_url: str, *, user_id: str, device_id: str | None = None,
                 key: Ed25519PrivateKey | None = None, bank_api_key: str = "dev-bank-key",
                 timeout: float = 30.0, http: httpx.Client | None = None) -> None:
        self.user_id = user_id
        self.device_id = device_id or f"dev-{uuid.uuid4().hex[:12]}"
        self.key = key or Ed25519PrivateKey.generate()
        self.bank_api_key = bank_api_key
        #: any httpx.Client (a FastAPI TestClient in tests)
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    def _check(self, r: httpx.Response) -> Any:
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
        if r.status_code >= 400:
            raise ApiCallError(r.status_code, body)
        return body

    def signed(self, method: str, path: str, payload: Any | None = None) -> httpx.Response:
        body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        headers = sign_request(self.key, self.device_id, method, path, body)
        headers["content-type"] = "application/json"
        return self.http.request(method, path, content=body, headers=headers)

    # ------------------------------------------------------------------ calls
    def register(self, platform: str = "demo") -> Any:
        """Bank backend binds this device's key to the user (with the device's proof of possession)."""
        proof = b64e(self.key.sign(registration_message(self.device_id, self.user_id)))
        payload = {"device_id": self.device_id, "user_id": self.user_id, "public_key": public_key_b64(self.key),
                   "platform": platform, "proof": proof}
        return self._check(self.http.post("/v1/devices", json=payload, headers={"X-API-Key": self.bank_api_key}))

    def grant_consent(self, modality: str, purpose: str = "authentication", policy_version: str | None = None) -> Any:
        body: dict[str, Any] = {"modality": modality, "purpose": purpose}
        if policy_version is not None:
            body["policy_version"] = policy_version
        return self._check(self.signed("POST", f"/v1/users/{self.user_id}/consents", body))

    def enrol(self, windows: list[FeatureWindow], chunk: int = 16, confirmed_transaction_id: str | None = None, *,
              min_windows: int = ENROL_MIN_WINDOWS, min_quality: float = ENROL_MIN_QUALITY) -> list[Any]:
        """Send enrolment windows in requests of about `chunk` windows (keeps bodies small).

        Plain enrolment goes modality by modality, and each modality's first request carries
        `min_windows` windows the server enrols (`enrolment_parts`): the server refuses one that
        leaves a template below its gate. `min_windows` and `min_quality` are the server's
        `enrol_min_windows` and `enrol_min_quality` (defaults here: the server's defaults).

        With `confirmed_transaction_id`: the windows are that approved transaction's evidence,
        re-sent so the template adapts to them (controlled adaptation), in requests of `chunk`.
        """
        if confirmed_transaction_id is not None:
            parts = [windows[a:a + chunk] for a in range(0, len(windows), chunk)]
        else:
            by_modality: dict[str, list[FeatureWindow]] = {}
            for w in windows:
                by_modality.setdefault(w.modality, []).append(w)
            parts = [part for group in by_modality.values()
                     for part in enrolment_parts(group, chunk, min_windows=min_windows, min_quality=min_quality)]
        out = []
        for part in parts:
            body: dict[str, Any] = {"windows": [w.to_dict() for w in part]}
            if confirmed_transaction_id is not None:
                body["confirmed_transaction_id"] = confirmed_transaction_id
            out.append(self._check(self.signed("POST", f"/v1/users/{self.user_id}/enrolment", body)))
        return out

    def authorize(self, *, amount: Decimal | float | str, payee: str, evidence: list[FeatureWindow],
                  currency: str = "EUR", idempotency_key: str | None = None, channel: str = "app") -> Any:
        payload = {"user_id": self.user_id, "amount": amount_text(amount), "currency": currency, "payee": payee,
                   "channel": channel, "idempotency_key": idempotency_key or uuid.uuid4().hex,
                   "evidence": [w.to_dict() for w in evidence]}
        return self._check(self.signed("POST", "/v1/transactions/authorize", payload))
