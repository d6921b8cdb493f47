"""Touch scorers (per-stroke scores; several strokes are combined with `accumulate`).

One-class (need no population model): scaled Manhattan, one-class SVM, k nearest neighbours.
Population-trained ("learn from other people"):

* `BackgroundLR`: at enrolment a logistic regression separates the person's strokes from a
  stored background of other people's strokes; the score is its log-odds.
  `QuadBackgroundLR` does the same on the features plus their bounded squares.
* `PLDATouch`: a direction-aware, subject-discriminant embedding (per-direction
  standardisation, then LDA trained on other people with all their stroke directions, so the
  projection keeps what separates people and discards what changes with the swipe
  direction), scored with a two-covariance (PLDA-style) log-likelihood ratio. The direction
  matters because BB-MAS enrolment swipes are mostly vertical while later test swipes are half
  horizontal.

Every scorer's `compare` returns one score per stroke (higher is more genuine); a decision on
k strokes uses the mean score (a mean of log-likelihood ratios for the LLR scorers).
Scoring is pure numpy; scikit-learn is imported only inside `fit`/`enroll` that need it.
Hyper-parameters follow scikit-learn's contract, checked as `modalities.base.ParamsMixin` says.
"""

from __future__ import annotations

from typing import Self

import numpy as np

from modalities.base import (
    ModelVersionError,
    Scorer,
    Template,
    check_state,
    distinct_subjects,
    integer,
    real,
    seed_check,
)
from modalities.events import EventValidationError
from modalities.touch.features import FEATURE_DIM, FEATURE_VERSION, IDX

N_DIRECTIONS = 4  # right, left, down, up (screen y grows downwards); taps go to "right"


def direction_class(X: np.ndarray) -> np.ndarray:
    """Dominant direction of each stroke: 0 right, 1 left, 2 down, 3 up."""
    c, s = X[:, IDX["e2e_cos"]], X[:, IDX["e2e_sin"]]
    return np.where(np.abs(c) >= np.abs(s), np.where(c >= 0, 0, 1), np.where(s >= 0, 2, 3)).astype(np.int64)


def accumulate(scores: np.ndarray, k: int) -> np.ndarray:
    """Mean of per-stroke scores over consecutive non-overlapping groups of `k` strokes."""
    s = np.asarray(scores, dtype=float).ravel()
    if k < 1:
        raise ValueError("k must be >= 1")
    n = s.size // k
    return s[: n * k].reshape(n, k).mean(axis=1)


class _TouchScorer(Scorer):
    modality = "touch"
    feature_version = FEATURE_VERSION

    def _x(self, X: np.ndarray) -> np.ndarray:
        self._check_params()
        return self.check_features(X, FEATURE_DIM)


# --------------------------------------------------------------------------- one-class


class TouchManhattan(_TouchScorer):
    """Scaled Manhattan distance to the enrolment mean (Killourhy & Maxion); the baseline."""

    name = "touch-manhattan-scaled"
    _param_checks = {"min_scale": real(gt=0)}

    def __init__(self, min_scale: float = 1e-3) -> None:
        self.min_scale = min_scale

    def enroll(self, X: np.ndarray) -> Template:
        X = self._x(X)
        m = X.mean(axis=0)
        return {"mean": m, "scale": np.maximum(np.mean(np.abs(X - m), axis=0), self.min_scale)}

    def compare(self, template: Template, X: np.ndarray) -> np.ndarray:
        X = self._x(X)
        return -np.mean(np.abs(X - template["mean"]) / template["scale"], axis=1)


def _enrol_scaling(X: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    return X.mean(axis=0), np.maximum(X.std(axis=0), floor)


class TouchKNN(_TouchScorer):
    """Mean distance to the k nearest enrolment strokes (standardised by the enrolment spread).

    Nearest neighbours are naturally direction-aware: a horizontal probe is compared with the
    few horizontal enrolment strokes when there are any.
    """

    name = "touch-knn"
    _param_checks = {"k": integer(ge=1), "min_scale": real(gt=0)}

    def __init__(self, k: int = 5, min_scale: float = 0.05) -> None:
        self.k = k
        self.min_scale = min_scale

    def enroll(self, X: np.ndarray) -> Template:
        X = self._x(X)
        m, sd = _enrol_scaling(X, self.min_scale)
        return {"mean": m, "scale": sd, "points": (X - m) / sd}

    def compare(self, template: Template, X: np.ndarray) -> np.ndarray:
        Z = (self._x(X) - template["mean"]) / template["scale"]
        P = template["points"]
        d2 = (Z * Z).sum(1)[:, None] + (P * P).sum(1)[None, :] - 2.0 * Z @ P.T
        d = np.sqrt(np.maximum(d2, 0.0) / Z.shape[1])
        k = min(self.k, P.shape[0])
        return -np.sort(d, axis=1)[:, :k].mean(axis=1)


class TouchOneClassSVM(_TouchScorer):
    """RBF one-class SVM on enrolment-standardised strokes; decision values in numpy."""

    name = "touch-ocsvm"
    _param_checks = {"nu": real(gt=0, le=1), "gamma": real(gt=0), "min_scale": real(gt=0)}

    def __init__(self, nu: float = 0.2, gamma: float = 0.02, min_scale: float = 0.05) -> None:
        self.nu = nu
        self.gamma = gamma
        self.min_scale = min_scale

    def enroll(self, X: np.ndarray) -> Template:
        from sklearn.svm import OneClassSVM

        X = self._x(X)
        m, sd = _enrol_scaling(X, self.min_scale)
        svm = OneClassSVM(kernel="rbf", nu=self.nu, gamma=self.gamma).fit((X - m) / sd)
        return {"mean": m, "scale": sd, "sv": svm.support_vectors_, "alpha": svm.dual_coef_.ravel(),
                "rho": np.asarray(svm.intercept_, float).ravel()}

    def compare(self, template: Template, X: np.ndarray) -> np.ndarray:
        Z = (self._x(X) - template["mean"]) / template["scale"]
        sv = template["sv"]
        d2 = (Z * Z).sum(1)[:, None] + (sv * sv).sum(1)[None, :] - 2.0 * Z @ sv.T
        return np.exp(-self.gamma * np.maximum(d2, 0.0)) @ template["alpha"] + float(template["rho"][0])


# --------------------------------------------------------------------------- population-trained


class _DirectionStandardiser:
    """Per-direction population mean/std.

    A stroke is described relative to others' strokes of the same direction, so traits (fast,
    large finger, curved) transfer across directions.
    """

    @staticmethod
    def fit(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = direction_class(X)
        g_m, g_s = X.mean(axis=0), X.std(axis=0) + 1e-6
        mean = np.tile(g_m, (N_DIRECTIONS, 1))
        std = np.tile(g_s, (N_DIRECTIONS, 1))
        for c in range(N_DIRECTIONS):
            m = d == c
            if m.sum() >= 20:
                mean[c], std[c] = X[m].mean(axis=0), X[m].std(axis=0) + 1e-6
        return mean, std

    @staticmethod
    def apply(X: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        d = direction_class(X)
        return (X - mean[d]) / std[d]


def _check_population(X: np.ndarray, subjects: np.ndarray | None, min_subjects: int = 2) -> np.ndarray:
    if subjects is None:
        raise EventValidationError("subjects", "population training needs the subject of every window")
    subjects = np.asarray(subjects)
    if subjects.shape != (X.shape[0],):  # a column or a scalar would broadcast against the windows
        raise EventValidationError("subjects", f"need one label per window ({X.shape[0]}), got shape {subjects.shape}")
    n = distinct_subjects(subjects)
    if n < min_subjects:
        raise EventValidationError("subjects", f"need at least {min_subjects} subjects, got {n}")
    return subjects


class _Population(_TouchScorer):
    _state_keys: tuple[str, ...] = ()
    #: expected shape of each state array (see `check_state`); scales must be > 0
    _state_shapes: dict[str, tuple[int | str | None, ...]] = {}
    _positive_state: tuple[str, ...] = ("std",)

    def get_state(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k + "_") for k in self._state_keys if hasattr(self, k + "_")}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        missing = set(self._state_keys) - set(state)
        if missing:
            raise ModelVersionError(f"{self.name}: saved state lacks {sorted(missing)}")
        check_state(self.name, state, self._state_shapes, positive=self._positive_state)
        for k in self._state_keys:
            setattr(self, k + "_", np.asarray(state[k]))

    def _fitted(self) -> None:
        if not hasattr(self, self._state_keys[0] + "_"):
            raise ModelVersionError(f"{self.name} has no population model: call fit() or load a trained one")


class BackgroundLR(_Population):
    """Per-person logistic regression against a background of other people's strokes."""

    name = "touch-background-lr"
    _state_keys = ("mean", "std", "background")
    _state_shapes = {"mean": (N_DIRECTIONS, FEATURE_DIM), "std": (N_DIRECTIONS, FEATURE_DIM),
                     "background": (None, FEATURE_DIM)}

    _param_checks = {"C": real(gt=0), "n_background": integer(ge=1), "seed": seed_check}

    def __init__(self, C: float = 0.1, n_background: int = 3000, seed: int = 0) -> None:
        self.C = C
        self.n_background = n_background
        self.seed = seed

    def fit(self, X: np.ndarray, subjects: np.ndarray | None = None) -> Self:
        self._validate_params()
        X = self._x(X)
        _check_population(X, subjects)
        self.mean_, self.std_ = _DirectionStandardiser.fit(X)
        Z = _DirectionStandardiser.apply(X, self.mean_, self.std_)
        rng = np.random.default_rng(self.seed)
        self.background_ = Z[np.sort(rng.choice(len(Z), min(self.n_background, len(Z)), replace=False))]
        return self

    def enroll(self, X: np.ndarray) -> Template:
        from sklearn.linear_model import LogisticRegression

        self._fitted()
        Z = _DirectionStandardiser.apply(self._x(X), self.mean_, self.std_)
        A = self._expand(np.vstack([Z, self.background_]))
        y = np.r_[np.ones(len(Z)), np.zeros(len(self.background_))]
        lr = LogisticRegression(C=self.C, class_weight="balanced", max_iter=1000).fit(A, y)
        return {"coef": lr.coef_.ravel(), "intercept": np.asarray(lr.intercept_, float)}

    @staticmethod
    def _expand(Z: np.ndarray) -> np.ndarray:
        """Model input from direction-standardised features (identity: a linear model)."""
        return Z

    def compare(self, template: Template, X: np.ndarray) -> np.ndarray:
        self._fitted()
        Z = self._expand(_DirectionStandardiser.apply(self._x(X), self.mean_, self.std_))
        if Z.shape[1] != template["coef"].shape[0]:
            raise ModelVersionError(f"{self.name}: template has {template['coef'].shape[0]} weights, "
                                    f"model expects {Z.shape[1]} (template from another scorer?)")
        return Z @ template["coef"] + float(template["intercept"][0])


class QuadBackgroundLR(BackgroundLR):
    """`BackgroundLR` on the features plus a bounded square of each (``tanh(z**2 / 4)``).

    The squares let the per-person boundary be a band ("sizes near the population's typical
    value", "unusually variable speed") instead of one half-space per direction; on an inner
    split of training subjects this took 5-swipe EER from 0.153 to 0.135 (BENCHMARKS.md).
    """

    name = "touch-background-qlr"

    @staticmethod
    def _expand(Z: np.ndarray) -> np.ndarray:
        return np.hstack([Z, np.tanh(Z * Z / 4.0)])


class PLDATouch(_Population):
    """Direction-standardised LDA embedding + two-covariance log-likelihood ratio."""

    name = "touch-plda"
    _state_keys = ("mean", "std", "proj", "center", "between", "within")
    _state_shapes = {"mean": (N_DIRECTIONS, FEATURE_DIM), "std": (N_DIRECTIONS, FEATURE_DIM),
                     "proj": (FEATURE_DIM, "k"), "center": ("k",), "between": ("k",), "within": ("k",)}
    _positive_state = ("std", "between", "within")

    _param_checks = {"n_components": integer(ge=1)}

    def __init__(self, n_components: int = 40) -> None:
        self.n_components = n_components

    def fit(self, X: np.ndarray, subjects: np.ndarray | None = None) -> Self:
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        self._validate_params()
        X = self._x(X)
        subjects = _check_population(X, subjects, min_subjects=3)
        mean, std = _DirectionStandardiser.fit(X)
        Z = _DirectionStandardiser.apply(X, mean, std)
        nc = int(min(self.n_components, np.unique(subjects).size - 1, Z.shape[1]))
        try:
            lda = LinearDiscriminantAnalysis(n_components=nc, solver="eigen", shrinkage="auto").fit(Z, subjects)
        except np.linalg.LinAlgError:  # strokes that do not vary (e.g. all identical): a bare "leading minor" error
            raise EventValidationError("values", f"{self.name} cannot learn from these strokes: their features do "
                                                 "not vary between or within people") from None
        proj = lda.scalings_[:, :nc]
        E = Z @ proj
        subs = np.unique(subjects)
        mus = np.vstack([E[subjects == s].mean(axis=0) for s in subs])
        # set together once the fit succeeded: a failed refit keeps the fitted model whole
        self.mean_, self.std_, self.proj_ = mean, std, proj
        self.center_ = E.mean(axis=0)
        self.between_ = mus.var(axis=0) + 1e-6
        self.within_ = np.mean([E[subjects == s].var(axis=0) for s in subs], axis=0) + 1e-6
        return self

    def _embed(self, X: np.ndarray) -> np.ndarray:
        self._fitted()
        return _DirectionStandardiser.apply(self._x(X), self.mean_, self.std_) @ self.proj_

    def enroll(self, X: np.ndarray) -> Template:
        E = self._embed(X)
        return {"mean": E.mean(axis=0), "n": np.array([float(E.shape[0])])}

    def compare(self, template: Template, X: np.ndarray) -> np.ndarray:
        E = self._embed(X)
        n, B, W, mu = float(template["n"][0]), self.between_, self.within_, self.center_
        post_mean = mu + n * B / (n * B + W) * (template["mean"] - mu)
        v1 = B * W / (n * B + W) + W
        v0 = B + W
        l1 = -0.5 * np.sum((E - post_mean) ** 2 / v1 + np.log(v1), axis=1)
        l0 = -0.5 * np.sum((E - mu) ** 2 / v0 + np.log(v0), axis=1)
        return l1 - l0


class FusedTouch(_Population):
    """Score-level fusion of `PLDATouch` and `QuadBackgroundLR`.

    Each per-stroke score is floored, so one odd stroke cannot veto a whole window:
    ``max(plda, -10) / 10 + max(qlr, -4)``.

    Version 2 swapped the linear `BackgroundLR` for `QuadBackgroundLR` and the PLDA weight
    1/5 for 1/10, both chosen on an inner 2-fold split of training subjects only (ids = 0 and
    2 mod 4 of the even ids; see BENCHMARKS.md). The floors are version 1's.
    """

    name = "touch-fused"
    version = "2"
    _param_checks = {"seed": seed_check}

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        # the members (not parameters): fitted by `fit`, filled by `set_state`; a bench may set them
        self.plda = PLDATouch()
        self.lr: BackgroundLR = QuadBackgroundLR(seed=seed)

    def fit(self, X: np.ndarray, subjects: np.ndarray | None = None) -> Self:
        self._validate_params()
        plda, lr = PLDATouch().fit(X, subjects), QuadBackgroundLR(seed=self.seed).fit(X, subjects)  # `seed` as set now
        self.plda, self.lr = plda, lr  # only once both fitted: a failed refit keeps the fitted members
        return self

    def get_state(self) -> dict[str, np.ndarray]:
        st = {f"plda__{k}": v for k, v in self.plda.get_state().items()}
        st.update({f"lr__{k}": v for k, v in self.lr.get_state().items()})
        return st

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.plda.set_state({k[6:]: v for k, v in state.items() if k.startswith("plda__")})
        self.lr.set_state({k[4:]: v for k, v in state.items() if k.startswith("lr__")})

    def enroll(self, X: np.ndarray) -> Template:
        self._check_params()
        t = {f"plda__{k}": v for k, v in self.plda.enroll(X).items()}
        t.update({f"lr__{k}": v for k, v in self.lr.enroll(X).items()})
        return t

    def compare(self, template: Template, X: np.ndarray) -> np.ndarray:
        self._check_params()
        tp = {k[6:]: v for k, v in template.items() if k.startswith("plda__")}
        tl = {k[4:]: v for k, v in template.items() if k.startswith("lr__")}
        if not tp or not tl:
            raise ModelVersionError(f"{self.name}: template lacks plda__/lr__ parts")
        return np.maximum(self.plda.compare(tp, X), -10.0) / 10.0 + np.maximum(self.lr.compare(tl, X), -4.0)
