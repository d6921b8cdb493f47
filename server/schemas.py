"""Request and response bodies of the /v1 API (pydantic): validation happens here, at the edge.

Feature windows only: a payload carrying raw events (key times, touch points, accelerometer
samples) is refused with a 422 naming the field, because raw behaviour never leaves the
device. Every float must be finite (NaN/inf refused, naming the field).
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from contextvars import ContextVar
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

Modality = Literal["keystroke", "touch", "gait"]
Outcome = Literal["approve", "step_up", "deny"]
Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")]
#: a number sent as a number: strict, so a string such as "1" is refused rather than read as 1.0
#: (a client that quotes its numbers has a bug the server must not paper over); ints are numbers
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
#: a feature value: finite and within +-1e9 (real features stay below 1e3; far larger ones only
#: overflow the scorers' distances into inf or NaN)
FeatureValue = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-1e9, le=1e9)]


#: Unicode categories refused in free text: controls, format characters (bidi overrides such as
#: U+202E, zero-width spaces: a payee shown to the bank must read as it is stored; the two
#: joiners below excepted), line and paragraph separators, surrogates
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
#: format characters that written languages need (Persian, Indic scripts, emoji sequences)
_JOINERS = frozenset({"\u200c", "\u200d"})
_NO_JOINERS = dict.fromkeys(map(ord, _JOINERS))
#: variation selectors (standard, ideographic, Mongolian free): default-ignorable, but after an
#: emoji, a CJK ideograph or a Mongolian letter they pick its glyph and are part of the text
#: ("\u2764\ufe0f" as iOS types it, "\u845b\U000e0100"); see `_stray_selector`
_SELECTORS = "\u180b-\u180d\u180f\ufe00-\ufe0f\U000e0100-\U000e01ef"
_SELECTOR = re.compile(f"[{_SELECTORS}]")
#: characters that print as nothing whatever their category: the rest of Unicode's
#: Default_Ignorable_Code_Point set (DerivedCoreProperties.txt: the combining grapheme joiner,
#: Hangul fillers, tags, ...; most of its format characters are refused by category as well), the
#: joiners above left out, and the braille blank U+2800, which prints as a space but is none to
#: `str.strip`. "AC\u034fME" and "ACME\u3164" print as "ACME", "\u3164" as nothing
_IGNORABLES = ("\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u206f"
               "\u2800\u3164\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
               "\U000e0000-\U000e00ff\U000e01f0-\U000e0fff")
_INVISIBLE = re.compile(f"[{_IGNORABLES}]")
#: what a blank check sets aside besides spaces: all of the above, selectors included
_PRINTS_NOTHING = re.compile(f"[{_IGNORABLES}{_SELECTORS}]")
#: characters before which U+FE0F and a combining keycap U+20E3 make a keycap emoji ("1\ufe0f\u20e3")
_KEYCAP_BASES = frozenset("0123456789#*")
_EMOJI_SELECTORS = frozenset("\ufe0e\ufe0f")
_MONGOLIAN_SELECTORS = frozenset("\u180b\u180c\u180d\u180f")
_CJK_IDEOGRAPH = ("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH")


@functools.cache
def _compatibility_variants() -> dict[str, int]:
    """How many CJK compatibility ideographs decompose to each unified one (1 to 3).

    The standardized variation sequences U+FE00, U+FE01, U+FE02 after a unified ideograph name
    its first, second and third compatibility form (which NFC would erase); after any other
    ideograph they print as nothing. Built on first use from the CJK Compatibility Ideographs blocks.
    """
    counts: dict[str, int] = {}
    for cp in (*range(0xF900, 0xFB00), *range(0x2F800, 0x2FA20)):
        decomposition = unicodedata.decomposition(chr(cp))
        if unicodedata.name(chr(cp), "").startswith(_CJK_IDEOGRAPH[1]) and decomposition:
            base = chr(int(decomposition, 16))
            counts[base] = counts.get(base, 0) + 1
    return counts


def _takes_selector(v: str, i: int) -> bool:
    """Whether the variation selector `v[i]` follows a character it picks a glyph of (an allowlist).

    The character right before it is its base (Unicode never makes a combining mark one):
    U+FE0E/U+FE0F after a symbol (category So: emoji and pictographs such as \u2764 \u2615) or
    between a keycap base and U+20E3; U+FE00, FE01, FE02 after a CJK ideograph with at least one,
    two, three compatibility forms (`_compatibility_variants`); U+E0100-E01EF after a CJK ideograph
    that NFC keeps; Mongolian ones after a Mongolian letter. Nothing else: U+FE03-FE0D, or after a letter, digit, currency sign, fullwidth
    form, space, joiner, another selector.
    """
    if i == 0:
        return False
    s, base = v[i], v[i - 1]
    if s in _EMOJI_SELECTORS:
        return unicodedata.category(base) == "So" or (
            s == "\ufe0f" and base in _KEYCAP_BASES and v.startswith("\u20e3", i + 1))
    if s in _MONGOLIAN_SELECTORS:
        return unicodedata.name(base, "").startswith("MONGOLIAN LETTER")
    if s >= "\U000e0100":
        return unicodedata.name(base, "").startswith(_CJK_IDEOGRAPH) and not unicodedata.decomposition(base)
    return ord(s) - 0xFE00 < _compatibility_variants().get(base, 0)  # U+FE03-FE0D: never


def _stray_selector(v: str) -> bool:
    """Whether a variation selector in `v` is look-alike noise: it follows nothing that takes it.

    Anywhere but where `_takes_selector` allows it, a selector prints as nothing: "ACME\ufe0f"
    reads as "ACME", "\uc2dd\ub2f9\ufe0f" as "\uc2dd\ub2f9". Only a text holding a selector costs
    more than one regex scan.
    """
    return any(not _takes_selector(v, m.start()) for m in _SELECTOR.finditer(v))


def _printable(v: str) -> str:
    """Refuse control and invisible characters: PostgreSQL cannot store NUL, and none belongs in these fields."""
    if v.isascii():  # the usual case: ASCII's printable characters are exactly U+0020-U+007E
        if not v.isprintable():
            raise ValueError("control characters (NUL, newline, ...) are not allowed")
    elif _INVISIBLE.search(v) or any(unicodedata.category(c) in _HIDDEN and c not in _JOINERS for c in v):
        raise ValueError("control or invisible characters (bidi overrides, zero-width characters, fillers, "
                         "...) are not allowed")
    elif _stray_selector(v):
        raise ValueError("an invisible variation selector is allowed only after a character that takes one "
                         "(U+FE0E/U+FE0F after an emoji or other symbol, or in a keycap; ideographic ones "
                         "after a CJK ideograph; Mongolian ones after a Mongolian letter)")
    return v


def _not_blank(v: str) -> str:
    """Refuse text that prints as nothing: spaces and invisible characters (the joiners too) alone."""
    if not (v.strip() if v.isascii() else _PRINTS_NOTHING.sub("", v).translate(_NO_JOINERS).strip()):
        raise ValueError("must not be blank")
    return v


#: scripts whose letters join cursively: a zero-width non-joiner between two of their letters
#: picks a letter's form (Persian "کتاب\u200cفروشی"), as IDNA's CONTEXTJ rule allows (RFC 5892)
_JOINING_SCRIPTS = ("ARABIC", "SYRIAC", "NKO", "MONGOLIAN", "MANDAIC", "ADLAM", "HANIFI ROHINGYA")
_VIRAMA = 9  # canonical combining class of a virama: Indic scripts' joiners follow one
_LATIN, _CYRILLIC, _GREEK = "LATIN", "CYRILLIC", "GREEK"
#: Cyrillic and Greek letters that print like a Latin letter (Unicode TR39 confusables, the
#: usual fonts): "АСМЕ" of these reads as "ACME"
_LATIN_LOOKALIKES = frozenset(unicodedata.lookup(name) for name in (
    *(f"CYRILLIC CAPITAL LETTER {n}" for n in ("A", "VE", "ES", "IE", "EN", "BYELORUSSIAN-UKRAINIAN I", "JE", "KA",
                                                 "EM", "O", "ER", "DZE", "TE", "HA", "STRAIGHT U", "QA", "WE", "SHHA")),
    *(f"CYRILLIC SMALL LETTER {n}" for n in ("A", "ES", "IE", "BYELORUSSIAN-UKRAINIAN I", "JE", "O", "ER", "DZE", "U",
                                               "HA", "SHHA", "KOMI DE", "QA", "WE", "PALOCHKA", "STRAIGHT U")),
    "CYRILLIC LETTER PALOCHKA",
    *(f"GREEK CAPITAL LETTER {n}" for n in ("ALPHA", "BETA", "EPSILON", "ZETA", "ETA", "IOTA", "KAPPA", "MU", "NU",
                                              "OMICRON", "RHO", "TAU", "UPSILON", "CHI", "YOT")),
    *(f"GREEK SMALL LETTER {n}" for n in ("ALPHA", "IOTA", "NU", "OMICRON", "RHO", "UPSILON")),
    "GREEK LETTER YOT", "GREEK LUNATE SIGMA SYMBOL", "GREEK CAPITAL LUNATE SIGMA SYMBOL",
))


def _script(c: str) -> str:
    """LATIN, CYRILLIC or GREEK for a letter of those scripts (by its Unicode name), else ""."""
    name = unicodedata.name(c, "")
    for script in (_LATIN, _CYRILLIC, _GREEK):
        if name.startswith(script):
            return script
    return ""


def _joiner_needed(v: str, i: int) -> bool:
    """Whether the joiner at `v[i]` sits where a script needs it (RFC 5892 CONTEXTJ, simplified).

    After a virama (Indic conjuncts) either joiner; a non-joiner also between two letters of a
    cursive script, combining marks beside it skipped. Anywhere else it only hides a difference.
    """
    if i > 0 and unicodedata.combining(v[i - 1]) == _VIRAMA:
        return True
    if v[i] != "\u200c":
        return False

    def joining_letter(j: int, step: int) -> bool:
        while 0 <= j < len(v) and unicodedata.category(v[j]) in ("Mn", "Me"):
            j += step
        return (0 <= j < len(v) and unicodedata.category(v[j]).startswith("L")
                and unicodedata.name(v[j], "").startswith(_JOINING_SCRIPTS))

    return joining_letter(i - 1, -1) and joining_letter(i + 1, 1)


def _unambiguous(v: str) -> str:
    """Refuse a payee that can print like another one.

    Extra spaces, compatibility characters, not NFC, a stray joiner, mixed or look-alike scripts.
    The token binds the payee's exact text while a person approves what it looks like, so two
    different texts that print alike ("ACME" in Latin and in Cyrillic letters, "é" composed or
    not, "AC\u200dME") would let an approval for one pay the other.
    """
    if v != v.strip() or "  " in v:  # "ACME " and "ACME  Ltd" print like "ACME" and "ACME Ltd"
        raise ValueError("leading, trailing or repeated spaces: a look-alike of the same name with single spaces")
    if v.isascii():  # the usual case: nothing below can apply
        return v
    if not unicodedata.is_normalized("NFKC", v) and unicodedata.is_normalized("NFC", v):
        # compatibility characters: fullwidth "ＡＣＭＥ", no-break and thin spaces, ligatures
        odd = sorted({c for c in v if unicodedata.normalize("NFKC", c) != c})
        raise ValueError(f"holds characters that print like plainer ones ({', '.join(f'U+{ord(c):04X}' for c in odd)}:"
                         " fullwidth letters, special spaces, ligatures): send the plain characters")
    if not unicodedata.is_normalized("NFC", v):
        raise ValueError("not NFC-normalised Unicode (send accented letters composed, e.g. \"é\" as U+00E9)")
    for i, c in enumerate(v):
        if c in _JOINERS and not _joiner_needed(v, i):
            raise ValueError("a zero-width joiner or non-joiner is allowed only where a script needs it "
                             "(after a virama; a non-joiner between Arabic-script letters)")
    latin, others = False, []
    word: set[str] = set()
    for c in v + " ":
        cat = unicodedata.category(c)
        if cat[0] not in "LMN":  # a word ends at a space, punctuation or a symbol
            if len(word) > 1:
                raise ValueError(f"mixes {' and '.join(sorted(s.title() for s in word))} letters in one word: "
                                 "a look-alike of another name")
            word = set()
            continue
        script = _script(c) if cat[0] == "L" else ""
        if script:
            word.add(script)
            if script == _LATIN:
                latin = True
            else:
                others.append(c)
    if latin and others and all(c in _LATIN_LOOKALIKES for c in others):
        raise ValueError(f"its Cyrillic or Greek letters ({''.join(others)!r}) all print like Latin ones beside "
                         "Latin text: a look-alike of another name; spell it in one script")
    return v


#: free text that ends up in a text column or a query: printable characters only
Text = Annotated[str, AfterValidator(_printable)]
#: a payee: printable, not only spaces, and printing as itself only (the token binds it; the
#: person approves what it looks like): NFC, no stray joiners, no mixed or look-alike scripts
Payee = Annotated[str, AfterValidator(_printable), AfterValidator(_not_blank), AfterValidator(_unambiguous)]

#: the JSON text of the request body being validated, set by `server.api.routing` while it is
#: parsed and validated: an amount sent as a JSON number is read from its digits, not through
#: the binary float the parser made of it
REQUEST_JSON: ContextVar[bytes | None] = ContextVar("cadence_request_json", default=None)
#: an amount as text: ASCII digits, at most 12 before the point and 2 after it; no sign, space,
#: digit separator, exponent or non-ASCII digit ("+10", " 10", "1_0" and "١٠" were read as 10)
AMOUNT_PATTERN = r"^[0-9]{1,12}(\.[0-9]{1,2})?$"
_AMOUNT_TEXT = re.compile(AMOUNT_PATTERN)


def _beyond_cents(d: Decimal) -> bool:
    """Whether `d` has a non-zero digit after the second decimal (10.001, 10.000000000000000001)."""
    _, digits, exponent = d.as_tuple()
    extra = -exponent - 2 if isinstance(exponent, int) else 0
    return extra > 0 and any(digits[-extra:])


def _json_number(value: float, field: str) -> Decimal:
    """The exact decimal a JSON number was written as, read again from the request's text.

    The JSON parser hands numbers over as binary floats: 10.000000000000000001 arrives as 10.0.
    The body is parsed once more (with `Decimal` numbers) only for an amount sent as a number,
    which no Cadence client does. Outside a request (a Python caller) the float's shortest repr.
    """
    raw = REQUEST_JSON.get()
    if raw is not None:
        try:
            doc = json.loads(raw, parse_float=Decimal)
        except (ValueError, RecursionError):
            doc = None
        exact = doc.get(field) if isinstance(doc, dict) else None
        if isinstance(exact, Decimal) and float(exact) == value:
            return exact
    return Decimal(repr(value))


def _amount(v: Any, info: ValidationInfo) -> Any:
    """An amount exactly as sent: a strict decimal string, or a JSON number with at most 2 decimals."""
    if isinstance(v, str):
        if not _AMOUNT_TEXT.fullmatch(v):
            raise PydanticCustomError("amount_format", "a decimal string of ASCII digits with at most 2 decimals, "
                                      "such as \"10.00\" (no sign, spaces, separators or exponent)")
        return Decimal(v)
    if isinstance(v, bool):
        raise PydanticCustomError("amount_type", "a decimal string such as \"10.00\", not a boolean")
    if isinstance(v, float):
        v = _json_number(v, info.field_name or "amount")
    if isinstance(v, Decimal | int):
        exact = Decimal(v)
        if exact.is_finite() and _beyond_cents(exact):
            raise PydanticCustomError("amount_decimals", "at most 2 decimals: {value} was sent",
                                      {"value": str(exact)})
        return exact
    return v  # anything else: the Decimal validator words the refusal


#: a payment amount (see `AMOUNT_PATTERN`); a decimal string is what clients send
Amount = Annotated[
    Decimal,
    BeforeValidator(_amount),
    Field(gt=0, max_digits=14, decimal_places=2, allow_inf_nan=False),
    WithJsonSchema({"anyOf": [{"type": "string", "pattern": AMOUNT_PATTERN}, {"type": "number", "exclusiveMinimum": 0}],
                    "description": "decimal string (at most 12 digits, 2 decimals, no sign), e.g. \"10.00\"; "
                                   "a JSON number is read from its digits and refused with more than 2 decimals"}),
]

#: field names that mean someone is sending raw behaviour instead of features
RAW_EVENT_FIELDS = frozenset({"events", "keys", "press", "release", "samples", "xyz", "touches", "strokes",
                              "x", "y", "z", "t", "time", "raw"})
MAX_FEATURE_DIM = 1024
MAX_WINDOWS = 64
#: longest span of one feature window, seconds: a week. Windows last seconds to minutes; finite
#: bounds whose difference overflows (or spans years) are a forged window, and the event-rate
#: plausibility check would read any event count over such a span as human
MAX_WINDOW_S = 7 * 86_400.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FeatureWindowIn(_Strict):
    """One window of features as `modalities.events.FeatureWindow.to_dict()` writes it."""

    modality: Modality
    feature_version: Text = Field(min_length=1, max_length=64)
    start: Finite
    end: Finite
    n_events: int = Field(strict=True, ge=1, le=10_000_000)
    quality: float = Field(strict=True, ge=0.0, le=1.0, allow_inf_nan=False)
    values: list[FeatureValue] = Field(min_length=1, max_length=MAX_FEATURE_DIM)

    @model_validator(mode="before")
    @classmethod
    def _no_raw_events(cls, data: Any) -> Any:
        if isinstance(data, dict):
            raw = sorted(RAW_EVENT_FIELDS & set(data))
            if raw:
                raise ValueError(f"raw events are not accepted (fields {raw}): send feature windows; "
                                 "raw behaviour never leaves the device")
        return data

    @model_validator(mode="after")
    def _ordered(self) -> FeatureWindowIn:
        if self.end < self.start:
            raise ValueError(f"end: window ends before it starts ({self.end} < {self.start})")
        if not self.end - self.start <= MAX_WINDOW_S:  # also an overflow to inf (-1.7e308 .. 1.7e308)
            raise ValueError(f"end: the window lasts {self.end - self.start:g} s, more than the "
                             f"{MAX_WINDOW_S:g} s (7 days) any window may span")
        return self

    @functools.cached_property
    def values_array(self) -> np.ndarray:
        """`values` as little-endian float64, converted once: hashing, checks and scoring share it.

        A cached property lives in the instance's own dict: read back in one lookup, where a
        pydantic private attribute goes through `__getattr__` on every read.
        """
        return np.asarray(self.values, dtype="<f8")

    def array(self) -> np.ndarray:
        return self.values_array


class DeviceRegister(_Strict):
    device_id: Id
    user_id: Id
    public_key: Text = Field(min_length=40, max_length=64, description="Ed25519 public key, raw 32 bytes, base64url")
    platform: Text = Field(default="", max_length=64)
    attestation: dict[Text, Text] = Field(default_factory=dict, max_length=32)
    #: device's signature (base64url) of "register\n{device_id}\n{user_id}" proving it holds the key
    proof: Text = Field(min_length=40, max_length=128)


class DeviceOut(BaseModel):
    device_id: str
    user_id: str
    platform: str
    #: UTC; SQLite gives stored times back without their zone, so a naive one is UTC
    created_at: Annotated[datetime, AfterValidator(lambda t: t if t.tzinfo else t.replace(tzinfo=UTC))]


class ConsentIn(_Strict):
    modality: Modality
    purpose: Literal["authentication", "federated_training"] = "authentication"
    #: the policy text version the person agreed to (default: the current one)
    #: (bounds before the text check: on `Text | None` they ran after it, worded "at most 32 items")
    policy_version: Annotated[str, Field(min_length=1, max_length=32), AfterValidator(_printable)] | None = None
    #: strictly true or false: "off" revoked (and deleted the template), "yes" or 1 granted
    granted: StrictBool = True


class ConsentOut(BaseModel):
    """A consent change as recorded: a revoke also says what it erased (rows per table)."""

    user_id: str
    modality: Modality
    purpose: str
    granted: bool
    recorded: bool = True
    #: rows deleted by a revoke, per table (the modality's template, windows, ...); empty on a grant
    erased: dict[str, int] = Field(default_factory=dict)


class EnrolRequest(_Strict):
    windows: list[FeatureWindowIn] = Field(min_length=1, max_length=MAX_WINDOWS)
    #: controlled adaptation: these windows are evidence of this approved transaction (approved
    #: at once or after a passed step-up), re-sent so the template follows the user's drift;
    #: only the windows that call carried are accepted, once each
    confirmed_transaction_id: Annotated[str, Field(min_length=1, max_length=36), AfterValidator(_printable)] | None = None


class ModalityEnrolment(BaseModel):
    modality: str
    n_windows: int
    model_id: str
    feature_version: str
    #: windows of this call that were accepted (their digests are now seen: never send them
    #: again) but not enrolled, and why: {"low_quality": n} below `enrol_min_quality`,
    #: {"not_scored": n} touch taps (the models read swipes only), {"evicted": n} plain enrolment
    #: windows past the cap (`MAX_ENROL_WINDOWS`: the newest are kept)
    skipped: int = 0
    skipped_reasons: dict[str, int] = Field(default_factory=dict)


class EnrolResponse(BaseModel):
    user_id: str
    modalities: list[ModalityEnrolment]


class AuthorizeRequest(_Strict):
    user_id: Id
    amount: Amount
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    payee: Payee = Field(min_length=1, max_length=128)
    channel: Literal["app", "web", "api"] = "app"
    idempotency_key: Id
    evidence: list[FeatureWindowIn] = Field(default_factory=list, max_length=MAX_WINDOWS)


class Reason(BaseModel):
    modality: str
    code: str
    #: the modality's LLR contribution; null in answers to the device (`device_view`): the bank reads it
    contribution: float | None


class AuthorizeResponse(BaseModel):
    transaction_id: str
    user_id: str
    decision: Outcome
    status: str
    risk: float
    tier: str
    amount: str
    currency: str
    payee: str
    reasons: list[Reason]
    model_versions: dict[str, str]
    token: str
    created_at: str


class StepUpComplete(_Strict):
    #: strictly true or false: "yes" or 1 must not approve a payment
    success: StrictBool


class SessionCreate(_Strict):
    user_id: Id


class SessionEvidence(_Strict):
    windows: list[FeatureWindowIn] = Field(min_length=1, max_length=MAX_WINDOWS)


class TokenVerify(_Strict):
    """The payment the bank is about to execute, and the token the customer's app gave it."""

    token: Text = Field(min_length=10, max_length=4096)
    #: whose payment and which authorize call: a token approves one user's one transaction
    user_id: Id
    transaction_id: Text = Field(min_length=1, max_length=36)
    amount: Amount
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    payee: Payee = Field(min_length=1, max_length=128)
    #: spend the token (default): a second redemption is refused; false only checks it
    redeem: StrictBool = True


class ModelOut(BaseModel):
    modality: str
    version: str
    scorer: str
    feature_version: str
    source: str
    created: str
    active: bool
    metrics: dict[str, Any]


class ActivateIn(_Strict):
    #: a registry version (`v0001`, ...: `modalities.registry`): ASCII digits, at most 9 of them
    #: (an unbounded name, longer than the file system allows, was a 500)
    version: str = Field(max_length=10, pattern=r"^v[0-9]{4,9}$")


class Problem(BaseModel):
    """Every refusal's body: `detail` is "<field>: <reason>", `code` the machine code (docs/api.md)."""

    detail: str
    code: str = "error"


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationProblem(Problem):
    """A 422: besides `detail` (the first failing fields), `errors` lists every failing field."""

    errors: list[FieldError] = Field(default_factory=list)


#: what the OpenAPI spec says every operation may answer besides its success (FastAPI's own
#: `HTTPValidationError`, `{"detail": [...]}`, is not what this API sends)
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {"model": ValidationProblem, "description": "Invalid request: `detail` names the field; `errors` lists them"},
    "4XX": {"model": Problem, "description": "Refused (401 signature or key, 403, 404, 409, 413, 423 locked, "
                                             "429 with Retry-After): `code` says which"},
    503: {"model": Problem, "description": "Database unavailable (`database_unavailable`), with Retry-After"},
}
