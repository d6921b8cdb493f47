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
