"""Server review F: refusals that named the wrong thing.

A JSON body sent without a JSON content type to any route but `authorize` was refused as
"body: Input should be a valid dictionary" (it was one); a device registration with a malformed
key was refused as `proof: public_key: ...`, and a proof that does not verify named the
`X-Cadence-Signature` header, which that request does not have.
"""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from server.signing import b64e, public_key_b64, registration_message, sign_request
from tests.server.conftest import new_device

BANK = {"X-API-Key": "dev-bank-key"}


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_json_body_without_a_json_content_type_is_refused_as_such(client: TestClient,
                                                                    content_type: str | None) -> None:
    """Every body route answers what `authorize` answers: 422 `content_type`, naming the header's fix."""
    dev = new_device(client)
    path, body = f"/v1/users/{dev.user_id}/consents", json.dumps({"modality": "gait"}).encode()
    headers = sign_request(dev.key, dev.device_id, "POST", path, body)
    bank = dict(BANK)
    if content_type is not None:
        headers["content-type"] = bank["content-type"] = content_type
    for r in (client.post(path, content=body, headers=headers),  # a device route
              client.post("/v1/transactions/x/step-up", content=b'{"success": true}', headers=bank)):  # a bank route
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == "body: content-type must be application/json"
        assert [e["type"] for e in r.json()["errors"]] == ["content_type"]
    r = client.post(path, content=body, headers={**sign_request(dev.key, dev.device_id, "POST", path, body),
                                                 "content-type": "application/json; charset=utf-8"})
    assert r.status_code == 201, r.text  # a JSON content type with parameters is one


def _registration(key: Ed25519PrivateKey, **change: str) -> dict[str, str]:
    body = {"device_id": "dev-f1", "user_id": "fiona", "public_key": public_key_b64(key),
            "proof": b64e(key.sign(registration_message("dev-f1", "fiona")))}
    return {**body, **change}


def test_a_refused_device_registration_names_the_field_at_fault(client: TestClient) -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    cases = [
        ("public_key: an Ed25519 public key is 32 bytes, got 33", _registration(key, public_key="A" * 44)),
        ("public_key: not unpadded base64url", _registration(key, public_key="!" * 43)),  # was read as 0 bytes
        ("proof: not this public_key's", _registration(key, proof=b64e(other.sign(registration_message("dev-f1",
                                                                                                     "fiona"))))),
        ("proof: not this public_key's", _registration(key, proof="A" * 100)),  # not even a signature's length
    ]
    for reason, body in cases:
        r = client.post("/v1/devices", json=body, headers=BANK)
        assert r.status_code == 422 and r.json()["code"] == "bad_device_key", r.text
        assert r.json()["detail"].startswith(reason), r.text
        assert "X-Cadence" not in r.json()["detail"]  # a registration carries no signature header
    assert client.post("/v1/devices", json=_registration(key), headers=BANK).status_code == 201


def test_a_signed_request_that_repeats_one_of_its_headers_is_refused(client: TestClient) -> None:
    """A repeated signed header is a 400, not the first of the two read and served.

    A proxy or a log keeping the last `X-Cadence-Device` would name another device than the one
    whose signature was verified.
    """
    dev = new_device(client)
    path = "/v1/users/alice/consents"
    for name, extra in (("X-Cadence-Device", "dev-other"), ("X-Cadence-Nonce", "n2"),
                        ("X-Cadence-Signature", "AAAA"), ("X-Cadence-Timestamp", "1")):
        signed = sign_request(dev.key, dev.device_id, "GET", path, b"")
        r = client.get(path, headers=[*signed.items(), (name, extra)])
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "duplicate_header" and r.json()["detail"].startswith(f"{name}: sent 2 times")
    r = client.get(path, headers=sign_request(dev.key, dev.device_id, "GET", path, b""))
    assert r.status_code == 200, r.text  # each header once: served
