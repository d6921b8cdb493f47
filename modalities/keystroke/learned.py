"""Keystroke scorers that learn from other people (population part fitted on training subjects).

Why they beat the one-class detectors: a single person's enrolment says what *their* typing
looks like but not which differences matter; other people's typing tells us how much
features vary within a person versus between people, and what impostors look like.

* `LikelihoodRatioScorer` (``keystroke-llr``): a two-covariance Gaussian background model.
  Within-person covariance W and between-person covariance B are learned on the population;
  a probe is scored by log N(x; template, W) - log N(x; population mean, W + B).
* `BackgroundSVMScorer` (``keystroke-background-svm``): per person, an RBF SVM separating the
  enrolment vectors from background vectors of training subjects (stored in the model).
* `FusedScorer` (``keystroke-fused``): the sum of the two, each z-normalised.

All three work in a log-time space (`log_timing`), standardised with population statistics,
and z-normalise each template's scores against a cohort of training windows (so one global
threshold fits every person: pooled error rates need it, per-person ones are unchanged).
Templates are plain arrays; population state saves to `.npz` through `Scorer.save`.
Hyper-parameters follow scikit-learn's contract, checked as `modalities.base.ParamsMixin` says.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from modalities.base import (
    ModelVersionError,
    ParamCheck,
    Scorer,
    Template,
    boolean,
    check_state,
    describe,
    distinct_subjects,
    integer,
    one_of,
    real,
    seed_check,
)
from modalities.events import EventValidationError
from modalities.keystroke.features import CLOCK_TICK, FEATURE_DIM, FEATURE_NAMES, FEATURE_VERSION, N_TIMING

_LOG_PREFIXES = ("H.", "DD.", "UU.", "T.", "hold.p", "dd.p", "uu.", "speed.")
_FREE_LOG = np.array([n.startswith(_LOG_PREFIXES) for n in FEATURE_NAMES[:N_TIMING]])
_FREE_KEEP = np.array([not n.startswith(("UD.",)) for n in FEATURE_NAMES[:N_TIMING]])


def log_timing(X: np.ndarray) -> np.ndarray:
    """Map feature vectors to the space the learned scorers use.

    Latencies are roughly log-normal, so positive latencies become log(max(x, tick / 4)).
    Free-text windows keep their timing part minus per-digraph UD (UD = DD - previous hold);
    fixed-text CMU-layout vectors (3n - 2 columns) keep H and DD, dropping the redundant UD.
    H and DD are taken by position, so those columns must be in the CMU order
    ``H.k1, DD.k1.k2, UD.k1.k2, H.k2, ..., H.kn`` (`evaluation.datasets.cmu_feature_columns`
    puts a file's columns in it by name; `features.fixed_text_vector` builds it).
    """
    X = np.asarray(X, dtype=float)
    d = X.shape[1]
    if d == FEATURE_DIM:
        T = X[:, :N_TIMING].copy()
        T[:, _FREE_LOG] = np.log(np.maximum(T[:, _FREE_LOG], CLOCK_TICK / 4))
        return T[:, _FREE_KEEP]
    if (d + 2) % 3 == 0:
        keep = np.arange(d) % 3 != 2
        return np.log(np.maximum(X[:, keep], CLOCK_TICK / 16))
    raise EventValidationError("values", f"expected {FEATURE_DIM} free-text features or a fixed-text vector of 3n-2, got {d}")


class _PopulationScorer(Scorer):
    """Shared plumbing: population standardisation, cohort for z-norm, state round trip."""

    modality = "keystroke"
    feature_version = FEATURE_VERSION
    _state_keys: tuple[str, ...] = ()
    #: expected shapes of the state (see `check_state`): p = log-timing width, m = cohort size
    _state_shapes: dict[str, tuple[int | str | None, ...]] = {
        "mu_": ("p",), "sd_": ("p",), "cohort_": ("m", "p"), "cohort_subjects_": ("m",)}
    # fitted state, set all at once by `_set_fitted` when a fit succeeds (absent before)
    dim_: np.ndarray
    mu_: np.ndarray
    sd_: np.ndarray
    cohort_: np.ndarray
    cohort_subjects_: np.ndarray

    _param_checks = {"cohort_per_subject": integer(ge=1), "znorm": boolean, "seed": seed_check}

    def __init__(self, cohort_per_subject: int = 20, znorm: bool = True, seed: int = 0) -> None:
        self.cohort_per_subject = cohort_per_subject
        self.znorm = znorm
        self.seed = seed

    # -- population -----------------------------------------------------------------------
    def _check_population(self, X: np.ndarray, subjects: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        self._validate_params()
        X = self.check_features(X)
        if subjects is None:
            raise EventValidationError("subjects", f"{self.name} learns from other people: subject labels are required")
        y = np.asarray(subjects)
        if y.shape != (X.shape[0],):
            raise EventValidationError("subjects", f"need one label per row ({X.shape[0]}), got shape {y.shape}")
        if distinct_subjects(y) < 3:
            raise EventValidationError("subjects", "need windows of at least 3 subjects")
        return X, y

    def _fit_standardiser(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Standardised log-timing rows and the shared state learned from them, set by the caller.

        Returned rather than set, so that a fit that fails later leaves the previous model whole
        (not a new standardiser beside the old covariances).
        """
        L = log_timing(X)
        mu = L.mean(axis=0)
        sd = np.maximum(L.std(axis=0), 1e-3)
        Z = (L - mu) / sd
        rng = np.random.default_rng(self.seed)
        picks = []
        for s in np.unique(y):
            idx = np.flatnonzero(y == s)
            k = min(self.cohort_per_subject, idx.size)
            picks.append(np.sort(rng.choice(idx, size=k, replace=False)))
        pick = np.concatenate(picks)
        return Z, {"dim_": np.array(X.shape[1]), "mu_": mu, "sd_": sd, "cohort_": Z[pick], "cohort_subjects_": y[pick]}

    def _set_fitted(self, state: dict[str, np.ndarray]) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def _z(self, X: np.ndarray) -> np.ndarray:
        self._check_params()
        if not hasattr(self, "mu_"):
            raise ModelVersionError(f"{self.name} is not fitted: call fit(X, subjects) on a population first")
        X = self.check_features(X, int(self.dim_))
        return (log_timing(X) - self.mu_) / self.sd_

    def get_state(self) -> dict[str, np.ndarray]:
        keys = ("dim_", "mu_", "sd_", "cohort_", "cohort_subjects_") + self._state_keys
        return {k: np.asarray(getattr(self, k)) for k in keys if hasattr(self, k)}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        need = {"dim_", "mu_", "sd_", "cohort_", "cohort_subjects_", *self._state_keys}
        missing = need - set(state)
        if missing:
            raise ModelVersionError(f"{self.name}: saved state lacks {sorted(missing)}")
        dim = np.asarray(state["dim_"])
        if dim.shape != () or dim.dtype.kind not in "iu":
            raise ModelVersionError(f"{self.name}: state 'dim_' must be an integer, got {dim!r}")
        try:
            p = log_timing(np.ones((1, int(dim)))).shape[1]
        except EventValidationError as exc:
            raise ModelVersionError(f"{self.name}: state 'dim_' = {int(dim)} is no keystroke feature layout") from exc
        shapes = {**_PopulationScorer._state_shapes, **self._state_shapes}
        check_state(self.name, state, shapes, positive=("sd_",), labels=("cohort_subjects_",), dims={"p": p})
        for k, v in state.items():
            setattr(self, k, v)

    # -- per subject ----------------------------------------------------------------------
    def _raw_template(self, Z: np.ndarray) -> Template:
        raise NotImplementedError

    def _raw_scores(self, template: Template, Z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def enroll(self, X: np.ndarray) -> Template:
        Z = self._z(X)
        if Z.shape[0] < 2:
            raise EventValidationError("values", f"{self.name} needs at least 2 enrolment windows, got {Z.shape[0]}")
        t = self._raw_template(Z)
        c = self._raw_scores(t, self.cohort_)
        t["z_mean"], t["z_sd"] = np.array(c.mean()), np.array(max(c.std(), 1e-6))
        return t

    def compare(self, template: Template, X: np.ndarray) -> np.ndarray:
        s = self._raw_scores(template, self._z(X))
        return (s - template["z_mean"]) / template["z_sd"] if self.znorm else s


class LikelihoodRatioScorer(_PopulationScorer):
    """Two-covariance background model: log N(x; template, W) - log N(x; m, W + B)."""

    name = "keystroke-llr"
    _state_keys = ("w_inv_", "t_inv_", "m_")
    w_inv_: np.ndarray
    t_inv_: np.ndarray
    m_: np.ndarray
    _state_shapes = {"w_inv_": ("p", "p"), "t_inv_": ("p", "p"), "m_": ("p",)}

    _param_checks = {**_PopulationScorer._param_checks, "shrinkage": real(ge=0, le=1)}

    def __init__(self, cohort_per_subject: int = 20, znorm: bool = True, seed: int = 0, shrinkage: float = 0.1) -> None:
        super().__init__(cohort_per_subject, znorm, seed)
        self.shrinkage = shrinkage

    def fit(self, X: np.ndarray, subjects: np.ndarray | None = None) -> LikelihoodRatioScorer:
        X, y = self._check_population(X, subjects)
        Z, state = self._fit_standardiser(X, y)
        subs = np.unique(y)
        means = np.vstack([Z[y == s].mean(axis=0) for s in subs])
        R = Z - means[np.searchsorted(subs, y)]
        W = R.T @ R / max(R.shape[0] - subs.size, 1)
        d = W.shape[0]
        W = (1 - self.shrinkage) * W + self.shrinkage * np.eye(d) * np.trace(W) / d
        B = np.cov(means.T) if subs.size > 1 else np.zeros_like(W)
        # Z has unit variance per column: a within-person spread of ~0 means each subject's windows are one
        # point (one window each, or copies), which inverted to nonsense or a bare "Singular matrix"
        if not np.trace(W) > 1e-9 * d:
            raise EventValidationError("values", f"{self.name} cannot learn how a person's typing varies: no subject "
                                                 "has two different windows (one window each, or identical windows)")
        try:
            w_inv, t_inv = np.linalg.inv(W), np.linalg.inv(W + B)
        except np.linalg.LinAlgError:  # shrinkage 0 with fewer windows than features
            raise EventValidationError("values", f"{self.name}: the within-person covariance of these windows is "
                                                 "singular: use shrinkage > 0 or more windows") from None
        self._set_fitted({**state, "m_": means.mean(axis=0), "w_inv_": w_inv, "t_inv_": t_inv})
        return self

    def _raw_template(self, Z: np.ndarray) -> Template:
        return {"mean": Z.mean(axis=0)}

    def _raw_scores(self, template: Template, Z: np.ndarray) -> np.ndarray:
        d = Z - template["mean"]
        e = Z - self.m_
        return -0.5 * np.einsum("ij,jk,ik->i", d, self.w_inv_, d) + 0.5 * np.einsum("ij,jk,ik->i", e, self.t_inv_, e)


class BackgroundSVMScorer(_PopulationScorer):
    """Per-person RBF SVM: this person's enrolment windows versus other people's.

    `background_per_subject` vectors of each training subject are kept as negatives; with
    ``background="early"`` they are each subject's first vectors (in the order given), which
    resemble someone typing a text they have not practised, like an impostor.
    """

    name = "keystroke-background-svm"
    _state_keys = ("background_",)
    background_: np.ndarray
    _state_shapes = {"background_": (None, "p")}

    _param_checks = {**_PopulationScorer._param_checks, "background_per_subject": integer(ge=1),
                     "background": one_of("early", "random"), "C": real(gt=0)}

    def __init__(self, cohort_per_subject: int = 20, znorm: bool = True, seed: int = 0,
                 background_per_subject: int = 100, background: str = "early", C: float = 1.0) -> None:
        super().__init__(cohort_per_subject, znorm, seed)
        self.background_per_subject = background_per_subject
        self.background = background
        self.C = C

    def fit(self, X: np.ndarray, subjects: np.ndarray | None = None) -> BackgroundSVMScorer:
        X, y = self._check_population(X, subjects)
        Z, state = self._fit_standardiser(X, y)
        rng = np.random.default_rng(self.seed + 1)
        picks = []
        for s in np.unique(y):
            idx = np.flatnonzero(y == s)
            k = min(self.background_per_subject, idx.size)
            picks.append(idx[:k] if self.background == "early" else np.sort(rng.choice(idx, size=k, replace=False)))
        self._set_fitted({**state, "background_": Z[np.concatenate(picks)]})
        return self

    def _raw_template(self, Z: np.ndarray) -> Template:
        from sklearn.svm import SVC

        A = np.vstack([Z, self.background_])
        lab = np.r_[np.ones(Z.shape[0]), np.zeros(self.background_.shape[0])]
        gamma = 1.0 / (A.shape[1] * A.var())
        svm = SVC(C=self.C, kernel="rbf", gamma=gamma, class_weight="balanced").fit(A, lab)
        sign = 1.0 if svm.classes_[1] == 1 else -1.0
        return {"sv": svm.support_vectors_, "coef": sign * svm.dual_coef_.ravel(),
                "intercept": sign * np.asarray(svm.intercept_, float).ravel(), "gamma": np.array(gamma)}

    def _raw_scores(self, template: Template, Z: np.ndarray) -> np.ndarray:
        sv = template["sv"]
        d2 = (Z**2).sum(1)[:, None] - 2 * Z @ sv.T + (sv**2).sum(1)[None, :]
        return np.exp(-float(template["gamma"]) * np.maximum(d2, 0.0)) @ template["coef"] + float(template["intercept"][0])


def _member_params(cls: type[_PopulationScorer]) -> ParamCheck:
    """Check: None or a dict of `cls`'s parameters (its `znorm` is always on inside `FusedScorer`).

    Each entry goes through `cls`'s own check; no member is built (that happens at fit and load).
    """

    def check(value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, Mapping):
            raise ValueError(f"must be None or a dict of {cls.__name__} parameters, got {describe(value)}")
        names = cls._get_param_names()
        unknown = [k for k in value if k not in names]
        if unknown:
            raise ValueError(f"has unknown {cls.__name__} parameter {describe(unknown[0])}; known: {names}")
        for name, entry_check in cls._param_checks.items():
            if name == "znorm" or name not in value:  # znorm: overridden; absent: the default
                continue
            try:
                entry_check(value[name])
            except Exception as exc:  # junk of any type (a saved file) must name the entry
                raise ValueError(f"entry {name!r} {str(exc) or type(exc).__name__}") from exc

    return check


class FusedScorer(Scorer):
    """Sum of the z-normalised likelihood-ratio and background-SVM scores.

    `llr` and `svm` are the members' parameters (None: their defaults); the members are built
    when the scorer is fitted or loaded.
    """

    name = "keystroke-fused"
    modality = "keystroke"
    feature_version = FEATURE_VERSION
    _param_checks = {"llr": _member_params(LikelihoodRatioScorer), "svm": _member_params(BackgroundSVMScorer),
                     "weight_llr": real(ge=0)}

    def __init__(self, llr: dict[str, Any] | None = None, svm: dict[str, Any] | None = None, weight_llr: float = 1.0) -> None:
        self.llr = llr
        self.svm = svm
        self.weight_llr = weight_llr

    def _new_members(self) -> tuple[LikelihoodRatioScorer, BackgroundSVMScorer]:
        self._validate_params()
        return (LikelihoodRatioScorer(**{**(self.llr or {}), "znorm": True}),
                BackgroundSVMScorer(**{**(self.svm or {}), "znorm": True}))

    def _members(self) -> tuple[LikelihoodRatioScorer, BackgroundSVMScorer]:
        self._check_params()
        if not hasattr(self, "llr_"):
            raise ModelVersionError(f"{self.name} is not fitted: call fit(X, subjects) on a population first")
        return self.llr_, self.svm_

    def fit(self, X: np.ndarray, subjects: np.ndarray | None = None) -> FusedScorer:
        llr, svm = self._new_members()
        llr.fit(X, subjects)
        svm.fit(X, subjects)
        self.llr_, self.svm_ = llr, svm
        return self

    def enroll(self, X: np.ndarray) -> Template:
        llr, svm = self._members()
        a = llr.enroll(X)
        b = svm.enroll(X)
        return {**{f"llr.{k}": v for k, v in a.items()}, **{f"svm.{k}": v for k, v in b.items()}}

    def compare(self, template: Template, X: np.ndarray) -> np.ndarray:
        llr, svm = self._members()
        a = {k[4:]: v for k, v in template.items() if k.startswith("llr.")}
        b = {k[4:]: v for k, v in template.items() if k.startswith("svm.")}
        return self.weight_llr * llr.compare(a, X) + svm.compare(b, X)

    def get_state(self) -> dict[str, np.ndarray]:
        if not hasattr(self, "llr_"):
            return {}
        return {**{f"llr.{k}": v for k, v in self.llr_.get_state().items()},
                **{f"svm.{k}": v for k, v in self.svm_.get_state().items()}}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        llr, svm = self._new_members()
        llr.set_state({k[4:]: v for k, v in state.items() if k.startswith("llr.")})
        svm.set_state({k[4:]: v for k, v in state.items() if k.startswith("svm.")})
        self.llr_, self.svm_ = llr, svm


LEARNED: dict[str, type[Scorer]] = {
    "llr": LikelihoodRatioScorer,
    "background-svm": BackgroundSVMScorer,
    "fused": FusedScorer,
}
