"""The scorer contract every modality follows (server, fusion, federated and benches use it).

Three stages, as in bob.bio.base / SpeechBrain verification pipelines, so each can run where
it belongs (population training centrally or federated, enrolment and comparison on the
device or on the server):

1. ``fit(X, subjects)``: learn the population part from many subjects' feature windows
   (a no-op for purely one-class methods). Returns ``self``.
2. ``enroll(X) -> Template``: one subject's enrolment windows -> a template (plain arrays).
3. ``compare(template, X) -> scores``: one score per probe window, higher is more genuine.

`ScorerDetector` wraps a scorer as a scikit-learn-style one-class estimator for one person
(`fit` enrols, `score_samples` compares, `decision_function = score_samples - offset_`).

Scorers save to a single ``.npz`` (no pickle) with their name and version, so a model file
read back by another version is refused with a clear error instead of scoring garbage.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Self

import numpy as np

from modalities.events import EventValidationError

Template = dict[str, np.ndarray]

_REGISTRY: dict[str, type[Scorer]] = {}


class ModelVersionError(ValueError):
    """A saved scorer or template does not match the code reading it."""


def check_state(owner: str, state: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int | str | None, ...]],
                *, positive: Iterable[str] = (), labels: Iterable[str] = (),
                dims: dict[str, int] | None = None) -> dict[str, int]:
    """Refuse saved state whose arrays a tampered or foreign file got wrong, before they score garbage.

    `shapes` gives each key's expected shape: an int is a fixed size, a str a size that must agree
    across keys (bound on first use, or preset in `dims`), None any size. Arrays must be non-empty,
    numeric (keys in `labels` may also hold strings) and, if floating, finite; keys in `positive`
    must be > 0. Returns the bound sizes.
    """
    dims = dict(dims or {})
    for key, shape in shapes.items():
        v = np.asarray(state[key])
        if v.dtype.kind not in ("biufU" if key in labels else "biuf"):
            raise ModelVersionError(f"{owner}: state {key!r} must be numeric, got dtype {v.dtype}")
        if v.ndim != len(shape) or v.size == 0:
            raise ModelVersionError(f"{owner}: state {key!r} has shape {v.shape}, expected {len(shape)}-D non-empty")
        for axis, (want, got) in enumerate(zip(shape, v.shape)):
            if isinstance(want, str):
                want = dims.setdefault(want, got)
            if want is not None and got != want:
                raise ModelVersionError(f"{owner}: state {key!r} has shape {v.shape}, axis {axis} should be {want}")
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise ModelVersionError(f"{owner}: state {key!r} holds NaN or infinite values")
        if key in positive and not np.all(v > 0):
            raise ModelVersionError(f"{owner}: state {key!r} must be > 0")
    return dims


def _read_model_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metadata and state arrays of a saved scorer; a damaged or foreign file is a ModelVersionError naming it."""
    try:
        z = np.load(path, allow_pickle=False)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelVersionError(f"{path}: not a readable .npz scorer model file ({type(exc).__name__})") from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ModelVersionError(f"{path}: not a scorer model file (a single array, not an .npz archive)")
    with z:
        if "__meta__" not in z.files:
            raise ModelVersionError(f"{path}: not a scorer model file (no __meta__ entry)")
        try:
            raw = z["__meta__"]
            state = {k[len("state__"):]: z[k] for k in z.files if k.startswith("state__")}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise ModelVersionError(f"{path}: damaged scorer model file ({exc})") from exc
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise ModelVersionError(f"{path}: scorer metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ModelVersionError(f"{path}: scorer metadata must be a JSON object, got {type(meta).__name__}")
    for key, kind in (("name", str), ("version", str), ("params", dict)):
        if not isinstance(meta.get(key), kind):
            raise ModelVersionError(f"{path}: scorer metadata lacks {key!r} (or it is not a {kind.__name__})")
    for k, v in state.items():
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise ModelVersionError(f"{path}: state {k!r} holds NaN or infinite values")
    return meta, state


class Scorer(ABC):
    """Base class: population fit, enrolment, comparison, versioned save/load."""

    #: registry name, e.g. "keystroke-manhattan-scaled"
    name: ClassVar[str]
    modality: ClassVar[str]
    #: bump when the meaning of saved state or templates changes
    version: ClassVar[str] = "1"
    #: feature version this scorer expects (checked against incoming windows)
    feature_version: ClassVar[str] = ""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "name" in cls.__dict__:
            _REGISTRY[cls.name] = cls

    # -- population ---------------------------------------------------------------------
    def fit(self, X: np.ndarray, subjects: np.ndarray | None = None) -> Self:
        """Learn from other people's windows; default: nothing to learn."""
        return self

    # -- per subject ---------------------------------------------------------------------
    @abstractmethod
    def enroll(self, X: np.ndarray) -> Template:
        """Build a template from one subject's enrolment windows (n, d)."""

    @abstractmethod
    def compare(self, template: Template, X: np.ndarray) -> np.ndarray:
        """Score probe windows (n, d) against `template`; higher is more genuine."""

    # -- persistence ------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        """Learned population state as arrays (empty for one-class scorers)."""
        return {}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        if state:
            raise ModelVersionError(f"{self.name} has no population state, got {sorted(state)}")

    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters (JSON-serialisable): the constructor's keyword arguments."""
        return {}

    def save(self, path: str | os.PathLike[str]) -> None:
        meta = {"name": self.name, "version": self.version, "modality": self.modality,
                "feature_version": self.feature_version, "params": self.get_params()}
        state = {f"state__{k}": np.asarray(v) for k, v in self.get_state().items()}
        with open(path, "wb") as fh:
            np.savez(fh, __meta__=np.array(json.dumps(meta)), **state)  # type: ignore[arg-type]  # numpy stubs

    @staticmethod
    def load(path: str | os.PathLike[str]) -> Scorer:
        """A saved scorer; a damaged, tampered or foreign file is a `ModelVersionError` naming it."""
        meta, state = _read_model_file(path)
        cls = _REGISTRY.get(meta["name"])
        if cls is None:
            raise ModelVersionError(f"unknown scorer {meta['name']!r} in {path}")
        if meta["version"] != cls.version:
            raise ModelVersionError(f"{path}: {meta['name']} version {meta['version']}, code has {cls.version}")
        try:
            obj = cls(**meta["params"])
        except (TypeError, ValueError) as exc:
            raise ModelVersionError(f"{path}: {meta['name']} parameters do not fit this code ({exc})") from exc
        try:
            obj.set_state(state)
        except ModelVersionError as exc:
            raise ModelVersionError(f"{path}: {exc}") from exc
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise ModelVersionError(f"{path}: {meta['name']} state does not fit this code ({exc!r})") from exc
        return obj

    def check_features(self, X: np.ndarray, dim: int | None = None) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[0] == 0:
            raise EventValidationError("values", f"expected (n, d) feature windows, got shape {X.shape}")
        if dim is not None and X.shape[1] != dim:
            raise EventValidationError("values", f"expected {dim} features, got {X.shape[1]}")
        if not np.all(np.isfinite(X)):
            raise EventValidationError("values", "features must be finite")
        return X


def registered_scorers() -> dict[str, type[Scorer]]:
    return dict(_REGISTRY)


class ScaledManhattan(Scorer):
    """Killourhy & Maxion's scaled Manhattan detector, usable on any modality's features.

    Score = -mean_j |x_j - mean_j| / MAD_j, with every scale floored at `min_scale` (coarse
    clocks such as BB-MAS's 15.6 ms ticks make many MADs zero otherwise).
    """

    name = "manhattan-scaled"
    modality = "any"

    def __init__(self, min_scale: float = 1e-3) -> None:
        self.min_scale = min_scale

    def get_params(self) -> dict[str, Any]:
        return {"min_scale": self.min_scale}

    def enroll(self, X: np.ndarray) -> Template:
        X = self.check_features(X)
        mean = X.mean(axis=0)
        mad = np.mean(np.abs(X - mean), axis=0)
        return {"mean": mean, "scale": np.maximum(mad, self.min_scale)}

    def compare(self, template: Template, X: np.ndarray) -> np.ndarray:
        X = self.check_features(X, template["mean"].shape[0])
        return -np.mean(np.abs(X - template["mean"]) / template["scale"], axis=1)


class ScorerDetector:
    """scikit-learn-style one-class estimator for one person around any `Scorer`.

    ``fit(X)`` enrols, ``score_samples(X)`` compares (higher is more normal) and
    ``decision_function(X) = score_samples(X) - offset_`` so that 0 is the threshold;
    `offset_` is set so that a fraction `contamination` of enrolment windows falls below it.
    """

    def __init__(self, scorer: Scorer | None = None, contamination: float = 0.05) -> None:
        self.scorer = scorer
        self.contamination = contamination

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"scorer": self.scorer, "contamination": self.contamination}

    def set_params(self, **params: Any) -> ScorerDetector:
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def fit(self, X: np.ndarray, y: Any = None) -> ScorerDetector:
        from sklearn.utils.validation import validate_data

        X = validate_data(self, X, reset=True)
        scorer = self.scorer if self.scorer is not None else ScaledManhattan()
        self.template_ = scorer.enroll(X)
        self.scorer_ = scorer
        self.offset_ = float(np.quantile(scorer.compare(self.template_, X), self.contamination))
        return self

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        from sklearn.utils.validation import check_is_fitted, validate_data

        check_is_fitted(self, "template_")
        X = validate_data(self, X, reset=False)
        return self.scorer_.compare(self.template_, X)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.score_samples(X) - self.offset_

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.where(self.decision_function(X) >= 0, 1, -1)

    def __sklearn_tags__(self) -> Any:
        from sklearn.utils import Tags, TargetTags

        tags = Tags(estimator_type="outlier_detector", target_tags=TargetTags(required=False))
        return tags
