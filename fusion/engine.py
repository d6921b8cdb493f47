"""The fusion engine the server uses: per-modality calibrators + the tier policy.

It is fitted on training subjects' genuine/impostor scores (from a bench run or from the
server's own enrolment data), saved as JSON next to the models, and loaded by the server.
Without a fitted calibrator for a modality its evidence is left out of decisions (reason
`uncalibrated`, `fusion.policy.decide`); `calibrated_modalities` says which have one. A calibrator whose report names
the model it was fitted for (`report[m]["model_version"]`) is applied only to evidence of
that model: after another version is activated its scores would be read on a foreign scale.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fusion.calibration import LogisticCalibrator, cllr
from fusion.policy import DEFAULT_POLICY, Decision, ModalityEvidence, Policy, decide


@dataclass
class FusionEngine:
    """Calibrate each modality's score to an LLR, sum, and apply the policy."""

    policy: Policy = DEFAULT_POLICY
    calibrators: dict[str, LogisticCalibrator] = field(default_factory=dict)
    #: calibration quality on the fitting data, per modality (Cllr in bits)
    report: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def calibrated_modalities(self) -> list[str]:
        return sorted(self.calibrators)

    def fit_modality(self, modality: str, *, genuine: np.ndarray, impostor: np.ndarray,
                     genuine_quality: np.ndarray | None = None, impostor_quality: np.ndarray | None = None) -> FusionEngine:
        use_q = genuine_quality is not None and impostor_quality is not None
        cal = LogisticCalibrator(use_quality=use_q).fit(genuine=genuine, impostor=impostor,
                                                          genuine_quality=genuine_quality, impostor_quality=impostor_quality)
        self.calibrators[modality] = cal
        self.report[modality] = {
            "cllr": cllr(genuine_llr=cal.llr(genuine, genuine_quality), impostor_llr=cal.llr(impostor, impostor_quality)),
            "n_genuine": int(np.size(genuine)),
            "n_impostor": int(np.size(impostor)),
        }
        return self

    def fitted_for(self, modality: str) -> str | None:
        """The model id `modality`'s calibrator was fitted for (None: not recorded, applies to any)."""
        v = self.report.get(modality, {}).get("model_version")
        return str(v) if v else None

    def applies(self, modality: str, model_version: str) -> bool:
        """Whether the calibrator of `modality` was fitted for the serving model `model_version`."""
        fitted = self.fitted_for(modality)
        return fitted is None or not model_version or model_version in (fitted, f"registry:{fitted}")

    def calibrate(self, ev: ModalityEvidence) -> ModalityEvidence:
        cal = self.calibrators.get(ev.modality)
        if cal is None or ev.llr is not None or ev.score != ev.score or not self.applies(ev.modality, ev.model_version):
            return ev  # a NaN score stays uncalibrated: `decide` leaves it out as invalid_score
        return replace(ev, llr=cal.llr_one(ev.score, ev.quality if cal.use_quality else None))

    def decide(self, evidence: list[ModalityEvidence], *, amount: float) -> Decision:
        return decide([self.calibrate(e) for e in evidence], amount=amount, tiers=self.policy.tiers,
                      min_quality=self.policy.min_quality)

    # -- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "calibrators": {m: c.to_dict() for m, c in self.calibrators.items()}, "report": self.report}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: running servers reload this file and must never read half of it."""
        path = Path(path)
        # a unique temporary name: two threads of one process saving at once must not share it
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.to_dict(), indent=2))
            os.replace(name, path)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str], policy: Policy = DEFAULT_POLICY) -> FusionEngine:
        try:
            d = json.loads(Path(path).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a fusion calibration file ({exc})") from exc
        if not isinstance(d, dict) or d.get("version") != 1:
            raise ValueError(f"{path}: unsupported fusion calibration version "
                             f"{d.get('version') if isinstance(d, dict) else type(d).__name__}")
        cals, report = d.get("calibrators"), d.get("report", {})
        if not isinstance(cals, dict) or not isinstance(report, dict):
            raise ValueError(f"{path}: 'calibrators' and 'report' must be mappings")
        calibrators = {}
        for m, c in cals.items():
            try:
                calibrators[m] = LogisticCalibrator.from_dict(c)
            except ValueError as exc:
                raise ValueError(f"{path}: calibrators.{m}.{exc}") from exc
        if not all(isinstance(r, dict) for r in report.values()):
            raise ValueError(f"{path}: report entries must be mappings")
        return cls(policy, calibrators, report)
