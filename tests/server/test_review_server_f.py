"""Server review F: refusals that named the wrong thing.

A JSON body sent without a JSON content type to any route but `authorize` was refused as
"body: Input should be a valid dictionary" (it was one).
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from server.signing import sign_request
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
