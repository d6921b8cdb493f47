"""A refusal that settles a payment must not be shown as 'no answer, paying again re-sends it'."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from mobile_client.api import ApiClient, ApiError, OfflineQueue
from mobile_client.device_key import DeviceKey
from mobile_client.secrets_store import FileSecretStore
from tests.mobile_client.test_app_review import Bank, _window


@pytest.mark.parametrize("refusal", [(403, "consent_required"), (423, "user_locked"), (422, "unsupported_currency")])
def test_a_settling_refusal_after_a_lost_try_is_not_reported_as_no_answer(tmp_path: Path, refusal: Any) -> None:
    """Try 1 gets no answer, its automatic retry a refusal that proves nothing was recorded.

    The payment is let go (the next tap is a new payment with a new key), so the error must
    not say 'answer unknown' (the Pay screen then shows NO_ANSWER: "paying the same payee and
    amount again re-sends the same payment, so it cannot be paid twice") and must carry the
    bank's reason instead.
    """
    bank = Bank(["lost", refusal])
    c = ApiClient("http://bank.test", DeviceKey(FileSecretStore(tmp_path / "s")), "dev-1", "user-1",
                  OfflineQueue(tmp_path / "outbox.jsonl"), transport=httpx.MockTransport(bank.handle),
                  sleep=lambda _s: None)
    with pytest.raises(ApiError) as err:
        c.authorize("50.00", "GBP", "Sam", [_window(1)])
    assert c.held_payment("50.00", "GBP", "Sam") is None  # let go: settled
    assert not err.value.answer_unknown, "a settled refusal is reported as 'no answer; paying again re-sends it'"
    assert "may have gone through" not in err.value.user_message
