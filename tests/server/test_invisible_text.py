"""Free text that prints as something else, or as nothing: refused, naming the field.

Only the control, format, separator and surrogate categories were refused, so payees with a
combining grapheme joiner ("AC\u034fME"), a variation selector ("ACME\ufe0f"), a Hangul filler
("ACME\u3164", or "\u3164" alone) or a braille blank ("ACME\u2800") were accepted and bound into
the token, printing as "ACME" or as nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from server import schemas
from server.schemas import AuthorizeRequest, ConsentIn, DeviceRegister, FeatureWindowIn, TokenVerify
from tests.server.conftest import evidence
from tests.server.test_security_rules import _enrol

INVISIBLE = {
    "grapheme joiner": "AC\u034fME",
    "variation selector": "ACME\ufe0f",
    "variation selector 17": "ACME\U000e0100",
    "Hangul filler": "ACME\u3164",
    "halfwidth Hangul filler": "ACME\uffa0",
    "Hangul choseong filler": "AC\u115fME",
    "Khmer inherent vowel": "ACME\u17b4",
    "Mongolian variation selector": "ACME\u180b",
    "tag letter": "ACME\U000e0041",
    "braille blank": "ACME\u2800",
    "filler alone": "\u3164",
    "braille blank alone": "\u2800",
}
PAYMENT = {"user_id": "alice", "amount": "25.00", "currency": "EUR", "channel": "app", "idempotency_key": "k",
           "evidence": []}
TOKEN = {"token": "x.yyyyyyyyyy", "user_id": "alice", "transaction_id": "t", "amount": "1.00", "currency": "EUR"}


def _refusal(model: Any, data: dict[str, Any]) -> tuple[tuple[Any, ...], str]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    err = info.value.errors()[0]
    return tuple(err["loc"]), err["msg"]


@pytest.mark.parametrize("payee", INVISIBLE.values(), ids=INVISIBLE.keys())
def test_payees_with_invisible_characters_are_refused(payee: str) -> None:
    for model, data in ((AuthorizeRequest, PAYMENT), (TokenVerify, TOKEN)):
        loc, msg = _refusal(model, {**data, "payee": payee})
        assert loc == ("payee",) and "invisible" in msg, (model, loc, msg)


def test_a_payee_of_joiners_and_spaces_alone_is_blank() -> None:
    loc, msg = _refusal(AuthorizeRequest, {**PAYMENT, "payee": "\u200d \u200c"})
    assert loc == ("payee",) and "blank" in msg, msg


def test_an_ascii_payee_is_checked_for_blankness_without_the_invisible_character_scan(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The hot path (every authorize and verify-token): an ASCII payee holds nothing invisible.

    The scan cost about 1 us a payee; an ASCII text is blank exactly when `str.strip` empties it.
    """
    class NoScan:
        def sub(self, *args: Any) -> str:
            raise AssertionError("ASCII payee scanned for invisible characters")

    monkeypatch.setattr(schemas, "_PRINTS_NOTHING", NoScan())
    assert AuthorizeRequest.model_validate({**PAYMENT, "payee": "ACME Ltd."}).payee == "ACME Ltd."
    loc, msg = _refusal(AuthorizeRequest, {**PAYMENT, "payee": "   "})
    assert loc == ("payee",) and "blank" in msg, msg


@pytest.mark.parametrize(("model", "data", "loc"), [
    (DeviceRegister, {"device_id": "d", "user_id": "u", "public_key": "k" * 43, "proof": "p" * 86, "platform": "x"},
     ("platform",)),
    (DeviceRegister, {"device_id": "d", "user_id": "u", "public_key": "k" * 43, "proof": "p" * 86,
                      "attestation": {"model": "x"}}, ("attestation", "model")),
    (ConsentIn, {"modality": "gait", "policy_version": "x"}, ("policy_version",)),
    (FeatureWindowIn, {"modality": "gait", "feature_version": "x", "start": 0.0, "end": 1.0, "n_events": 5,
                       "quality": 1.0, "values": [1.0]}, ("feature_version",)),
    (TokenVerify, {**TOKEN, "payee": "ACME"}, ("token",)),
])
def test_the_other_free_text_fields_refuse_them_too(model: Any, data: dict[str, Any], loc: tuple[str, ...]) -> None:
    """Every field of the free-text type shares the rule (it reaches the database and the audit log)."""
    field, *key = loc
    value = data[field]
    sneaky = {key[0]: value[key[0]] + "\u3164"} if key else value + "\ufe0f"
    model.model_validate(data)  # as sent, valid
    got, msg = _refusal(model, {**data, field: sneaky})
    assert got == loc and "invisible" in msg, (got, msg)


@pytest.mark.parametrize("payee", [
    "Caf\u00e9 Zo\u00eb \u6771\u4eac",
    "\u06a9\u062a\u0627\u0628\u200c\u0641\u0631\u0648\u0634\u06cc",  # Persian needs the zero-width non-joiner
    "\u0915\u094d\u200d\u0937",  # Devanagari: a joiner after a virama
    "\ud55c\uad6d\uc2dd\ub2f9",  # Hangul syllables (the fillers are what is refused)
    "Caf\u00e9 \u2615",  # a symbol without a variation selector
])
def test_payees_that_print_as_themselves_still_pass(payee: str) -> None:
    assert AuthorizeRequest.model_validate({**PAYMENT, "payee": payee}).payee == payee


#: variation selectors that are part of the text: they pick the glyph of the character they follow
SELECTED = {
    "ideographic variation selector": "\u845b\U000e0100\u57ce \u5546\u5e97",
    "Mongolian free variation selector": "\u182d\u180b\u1823",
    "emoji presentation": "Love \u2764\ufe0f Shop",  # as iOS types the heart
    "keycap emoji": "Shop 1\ufe0f\u20e3",
    "text presentation": "Caf\u00e9 \u2615\ufe0e",
    "standardized variant of a compatibility ideograph": "\u8c48\ufe00 \u5546\u5e97",  # U+F900's glyph
    "third standardized variant": "\u9f9c\ufe02",  # U+9F9C has three compatibility forms
}
#: variation selectors that only hide a difference: after nothing that takes one
STRAY = {
    "after a Latin letter": "ACME\ufe0f",
    "inside a Latin word": "A\ufe0fCME",
    "alone": "\ufe0f",
    "at the start": "\ufe0f\u2764 Shop",
    "after another selector": "Love \u2764\ufe0f\ufe0f Shop",
    "ideographic, twice": "\u845b\U000e0100\U000e0101",
    "after a digit": "Shop 1\ufe0f",
    "after a space": "ACME \ufe0f",
    "after punctuation": "ACME\u2026\ufe0f",
    "after a Cyrillic letter": "\u0416\u0443\u043a\ufe0f",
    "after a Greek letter": "\u03a9mega\u180b",
    "after a mark on a Latin letter": "ACMQ\u0301\ufe0f",
    # accepted by the former denylist (any character but a Latin, Greek or Cyrillic letter, a digit,
    # punctuation took a selector); they print as the text without it
    "after a Hangul syllable": "\uc2dd\ub2f9\ufe0f",
    "after a Hebrew letter": "\u05e9\u05dc\u05d5\u05dd\ufe0f",
    "standardized after an ideograph without compatibility forms": "\u6771\u4eac\u5546\u5e97\ufe00",
    "after a fullwidth Latin letter": "\uff21\uff23\uff2d\uff25\ufe0f",
    "after a currency sign": "ACME \u20ac\ufe0f",
    "standardized after a digit": "0\ufe00",
    "a second variant of an ideograph that has one": "\u8c48\ufe01",
    "U+FE03-FE0D after an ideograph": "\u845b\ufe03",
    "emoji selector after an ideograph": "\u845b\ufe0f",
    "ideographic after a compatibility ideograph": "\uf900\U000e0100",
    "Mongolian after an emoji": "\u2764\u180b",
    "ideographic after a Mongolian letter": "\u182d\U000e0100",
    "after a keycap base without the keycap": "#\ufe0f",
    "text presentation in a keycap": "1\ufe0e\u20e3",
}


@pytest.mark.parametrize("text", SELECTED.values(), ids=SELECTED.keys())
def test_a_variation_selector_after_a_character_that_takes_one_is_accepted(text: str) -> None:
    """Accepted before the default-ignorable rule (a selector is no format character), and still: they print."""
    assert AuthorizeRequest.model_validate({**PAYMENT, "payee": text}).payee == text
    assert TokenVerify.model_validate({**TOKEN, "payee": text}).payee == text
    device = {"device_id": "d", "user_id": "u", "public_key": "k" * 43, "proof": "p" * 86, "platform": text}
    assert DeviceRegister.model_validate(device).platform == text  # plain free text too


@pytest.mark.parametrize("text", STRAY.values(), ids=STRAY.keys())
def test_a_stray_variation_selector_is_refused(text: str) -> None:
    for model, data, field in ((AuthorizeRequest, PAYMENT, "payee"), (TokenVerify, TOKEN, "payee"),
                               (ConsentIn, {"modality": "gait"}, "policy_version")):
        loc, msg = _refusal(model, {**data, field: text})
        assert loc == (field,) and "invisible" in msg, (model, loc, msg)


def test_the_api_refuses_them_naming_the_payee(client: TestClient, windows: dict) -> None:
    dev = _enrol(client, windows)
    for k, payee in enumerate(("AC\u034fME", "\u3164")):
        body = {**PAYMENT, "user_id": dev.user_id, "idempotency_key": f"i{k}", "payee": payee,
                "evidence": [w.to_dict() for w in evidence(windows)]}
        r = dev.signed("POST", "/v1/transactions/authorize", body)
        assert r.status_code == 422 and r.json()["detail"].startswith("payee:"), r.text


def test_the_api_accepts_an_emoji_as_ios_types_it(client: TestClient, windows: dict) -> None:
    dev = _enrol(client, windows)
    payee = SELECTED["emoji presentation"]
    body = {**PAYMENT, "user_id": dev.user_id, "idempotency_key": "heart", "payee": payee,
            "evidence": [w.to_dict() for w in evidence(windows)]}
    r = dev.signed("POST", "/v1/transactions/authorize", body)
    assert r.status_code == 200, r.text
