"""Review fixes (fusion, round e): what a calibration file, the fusion rules and the policy must not let through.

A calibration file with an integer beyond float range fails with the field named, not a
numpy TypeError.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fusion.engine import FusionEngine

HUGE = int("1" + "0" * 400)  # how json reads 1e400 written as digits: an int no float can hold


def _engine() -> FusionEngine:
    rng = np.random.default_rng(0)
    return FusionEngine().fit_modality("gait", genuine=rng.normal(2, 1, 200), impostor=rng.normal(0, 1, 200))


# -- 1. an integer beyond float range in a calibration file is a ValueError naming the field -----

@pytest.mark.parametrize(("field", "value"), [("mu", [HUGE]), ("sd", [HUGE]), ("coef", [-HUGE]),
                                              ("intercept", HUGE), ("bounds", [-1.0, HUGE])],
                         ids=["mu", "sd", "coef", "intercept", "bounds"])
def test_a_calibration_file_with_an_int_beyond_float_range_is_named(tmp_path: Path, field: str, value: object) -> None:
    """np.isfinite raised TypeError ('ufunc isfinite not supported'): a traceback from `cadence models calibrate`."""
    d = _engine().to_dict()
    d["calibrators"]["gait"][field] = value
    p = tmp_path / "cal.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=rf"cal\.json: calibrators\.gait\.{field}: must be a list of \d finite numbers"):
        FusionEngine.load(p)
