"""Turn per-modality evidence into a transaction decision.

This is the stable API the server calls (`decide`). The rule behind it is replaced by the
calibrated fusion engine without changing the call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["approve", "step_up", "deny"]


@dataclass(frozen=True)
class ModalityEvidence:
    """One modality's comparison result for a transaction.

    `score` is the scorer's raw score (higher = more genuine); `llr` its calibrated
    log-likelihood ratio when a calibrator is available (None otherwise).
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


#: default tiers: thresholds are in natural-log likelihood-ratio units
DEFAULT_TIERS: tuple[Tier, ...] = (
    Tier("low", 100.0, 1e-2, approve_llr=1.0, deny_llr=-4.0),
    Tier("medium", 1000.0, 1e-3, approve_llr=2.5, deny_llr=-4.0),
    Tier("high", math.inf, 1e-4, approve_llr=4.0, deny_llr=-4.0),
)


def tier_for(amount: float, tiers: tuple[Tier, ...] = DEFAULT_TIERS) -> Tier:
    for t in tiers:
        if amount <= t.max_amount:
            return t
    return tiers[-1]


def _thin_llr(ev: ModalityEvidence) -> float:
    """Fallback calibration when none is fitted: a scaled-Manhattan score near -1 is typical
    of the owner; map linearly so 0 LLR sits at -2.5 (a rough prior, replaced by calibration)."""
    if ev.llr is not None:
        return ev.llr
    return max(min(2.0 * (ev.score + 2.5), 6.0), -6.0)


def decide(evidence: list[ModalityEvidence], *, amount: float, tiers: tuple[Tier, ...] = DEFAULT_TIERS) -> Decision:
    """Fuse evidence by summing calibrated LLRs (weighted by quality) and apply the tier policy.

    Missing evidence never counts as genuine: with no usable modality the outcome is step-up.
    """
    tier = tier_for(amount, tiers)
    usable = [e for e in evidence if e.quality > 0 and e.n_windows > 0]
    if not usable:
        return Decision("step_up", 0.5, tier.name, 0.0, [ReasonCode("none", "no_evidence", 0.0)], tier.target_fmr)
    reasons = []
    total = 0.0
    for e in usable:
        c = _thin_llr(e) * min(max(e.quality, 0.0), 1.0)
        total += c
        code = "match" if c > 0 else "mismatch"
        reasons.append(ReasonCode(e.modality, code, round(c, 3)))
    risk = 1.0 / (1.0 + math.exp(total))
    if total >= tier.approve_llr:
        outcome: Outcome = "approve"
    elif total <= tier.deny_llr:
        outcome = "deny"
    else:
        outcome = "step_up"
    return Decision(outcome, risk, tier.name, total, reasons, tier.target_fmr)
