"""The federated global model as a `modalities.base.Scorer` (numpy only, no torch at scoring).

enrol = mean embedding of the enrolment windows (re-normalised), compare = cosine similarity
of each probe window's embedding with it: higher is more genuine. The scorer saves to one
``.npz`` via `Scorer.save` so the model registry can publish and the server can load it.
Import this module (``import federated.scorer``) before `Scorer.load` so the name resolves.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modalities.base import ModelVersionError, Scorer, Template

_STATE_KEYS = ("mean", "std", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")


class EmbeddingScorer(Scorer):
    """Embedding network learned by federated (or central) training, scored by cosine."""

    name = "federated-embedding"
    modality = "any"
    version = "1"

    def __init__(self, modality: str = "any", feature_version: str = "") -> None:
        self.for_modality = modality
        self.feature_version_ = feature_version
        self.state_: dict[str, np.ndarray] = {}

    @property
    def feature_version(self) -> str:  # type: ignore[override]
        return self.feature_version_

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """scikit-learn's contract; stored under other names: `modality` and `feature_version` are every scorer's class attributes."""
        return {"modality": self.for_modality, "feature_version": self.feature_version_}

    def set_params(self, **params: Any) -> EmbeddingScorer:
        unknown = sorted(set(params) - {"modality", "feature_version"})
        if unknown:
            raise ValueError(f"Invalid parameter {unknown[0]!r} for estimator {type(self).__name__}. "
                             "Valid parameters are: ['feature_version', 'modality'].")
        self.for_modality = params.get("modality", self.for_modality)
        self.feature_version_ = params.get("feature_version", self.feature_version_)
        return self

    @classmethod
    def from_weights(cls, weights: dict[str, np.ndarray], mean: np.ndarray, std: np.ndarray, *,
                     modality: str, feature_version: str) -> EmbeddingScorer:
        obj = cls(modality, feature_version)
        obj.set_state({"mean": mean, "std": std, **weights})
        return obj

    def get_state(self) -> dict[str, np.ndarray]:
        return dict(self.state_)

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ModelVersionError(f"{self.name}: saved state lacks {missing}")
        self.state_ = {k: np.asarray(state[k], np.float32) for k in _STATE_KEYS}

    @property
    def dim(self) -> int:
        return int(self.state_["mean"].shape[0])

    def embed(self, X: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings (n, k) of feature windows (n, d)."""
        if not self.state_:
            raise ModelVersionError(f"{self.name}: no weights loaded")
        s = self.state_
        Z = (self.check_features(X, self.dim).astype(np.float32) - s["mean"]) / s["std"]
        H = np.maximum(Z @ s["fc1.weight"].T + s["fc1.bias"], 0.0)
        E = H @ s["fc2.weight"].T + s["fc2.bias"]
        return E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)

    def enroll(self, X: np.ndarray) -> Template:
        c = self.embed(X).mean(axis=0)
        return {"center": c / max(float(np.linalg.norm(c)), 1e-12)}

    def compare(self, template: Template, X: np.ndarray) -> np.ndarray:
        return (self.embed(X) @ np.asarray(template["center"], np.float32)).astype(np.float64)
