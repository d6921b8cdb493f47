"""A request may carry several windows of one modality; fusion still gets one item per modality.

`fusion.policy.decide` refuses a second evidence item of a modality (ValueError): the windows
of a modality share its errors, so their LLRs must not be summed as independent evidence. The
request schemas allow repeated modalities (touch needs 5 swipes per decision), and the server
combines them (`assess_evidence`: one item per modality, its mean score): such a request is
decided (200), never turned into a 500 by that refusal.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modalities.events import MODALITIES
from server.client.api import DeviceClient
from server.client.features import evidence_unit

BANK = {"X-API-Key": "dev-bank-key"}


def _repeated(windows: dict, i: int) -> list[Any]:
    """Three keystroke and three gait windows and a touch unit (5 swipes): every modality repeated."""
    out = []
    for m in MODALITIES:
        ws = evidence_unit(m, windows["owner"][m], i) if m == "touch" else windows["owner"][m][6 + 3 * i: 9 + 3 * i]
        assert len(ws) >= 3
        out.extend(ws)
    return out


def _spy(decide: Any, calls: list[list[str]]) -> Any:
    """`decide`, recording the modalities of each call's evidence first."""
    def spy(evidence: list[Any], **kw: Any) -> Any:
        calls.append([e.modality for e in evidence])
        return decide(evidence, **kw)
    return spy


def test_an_authorize_call_with_repeated_modalities_is_decided_on_one_item_each(
        client: TestClient, enrolled: DeviceClient, windows: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    state = client.app.state.cadence  # type: ignore[attr-defined]
    calls: list[list[str]] = []
    monkeypatch.setattr(state, "decide", _spy(state.decide, calls))
    sent = _repeated(windows, 2)
    r = enrolled.signed("POST", "/v1/transactions/authorize",
                        {"user_id": enrolled.user_id, "amount": "20.00", "currency": "EUR", "payee": "ACME",
                         "channel": "app", "idempotency_key": "repeated-1", "evidence": [w.to_dict() for w in sent]})
    assert r.status_code == 200, r.text
    assert len(calls) == 1 and Counter(calls[0]) == Counter(MODALITIES)  # one item per modality sent
    stored = client.get(f"/v1/transactions/{r.json()['transaction_id']}", headers=BANK).json()
    per_modality = Counter(x["modality"] for x in stored["reasons"] if x["modality"] in MODALITIES)
    assert set(per_modality.values()) == {1}, stored["reasons"]


def test_a_session_post_with_repeated_modalities_is_fused_on_one_item_each(
        client: TestClient, enrolled: DeviceClient, windows: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import continuous.session
    import server.services.sessions

    calls: list[list[str]] = []
    for module in (continuous.session, server.services.sessions):
        monkeypatch.setattr(module, "decide", _spy(module.decide, calls))
    r = enrolled.signed("POST", "/v1/sessions", {"user_id": enrolled.user_id})
    assert r.status_code == 201, r.text
    sid = r.json()["session_id"]
    r = enrolled.signed("POST", f"/v1/sessions/{sid}/evidence", {"windows": [w.to_dict() for w in _repeated(windows, 3)]})
    assert r.status_code == 200, r.text
    assert calls and all(Counter(c) == Counter(MODALITIES) for c in calls), calls
