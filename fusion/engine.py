"""The fusion engine the server uses: per-modality calibrators + the tier policy.

It is fitted on training subjects' genuine/impostor scores (from a bench run or from the
server's own enrolment data), saved as JSON next to the models, and loaded by the server.
Without a fitted calibrator for a modality its evidence is left out of decisions (reason
`uncalibrated`, `fusion.policy.decide`); `calibrated_modalities` says which have one. A calibrator whose report names
the model it was fitted for (`report[m]["model_version"]`) is applied only to evidence of
that model: after another version is activated its scores would be read on a foreign scale.

A calibrator is fitted only for a known modality and only on scores that carry information
(`fit_modality` raises ValueError naming the modality otherwise), and the file is refused
whole (ValueError naming the file and the field) when any entry is unusable: an unknown
modality, a `model_version` that is not a string, a calibrator whose LLR cannot depend on the
score, or a file that cannot be read at all (a folder, no permission).
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
from fusion.policy import Decision, ModalityEvidence, Policy, decide, default_policy
from modalities.events import MODALITIES


@dataclass
class FusionEngine:
    """Calibrate each modality's score to an LLR, sum, and apply the policy."""

    #: fusion/policy.yaml unless given, read when the engine is made (not when this module is imported)
    policy: Policy = field(default_factory=default_policy)
    calibrators: dict[str, LogisticCalibrator] = field(default_factory=dict)
    #: calibration quality on the fitting data, per modality (Cllr in bits)
    report: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def calibrated_modalities(self) -> list[str]:
        return sorted(self.calibrators)

    def fit_modality(self, modality: str, *, genuine: np.ndarray, impostor: np.ndarray,
                     genuine_quality: np.ndarray | None = None, impostor_quality: np.ndarray | None = None,
                     quality_floor: float = 0.0) -> FusionEngine:
        """Fit `modality`'s calibrator; ValueError naming the modality when its scores cannot calibrate.

        Scores that carry no information (all one value, or a Cllr no better than chance) are
        refused rather than fitted: their LLRs, at or near 0 for every probe, would count as
        evidence, and as the second modality that corroboration asks for.
        """
        if modality not in MODALITIES:
            raise ValueError(f"modality: unknown {modality!r}; expected one of {', '.join(MODALITIES)}")
        use_q = genuine_quality is not None and impostor_quality is not None
        try:
            cal = LogisticCalibrator(use_quality=use_q, quality_floor=quality_floor if use_q else 0.0).fit(genuine=genuine, impostor=impostor,
                                                              genuine_quality=genuine_quality,
                                                              impostor_quality=impostor_quality)
        except ValueError as exc:
            raise ValueError(f"{modality} calibration: {exc}") from exc
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
        """Whether `modality` has a calibrator, fitted for the serving model `model_version`.

        False without one: a file that lacks a modality does not calibrate it (a caller asking
        whether the file covers every served model must not read a missing calibrator as "any").
        """
        if modality not in self.calibrators:
            return False
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
    def load(cls, path: str | os.PathLike[str], policy: Policy | None = None) -> FusionEngine:
        """Read a calibration file; any problem is one ValueError naming the file (and the field)."""
        try:
            d = json.loads(Path(path).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a fusion calibration file ({exc})") from exc
        except OSError as exc:  # a folder, no permission, an unreadable disk
            raise ValueError(f"{path}: cannot read the fusion calibration file ({exc.strerror or exc})") from exc
        if not isinstance(d, dict) or d.get("version") != 1:
            raise ValueError(f"{path}: unsupported fusion calibration version "
                             f"{d.get('version') if isinstance(d, dict) else type(d).__name__}")
        cals, report = d.get("calibrators"), d.get("report", {})
        if not isinstance(cals, dict) or not isinstance(report, dict):
            raise ValueError(f"{path}: 'calibrators' and 'report' must be mappings")
        for section, entries in (("calibrators", cals), ("report", report)):
            for m in entries:
                if m not in MODALITIES:  # a calibrator nobody asks for: a typo'd or foreign file
                    raise ValueError(f"{path}: {section}.{m}: unknown modality; expected one of {', '.join(MODALITIES)}")
        calibrators = {}
        for m, c in cals.items():
            try:
                calibrators[m] = LogisticCalibrator.from_dict(c)
            except ValueError as exc:
                raise ValueError(f"{path}: calibrators.{m}.{exc}") from exc
        for m, r in report.items():
            if not isinstance(r, dict):
                raise ValueError(f"{path}: report entries must be mappings (report.{m})")
            v = r.get("model_version")
            if v is not None and not isinstance(v, str):  # a list never equals a served model id: never applies
                raise ValueError(f"{path}: report.{m}.model_version: must be a version string such as 'v0003', "
                                 f"got {v!r}")
        return cls(policy if policy is not None else default_policy(), calibrators, report)
