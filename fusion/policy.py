"""Turn per-modality evidence into a transaction decision.

This is the stable API the server calls (`decide`). The rule behind it is replaced by the
calibrated fusion engine without changing the call.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
    #: strongest one not against the person (>= 0), so no single modality approves alone
    corroborate: bool = False


@dataclass(frozen=True)
class Policy:
    tiers: tuple[Tier, ...]
    min_quality: float = 0.2


def load_policy(path: str | os.PathLike[str] | None = None) -> Policy:
    """Read the policy file (default: fusion/policy.yaml next to this module)."""
    import yaml

    p = Path(path) if path else Path(__file__).with_name("policy.yaml")
    try:
        doc = yaml.safe_load(p.read_text())
        deny = float(doc.get("deny_llr", -4.6))
        tiers = []
        for t in doc["tiers"]:
            fmr = float(t["target_fmr"])
            if not 0 < fmr < 1:
                raise ValueError(f"tier {t.get('name')}: target_fmr must be in (0, 1)")
            approve = float(t["approve_llr"]) if "approve_llr" in t else math.log(1.0 / fmr)
            corroborate = t.get("corroborate", False)
            if not isinstance(corroborate, bool):
                raise ValueError(f"tier {t.get('name')}: corroborate must be true or false, got {corroborate!r}")
            tiers.append(Tier(str(t["name"]), float(t["max_amount"]), fmr, approve, deny, corroborate))
        tiers.sort(key=lambda t: t.max_amount)
        return Policy(tuple(tiers), float(doc.get("min_quality", 0.2)))
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"invalid policy file {p}: {exc}") from exc


DEFAULT_POLICY = load_policy()
DEFAULT_TIERS: tuple[Tier, ...] = DEFAULT_POLICY.tiers


def tier_for(amount: float, tiers: tuple[Tier, ...] = DEFAULT_TIERS) -> Tier:
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"amount must be a finite non-negative number, got {amount}")
    for t in tiers:
        if amount <= t.max_amount:
            return t
    return tiers[-1]


def rough_mapping_applies(ev: ModalityEvidence) -> bool:
    """Whether `_uncalibrated_llr` may stand in for a calibrator: not for registry models.

    The rough mapping fits the packages' one-class defaults. A published model's scores can
    live on any scale (a federated embedding scores cosines in [-1, 1], which the mapping
    would read as strong matches for everyone), so without its own calibrator it is left out.
    """
    return not ev.model_version.startswith("registry:")


def _uncalibrated_llr(ev: ModalityEvidence) -> float:
    """Rough LLR when no calibrator is fitted (fresh install, no data).

    A scaled-Manhattan score near -1 is typical of the owner and below -4 of others; map
    linearly so LLR 0 sits at -2.5. `FusionEngine` replaces it with fitted calibration.
    """
    return max(min(2.0 * (ev.score + 2.5), 6.0), -6.0)


def decide(
    evidence: list[ModalityEvidence],
    *,
    amount: float,
    tiers: tuple[Tier, ...] | None = None,
    min_quality: float | None = None,
) -> Decision:
    """Fuse evidence by summing calibrated LLRs and apply the amount tier's thresholds.

    Evidence with a calibrated `llr` uses it; otherwise the packages' defaults get a rough
    uncalibrated mapping (see `_uncalibrated_llr`) and registry models none (reason
    `uncalibrated`). Low-quality, missing or uncalibrated modalities are left out explicitly
    and named in the reasons; with no usable modality the outcome is step-up, never approve.
    Deny needs strong impostor evidence (fused LLR <= the tier's deny_llr). A tier that asks
    for corroboration steps up instead of approving when the sum rests on one modality: fewer
    than two used, or the others' LLRs summing below 0 (reason `uncorroborated`). Summing
    LLRs assumes independent modalities, and one modality's tail can be wrong for a pair of
    lookalike people; two agreeing modalities are what make a small false-accept target hold.
    """
    tiers = tiers or DEFAULT_POLICY.tiers
    min_q = DEFAULT_POLICY.min_quality if min_quality is None else min_quality
    tier = tier_for(amount, tiers)
    reasons: list[ReasonCode] = []
    total = 0.0
    used = 0
    strongest = -math.inf
    for e in evidence:
        if e.n_windows <= 0 or e.quality < min_q:
            reasons.append(ReasonCode(e.modality, "low_quality", 0.0))
            continue
        if e.llr is None and not rough_mapping_applies(e):
            reasons.append(ReasonCode(e.modality, "uncalibrated", 0.0))
            continue
        c = e.llr if e.llr is not None else _uncalibrated_llr(e)
        total += c
        used += 1
        strongest = max(strongest, c)
        code = "strong_match" if c >= 2.3 else "match" if c > 0 else "strong_mismatch" if c <= -2.3 else "mismatch"
        reasons.append(ReasonCode(e.modality, code, round(float(c), 3)))
    if used == 0:
        reasons.append(ReasonCode("none", "no_evidence", 0.0))
        return Decision("step_up", 0.5, tier.name, 0.0, reasons, tier.target_fmr)
    risk = 1.0 / (1.0 + math.exp(min(max(total, -50.0), 50.0)))
    if total >= tier.approve_llr:
        outcome: Outcome = "approve"
        if tier.corroborate and (used < 2 or total - strongest < 0.0):
            outcome = "step_up"
            reasons.append(ReasonCode("fusion", "uncorroborated", round(float(total - strongest), 3) if used > 1 else 0.0))
    elif total <= tier.deny_llr:
        outcome = "deny"
    else:
        outcome = "step_up"
    return Decision(outcome, risk, tier.name, total, reasons, tier.target_fmr)
