"""Risk tiers priced in the policy's currency: a payment's currency counts, unknown ones are refused.

The amount alone picked the tier: 99 KWD (about 320 USD) took the low tier and 5,000 JPY the
high one, and any three-letter code was accepted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cadence.settings import Settings
from modalities.events import MODALITIES
from server.app import create_app
from tests.server.conftest import evidence, make_settings, new_device


def _pay(dev, windows, amount: str, currency: str, key: str, i: int):  # type: ignore[no-untyped-def]
    return dev.signed("POST", "/v1/transactions/authorize",
                      {"user_id": dev.user_id, "amount": amount, "currency": currency, "payee": "ACME",
                       "channel": "app", "idempotency_key": key,
                       "evidence": [w.to_dict() for w in evidence(windows, "owner", i)]})


def test_the_currency_prices_the_tier_and_an_unknown_one_is_refused(tmp_path: Path, calibration_file: Path,
                                                                    windows: dict) -> None:
    settings = make_settings(tmp_path, fusion_calibration=calibration_file,
                             tier_currency_rates={"EUR": 1.0, "KWD": 3.0, "JPY": 0.006})
    app = create_app(settings)
    try:
        with TestClient(app) as client:
            dev = new_device(client)
            for m in MODALITIES:
                dev.grant_consent(m)
                dev.enrol(windows["owner"][m][:5])
            tiers = {}
            for i, (amount, currency) in enumerate((("99.00", "EUR"), ("99.00", "KWD"), ("5000.00", "JPY"))):
                r = _pay(dev, windows, amount, currency, f"k{i}", 6 + i)
                assert r.status_code == 200, r.text
                tiers[currency] = r.json()["tier"]
            assert tiers == {"EUR": "low", "KWD": "medium", "JPY": "low"}
            r = _pay(dev, windows, "10.00", "USD", "k-usd", 9)  # not configured on this server
            assert r.status_code == 422 and r.json()["code"] == "unsupported_currency", r.text
            assert "'USD'" in r.json()["detail"] and "EUR, JPY, KWD" in r.json()["detail"]
    finally:
        app.state.engine.dispose()


@pytest.mark.parametrize("rates", [{"eur": 1.0}, {"EUR": 0.0}, {"EUR": float("inf")}, {}])
def test_a_bad_rate_table_is_refused_at_start(rates: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="tier_currency_rates"):
        Settings(tier_currency_rates=rates)
