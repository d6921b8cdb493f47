"""A scripted stand-in for the Cadence server, for the screenshot tour only (clearly a demo).

The tour must render every screen, including each decision, on a machine with no server
running. This `httpx.MockTransport` answers the routes the app uses with canned but well-formed
responses, and checks every device request's signature with the registered public key, so the
tour still exercises the client's signing. Tests of real behaviour use the real server.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mobile_client import device_key as dk

#: canned decisions as the real server tells a device (`server.services.transactions.device_view`:
#: reason codes, the risk to one decimal, no LLR contributions): an approve, a step-up at the
#: medium tier, a deny
SCRIPT: list[dict[str, Any]] = [
    {"decision": "approve", "risk": 0.0, "reasons": [
        {"modality": "keystroke", "code": "strong_match", "contribution": None},
        {"modality": "touch", "code": "match", "contribution": None},
        {"modality": "gait", "code": "match", "contribution": None}]},
    {"decision": "step_up", "risk": 0.1, "reasons": [
        {"modality": "keystroke", "code": "match", "contribution": None},
        {"modality": "touch", "code": "match", "contribution": None},
        {"modality": "gait", "code": "mismatch", "contribution": None}]},
    {"decision": "deny", "risk": 1.0, "reasons": [
        {"modality": "keystroke", "code": "strong_mismatch", "contribution": None},
        {"modality": "touch", "code": "strong_mismatch", "contribution": None}]},
]


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class DemoBank:
    """State of the stand-in: registered keys, consents, enrolments, decisions made."""

    def __init__(self) -> None:
        self.keys: dict[str, Ed25519PublicKey] = {}
        self.consents: list[dict[str, Any]] = []
        self.enrolled: dict[str, int] = {}
        self.decisions: list[dict[str, Any]] = []
        self._next = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def _verify(self, req: httpx.Request) -> None:
        dev = req.headers[dk.HEADER_DEVICE]
        msg = dk.canonical_request(req.method, req.url.path, req.content, req.headers[dk.HEADER_TIMESTAMP],
                                   req.headers[dk.HEADER_NONCE])
        self.keys[dev].verify(_b64d(req.headers[dk.HEADER_SIGNATURE]), msg)

    def handle(self, req: httpx.Request) -> httpx.Response:
        path = req.url.path
        body = json.loads(req.content) if req.content else {}
        if path == "/v1/devices":
            self.keys[body["device_id"]] = Ed25519PublicKey.from_public_bytes(_b64d(body["public_key"]))
            return httpx.Response(201, json={"device_id": body["device_id"], "user_id": body["user_id"]})
        if path.endswith("/step-up"):
            return httpx.Response(200, json={"status": "approved" if body.get("success") else "denied"})
        try:
            self._verify(req)
        except Exception:  # noqa: BLE001 - any verification failure is a 401
            return httpx.Response(401, json={"detail": "bad signature"})
        if path.endswith("/consents"):
            self.consents.append(body)
            return httpx.Response(201, json=body)
        if path.endswith("/enrolment"):
            for w in body["windows"]:
                self.enrolled[w["modality"]] = self.enrolled.get(w["modality"], 0) + 1
            return httpx.Response(201, json={"modalities": [{"modality": m, "n_windows": n} for m, n in self.enrolled.items()]})
        if path == "/v1/transactions/authorize":
            s = SCRIPT[self._next % len(SCRIPT)]
            self._next += 1
            d = {"transaction_id": "tx_" + uuid.uuid4().hex[:12], "user_id": body["user_id"], "status": s["decision"],
                 "tier": "medium", "amount": body["amount"], "currency": body["currency"], "payee": body["payee"],
                 "model_versions": {}, "token": "demo", "created_at": "", **s}
            self.decisions.append(d)
            return httpx.Response(200, json=d)
        if path.endswith("/step-up"):
            return httpx.Response(200, json={"status": "approved" if body.get("success") else "denied"})
        if req.method == "DELETE":
            return httpx.Response(204)
        return httpx.Response(404, json={"detail": f"no route {path}"})
