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

A calibrator is refused (ValueError) when its scores carry no information: all one value, or a
fitted Cllr no better than scores without information reach by chance (`informative`). Its
LLRs would sit at or near 0 for every probe, and a modality that says nothing must not count
as evidence, least of all as the second modality the policy's corroboration asks for. So is one
whose LLR falls as the score rises (a higher score is more genuine by contract): swapped genuine
and impostor scores would deny the best matches and approve the worst.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

LLR_CLIP = 12.0
#: 95 % quantiles of chi-square with 1 and 3 degrees of freedom (the calibrator's parameters
#: besides the intercept): the Cllr gain below which a fit is what noise scores reach by chance
_CHI2_95 = {1: 3.841, 3: 7.815}
#: the least standard deviation of the training qualities a quality-aware fit accepts: on a
#: narrower band the quality effect is an extrapolation across [0, 1], not a measurement
MIN_QUALITY_SPREAD = 0.01


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


def scores_array(name: str, values: Any, *, at_least: int = 1) -> np.ndarray:
    """`values` as a 1-D array of at least `at_least` finite floats, else ValueError naming `name`.

    sklearn would report an infinite score as "Input X contains NaN", and a calibration set
    with no scores as a division by zero.
    """
    try:
        a = np.asarray(values, float).ravel()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: scores must be numbers ({exc})") from None
    if a.size < at_least:
        raise ValueError(f"{name}: calibration needs at least {at_least} score{'s' if at_least > 1 else ''}, "
                         f"got {a.size}")
    bad = ~np.isfinite(a)
    if bad.any():
        raise ValueError(f"{name}: scores must be finite numbers; {int(bad.sum())} of {a.size} "
                         f"are not (first: {a[bad][0]} at index {int(np.flatnonzero(bad)[0])})")
    return a


def informative(cllr_bits: float, n_genuine: int, n_impostor: int, n_params: int = 1) -> bool:
    """Whether a calibrator's Cllr on its own fitting scores shows the scores carry information.

    With balanced classes the fit's log-likelihood gain over "no information" (Cllr 1) is
    N ln 2 (1 - Cllr) for N = 4 / (1/n_genuine + 1/n_impostor) effective trials; twice that is
    about chi-square with `n_params` degrees of freedom when the scores carry none. A gain
    below its 95 % quantile is what noise scores reach by chance; Cllr >= 1 never shows any.
    """
    if not cllr_bits < 1.0:  # NaN too
        return False
    n_eff = 4.0 / (1.0 / n_genuine + 1.0 / n_impostor)
    return 2.0 * n_eff * float(np.log(2.0)) * (1.0 - cllr_bits) > _CHI2_95.get(n_params, _CHI2_95[3])


def _design(score: np.ndarray, quality: np.ndarray | None, use_quality: bool, floor: float = 0.0) -> np.ndarray:
    s = np.asarray(score, float).reshape(-1, 1)
    if not use_quality:
        return s
    # an unknown (NaN) quality counts as none: the least evidence, never a NaN LLR; below `floor`, as the floor
    q = np.ones_like(s) if quality is None else np.clip(np.nan_to_num(np.asarray(quality, float).reshape(-1, 1)), floor, 1)
    return np.hstack([s, q, s * q])


@dataclass
class LogisticCalibrator:
    """Linear logistic calibration, optionally quality-aware; balanced so the prior is 0.5."""

    use_quality: bool = False
    #: weak regularisation: calibration has 1-3 parameters and should follow the data
    C: float = 1e3
    #: quality-aware: a quality below this is read as this. Why: fitted on windows of quality
    #: >= the floor only (the ones decisions read), the score x quality line says nothing below
    #: it, and extrapolated there its slope may reverse; so the fit is checked on [floor, 1] only
    quality_floor: float = 0.0

    def fit(self, *, genuine: np.ndarray, impostor: np.ndarray, genuine_quality: np.ndarray | None = None,
            impostor_quality: np.ndarray | None = None) -> LogisticCalibrator:
        """Fit on training genuine and impostor scores.

        ValueError (naming the field) for scores that cannot calibrate: fewer than 2 of a class,
        non-finite ones, ones that carry no information (`informative`), ones whose fitted LLR
        falls as the score rises (`_check_one_direction`), or, quality-aware, qualities without
        spread (`MIN_QUALITY_SPREAD`).
        """
        from sklearn.linear_model import LogisticRegression

        g, i = scores_array("genuine", genuine, at_least=2), scores_array("impostor", impostor, at_least=2)
        if np.ptp(np.r_[g, i]) == 0:
            raise ValueError(f"scores: all {g.size + i.size} genuine and impostor scores are {g[0]:g}; scores that are "
                             "all one value carry no information, so no calibrator is fitted (check the model)")
        if not 0.0 <= self.quality_floor < 1.0:
            raise ValueError(f"quality_floor: must be in [0, 1), got {self.quality_floor!r}")
        X = np.vstack([_design(g, genuine_quality, self.use_quality, self.quality_floor),
                       _design(i, impostor_quality, self.use_quality, self.quality_floor)])
        if self.use_quality and not np.std(X[:, 1]) >= MIN_QUALITY_SPREAD:
            raise ValueError(f"quality: the {X.shape[0]} training qualities have no spread (standard deviation "
                             f"{np.std(X[:, 1]):.3g} < {MIN_QUALITY_SPREAD:g}; missing ones count as 0), so the "
                             "quality effect would be arbitrary; calibrate without quality, or on windows covering "
                             "the whole quality range")
        y = np.r_[np.ones(g.size), np.zeros(i.size)]
        with np.errstate(over="ignore", invalid="ignore"):
            self.mu_, self.sd_ = X.mean(axis=0), np.maximum(X.std(axis=0), 1e-9)
            Z = (X - self.mu_) / self.sd_
        if not (np.isfinite(self.mu_).all() and np.isfinite(self.sd_).all() and np.isfinite(Z).all()):
            # scores near 1e300 overflow the variance to inf (a zero slope: LLR 0 for every score):
            # each column is scaled by its largest magnitude first (an all-zero column by 1: 0 / 0 is NaN)
            scale = np.max(np.abs(X), axis=0)
            scale[scale == 0] = 1.0
            Xs = X / scale
            self.mu_, self.sd_ = Xs.mean(axis=0) * scale, np.maximum(Xs.std(axis=0) * scale, 1e-9)
            Z = (Xs - self.mu_ / scale) / (self.sd_ / scale)
        # class_weight="balanced" makes the fitted log-odds an LLR (prior log-odds 0)
        lr = LogisticRegression(C=self.C, class_weight="balanced", max_iter=1000)
        lr.fit(Z, y)
        self.coef_ = lr.coef_.ravel().copy()
        self.intercept_ = float(lr.intercept_[0])
        self.lo_, self.hi_ = support_bounds(g.size, i.size)
        c = cllr(genuine_llr=self.llr(g, genuine_quality), impostor_llr=self.llr(i, impostor_quality))
        if not informative(c, g.size, i.size, self.coef_.size):
            raise ValueError(f"scores: carry no information: Cllr {c:.4f} bits on {g.size} genuine and {i.size} impostor "
                             "scores is no better than scores without information reach by chance (1 = none), and "
                             "their LLRs would count as evidence; calibrate on more people, or check the model")
        self._check_one_direction("the fitted")
        return self

    def _check_one_direction(self, which: str) -> None:
        """ValueError unless the LLR rises with the score at every quality in [`quality_floor`, 1].

        A higher score is more genuine by contract (`fusion.policy.ModalityEvidence.score`): a
        falling map (genuine and impostor scores swapped, a broken model) would deny the best
        matches and approve the worst. The slope is linear in the quality, so its two ends
        decide; their signs are compared, not their product, which underflows to 0 for huge
        scores (slopes near 1e-170).
        """
        ends: tuple[float, ...] = ((float(self._slope(self.quality_floor)), float(self._slope(1.0)))
                                   if self.use_quality else (float(self._slope(1.0)),))
        if all(e > 0 for e in ends):
            return
        if all(not e > 0 for e in ends):
            where = "at every quality" if self.use_quality else "everywhere"
            raise ValueError(f"coef: {which} LLR falls as the score rises ({where}: slope "
                             f"{', '.join(f'{e:.3g}' for e in ends)}), but a higher score means more genuine: it "
                             "would deny the best matches and approve the worst; check that genuine and impostor "
                             "scores are not swapped, or the model")
        lo = self.quality_floor
        at = lo + (1.0 - lo) * ends[0] / (ends[0] - ends[1])
        raise ValueError(f"coef: {which} score x quality term reverses the evidence at quality {at:.2f} (the "
                         f"LLR's slope in the score changes sign inside [{lo:g}, 1]); calibrate without quality, or on "
                         "windows covering the whole quality range")

    def _slope(self, q: np.ndarray | float) -> np.ndarray | float:
        """The slope of the LLR in the score at quality `q`: its sign says where an infinite score goes."""
        c, d = self.coef_, self.sd_
        return c[0] / d[0] + (c[2] * q / d[2] if self.use_quality else 0.0)

    def llr(self, score: np.ndarray, quality: np.ndarray | None = None) -> np.ndarray:
        """LLRs of `score`; a NaN score (a missing modality in trial arrays) stays NaN.

        An infinite or overflowing score goes to the bound its side of the line reaches
        (inf - inf would otherwise make it NaN).
        """
        s = np.atleast_1d(np.asarray(score, float))
        with np.errstate(invalid="ignore", over="ignore"):
            X = (_design(s, quality, self.use_quality, self.quality_floor) - self.mu_) / self.sd_
            z = X @ self.coef_ + self.intercept_
            lost = np.isnan(z) & ~np.isnan(s.ravel())
            if lost.any():
                q = X[:, 1] * self.sd_[1] + self.mu_[1] if self.use_quality else np.ones_like(z)
                direction = np.sign(self._slope(q)) * np.sign(s.ravel())
                z[lost] = np.where(direction > 0, self.hi_, np.where(direction < 0, self.lo_, 0.0))[lost]
        return np.clip(z, self.lo_, self.hi_)

    def llr_one(self, score: float, quality: float | None = None) -> float:
        """`llr` of one score, in plain floats; never NaN (a NaN score raises ValueError).

        A request calibrates one score per modality, and the array path's dispatch cost
        ~15 µs each for three numbers.
        """
        s = float(score)
        if s != s:
            raise ValueError("score: must not be NaN")
        q = 1.0
        if self.use_quality:
            q = 1.0 if quality is None else min(max(float(quality), 0.0), 1.0) if quality == quality else 0.0
            q = max(q, self.quality_floor)
            x: tuple[float, ...] = (s, q, s * q)
        else:
            x = (s,)
        z = self.intercept_ + sum((v - m) / d * c for v, m, d, c in
                                  zip(x, self.mu_.tolist(), self.sd_.tolist(), self.coef_.tolist(), strict=True))
        if z != z:  # an infinite (or overflowing) score: inf - inf
            slope = float(self._slope(q)) * s
            z = self.hi_ if slope > 0 else self.lo_ if slope < 0 else 0.0
        return min(max(z, self.lo_), self.hi_)

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": "logistic", "use_quality": self.use_quality, "mu": self.mu_.tolist(), "sd": self.sd_.tolist(),
             "coef": self.coef_.tolist(), "intercept": self.intercept_, "bounds": [self.lo_, self.hi_]}
        if self.quality_floor:
            d["quality_floor"] = self.quality_floor
        return d

    @classmethod
    def from_dict(cls, d: Any) -> LogisticCalibrator:
        """Rebuild from `to_dict` output, refusing (ValueError) what would fail or mislead per request.

        The server loads this file while running: a shape or value error found here keeps
        the previous calibration, one found in `llr_one` would fail every request.
        """
        if not isinstance(d, dict):
            raise ValueError(f"calibrator: must be a mapping, got {type(d).__name__}")
        if d.get("kind", "logistic") != "logistic":
            raise ValueError(f"kind: expected 'logistic', got {d.get('kind')!r}")
        missing = sorted({"use_quality", "mu", "sd", "coef", "intercept"} - set(d))
        if missing:
            raise ValueError(f"{missing[0]}: is required")
        if not isinstance(d["use_quality"], bool):
            raise ValueError(f"use_quality: must be true or false, got {d['use_quality']!r}")
        # files written before the floor existed read every quality from 0
        floor = float(_finite_vector("quality_floor", [d.get("quality_floor", 0.0)], 1)[0])
        if not 0.0 <= floor < 1.0:
            raise ValueError(f"quality_floor: must be in [0, 1), got {floor!r}")
        c = cls(use_quality=d["use_quality"], quality_floor=floor)
        n = 3 if c.use_quality else 1
        mu, sd, coef = (_finite_vector(name, d[name], n) for name in ("mu", "sd", "coef"))
        if not np.all(sd > 0):
            raise ValueError(f"sd: must be > 0, got {sd.tolist()}")
        c.mu_, c.sd_, c.coef_ = mu, sd, coef
        c.intercept_ = float(_finite_vector("intercept", [d["intercept"]], 1)[0])
        # files written before the bounds existed keep the old fixed clip
        lo, hi = _finite_vector("bounds", d.get("bounds", [-LLR_CLIP, LLR_CLIP]), 2).tolist()
        if not -LLR_CLIP <= lo < 0.0 < hi <= LLR_CLIP:
            raise ValueError(f"bounds: must satisfy -{LLR_CLIP} <= lo < 0 < hi <= {LLR_CLIP}, got {[lo, hi]}")
        c.lo_, c.hi_ = lo, hi
        if coef[0] == 0.0 and (not c.use_quality or coef[2] == 0.0):
            # the same LLR for every score: evidence that says nothing about the person
            raise ValueError(f"coef: the score's coefficient is 0 ({coef.tolist()}): the LLR would not depend on the "
                             "score, so the calibrator carries no information")
        c._check_one_direction("its")
        return c


def _finite_vector(name: str, value: Any, n: int) -> np.ndarray:
    """`value` as `n` finite floats (bools and strings refused), else ValueError naming `name`.

    `math.isfinite`, not `np.isfinite`: JSON reads 1e400 written as digits as an int beyond
    float range, on which numpy raises TypeError (a traceback from `cadence models calibrate`).
    """
    def finite(v: Any) -> bool:
        try:
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        except OverflowError:  # an int beyond float range
            return False

    if not isinstance(value, list | tuple) or len(value) != n or not all(finite(v) for v in value):
        shown = repr(value) if len(repr(value)) <= 200 else f"{repr(value)[:200]}..."
        raise ValueError(f"{name}: must be a list of {n} finite numbers, got {shown}")
    return np.asarray(value, float)


@dataclass
class IsotonicCalibrator:
    """PAV calibration: the monotone map with the best Cllr on the training scores."""

    clip: float = 8.0

    def fit(self, *, genuine: np.ndarray, impostor: np.ndarray, **_: Any) -> IsotonicCalibrator:
        from sklearn.isotonic import IsotonicRegression

        g, i = scores_array("genuine", genuine), scores_array("impostor", impostor)
        x = np.r_[g, i]
        y = np.r_[np.ones(g.size), np.zeros(i.size)]
        w = np.r_[np.full(g.size, 0.5 / g.size), np.full(i.size, 0.5 / i.size)]  # balanced prior
        self.iso_ = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(x, y, sample_weight=w)
        return self

    def llr(self, score: np.ndarray, quality: np.ndarray | None = None) -> np.ndarray:
        """LLRs of `score`; a NaN score (a missing modality) stays NaN, as `LogisticCalibrator.llr`'s.

        sklearn refuses NaN; an infinite score goes to its end's LLR (clipped, as out of bounds).
        """
        s = np.atleast_1d(np.asarray(score, float)).ravel()
        out = np.full(s.shape, np.nan)
        known = ~np.isnan(s)
        if known.any():
            x = np.clip(s[known], self.iso_.X_min_, self.iso_.X_max_)
            p = np.clip(self.iso_.predict(x), 1e-6, 1 - 1e-6)
            out[known] = np.clip(np.log(p) - np.log1p(-p), -self.clip, self.clip)
        return out


Calibrator = LogisticCalibrator | IsotonicCalibrator
