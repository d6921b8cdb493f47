"""Review H: a redirect is not the bank's answer; a full disk does not crash collection or lose a payment's answer.

No Kivy here: the API client against `httpx.MockTransport`, the controllers against the fake banks
of test_controllers and test_consent_and_erasure, and the evidence buffer with a store that fails.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import httpx
import pytest

from evaluation.synthetic import SyntheticPerson
from mobile_client.api import ApiClient, Queued
from mobile_client.clock import VirtualClock
from mobile_client.controllers.consent import ConsentController
from mobile_client.controllers.privacy import ERASE_PENDING, PrivacyController
from tests.mobile_client.test_consent_and_erasure import FaultyBank
from tests.mobile_client.test_controllers import _enrolled, _services
from tests.mobile_client.test_review_erasure_payments_threads import _client

PORTAL = {"location": "http://portal.example/login?continue=bank"}


@pytest.fixture()
def person() -> SyntheticPerson:
    return SyntheticPerson(11)


# -- 1: a 3xx (a captive portal, a proxy) is no answer from the bank --------------------------------
@pytest.mark.parametrize("status", [301, 302, 307])
def test_a_redirect_is_not_the_banks_answer_and_the_change_waits(tmp_path: Path, status: int) -> None:
    """httpx follows no redirect: a 3xx counted as done dropped a revocation the bank never saw."""
    c = _client(tmp_path, lambda req: httpx.Response(status, headers=PORTAL, text="<html>Sign in to Wi-Fi</html>"))
    res = c.send_or_queue("POST", "/v1/users/user-1/consents", {"modality": "touch", "granted": False})
    assert isinstance(res, Queued) and res.error.offline
    assert [i["body"]["granted"] for i in c.queue.items()] == [False]


def test_a_queued_request_flushed_through_a_redirect_stays_queued(tmp_path: Path) -> None:
    answers: dict[str, Any] = {"status": 302}
    c: ApiClient = _client(tmp_path, lambda req: httpx.Response(answers["status"], headers=PORTAL, json={}))
    c.queue.push("POST", "/v1/users/user-1/consents", {"modality": "gait", "granted": False})
    c.queue.push("DELETE", "/v1/users/user-1", {})
    report = c.flush_queue()
    assert [o.state for o in report] == ["waiting", "waiting"] and report.sent == 0
    assert len(c.queue) == 2
    answers["status"] = 200  # back on a network that reaches the bank
    assert c.flush_queue().sent == 2 and len(c.queue) == 0


def test_a_consent_revoked_behind_a_captive_portal_says_the_bank_has_not_received_it(tmp_path: Path) -> None:
    bank, clock = FaultyBank(), VirtualClock(1000.0)
    s = _services(tmp_path, bank, clock)
    cc = ConsentController(s)
    cc.apply({"touch": {"authentication": True, "federated_training": False}})
    bank.faults["/consents"] = 302
    res = cc.set("touch", "authentication", False)
    assert res.state == "queued", res.message
    assert "has not received" in res.message
    assert len(s.api.queue) == 1


def test_delete_my_data_behind_a_captive_portal_is_not_reported_as_erased(tmp_path: Path,
                                                                           person: SyntheticPerson) -> None:
    bank, clock = FaultyBank(), VirtualClock(1000.0)
    s = _enrolled(tmp_path, bank, person, clock)
    device = s.profile.device_id
    bank.faults[f"/v1/users/{s.profile.user_id}"] = 302
    pc = PrivacyController(s)
    message = pc.delete_my_data()
    assert pc.erase_state == "pending", message
    assert "your bank erased" not in message and "Not finished" in message
    assert s.profile.device_id == device and (s.data_dir / ERASE_PENDING).exists()
    # and the waiting erasure is not settled through the portal either
    assert pc.settle() == "pending"
    assert s.profile.registered and s.profile.device_id == device
