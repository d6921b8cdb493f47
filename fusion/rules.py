"""Fusion rules over per-modality evidence of one trial, all with the same shape of input.

Input is an (n_trials, n_modalities) matrix with NaN where a modality is missing (or was
dropped for low quality). Missing evidence is never read as a zero *score*: LLR rules treat
it as "no evidence" (LLR 0, the neutral value by definition), min/max and decision rules
ignore it, and every rule reports how many modalities actually contributed so the policy can
step up instead of deciding on nothing. Only NaN is missing: an infinite LLR is the strongest
evidence there is, clipped to +-`LLR_CLIP` as `fusion.policy.decide` clips it. Read as
missing, a -inf modality said nothing against the person, and fused higher than a -5 one.

Every rule returns a continuous fused score (higher is more genuine) so it can be swept for
DET curves; the decision-level rules (AND, OR, majority) are the soft forms whose threshold
at 0 is exactly the hard rule with per-modality thresholds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusion.calibration import LLR_CLIP

Rule = Callable[[np.ndarray], np.ndarray]


def present(L: np.ndarray) -> np.ndarray:
    """Number of modalities with evidence in each trial."""
    return np.sum(np.isfinite(L), axis=1)


def _guard(L: np.ndarray) -> np.ndarray:
    L = np.asarray(L, float)
    if L.ndim != 2:
        raise ValueError(f"expected (n_trials, n_modalities), got shape {L.shape}")
    return L


def _llrs(L: np.ndarray) -> np.ndarray:
    """`L` with infinite LLRs clipped to +-LLR_CLIP; NaN (missing) stays NaN."""
    return np.clip(_guard(L), -LLR_CLIP, LLR_CLIP)


def llr_sum(L: np.ndarray) -> np.ndarray:
    """Sum of calibrated LLRs: the Bayes-optimal rule if modalities are independent."""
    return np.nansum(_llrs(L), axis=1)


def llr_mean(L: np.ndarray) -> np.ndarray:
    """Mean LLR over the modalities present (a conservative sum for correlated evidence)."""
    L = _llrs(L)
    n = np.maximum(present(L), 1)
    return np.nansum(L, axis=1) / n


def _nanreduce(L: np.ndarray, fn: Callable[..., np.ndarray], empty: float) -> np.ndarray:
    L = _guard(L)
    out = np.full(L.shape[0], empty)
    ok = present(L) > 0
    out[ok] = fn(L[ok], axis=1)
    return out


def llr_min(L: np.ndarray) -> np.ndarray:
    """The weakest modality decides (strict)."""
    return _nanreduce(_llrs(L), np.nanmin, 0.0)


def llr_max(L: np.ndarray) -> np.ndarray:
    """The strongest modality decides (lenient)."""
    return _nanreduce(_llrs(L), np.nanmax, 0.0)


@dataclass
class ZNormSum:
    """Sum of z-normalised raw scores (impostor mean/sd from training subjects): the naive reference."""

    mu_: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sd_: np.ndarray = field(default_factory=lambda: np.ones(0))

    def fit(self, S_impostor: np.ndarray) -> ZNormSum:
        S = _guard(S_impostor)
        self.mu_ = np.nanmean(S, axis=0)
        self.sd_ = np.maximum(np.nanstd(S, axis=0), 1e-9)
        return self

    def __call__(self, S: np.ndarray) -> np.ndarray:
        return np.nansum((_guard(S) - self.mu_) / self.sd_, axis=1)


@dataclass
class LearnedWeights:
    """Logistic-regression fusion of LLRs (weights and bias learned on training subjects).

    Missing modalities enter as LLR 0 plus a "missing" indicator, so the learned fusion knows
    the difference between "neutral evidence" and "no evidence".
    """

    C: float = 1.0
    coef_: np.ndarray = field(default_factory=lambda: np.zeros(0))
    intercept_: float = 0.0

    def _design(self, L: np.ndarray) -> np.ndarray:
        L = _llrs(L)
        miss = np.isnan(L)
        return np.hstack([np.where(miss, 0.0, L), miss.astype(float)])

    def fit(self, L_genuine: np.ndarray, L_impostor: np.ndarray) -> LearnedWeights:
        from sklearn.linear_model import LogisticRegression

        X = np.vstack([self._design(L_genuine), self._design(L_impostor)])
        y = np.r_[np.ones(len(L_genuine)), np.zeros(len(L_impostor))]
        lr = LogisticRegression(C=self.C, class_weight="balanced", max_iter=2000).fit(X, y)
        self.coef_, self.intercept_ = lr.coef_.ravel(), float(lr.intercept_[0])
        return self

    def __call__(self, L: np.ndarray) -> np.ndarray:
        return self._design(L) @ self.coef_ + self.intercept_

    def to_dict(self) -> dict[str, Any]:
        return {"coef": self.coef_.tolist(), "intercept": self.intercept_}


def _nanmajority(M: np.ndarray, axis: int = 1) -> np.ndarray:
    """Per row, the k-th largest present (non-NaN) value, k = n // 2 + 1 of the n present: a strict majority.

    It is >= 0 exactly when more than half of the present values are >= 0; a tie (one of two,
    two of four) is not a majority. A median would average the middle pair of an even count:
    (+5, -1) gave 2, "accepted" on one vote of two.
    """
    present_ = ~np.isnan(M)  # as nanmin / nanmax: NaN is missing, +-inf a value
    n = np.sum(present_, axis=axis)
    desc = -np.sort(np.where(present_, -M, np.inf), axis=axis)  # largest first, missing (-inf) last
    return desc[np.arange(M.shape[0]), n // 2]


@dataclass
class DecisionRule:
    """AND / OR / majority over per-modality accept decisions ``LLR_m >= t_m``.

    The fused score is, over present modalities, the min / max / the k-th largest of
    ``LLR_m - t_m`` for k a strict majority of them (k = n // 2 + 1: 2 of 2 or 3, 3 of 4), so the
    hard rule is "fused >= 0" and sweeping the threshold traces a DET curve. With nothing
    present the score is -inf: never accepted.
    """

    kind: str  # "and" | "or" | "majority"
    thresholds: np.ndarray

    def __call__(self, L: np.ndarray) -> np.ndarray:
        M = _llrs(L) - self.thresholds
        rules: dict[str, Callable[..., np.ndarray]] = {"and": np.nanmin, "or": np.nanmax, "majority": _nanmajority}
        if self.kind not in rules:
            raise ValueError(f"kind: expected one of {', '.join(rules)}, got {self.kind!r}")
        return _nanreduce(M, rules[self.kind], -np.inf)


def per_modality_thresholds(L_impostor: np.ndarray, fmr: float) -> np.ndarray:
    """Each modality's LLR threshold reaching `fmr` on training impostors."""
    L = _llrs(L_impostor)
    out = np.zeros(L.shape[1])
    for m in range(L.shape[1]):
        col = L[np.isfinite(L[:, m]), m]
        out[m] = np.quantile(col, 1 - fmr) if col.size else 0.0
    return out


@dataclass
class Sequential:
    """Consult modalities in a fixed order, accumulating LLRs; stop once |sum| >= `stop`.

    Models a step-wise flow (e.g. passive gait first, then touch, then typing) that stops
    asking for evidence as soon as it is confident either way; `consulted_` records how many
    modalities each trial needed.
    """

    order: list[int]
    stop: float = 4.0
    consulted_: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __call__(self, L: np.ndarray) -> np.ndarray:
        L = _llrs(L)
        total = np.zeros(L.shape[0])
        done = np.zeros(L.shape[0], bool)
        used = np.zeros(L.shape[0], int)
        for m in self.order:
            col = L[:, m]
            take = ~done & np.isfinite(col)
            total[take] += col[take]
            used[take] += 1
            done |= np.abs(total) >= self.stop
        self.consulted_ = used
        return total


FIXED_RULES: dict[str, Rule] = {
    "llr-sum": llr_sum,
    "llr-mean": llr_mean,
    "min": llr_min,
    "max": llr_max,
}
