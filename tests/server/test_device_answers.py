"""What a device is told of a decision: enough to act on, too little to hill-climb on.

A tester holding a device key climbed an impostor's features from a step-up to an approval in
~840 authorize calls, reading the exact risk and the modality's LLR contribution in each answer
(step-ups count as no failure). The device now gets the risk to one decimal and the reason
codes; the bank reads the exact figures.
"""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from server.signing import sign_request
from tests.server.conftest import evidence

BANK = {"X-API-Key": "dev-bank-key"}


def _send(client: TestClient, dev, body: bytes):  # type: ignore[no-untyped-def]
    headers = sign_request(dev.key, dev.device_id, "POST", "/v1/transactions/authorize", body)
    headers["content-type"] = "application/json"
    return client.post("/v1/transactions/authorize", content=body, headers=headers)


def test_the_device_gets_codes_and_a_coarse_risk_the_bank_the_exact_figures(client: TestClient, enrolled,  # type: ignore[no-untyped-def]
                                                                             windows) -> None:
    for who, i in (("owner", 6), ("other", 7)):
        payload = {"user_id": enrolled.user_id, "amount": "25.00", "currency": "EUR", "payee": "ACME",
                   "channel": "app", "idempotency_key": f"k-{who}",
                   "evidence": [w.to_dict() for w in evidence(windows, who, i)]}
        body = json.dumps(payload).encode()
        r = _send(client, enrolled, body)
        assert r.status_code == 200, r.text
        device = r.json()
        bank = client.get(f"/v1/transactions/{device['transaction_id']}", headers=BANK).json()
        assert device["risk"] == round(bank["risk"], 1)
        assert [(x["modality"], x["code"]) for x in device["reasons"]] == [(x["modality"], x["code"]) for x in bank["reasons"]]
        assert all(x["contribution"] is None for x in device["reasons"])
        scored = [x for x in bank["reasons"] if x["code"] in ("strong_match", "match", "mismatch", "strong_mismatch")]
        assert scored and all(isinstance(x["contribution"], float) for x in scored)
        assert any(x["contribution"] != 0.0 for x in scored)
        # a retry with the same key and body is told the same, not the stored exact answer
        retry = _send(client, enrolled, body)
        assert retry.status_code == 200 and retry.json() == device, retry.text
