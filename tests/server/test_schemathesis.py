"""Property-based run over the OpenAPI contract: no generated request may produce a 5xx.

Device signatures and the rate limit are switched off for this app only (a registered device id is sent), so
generated bodies get past authentication into validation and the services; an API key with
every scope is sent too. Examples are bounded per operation to keep the suite fast.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from server.app import create_app
from tests.server.conftest import make_settings, new_device

MAX_EXAMPLES = 12


@pytest.mark.slow
def test_no_server_errors(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, require_signed_requests=False, device_rate_per_s=0))
    with TestClient(app) as c:
        device = new_device(c, "alice").device_id
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    headers = {"X-API-Key": "dev-admin-key", "X-Cadence-Device": device}
    failures: list[str] = []
    n_ops = 0
    for result in schema.get_all_operations():
        op = result.ok()
        n_ops += 1

        @given(case=op.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case) -> None:
            response = case.call(headers=headers)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}")

        check()
    app.state.engine.dispose()
    assert n_ops >= 15
    assert not failures, "\n".join(failures[:10])


@pytest.mark.parametrize("path", ["/v1/transactions/authorize", "/v1/users/{user_id}/enrolment"])
def test_openapi_documents_device_routes(tmp_path: Path, path: str) -> None:
    app = create_app(make_settings(tmp_path))
    spec = app.openapi()
    assert path in spec["paths"] and "post" in spec["paths"][path]
    app.state.engine.dispose()


def test_openapi_describes_the_error_bodies_the_api_sends(tmp_path: Path) -> None:
    """Every operation's 422 was FastAPI's `{"detail": [...]}`, which no answer of this API has."""
    from server.schemas import Problem, ValidationProblem

    app = create_app(make_settings(tmp_path))
    spec = app.openapi()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, item in spec["paths"].items():
        for method, op in item.items():
            refs = {status: r["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                    for status, r in op["responses"].items() if status[0] in "45"}
            assert refs == {"422": "ValidationProblem", "4XX": "Problem", "503": "Problem"}, (method, path, refs)
    authorize = spec["paths"]["/v1/transactions/authorize"]["post"]["parameters"]
    assert {p["name"]: p["required"] for p in authorize if p["name"].startswith("x-cadence-")} == {
        "x-cadence-device": True, "x-cadence-timestamp": True, "x-cadence-nonce": True, "x-cadence-signature": True}
    read = spec["paths"]["/v1/sessions/{session_id}"]["get"]["parameters"]  # the bank reads it with a key instead
    assert not any(p["required"] for p in read if p["name"].startswith("x-cadence-"))
    with TestClient(app) as c:
        invalid = c.post("/v1/devices", json={}, headers={"X-API-Key": "dev-bank-key"})
        assert invalid.status_code == 422
        ValidationProblem.model_validate(invalid.json(), strict=True)
        assert invalid.json()["errors"]
        unsigned = c.get("/v1/users/alice/consents")
        assert unsigned.status_code == 401
        Problem.model_validate(unsigned.json(), strict=True)
    app.state.engine.dispose()
