"""Turn per-modality evidence into a transaction decision.

This is the stable API the server calls (`decide`). The rule behind it is replaced by the
calibrated fusion engine without changing the call.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator

from modalities.events import MODALITIES

Outcome = Literal["approve", "step_up", "deny"]


@dataclass(frozen=True)
class ModalityEvidence:
    """One modality's comparison result for a transaction.

    `score` is the scorer's raw score (higher = more genuine); `llr` its calibrated
    log-likelihood ratio when a calibrator is available (None otherwise). `model_version` is
    the serving model's id (``registry:v0003``, ``default:<scorer>:<version>``): a calibrator
    applies only to the model it was fitted for.
    """

    modality: str
    score: float
    quality: float = 1.0
    n_windows: int = 1
    scorer: str = ""
    model_version: str = ""
    llr: float | None = None


@dataclass(frozen=True)
class ReasonCode:
    modality: str
    code: str
    contribution: float


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    risk: float  # 0 = certainly genuine, 1 = certainly impostor
    tier: str
    fused_llr: float
    reasons: list[ReasonCode] = field(default_factory=list)
    target_fmr: float = 0.01


@dataclass(frozen=True)
class Tier:
    name: str
    max_amount: float
    target_fmr: float
    approve_llr: float  # fused LLR needed to approve
    deny_llr: float  # fused LLR at or below which we deny
    #: approve only on corroborated evidence: two modalities or more, and the sum without the
    #: strongest one for the person (> 0, the `match` level), so no single modality approves alone
    corroborate: bool = False


@dataclass(frozen=True)
class Policy:
    tiers: tuple[Tier, ...]
    min_quality: float = 0.2

    def __post_init__(self) -> None:
        # `decide` reads empty tiers as "use the defaults": a policy without tiers is a mistake
        if not self.tiers:
            raise ValueError("policy: needs at least one tier")


#: |LLR| beyond which no evidence item counts (the calibrators' own clip, `fusion.calibration.LLR_CLIP`)
MAX_ABS_LLR = 12.0
#: modalities a decision can fuse (one evidence item each: `decide` refuses a second of a modality)
N_MODALITIES = len(MODALITIES)
#: the largest fused LLR there is: every modality at the clip. A tier asking for more never approves.
MAX_FUSED_LLR = N_MODALITIES * MAX_ABS_LLR
#: the longest tier name: each decision stores its tier (`server.models.Transaction.tier`, String(16)),
#: and PostgreSQL refuses a longer one at every commit of that tier's decisions
MAX_TIER_NAME = 16


class PolicyError(ValueError):
    """The policy file cannot be used; the message names the file and the field (one line)."""


def _not_bool(v: Any) -> Any:
    """Refuse a YAML boolean where a number belongs: pydantic reads `min_quality: yes` as 1.0.

    YAML ints (`max_amount: 100`) stay numbers; StrictFloat would refuse them.
    """
    if isinstance(v, bool):
        raise ValueError(f"must be a number, not the boolean {v!r} (YAML reads yes/no/on/off/true/false as booleans)")
    return v


class _TierDoc(BaseModel):
    """One tier as written in policy.yaml; unknown keys are refused (a typo must not disable a rule)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1)]
    max_amount: float  # .inf for the open last tier
    target_fmr: Annotated[float, Field(gt=0.0, lt=1.0)]
    #: > 0: approving on evidence that points away from the person is never intended
    approve_llr: Annotated[float, Field(allow_inf_nan=False, gt=0.0)] | None = None
    corroborate: StrictBool = False

    _numbers = field_validator("max_amount", "target_fmr", "approve_llr", mode="before")(_not_bool)

    @field_validator("name")
    @classmethod
    def _storable(cls, v: str) -> str:
        if len(v) > MAX_TIER_NAME:
            raise ValueError(f"at most {MAX_TIER_NAME} characters (each decision stores its tier's name), got "
                             f"{len(v)}: {v!r}")
        return v

    @field_validator("max_amount")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not v > 0:  # refuses NaN too
            raise ValueError(f"must be > 0, got {v}")
        return v


class _PolicyDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tiers: Annotated[list[_TierDoc], Field(min_length=1)]
    #: < 0: deny only on evidence against the person
    deny_llr: Annotated[float, Field(allow_inf_nan=False, lt=0.0)] = -4.6
    min_quality: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2

    _numbers = field_validator("deny_llr", "min_quality", mode="before")(_not_bool)

    @field_validator("deny_llr")
    @classmethod
    def _reachable(cls, v: float) -> float:
        """As approve_llr above MAX_FUSED_LLR never approves, a deny_llr below its negative never denies."""
        if v < -MAX_FUSED_LLR:
            raise ValueError(f"{v:.4g} can never be reached: the fused LLR is at least {-MAX_FUSED_LLR:g} "
                             f"({N_MODALITIES} modalities at +-{MAX_ABS_LLR:g}), so the policy would never deny")
        return v

    @model_validator(mode="after")
    def _ordered(self) -> _PolicyDoc:
        """Tiers go up in amount and never loosen: a bigger payment needs at least as much evidence."""
        names = [t.name for t in self.tiers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"tiers: duplicate tier name {dup[0]!r}")
        for prev, t in zip(self.tiers, self.tiers[1:], strict=False):
            if not t.max_amount > prev.max_amount:
                raise ValueError(f"tiers.{t.name}.max_amount: must be above the previous tier's "
                                 f"({t.max_amount} <= {prev.max_amount}); list tiers from low to high amounts")
            if t.target_fmr > prev.target_fmr:
                raise ValueError(f"tiers.{t.name}.target_fmr: a higher tier must not have a looser target "
                                 f"({t.target_fmr} > {prev.target_fmr})")
        last = self.tiers[-1]
        if last.max_amount != math.inf:  # larger amounts would silently take the last tier's rule
            raise ValueError(f"tiers.{last.name}.max_amount: the last tier must be open (.inf), got {last.max_amount}: "
                             "larger amounts need a tier too")
        for prev, t in zip(self.tiers, self.tiers[1:], strict=False):
            if prev.corroborate and not t.corroborate:
                raise ValueError(f"tiers.{t.name}.corroborate: a higher tier must not drop the corroboration "
                                 f"{prev.name} asks for")
        # approve_llr > 0 > deny_llr already holds per tier (field bounds)
        approve = [_approve_llr(t) for t in self.tiers]
        for t, a in zip(self.tiers, approve, strict=True):
            if a > MAX_FUSED_LLR:
                how = "approve_llr" if t.approve_llr is not None else f"approve_llr (ln(1/target_fmr {t.target_fmr:g}))"
                raise ValueError(f"tiers.{t.name}.{how}: {a:.4g} can never be reached: the fused LLR is at most "
                                 f"{MAX_FUSED_LLR:g} ({N_MODALITIES} modalities at +-{MAX_ABS_LLR:g}), so this tier would "
                                 "never approve")
        for prev, t, pa, a in zip(self.tiers, self.tiers[1:], approve, approve[1:], strict=False):
            if a < pa:
                raise ValueError(f"tiers.{t.name}.approve_llr: a higher tier must not approve on less evidence "
                                 f"({a} < {pa} of {prev.name})")
        return self


def _approve_llr(t: _TierDoc) -> float:
    return t.approve_llr if t.approve_llr is not None else math.log(1.0 / t.target_fmr)


def _errors(exc: ValidationError, raw: Any = None) -> str:
    """Pydantic's errors in one line: `tiers.medium.target_fmr: <what is wrong> (got '0.0o1')`.

    A tier is named by its `name` where it has one, else by its position.
    """
    tiers = raw.get("tiers") if isinstance(raw, dict) else None
    parts = []
    for e in exc.errors():
        loc = list(e["loc"])
        if len(loc) > 1 and loc[0] == "tiers" and isinstance(loc[1], int) and isinstance(tiers, list) \
                and loc[1] < len(tiers) and isinstance(tiers[loc[1]], dict) and isinstance(tiers[loc[1]].get("name"), str):
            loc[1] = tiers[loc[1]]["name"]
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] not in ("value_error", "missing", "extra_forbidden") and isinstance(e.get("input"), str | int | float):
            msg += f" (got {e['input']!r})"
        parts.append(f"{'.'.join(str(x) for x in loc)}: {msg}" if loc else msg)
    return "; ".join(parts)


def _loader() -> Any:
    """A safe YAML loader that refuses a key given twice in one mapping (the last one would win silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
                try:
                    hash(key)
                except TypeError:
                    continue  # SafeLoader refuses an unhashable key itself
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"{key!r} appears more than once in one mapping (a later value would silently "
                                    "replace the earlier one)", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def _where(exc: Exception) -> str:
    """A YAML error in one line: where (line, column) and what is wrong."""
    import yaml

    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError) and mark is not None:
        what = ", ".join(x for x in (exc.context, exc.problem) if x)
        return " ".join(f"line {mark.line + 1}, column {mark.column + 1}: {what}".split())
    return " ".join(str(exc).split())


def load_policy(path: str | os.PathLike[str] | None = None) -> Policy:
    """Read and fully validate the policy file (default: fusion/policy.yaml next to this module).

    Any mistake raises PolicyError (a ValueError) naming the file and the field: a policy that
    loads with a silently wrong rule (a typo'd or repeated key, a threshold that approves below
    deny or never, a higher tier looser than a lower one) weakens security.
    """
    import yaml

    p = Path(path) if path else Path(__file__).with_name("policy.yaml")
    try:
        raw = yaml.load(p.read_text(), Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"invalid policy file {p}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"invalid policy file {p}: {_where(exc)}") from exc
    if not isinstance(raw, dict):
        raise PolicyError(f"invalid policy file {p}: must be a mapping with 'tiers', got {type(raw).__name__}")
    try:
        doc = _PolicyDoc.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(f"invalid policy file {p}: {_errors(exc, raw)}") from exc
    tiers = tuple(Tier(t.name, t.max_amount, t.target_fmr, _approve_llr(t), doc.deny_llr, t.corroborate)
                  for t in doc.tiers)
    return Policy(tiers, doc.min_quality)


@functools.cache
def default_policy() -> Policy:
    """fusion/policy.yaml, read at first use (PolicyError naming the file and field if it is broken).

    Not at import: a broken policy file must not take every command down with a traceback;
    the server reads it at start-up (`server.fusion_source.FusionSource`) and refuses to start.
    """
    return load_policy()


def __getattr__(name: str) -> Any:
    """`DEFAULT_POLICY` and `DEFAULT_TIERS`, read at first use (`default_policy`)."""
    if name == "DEFAULT_POLICY":
        return default_policy()
    if name == "DEFAULT_TIERS":
        return default_policy().tiers
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def tier_for(amount: float, tiers: tuple[Tier, ...] | None = None) -> Tier:
    """The tier whose amount range holds `amount` (default: fusion/policy.yaml's tiers).

    A policy's last tier is open (`load_policy` refuses one that is not); tiers built by hand
    without one refuse an amount above their top instead of applying the last tier's rule.
    """
    tiers = tiers or default_policy().tiers
    try:
        finite = math.isfinite(amount)
    except OverflowError:  # an int beyond float range (10**400): its documented ValueError, not this
        raise ValueError(f"amount must be a finite non-negative number, got {'a negative' if amount < 0 else 'an'} "
                         "integer beyond float range") from None
    if not finite or amount < 0:
        raise ValueError(f"amount must be a finite non-negative number, got {amount}")
    for t in tiers:
        if amount <= t.max_amount:
            return t
    raise ValueError(f"amount: {amount} is above the last tier's max_amount ({tiers[-1].max_amount} of "
                     f"{tiers[-1].name!r}); the policy has no tier for it")


def _one_per_modality(evidence: list[ModalityEvidence]) -> None:
    """Refuse a second evidence item of a modality, or an unknown one (ValueError naming it and its position).

    Summing LLRs is justified across independent modalities only: two windows of one modality
    share its errors (a lookalike typist scores like the owner in every window), so adding both
    would count one modality's evidence twice and could approve a payment on repeated windows.
    A caller combines a modality's windows into one item first (the server: their mean score,
    `server.services.transactions.assess_evidence`).
    """
    seen: dict[str, int] = {}
    for i, e in enumerate(evidence):
        if e.modality not in MODALITIES:  # summed unchecked, it would lift the fused LLR past MAX_FUSED_LLR
            raise ValueError(f"evidence[{i}].modality: {e.modality!r} is not one of {', '.join(MODALITIES)}")
        if e.modality in seen:
            raise ValueError(f"evidence[{i}].modality: {e.modality!r} already given at evidence[{seen[e.modality]}]; "
                             "fusion takes one item per modality (combine its windows into one score first)")
        seen[e.modality] = i


def decide(
    evidence: list[ModalityEvidence],
    *,
    amount: float,
    tiers: tuple[Tier, ...] | None = None,
    min_quality: float | None = None,
) -> Decision:
    """Fuse evidence by summing calibrated LLRs and apply the amount tier's thresholds.

    `evidence` holds at most one item per modality: a second item of a modality raises
    ValueError naming it (`_one_per_modality`), as the sum is only justified across modalities,
    not across windows of one modality, which share its errors.
    Only evidence with a calibrated `llr` counts; a score without one is left out (reason
    `uncalibrated`). No fixed mapping can stand in for a calibrator: raw scores live on each
    scorer's own scale (the one-class keystroke default scores real and synthetic owners
    around -200 to -460, where a fixed map written for -1 read every owner as an impostor,
    and a federated embedding scores cosines). So a server without a calibration file steps
    every decision up instead of denying its owners. Low-quality, missing or uncalibrated
    modalities are left out explicitly and named in the reasons; with no usable modality the
    outcome is step-up, never approve.
    Deny needs strong impostor evidence (fused LLR <= the tier's deny_llr). A tier that asks
    for corroboration steps up instead of approving when the sum rests on one modality: fewer
    than two distinct modalities used, or the other modalities' LLRs not summing above 0, the
    `match` level (reason `uncorroborated`): a modality that says nothing (LLR 0) or speaks
    against the person does not corroborate. Reason codes: `strong_match` (LLR >= 2.3), `match`
    (> 0), `mismatch` (<= 0: no support for the person, LLR 0 included), `strong_mismatch`
    (<= -2.3). A NaN score or LLR, or a score of +inf, is left out (reason `invalid_score`) and any LLR is
    clipped to +-MAX_ABS_LLR, so an infinite one neither approves alone nor turns the sum NaN. Summing
    LLRs assumes independent modalities, and one modality's tail can be wrong for a pair of
    lookalike people; two agreeing modalities are what make a small false-accept target hold.
    """
    _one_per_modality(evidence)
    tiers = tiers or default_policy().tiers
    min_q = default_policy().min_quality if min_quality is None else min_quality
    tier = tier_for(amount, tiers)
    reasons: list[ReasonCode] = []
    total = 0.0
    per_modality: dict[str, float] = {}
    for e in evidence:
        # `not x >= y` (not `x < y`) so that a NaN quality or window count is left out too
        if not (e.n_windows > 0 and e.quality >= min_q):
            reasons.append(ReasonCode(e.modality, "low_quality", 0.0))
            continue
        # NaN: a broken scorer or calibrator says nothing. A raw score of +inf is a model overflowing
        # (scores rise towards the person): counting it would approve on an overflow, so it says nothing
        # either; -inf still counts, as the calibration's strongest mismatch
        if e.score != e.score or e.llr != e.llr or e.score == math.inf:
            reasons.append(ReasonCode(e.modality, "invalid_score", 0.0))
            continue
        if e.llr is None:
            reasons.append(ReasonCode(e.modality, "uncalibrated", 0.0))
            continue
        c = min(max(e.llr, -MAX_ABS_LLR), MAX_ABS_LLR)  # +-inf would make the sums below NaN
        total += c
        per_modality[e.modality] = c
        code = "strong_match" if c >= 2.3 else "match" if c > 0 else "strong_mismatch" if c <= -2.3 else "mismatch"
        reasons.append(ReasonCode(e.modality, code, round(float(c), 3)))
    if not per_modality:
        reasons.append(ReasonCode("none", "no_evidence", 0.0))
        return Decision("step_up", 0.5, tier.name, 0.0, reasons, tier.target_fmr)
    risk = 1.0 / (1.0 + math.exp(min(max(total, -50.0), 50.0)))
    if total >= tier.approve_llr:
        outcome: Outcome = "approve"
        # the sum without the strongest modality: one modality alone must not carry an approval
        rest = total - max(per_modality.values())
        # the others must reach the `match` level (> 0): an LLR of 0 is no evidence for the person
        if tier.corroborate and (len(per_modality) < 2 or not rest > 0.0):
            outcome = "step_up"
            reasons.append(ReasonCode("fusion", "uncorroborated", round(float(rest), 3) if len(per_modality) > 1 else 0.0))
    elif total <= tier.deny_llr:
        outcome = "deny"
    else:
        outcome = "step_up"
    return Decision(outcome, risk, tier.name, total, reasons, tier.target_fmr)
