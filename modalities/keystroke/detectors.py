"""Killourhy & Maxion's one-class keystroke detectors (DSN 2009), as `Scorer`s.

Each enrols on one person's vectors alone (no population), so it is what a fresh install
can use. They accept either fixed-text vectors (CMU layout, every column used) or free-text
windows of `FEATURE_DIM` columns, where only the timing columns are compared (the n-gram
counts say how much evidence a window has, not who typed it).

Every spread estimate is floored at `min_scale` (seconds): with a 15.6 ms clock many
per-feature deviations are exactly zero, and dividing by them would make one tick of
difference look like an infinite anomaly.

Hyper-parameters are stored as given and checked (`_param_checks`) when a detector first enrols
or compares, and again whenever one changed since (`Scorer._check_params`), as in scikit-learn:
`min_scale` must be a finite number > 0.
"""

from __future__ import annotations

import numpy as np

from modalities.base import Scorer, Template, real
from modalities.events import EventValidationError
from modalities.keystroke.features import FEATURE_DIM, FEATURE_VERSION, TIMING

#: default spread floor: a third of a 15.6 ms tick (window means average several ticks)
DEFAULT_MIN_SCALE = 0.005


def timing_columns(X: np.ndarray) -> np.ndarray:
    """The columns the detectors compare: timing part of free-text windows, else all."""
    return X[:, TIMING] if X.shape[1] == FEATURE_DIM else X


class _KeystrokeOneClass(Scorer):
    modality = "keystroke"
    feature_version = FEATURE_VERSION
    _param_checks = {"min_scale": real(gt=0)}

    def __init__(self, min_scale: float = DEFAULT_MIN_SCALE) -> None:
        self.min_scale = min_scale

    def _prep(self, X: np.ndarray, dim: int | None = None) -> np.ndarray:
        self._check_params()
        return timing_columns(self.check_features(X, dim))

    def _enrol_prep(self, X: np.ndarray, min_rows: int = 2) -> tuple[int, np.ndarray]:
        """(number of input columns, compared columns) of enrolment vectors (any array-like)."""
        self._check_params()
        X = self.check_features(X)
        Z = timing_columns(X)
        if Z.shape[0] < min_rows:
            raise EventValidationError("values", f"{self.name} needs at least {min_rows} enrolment vectors, "
                                                 f"got n_samples = {Z.shape[0]}")
        return X.shape[1], Z


class ManhattanScaledDetector(_KeystrokeOneClass):
    """K&M's best: sum over features of |x - mean| / mean absolute deviation (floored)."""

    name = "keystroke-manhattan-scaled"

    def enroll(self, X: np.ndarray) -> Template:
        dim, Z = self._enrol_prep(X)
        mean = Z.mean(axis=0)
        mad = np.mean(np.abs(Z - mean), axis=0)
        return {"dim": np.array(dim), "mean": mean, "scale": np.maximum(mad, self.min_scale)}

    def compare(self, template: Template, X: np.ndarray) -> np.ndarray:
        Z = self._prep(X, int(template["dim"]))
        return -np.sum(np.abs(Z - template["mean"]) / template["scale"], axis=1)


class OutlierCountDetector(_KeystrokeOneClass):
    """K&M's outlier count: how many features lie more than `z` sd from the enrolment mean."""

    name = "keystroke-outlier-count"

    _param_checks = {**_KeystrokeOneClass._param_checks, "z": real(gt=0)}

    def __init__(self, min_scale: float = DEFAULT_MIN_SCALE, z: float = 1.96) -> None:
        super().__init__(min_scale)
        self.z = z

    def enroll(self, X: np.ndarray) -> Template:
        dim, Z = self._enrol_prep(X)
        return {"dim": np.array(dim), "mean": Z.mean(axis=0),
                "scale": np.maximum(Z.std(axis=0, ddof=1), self.min_scale)}

    def compare(self, template: Template, X: np.ndarray) -> np.ndarray:
        Z = self._prep(X, int(template["dim"]))
        return -np.sum(np.abs(Z - template["mean"]) / template["scale"] > self.z, axis=1).astype(float)


def _shrunk_precision(Z: np.ndarray, min_scale: float) -> np.ndarray:
    """Inverse of a Ledoit-Wolf shrunk covariance (well defined with fewer vectors than features)."""
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(Z)
    cov = lw.covariance_ + np.eye(Z.shape[1]) * min_scale**2
    return np.linalg.inv(cov)


class NearestNeighbourMahalanobisDetector(_KeystrokeOneClass):
    """K&M's nearest neighbour: Mahalanobis distance to the closest enrolment vector."""

    name = "keystroke-nn-mahalanobis"

    def enroll(self, X: np.ndarray) -> Template:
        dim, Z = self._enrol_prep(X, 3)
        prec = _shrunk_precision(Z, self.min_scale)
        # factor the metric once so comparison is a Euclidean nearest-neighbour search
        L = np.linalg.cholesky(prec)
        return {"dim": np.array(dim), "points": Z @ L, "factor": L}

    def compare(self, template: Template, X: np.ndarray) -> np.ndarray:
        Z = self._prep(X, int(template["dim"])) @ template["factor"]
        P = template["points"]
        d2 = (Z**2).sum(1)[:, None] - 2 * Z @ P.T + (P**2).sum(1)[None, :]
        return -np.sqrt(np.maximum(d2.min(axis=1), 0.0))


class OneClassSVMDetector(_KeystrokeOneClass):
    """K&M's one-class SVM (nu = 0.5, RBF) on features standardised by the enrolment spread.

    The template holds the support vectors and dual coefficients as plain arrays, so it
    saves and travels like any other template (no pickled estimator).
    """

    name = "keystroke-svm-oneclass"

    _param_checks = {**_KeystrokeOneClass._param_checks, "nu": real(gt=0, le=1), "gamma": real(gt=0, none=True)}

    def __init__(self, min_scale: float = DEFAULT_MIN_SCALE, nu: float = 0.5, gamma: float | None = None) -> None:
        super().__init__(min_scale)
        self.nu = nu
        self.gamma = gamma

    def enroll(self, X: np.ndarray) -> Template:
        from sklearn.svm import OneClassSVM

        dim, Z = self._enrol_prep(X, 3)
        mean = Z.mean(axis=0)
        scale = np.maximum(Z.std(axis=0), self.min_scale)
        S = (Z - mean) / scale
        gamma = self.gamma if self.gamma is not None else 1.0 / S.shape[1]
        svm = OneClassSVM(kernel="rbf", nu=self.nu, gamma=gamma).fit(S)
        return {"dim": np.array(dim), "mean": mean, "scale": scale, "sv": svm.support_vectors_,
                "coef": svm.dual_coef_.ravel(), "intercept": np.asarray(svm.intercept_, float).ravel(),
                "gamma": np.array(gamma)}

    def compare(self, template: Template, X: np.ndarray) -> np.ndarray:
        S = (self._prep(X, int(template["dim"])) - template["mean"]) / template["scale"]
        sv = template["sv"]
        d2 = (S**2).sum(1)[:, None] - 2 * S @ sv.T + (sv**2).sum(1)[None, :]
        k = np.exp(-float(template["gamma"]) * np.maximum(d2, 0.0))
        return k @ template["coef"] + float(template["intercept"][0])


ONE_CLASS: dict[str, type[_KeystrokeOneClass]] = {
    "manhattan-scaled": ManhattanScaledDetector,
    "nn-mahalanobis": NearestNeighbourMahalanobisDetector,
    "outlier-count": OutlierCountDetector,
    "svm-oneclass": OneClassSVMDetector,
}
