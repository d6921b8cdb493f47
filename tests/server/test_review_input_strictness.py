"""Input strictness found by a security review: each test reproduces a refusal that was missing.

Non-boolean consent switches, duplicate JSON keys (last one won), amounts and timestamps with
several spellings ("+10", "1_0", Arabic-Indic digits, a float-rounded JSON number), payees that
print like another payee (Cyrillic look-alikes, zero-width joiners, decomposed accents), and the
device's free-text platform kept in the audit log after erasure.
"""

from __future__ import annotations

import json
import secrets
import time
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from server.client.api import DeviceClient
from server.schemas import AuthorizeRequest, TokenVerify
from server.signing import b64e, canonical_request
from tests.server.conftest import evidence
from tests.server.test_security_rules import _enrol

BANK = {"X-API-Key": "dev-bank-key"}
ADMIN = {"X-API-Key": "dev-admin-key"}
AUTHORIZE = "/v1/transactions/authorize"


def _payload(dev: DeviceClient, windows: dict, key: str, *, i: int = 5, amount: Any = "25.00",
             payee: str = "ACME") -> dict[str, Any]:
    return {"user_id": dev.user_id, "amount": amount, "currency": "EUR", "payee": payee, "channel": "app",
            "idempotency_key": key, "evidence": [w.to_dict() for w in evidence(windows, "owner", i)]}


def _send(dev: DeviceClient, path: str, body: bytes, *, timestamp: str | None = None) -> Any:
    """POST `body` exactly as given, signed by `dev` (with `timestamp` spelled as given)."""
    ts, nonce = timestamp or str(int(time.time())), secrets.token_urlsafe(16)
    signature = b64e(dev.key.sign(canonical_request("POST", path, body, ts, nonce)))
    headers = {"X-Cadence-Device": dev.device_id, "X-Cadence-Timestamp": ts, "X-Cadence-Nonce": nonce,
               "X-Cadence-Signature": signature, "content-type": "application/json"}
    return dev.http.post(path, content=body, headers=headers)


def _with_amount(payload: dict[str, Any], amount_json: str) -> bytes:
    """`payload` serialised with its amount written as the JSON text `amount_json`."""
    text = json.dumps({**payload, "amount": "@AMOUNT@"}, separators=(",", ":"))
    return text.replace('"@AMOUNT@"', amount_json).encode()


# --------------------------------------------------------------- 1. consent switch


@pytest.mark.parametrize("granted", ["off", "yes", "false", 1, 0, None])
def test_consent_granted_must_be_a_real_boolean(client: TestClient, windows, granted: object) -> None:  # type: ignore[no-untyped-def]
    """{"granted": "off"} revoked consent (and deleted the template); "yes" or 1 granted it."""
    dev = _enrol(client, windows)
    r = dev.signed("POST", "/v1/users/alice/consents", {"modality": "gait", "granted": granted})
    assert r.status_code == 422 and r.json()["detail"].startswith("granted:"), r.text
    consents = dev.signed("GET", "/v1/users/alice/consents").json()["consents"]
    assert [c["active"] for c in consents if c["modality"] == "gait"] == [True]
    assert dev.signed("POST", "/v1/users/alice/consents", {"modality": "gait", "granted": False}).status_code == 201


# --------------------------------------------------------------- 2. duplicate keys


def test_a_duplicate_amount_in_a_signed_authorize_body_is_refused(client: TestClient, windows) -> None:  # type: ignore[no-untyped-def]
    """"amount":"10.00" then "amount":"900.00" in one signed body was paid as 900.00."""
    dev = _enrol(client, windows)
    body = _with_amount(_payload(dev, windows, "dup1"), '"10.00","amount":"900.00"')
    r = _send(dev, AUTHORIZE, body)
    assert r.status_code == 422 and r.json()["detail"].startswith("amount: appears more than once"), r.text
    assert r.json()["errors"][0]["type"] == "duplicate_key"
    ok = dev.signed("POST", AUTHORIZE, _payload(dev, windows, "dup1"))  # nothing was recorded under the key
    assert ok.status_code == 200 and ok.json()["amount"] == "25.00", ok.text


def test_a_duplicate_key_inside_an_evidence_window_is_refused(client: TestClient, windows) -> None:  # type: ignore[no-untyped-def]
    dev = _enrol(client, windows)
    text = json.dumps(_payload(dev, windows, "dup2"), separators=(",", ":"))
    body = text.replace('"quality":', '"quality":0.0,"quality":', 2).encode()  # the first two windows
    r = _send(dev, AUTHORIZE, body)
    assert r.status_code == 422 and r.json()["detail"].startswith("evidence.0.quality: appears more than once"), r.text


def test_a_duplicate_key_spelled_with_an_escape_is_still_a_duplicate(client: TestClient, windows) -> None:  # type: ignore[no-untyped-def]
    dev = _enrol(client, windows)
    body = _with_amount(_payload(dev, windows, "dup3"), '"10.00","\\u0061mount":"900.00"')
    r = _send(dev, AUTHORIZE, body)
    assert r.status_code == 422 and r.json()["detail"].startswith("amount: appears more than once"), r.text


def test_duplicate_keys_are_refused_on_the_other_routes_too(client: TestClient, windows) -> None:  # type: ignore[no-untyped-def]
    """Routes FastAPI parses (consent, token checks): a 422 naming the key, not a 400."""
    dev = _enrol(client, windows)
    r = _send(dev, "/v1/users/alice/consents", b'{"modality":"gait","granted":true,"granted":false}')
    assert r.status_code == 422 and r.json()["detail"].startswith("granted: appears more than once"), r.text
    assert [c["active"] for c in dev.signed("GET", "/v1/users/alice/consents").json()["consents"]
            if c["modality"] == "gait"] == [True]
    r = client.post("/v1/transactions/verify-token", headers={**BANK, "content-type": "application/json"},
                    content=b'{"token":"x.yyyyyyyyyy","user_id":"alice","transaction_id":"t","amount":"1.00",'
                            b'"currency":"EUR","payee":"ACME","payee":"EVIL"}')
    assert r.status_code == 422 and r.json()["detail"].startswith("payee: appears more than once"), r.text


def test_bodies_the_quick_count_cannot_clear_are_still_accepted(client: TestClient, windows) -> None:  # type: ignore[no-untyped-def]
    """Spaces before colons, colons and braces inside strings: the full check runs, and passes."""
    dev = _enrol(client, windows)
    payload = _payload(dev, windows, "key:with:colons", payee="ACME {Shop}: Main St")
    body = json.dumps(payload, indent=1).replace('":', '" :').encode()
    r = _send(dev, AUTHORIZE, body)
    assert r.status_code == 200 and r.json()["payee"] == "ACME {Shop}: Main St", r.text


@pytest.mark.parametrize(("raw", "loc"), [
    (b'{"a":1,"a":2}', ("a",)),
    (b'{"a":1,"\\u0061":2}', ("a",)),
    (b'{"a":[{"b":1},{"c":{"d":1,"d":1}}]}', ("a", 1, "c", "d")),
    (b'{"a" : "x\\":", "b":{"a":1}}', None),
    (b'{"s":"{\\"k\\":1,\\"k\\":2}"}', None),  # a duplicate inside a string is text, not a key
])
def test_duplicate_key_paths(raw: bytes, loc: tuple[Any, ...] | None) -> None:
    from server.api.routing import DuplicateKeyError, _duplicate_key, check_unique_keys

    assert _duplicate_key(raw) == loc
    doc = json.loads(raw)
    keys = objects = 0
    stack = [doc]
    while stack:  # what validation would have found: distinct keys, objects
        node = stack.pop()
        if isinstance(node, dict):
            keys, objects = keys + len(node), objects + 1
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    if loc is None:
        check_unique_keys(raw, keys, objects)
    else:
        with pytest.raises(DuplicateKeyError) as exc:
            check_unique_keys(raw, keys, objects)
        assert exc.value.loc == loc


# --------------------------------------------------------------- 3. amounts and timestamps

LENIENT_AMOUNTS = ['"+10"', '" 10"', '"10 "', '"1_0"', '"\u0661\u0660"', '"10."', '".5"', '"1e2"', '"10.001"',
                   '"0x10"', '"10\\n"', "10.000000000000000001", "10.001", "true"]


@pytest.mark.parametrize("amount", LENIENT_AMOUNTS)
def test_authorize_amounts_have_one_spelling(client: TestClient, windows, amount: str) -> None:  # type: ignore[no-untyped-def]
    """"+10", " 10", "1_0", "١٠" were read as 10; the JSON number 10.000000000000000001 was rounded to 10."""
    dev = _enrol(client, windows)
    r = _send(dev, AUTHORIZE, _with_amount(_payload(dev, windows, "amt"), amount))
    assert r.status_code == 422 and r.json()["detail"].startswith("amount:"), r.text


@pytest.mark.parametrize(("amount", "paid"), [('"10"', "10.00"), ('"0.5"', "0.50"), ('"999999999999.99"', "999999999999.99"),
                                              ("10.5", "10.50"), ("12", "12.00"), ("1.10", "1.10")])
def test_amounts_in_the_documented_format_still_pass(client: TestClient, windows, amount: str, paid: str) -> None:  # type: ignore[no-untyped-def]
    dev = _enrol(client, windows)
    r = _send(dev, AUTHORIZE, _with_amount(_payload(dev, windows, "ok"), amount))
    assert r.status_code == 200 and r.json()["amount"] == paid, r.text


@pytest.mark.parametrize("amount", ['"+25.00"', '"25.00 "', '"2_5"', "25.000000000000000001"])
def test_token_verification_amounts_have_one_spelling(client: TestClient, amount: str) -> None:
    body = _with_amount({"token": "x.yyyyyyyyyy", "user_id": "alice", "transaction_id": "t", "currency": "EUR",
                         "payee": "ACME"}, amount)
    r = client.post("/v1/transactions/verify-token", headers={**BANK, "content-type": "application/json"}, content=body)
    assert r.status_code == 422 and r.json()["detail"].startswith("amount:"), r.text


def test_amount_numbers_are_read_exactly_outside_requests_too() -> None:
    base = {"token": "x.yyyyyyyyyy", "user_id": "alice", "transaction_id": "t", "currency": "EUR", "payee": "ACME"}
    assert TokenVerify.model_validate({**base, "amount": 10.5}).amount == Decimal("10.5")
    assert TokenVerify.model_validate({**base, "amount": Decimal("7.10")}).amount == Decimal("7.10")
    with pytest.raises(ValidationError, match="at most 2 decimals"):
        TokenVerify.model_validate({**base, "amount": Decimal("10.000000000000000001")})
    with pytest.raises(ValidationError, match="amount"):
        AuthorizeRequest.model_validate_json(json.dumps({**base, "amount": "\u0661\u0660", "channel": "app",
                                                         "idempotency_key": "k"}))


@pytest.mark.parametrize("spelling", ["+{ts}", "{ts_}"])
def test_the_timestamp_header_is_plain_digits(client: TestClient, windows, spelling: str) -> None:  # type: ignore[no-untyped-def]
    """"+N" and "N_M" were read as N: one signed request had several timestamp spellings."""
    dev = _enrol(client, windows)
    ts = str(int(time.time()))
    text = spelling.format(ts=ts, ts_=f"{ts[:4]}_{ts[4:]}")
    r = _send(dev, "/v1/users/alice/consents", b'{"modality":"gait","granted":true}', timestamp=text)
    assert r.status_code == 401 and r.json()["code"] == "bad_timestamp", r.text
    assert _send(dev, "/v1/users/alice/consents", b'{"modality":"gait","granted":true}', timestamp=ts).status_code == 201


# --------------------------------------------------------------- 4. payees that print like another

CONFUSABLE_PAYEES = [
    "\u0410\u0421\u041c\u0415 Shop",  # "АСМЕ" in Cyrillic letters, then a Latin word: reads as "ACME Shop"
    "A\u0421ME Shop",  # one Cyrillic ES inside a Latin word
    "\u0391CME",  # a Greek capital alpha in a Latin word
    "AC\u200dME",  # a zero-width joiner between Latin letters
    "ACME\u200c",  # a zero-width non-joiner after a Latin letter
    "Cafe\u0301 Zoe",  # "é" decomposed (not NFC)
    "p\u0430ypal",  # a Cyrillic small a in a Latin word
    "ACME ", " ACME", "ACME  Ltd",  # spaces that print as nothing, or as one
    "ACME\u00a0Ltd", "ACME\u2009Ltd", "ACME\u202fLtd",  # no-break, thin and narrow no-break spaces
    "ACM\uff25", "\uff21\uff23\uff2d\uff25",  # fullwidth letters ("ACMＥ", "ＡＣＭＥ")
    "\ufb01nance Ltd",  # the "fi" ligature
]


def test_payees_that_print_like_another_are_refused(client: TestClient, windows) -> None:  # type: ignore[no-untyped-def]
    dev = _enrol(client, windows)
    for k, payee in enumerate(CONFUSABLE_PAYEES):
        r = dev.signed("POST", AUTHORIZE, _payload(dev, windows, f"c{k}", payee=payee))
        assert r.status_code == 422 and r.json()["detail"].startswith("payee:"), (payee, r.text)
    r = client.post("/v1/transactions/verify-token", headers=BANK,
                    json={"token": "x.yyyyyyyyyy", "user_id": "alice", "transaction_id": "t", "amount": "1.00",
                          "currency": "EUR", "payee": CONFUSABLE_PAYEES[0]})
    assert r.status_code == 422 and r.json()["detail"].startswith("payee:"), r.text
    assert "NFC" in dev.signed("POST", AUTHORIZE, _payload(dev, windows, "n", payee="Cafe\u0301")).json()["detail"]


@pytest.mark.parametrize("payee", [
    "Caf\u00e9 Zo\u00eb \u6771\u4eac",  # composed accents, CJK
    "\u041e\u041e\u041e \u0420\u043e\u043c\u0430\u0448\u043a\u0430",  # "ООО Ромашка": Cyrillic alone
    "\u041e\u041e\u041e \u0420\u043e\u043c\u0430\u0448\u043a\u0430 Shop",  # Cyrillic that reads as Cyrillic, beside Latin
    "\u03a3\u03c0\u03cd\u03c1\u03bf\u03c2 Taverna",  # "Σπύρος": Greek that reads as Greek
    "\u06a9\u062a\u0627\u0628\u200c\u0641\u0631\u0648\u0634\u06cc",  # Persian needs the zero-width non-joiner
    "\u0915\u094d\u200d\u0937",  # Devanagari: a joiner after a virama
    "\u6771\u4eac\u30c7\u30d1\u30fc\u30c8",  # "東京デパート": CJK and (fullwidth-form) katakana as typed
    "M\u00fcller & S\u00f6hne GmbH",  # single spaces, accents composed
])
def test_payees_in_one_script_each_still_pass(client: TestClient, windows, payee: str) -> None:  # type: ignore[no-untyped-def]
    dev = _enrol(client, windows)
    r = dev.signed("POST", AUTHORIZE, _payload(dev, windows, "ok", payee=payee))
    assert r.status_code == 200 and r.json()["payee"] == payee, r.text


# --------------------------------------------------------------- 5. platform in the audit log


def test_the_audit_log_keeps_only_the_platform_family(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The device's free-text platform ("Anna's Pixel ...") stayed in the audit log after erasure."""
    from server.services import devices

    written: list[dict[str, Any]] = []
    real = devices.hooks.audit

    def audit(session: Any, **kw: Any) -> None:
        written.append(kw["payload"])
        real(session, **kw)

    monkeypatch.setattr(devices.hooks, "audit", audit)
    for user, platform, family in [("anna", "Anna's Pixel 8 (Android 14)", "android"), ("ben", "iPhone15,2 iOS 17.4", "ios"),
                                   ("cleo", "Windows 11 laptop", "desktop"), ("dan", "Dan's toaster", "other")]:
        DeviceClient("http://testserver", user_id=user, http=client).register(platform=platform)
        assert written[-1]["platform"] == family
        assert platform not in json.dumps(written[-1])
    dev = client.get("/v1/admin/users/anna/export", headers=ADMIN).json()
    assert "Anna's Pixel" not in json.dumps(dev["data"]["audit"]), "the free text reached the audit log"
    assert "Anna's Pixel" in json.dumps(dev)  # the device row keeps it (erased with the device)


def test_the_python_client_sends_amounts_in_the_one_spelling() -> None:
    """`DeviceClient.authorize` sent str(amount): Decimal("10.000") and Decimal("1E+1") were refused (422)."""
    from decimal import Decimal

    from server.client.api import amount_text

    assert [amount_text(a) for a in (Decimal("10.000"), Decimal("1E+1"), 10.0, "12", " 7.5 ")] == \
        ["10.00", "10.00", "10.00", "12.00", "7.50"]
    for bad in (0.1 + 0.2, "10.001", "ten"):
        with pytest.raises(ValueError, match="amount"):
            amount_text(bad)
