"""Request and response bodies of the /v1 API (pydantic): validation happens here, at the edge.

Feature windows only: a payload carrying raw events (key times, touch points, accelerometer
samples) is refused with a 422 naming the field, because raw behaviour never leaves the
device. Every float must be finite (NaN/inf refused, naming the field).
"""

from __future__ import annotations

import functools
import unicodedata
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, model_validator

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


def _printable(v: str) -> str:
    """Refuse control and invisible characters: PostgreSQL cannot store NUL, and none belongs in these fields."""
    if v.isascii():  # the usual case, checked without a lookup per character
        if any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError("control characters (NUL, newline, ...) are not allowed")
    elif any(unicodedata.category(c) in _HIDDEN and c not in _JOINERS for c in v):
        raise ValueError("control or invisible formatting characters (bidi overrides, zero-width, ...) are not allowed")
    return v


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be blank")
    return v


#: free text that ends up in a text column or a query: printable characters only
Text = Annotated[str, AfterValidator(_printable)]
#: a payee: printable, and not only spaces (the token binds it; the bank shows it)
Payee = Annotated[str, AfterValidator(_printable), AfterValidator(_not_blank)]

#: field names that mean someone is sending raw behaviour instead of features
RAW_EVENT_FIELDS = frozenset({"events", "keys", "press", "release", "samples", "xyz", "touches", "strokes",
                              "x", "y", "z", "t", "time", "raw"})
MAX_FEATURE_DIM = 1024
MAX_WINDOWS = 64


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
    policy_version: Text | None = Field(default=None, min_length=1, max_length=32)
    granted: bool = True


class EnrolRequest(_Strict):
    windows: list[FeatureWindowIn] = Field(min_length=1, max_length=MAX_WINDOWS)
    #: controlled adaptation: these windows are evidence of this approved transaction (approved
    #: at once or after a passed step-up), re-sent so the template follows the user's drift;
    #: only the windows that call carried are accepted, once each
    confirmed_transaction_id: Text | None = Field(default=None, min_length=1, max_length=36)


class ModalityEnrolment(BaseModel):
    modality: str
    n_windows: int
    model_id: str
    feature_version: str


class EnrolResponse(BaseModel):
    user_id: str
    modalities: list[ModalityEnrolment]


class AuthorizeRequest(_Strict):
    user_id: Id
    amount: Decimal = Field(gt=0, max_digits=14, decimal_places=2, allow_inf_nan=False)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    payee: Payee = Field(min_length=1, max_length=128)
    channel: Literal["app", "web", "api"] = "app"
    idempotency_key: Id
    evidence: list[FeatureWindowIn] = Field(default_factory=list, max_length=MAX_WINDOWS)


class Reason(BaseModel):
    modality: str
    code: str
    contribution: float


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


class SessionOut(BaseModel):
    session_id: str
    user_id: str
    status: str
    risk: float
    engine: str
    #: windows received, and those whose evidence counted: "ok" with none scored verifies nobody
    windows: int = 0
    scored_windows: int = 0


class TokenVerify(_Strict):
    """The payment the bank is about to execute, and the token the customer's app gave it."""

    token: Text = Field(min_length=10, max_length=4096)
    #: whose payment and which authorize call: a token approves one user's one transaction
    user_id: Id
    transaction_id: Text = Field(min_length=1, max_length=36)
    amount: Decimal = Field(gt=0, max_digits=14, decimal_places=2, allow_inf_nan=False)
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
    version: str = Field(pattern=r"^v\d{4,}$")


class Problem(BaseModel):
    detail: str
    code: str = "error"
