"""The logistic calibrator refuses a fit or a file whose LLR would read a better match as evidence against."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.calibration import LogisticCalibrator


def test_a_quality_term_that_reverses_the_evidence_is_refused() -> None:
    """A term fitted on qualities 0.6-1 that turns the slope negative at quality 0.25 is refused.

    0.25 is above the policy's `min_quality`: a better match would read as evidence against the person.
    """
    rng = np.random.default_rng(0)
    qg, qi = rng.uniform(0.6, 1.0, 2000), rng.uniform(0.6, 1.0, 2000)
    genuine, impostor = rng.normal(4 * qg - 2, 1.0), rng.normal(0.0, 1.0, 2000)
    with pytest.raises(ValueError, match="reverses the evidence at quality"):
        LogisticCalibrator(use_quality=True).fit(genuine=genuine, impostor=impostor, genuine_quality=qg,
                                                 impostor_quality=qi)
    fine = LogisticCalibrator(use_quality=True).fit(genuine=rng.normal(2, 1, 500), impostor=rng.normal(0, 1, 500),
                                                    genuine_quality=rng.uniform(0, 1, 500),
                                                    impostor_quality=rng.uniform(0, 1, 500))
    d = fine.to_dict()
    assert LogisticCalibrator.from_dict(d).llr_one(1.0, 0.5) == pytest.approx(fine.llr_one(1.0, 0.5))
    d["coef"] = [d["coef"][0], d["coef"][1], -3 * abs(d["coef"][0]) * d["sd"][2] / d["sd"][0]]  # reverses inside [0, 1]
    with pytest.raises(ValueError, match="coef: its score x quality term reverses"):
        LogisticCalibrator.from_dict(d)
