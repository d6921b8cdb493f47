"""Map raw modality scores to log-likelihood ratios (LLRs), and measure how well that worked.

An LLR says how much more likely the evidence is under "same person" than "other person",
in natural-log units, independent of the prior. Calibrated LLRs are what make fusion
principled (they add under independence) and thresholds meaningful across modalities.

Two calibrators, both fitted on *training* subjects' genuine and impostor scores only:

* `LogisticCalibrator`: linear logistic regression on the score (and optionally the window
  quality, since a thin window deserves a smaller LLR); the fitted log-odds minus the
  training prior log-odds is the LLR (Brümmer's linear calibration).
* `IsotonicCalibrator`: pool-adjacent-violators (PAV) on the score, the non-parametric
  reference; its LLRs are clipped because PAV gives +-inf at the ends.

The logistic one, which the server uses, bounds its LLRs to what the fitting data can show
(PAV keeps its fixed clip). With n impostor scores no impostor probability below about 1/n is
observed, so no likelihood ratio above n is supported, and none below 1/n for n genuine
scores. Otherwise a linear calibrator extrapolates a score far beyond its training data into a
huge LLR, and a pair of lookalike people in one modality (two typists who score each other
like themselves) carries a fused decision alone. This is the idea of Vergeer et al. (2016),
"empirical lower and upper bounds", in its simplest form.

`cllr` is the log-likelihood-ratio cost (Brümmer & du Preez 2006): 0 is perfect, 1 is an
uninformative system, above 1 is miscalibrated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

LLR_CLIP = 12.0


def cllr(*, genuine_llr: np.ndarray, impostor_llr: np.ndarray) -> float:
    """Log-likelihood-ratio cost in bits (lower is better; 1 = uninformative)."""
    g = np.asarray(genuine_llr, float)
    i = np.asarray(impostor_llr, float)
    if g.size == 0 or i.size == 0:
        raise ValueError("cllr needs genuine and impostor LLRs")
    cg = np.mean(np.logaddexp(0.0, -g)) / np.log(2)
    ci = np.mean(np.logaddexp(0.0, i)) / np.log(2)
    return float(0.5 * (cg + ci))


def min_cllr(*, genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Cllr after the best monotone recalibration (PAV): the discrimination-only part."""
    cal = IsotonicCalibrator().fit(genuine=genuine, impostor=impostor)
    return cllr(genuine_llr=cal.llr(genuine), impostor_llr=cal.llr(impostor))


def support_bounds(n_genuine: int, n_impostor: int) -> tuple[float, float]:
    """The LLR range `n_genuine` genuine and `n_impostor` impostor scores can support."""
    return -min(float(np.log(max(n_genuine, 1))), LLR_CLIP), min(float(np.log(max(n_impostor, 1))), LLR_CLIP)


def _design(score: np.ndarray, quality: np.ndarray | None, use_quality: bool) -> np.ndarray:
    s = np.asarray(score, float).reshape(-1, 1)
    if not use_quality:
        return s
    q = np.ones_like(s) if quality is None else np.clip(np.asarray(quality, float).reshape(-1, 1), 0, 1)
    return np.hstack([s, q, s * q])


@dataclass
class LogisticCalibrator:
    """Linear logistic calibration, optionally quality-aware; balanced so the prior is 0.5."""

    use_quality: bool = False
    #: weak regularisation: calibration has 1-3 parameters and should follow the data
    C: float = 1e3

    def fit(self, *, genuine: np.ndarray, impostor: np.ndarray, genuine_quality: np.ndarray | None = None,
            impostor_quality: np.ndarray | None = None) -> LogisticCalibrator:
        from sklearn.linear_model import LogisticRegression

        g, i = np.asarray(genuine, float), np.asarray(impostor, float)
        if g.size < 2 or i.size < 2:
            raise ValueError("calibration needs at least 2 genuine and 2 impostor scores")
        X = np.vstack([_design(g, genuine_quality, self.use_quality), _design(i, impostor_quality, self.use_quality)])
        y = np.r_[np.ones(g.size), np.zeros(i.size)]
        self.mu_, self.sd_ = X.mean(axis=0), np.maximum(X.std(axis=0), 1e-9)
        # class_weight="balanced" makes the fitted log-odds an LLR (prior log-odds 0)
        lr = LogisticRegression(C=self.C, class_weight="balanced", max_iter=1000)
        lr.fit((X - self.mu_) / self.sd_, y)
        self.coef_ = lr.coef_.ravel().copy()
        self.intercept_ = float(lr.intercept_[0])
        self.lo_, self.hi_ = support_bounds(g.size, i.size)
        return self

    def llr(self, score: np.ndarray, quality: np.ndarray | None = None) -> np.ndarray:
        X = (_design(np.atleast_1d(score), quality, self.use_quality) - self.mu_) / self.sd_
        return np.clip(X @ self.coef_ + self.intercept_, self.lo_, self.hi_)

    def llr_one(self, score: float, quality: float | None = None) -> float:
        """`llr` of one score, in plain floats.

        A request calibrates one score per modality, and the array path's dispatch cost
        ~15 µs each for three numbers.
        """
        s = float(score)
        if self.use_quality:
            q = 1.0 if quality is None else min(max(float(quality), 0.0), 1.0)
            x: tuple[float, ...] = (s, q, s * q)
        else:
            x = (s,)
        z = self.intercept_ + sum((v - m) / d * c for v, m, d, c in
                                  zip(x, self.mu_.tolist(), self.sd_.tolist(), self.coef_.tolist(), strict=True))
        return min(max(z, self.lo_), self.hi_)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "logistic", "use_quality": self.use_quality, "mu": self.mu_.tolist(), "sd": self.sd_.tolist(),
                "coef": self.coef_.tolist(), "intercept": self.intercept_, "bounds": [self.lo_, self.hi_]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LogisticCalibrator:
        c = cls(use_quality=bool(d["use_quality"]))
        c.mu_, c.sd_ = np.asarray(d["mu"]), np.asarray(d["sd"])
        c.coef_, c.intercept_ = np.asarray(d["coef"]), float(d["intercept"])
        # files written before the bounds existed keep the old fixed clip
        c.lo_, c.hi_ = (float(v) for v in d.get("bounds", (-LLR_CLIP, LLR_CLIP)))
        if not c.lo_ <= 0.0 <= c.hi_:
            raise ValueError(f"calibrator bounds must contain 0, got {[c.lo_, c.hi_]}")
        return c


@dataclass
class IsotonicCalibrator:
    """PAV calibration: the monotone map with the best Cllr on the training scores."""

    clip: float = 8.0

    def fit(self, *, genuine: np.ndarray, impostor: np.ndarray, **_: Any) -> IsotonicCalibrator:
        from sklearn.isotonic import IsotonicRegression

        g, i = np.asarray(genuine, float), np.asarray(impostor, float)
        x = np.r_[g, i]
        y = np.r_[np.ones(g.size), np.zeros(i.size)]
        w = np.r_[np.full(g.size, 0.5 / g.size), np.full(i.size, 0.5 / i.size)]  # balanced prior
        self.iso_ = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(x, y, sample_weight=w)
        return self

    def llr(self, score: np.ndarray, quality: np.ndarray | None = None) -> np.ndarray:
        p = np.clip(self.iso_.predict(np.atleast_1d(np.asarray(score, float))), 1e-6, 1 - 1e-6)
        return np.clip(np.log(p) - np.log1p(-p), -self.clip, self.clip)


Calibrator = LogisticCalibrator | IsotonicCalibrator
