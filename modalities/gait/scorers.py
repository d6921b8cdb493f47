"""Gait scorers: a one-class baseline and a population-trained discriminant embedding.

* `GaitManhattan`: scaled Manhattan distance to the enrolment windows (needs no population):
  the `default_scorer` when no trained model exists.
* `GaitLDA`: learned from other people. Standardise -> PCA (whitened) -> LDA between training
  subjects gives a linear embedding in which one person's windows cluster across sessions and
  phone placements; the template is the person's mean embedding (or a per-user logistic
  regression against the training population), and scores are s-normalised against the
  training subjects so one threshold suits everyone. The whole embedding is one (d, k) matrix,
  so scoring is numpy only (phone, server, federated clients).

Both refuse feature windows of another `FEATURE_VERSION` or dimension with a clear error.
Hyper-parameters follow scikit-learn's contract, checked as `modalities.base.ParamsMixin` says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np

from modalities.base import (
    ModelVersionError,
    ScaledManhattan,
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
from modalities.gait.features import BLOCKS, FEATURE_DIM, FEATURE_VERSION, block_columns


def moving_mean(scores: np.ndarray, n: int) -> np.ndarray:
    """Evidence accumulation: mean of each run of `n` consecutive window scores (len - n + 1 values)."""
    s = np.asarray(scores, float)
    if n <= 1 or s.size < n:
        return s if n <= 1 else s[:0]
    c = np.cumsum(np.r_[0.0, s])
    return (c[n:] - c[:-n]) / n


#: training windows kept as the background of per-user logistic regression and z-norm; stored
#: as float16 (unit vectors need no more), this keeps a 3-view `GaitFusion` model under 1 MB
BACKGROUND_WINDOWS = 2000
#: inverse regularisation of the per-user logistic regression: a strong prior towards the
#: enrolment centroid generalises better to the later walk (inner split of training subjects,
#: BENCHMARKS.md "Gait": 0.1 beat 0.03, 0.3, 1 and 3)
LOGREG_C = 0.1
#: adaptive s-norm (fraction of the highest background / cohort scores the z- and t-norm
#: statistics use; 1.0 = classic s-norm, the default). Top 5% / 40% won on the inner split of
#: training subjects but not on the 100 Hz A/B split (BENCHMARKS.md "Gait"), so it is off
ZNORM_TOP = 1.0
TNORM_TOP = 1.0


def _top(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Highest `fraction` (at least 3) of each row of `scores`; all of them for fraction >= 1."""
    n = scores.shape[1]
    k = min(n, max(3, int(round(fraction * n))))
    return scores if k >= n else np.sort(scores, axis=1)[:, n - k:]


def _check_blocks(value: Any) -> None:
    """Check: a non-empty list of distinct feature block names (`BLOCKS`)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"must be a non-empty list of feature blocks {sorted(BLOCKS)}, got {describe(value)}")
    for b in value:
        if not (isinstance(b, str) and b in BLOCKS):
            raise ValueError(f"names an unknown feature block {describe(b)}; known: {sorted(BLOCKS)}")
    if len(set(value)) != len(value):
        raise ValueError(f"repeats a feature block: {describe(value)}")


_n_dims = integer(ge=1)


def _check_views(value: Any) -> None:
    """Check: None (`FUSION_VIEWS`) or a non-empty dict view name -> [blocks, PCA dims]."""
    if value is None:
        return
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"must be None or a non-empty dict of view name -> [blocks, n_pca], got {describe(value)}")
    for name, spec in value.items():
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"view names must be non-empty strings without '.', got {describe(name)}")
        if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence) or len(spec) != 2:
            raise ValueError(f"view {name!r} must be [blocks, n_pca], got {describe(spec)}")
        try:
            _check_blocks(spec[0])
        except ValueError as exc:
            raise ValueError(f"view {name!r}: blocks {exc}") from exc
        try:
            _n_dims(spec[1])
        except ValueError as exc:
            raise ValueError(f"view {name!r}: n_pca {exc}") from exc


class GaitManhattan(ScaledManhattan):
    """Scaled Manhattan on gait features (Killourhy & Maxion), the no-population baseline."""

    name = "gait-manhattan"
    modality = "gait"
    version = "1"
    feature_version = FEATURE_VERSION

    def enroll(self, X: np.ndarray) -> Template:
        self.check_features(X, FEATURE_DIM)
        return super().enroll(X)


class GaitLDA(Scorer):
    """Discriminant embedding learned from training subjects; cosine or per-user LR, s-norm."""

    name = "gait-lda"
    modality = "gait"
    version = "1"
    feature_version = FEATURE_VERSION
    _param_checks = {"n_pca": _n_dims, "n_lda": _n_dims, "blocks": _check_blocks,
                     "template": one_of("centroid", "logreg"), "snorm": boolean, "seed": seed_check,
                     "C": real(gt=0), "z_top": real(gt=0, le=1), "t_top": real(gt=0, le=1)}

    def __init__(self, n_pca: int = 150, n_lda: int = 60, blocks: tuple[str, ...] | list[str] = ("inv", "cycle", "raw"),
                 template: str = "centroid", snorm: bool = True, seed: int = 0, C: float = LOGREG_C,
                 z_top: float = ZNORM_TOP, t_top: float = TNORM_TOP) -> None:
        self.n_pca = n_pca
        self.n_lda = n_lda
        self.blocks = blocks
        self.template = template
        self.snorm = snorm
        self.seed = seed
        self.C = C
        self.z_top = z_top
        self.t_top = t_top

    # -- population -----------------------------------------------------------------------
    def fit(self, X: np.ndarray, subjects: np.ndarray | None = None) -> Self:
        """Learn the embedding from windows `X` of several `subjects` (labels, one per window)."""
        from sklearn.decomposition import PCA
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        self._validate_params()
        X = self.check_features(X, FEATURE_DIM)
        if subjects is None:
            raise EventValidationError("subjects", "GaitLDA.fit needs one subject label per window")
        y = np.asarray(subjects)
        if y.shape != (X.shape[0],):
            raise EventValidationError("subjects", f"need one label per window ({X.shape[0]}), got shape {y.shape}")
        n_classes = distinct_subjects(y)
        if n_classes < 3:
            raise EventValidationError("subjects", f"need windows of at least 3 subjects, got {n_classes}")
        if X.shape[0] <= n_classes:  # scikit-learn's LDA needs more samples than classes
            raise EventValidationError("subjects", f"need more windows ({X.shape[0]}) than subjects ({n_classes}): "
                                                   "the embedding learns from how each person's windows vary")
        classes = np.unique(y)
        cols = block_columns(self.blocks)
        Xc = X[:, cols]
        mu, sd = Xc.mean(axis=0), Xc.std(axis=0)
        if not (sd > 1e-9).any():  # was an IndexError from inside scikit-learn
            raise EventValidationError("values", "every window has the same features: no variation to learn from")
        sd = np.where(sd > 1e-9, sd, 1.0)
        Z = (Xc - mu) / sd
        n_pca = int(min(self.n_pca, Z.shape[1], Z.shape[0] - 1))
        pca = PCA(n_pca, whiten=True, random_state=self.seed).fit(Z)
        P = pca.transform(Z)
        n_lda = int(min(self.n_lda, classes.size - 1, n_pca))
        lda = LinearDiscriminantAnalysis(n_components=n_lda).fit(P, y)
        # collapse standardise -> PCA -> LDA into one affine map x @ W + b
        Wp = (pca.components_ / np.sqrt(pca.explained_variance_)[:, None]).T  # (d, n_pca)
        Wl = lda.scalings_[:, :n_lda]
        W = (Wp / sd[:, None]) @ Wl
        b = -((mu / sd) @ Wp + pca.mean_ @ Wp + lda.xbar_) @ Wl
        self.cols_, self.W_, self.b_ = cols, W, b
        E = self._embed(X)
        self.cohort_ = np.vstack([self._unit(E[y == c].mean(axis=0)) for c in classes])
        rng = np.random.default_rng(self.seed)
        self.background_ = E[np.sort(rng.choice(E.shape[0], size=min(E.shape[0], BACKGROUND_WINDOWS), replace=False))]
        # keep exactly what a saved model holds (float32), so a loaded model scores identically
        for k in ("W_", "b_", "cohort_"):
            setattr(self, k, getattr(self, k).astype(np.float32).astype(float))
        self.background_ = self.background_.astype(np.float16).astype(float)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "W_"):
            raise ModelVersionError("GaitLDA is not fitted: call fit() or load a trained model")

    @staticmethod
    def _unit(v: np.ndarray) -> np.ndarray:
        return v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-12)

    def _embed(self, X: np.ndarray) -> np.ndarray:
        return self._unit(X[:, self.cols_] @ self.W_ + self.b_)

    def embed(self, X: np.ndarray) -> np.ndarray:
        """Unit-length embeddings (n, k) of feature windows."""
        self._check_params()
        self._check_fitted()
        return self._embed(self.check_features(X, FEATURE_DIM))

    # -- per subject -------------------------------------------------------------------------
    def enroll(self, X: np.ndarray) -> Template:
        E = self.embed(X)
        if self.template == "logreg":
            from sklearn.linear_model import LogisticRegression

            Z = np.vstack([E, self.background_])
            y = np.r_[np.ones(E.shape[0]), np.zeros(self.background_.shape[0])]
            lr = LogisticRegression(C=self.C, class_weight="balanced", max_iter=1000).fit(Z, y)
            tmpl = {"w": lr.coef_[0].astype(float), "b": np.array([float(lr.intercept_[0])])}
        elif self.template == "centroid":
            tmpl = {"w": self._unit(E.mean(axis=0)), "b": np.zeros(1)}
        else:
            raise ValueError(f"template must be 'centroid' or 'logreg', got {self.template!r}")
        z = self.background_ @ tmpl["w"] + tmpl["b"][0]
        z = _top(z[None, :], self.z_top)[0]
        tmpl["znorm"] = np.array([z.mean(), z.std() + 1e-9])
        return tmpl

    def compare(self, template: Template, X: np.ndarray) -> np.ndarray:
        E = self.embed(X)
        if template["w"].shape[0] != E.shape[1]:
            raise ModelVersionError("template was made by another gait model (embedding size differs)")
        raw = E @ template["w"] + template["b"][0]
        if not self.snorm:
            return raw
        zn = (raw - template["znorm"][0]) / template["znorm"][1]
        # t-norm: the probe against the training subjects' centroids most like it (adaptive)
        tc = E @ self.cohort_.T
        if self.template == "logreg":  # put the cohort on the template's scale
            tc = tc * np.linalg.norm(template["w"]) + template["b"][0]
        tc = _top(tc, self.t_top)
        tn = (raw - tc.mean(axis=1)) / (tc.std(axis=1) + 1e-9)
        return 0.5 * (zn + tn)

    # -- persistence -------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        self._check_fitted()
        f32 = np.float32
        return {"cols": self.cols_.astype(np.int16), "W": self.W_.astype(f32), "b": self.b_.astype(f32),
                "cohort": self.cohort_.astype(f32), "background": self.background_.astype(np.float16)}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        need = {"cols", "W", "b", "cohort", "background"}
        if need - set(state):
            raise ModelVersionError(f"gait-lda model file lacks {sorted(need - set(state))}")
        check_state("gait-lda", state, {"cols": ("n",), "W": ("n", "k"), "b": ("k",), "cohort": (None, "k"),
                                        "background": (None, "k")})
        if state["cols"].dtype.kind not in "iu" or state["cols"].min() < 0:
            raise ModelVersionError("gait-lda: state 'cols' must be feature column indices")
        self.cols_ = state["cols"].astype(int)
        if self.cols_.max() >= FEATURE_DIM:
            raise ModelVersionError("gait-lda model was trained on another feature layout")
        self.W_, self.b_ = state["W"].astype(float), state["b"].astype(float)
        self.cohort_, self.background_ = state["cohort"].astype(float), state["background"].astype(float)


#: views of the feature vector fused by `GaitFusion` (name -> (blocks, PCA dims)); chosen on
#: 2-fold subject-disjoint splits of the shared folder (see BENCHMARKS.md). Fewer PCA dims
#: (60/60/50) won with 22-45 training subjects but lost on the 2-fold split and at FMR 1%, and
#: models are trained on more people than that, so these stay
FUSION_VIEWS: dict[str, tuple[tuple[str, ...], int]] = {
    "all": (("inv", "cycle", "raw"), 100),
    "invariant": (("inv", "cycle"), 100),
    "raw": (("raw",), 80),
}


class GaitFusion(Scorer):
    """Sum of s-normalised `GaitLDA` scores over several feature views (our best gait scorer).

    An embedding of the orientation-invariant features and one of the phone's raw axes make
    different mistakes (a re-pocketed phone fools the raw view, a change of pace the
    invariant one), so their normalised scores add up to a better decision than either.
    """

    name = "gait-fusion"
    modality = "gait"
    version = "1"
    feature_version = FEATURE_VERSION
    _param_checks = {"views": _check_views, "template": one_of("centroid", "logreg"), "seed": seed_check,
                     "C": real(gt=0)}

    def __init__(self, views: dict[str, Any] | None = None, template: str = "logreg", seed: int = 0,
                 C: float = LOGREG_C) -> None:
        self.views = views
        self.template = template
        self.seed = seed
        self.C = C

    def _view_specs(self) -> dict[str, tuple[tuple[str, ...], int]]:
        """The views (name -> (blocks, PCA dims)): `views`, or `FUSION_VIEWS` when None."""
        self._validate_params()
        return {k: (tuple(v[0]), int(v[1])) for k, v in (FUSION_VIEWS if self.views is None else self.views).items()}

    def _new_members(self) -> dict[str, GaitLDA]:
        return {k: GaitLDA(n_pca=n, blocks=b, template=self.template, seed=self.seed, C=self.C)
                for k, (b, n) in self._view_specs().items()}

    def _members(self) -> dict[str, GaitLDA]:
        self._check_params()
        if not hasattr(self, "members_"):
            raise ModelVersionError(f"{type(self).__name__} is not fitted: call fit() or load a trained model")
        return self.members_

    def _file_params(self) -> dict[str, Any]:
        """The views a file records are the ones used (``views=None`` resolved to `FUSION_VIEWS`)."""
        return {**super()._file_params(), "views": {k: [list(b), n] for k, (b, n) in self._view_specs().items()}}

    def fit(self, X: np.ndarray, subjects: np.ndarray | None = None) -> Self:
        members = self._new_members()
        for m in members.values():
            m.fit(X, subjects)
        self.members_ = members
        return self

    def enroll(self, X: np.ndarray) -> Template:
        out: Template = {}
        for k, m in self._members().items():
            out.update({f"{k}.{name}": v for name, v in m.enroll(X).items()})
        return out

    def compare(self, template: Template, X: np.ndarray) -> np.ndarray:
        members = self._members()
        total = np.zeros(self.check_features(X, FEATURE_DIM).shape[0])
        for k, m in members.items():
            sub = {name[len(k) + 1:]: v for name, v in template.items() if name.startswith(f"{k}.")}
            if not sub:
                raise ModelVersionError(f"template lacks view {k!r} (made by another gait model)")
            total += m.compare(sub, X)
        return total / len(members)

    def get_state(self) -> dict[str, np.ndarray]:
        return {f"{k}.{name}": v for k, m in self._members().items() for name, v in m.get_state().items()}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        members = self._new_members()
        for k, m in members.items():
            m.set_state({name[len(k) + 1:]: v for name, v in state.items() if name.startswith(f"{k}.")})
        self.members_ = members
