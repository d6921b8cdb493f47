"""Review fixes (fusion, round e): what a calibration file, the fusion rules and the policy must not let through.

A calibration file with an integer beyond float range fails with the field named, not a
numpy TypeError. The fusion rules read an infinite LLR as the clip, not as a missing modality.
A policy tier name longer than the transactions table stores is refused when the policy loads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fusion.calibration import LLR_CLIP
from fusion.engine import FusionEngine
from fusion.policy import MAX_TIER_NAME, PolicyError, load_policy
from fusion.rules import FIXED_RULES, DecisionRule, LearnedWeights, Sequential
from server.models import Transaction

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


# -- 2. the fusion rules read an infinite LLR as the strongest evidence, never as missing ----------

def _rules() -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    lw = LearnedWeights(coef_=np.array([1.0, 1.0, 0.0, 0.0]), intercept_=0.0)
    out: dict[str, Callable[[np.ndarray], np.ndarray]] = dict(FIXED_RULES)
    out.update({k: DecisionRule(k, np.zeros(2)) for k in ("and", "or", "majority")})
    out.update({"learned-weights": lw, "sequential": Sequential(order=[0, 1], stop=100.0)})
    return out


@pytest.mark.parametrize("name", ["llr-sum", "llr-mean", "min", "max", "and", "or", "majority", "learned-weights",
                                  "sequential"])
def test_an_infinite_llr_fuses_as_the_clip_not_as_missing(name: str) -> None:
    """An infinite LLR was read as missing: min/max fused [-inf, NaN] as 0 (above [-5, NaN]).

    Sequential and learned weights dropped it from [-inf, 5] (fused 5, as if the impostor-like
    modality were absent), and OR never accepted [+inf, NaN].
    """
    rule = _rules()[name]
    for inf in (-np.inf, np.inf):
        clip = np.sign(inf) * LLR_CLIP
        rows = np.array([[inf, np.nan], [inf, 5.0], [5.0, inf]])
        assert rule(rows) == pytest.approx(rule(np.where(np.isinf(rows), clip, rows)))
    # more impostor-like evidence never fuses higher
    worse = rule(np.array([[-np.inf, np.nan], [-np.inf, 5.0], [-5.0, np.nan], [-5.0, 5.0]]))
    assert worse[0] <= worse[2] and worse[1] <= worse[3]


# -- 3. a tier name the transactions table cannot store is refused when the policy loads ----------

_TIERS = """tiers:
  - name: {name}
    max_amount: 100
    target_fmr: 0.01
  - name: high
    max_amount: .inf
    target_fmr: 0.001
    corroborate: true
"""


def test_a_tier_name_longer_than_the_stored_column_is_refused(tmp_path: Path) -> None:
    """'medium_value_payments' loaded, and on PostgreSQL every decision of that tier failed at its commit."""
    assert MAX_TIER_NAME == Transaction.__table__.c.tier.type.length  # type: ignore[attr-defined]
    p = tmp_path / "policy.yaml"
    p.write_text(_TIERS.format(name="x" * MAX_TIER_NAME))
    assert load_policy(p).tiers[0].name == "x" * MAX_TIER_NAME
    p.write_text(_TIERS.format(name="medium_value_payments"))
    with pytest.raises(PolicyError, match=r"policy\.yaml: tiers\.medium_value_payments\.name: at most 16 characters"):
        load_policy(p)


def test_a_score_overflowing_to_plus_inf_says_nothing_and_minus_inf_counts_against() -> None:
    """A raw score of +inf (a model's overflow) is left out as `invalid_score`, as docs/api.md says.

    It was mapped to the calibration's upper bound and approved a low-tier payment on its own.
    """
    from fusion.policy import Decision, ModalityEvidence

    r = np.random.default_rng(0)
    engine = FusionEngine().fit_modality("keystroke", genuine=r.normal(2, 1, 300), impostor=r.normal(0, 1, 3000))

    def decide(score: float) -> Decision:
        return engine.decide([ModalityEvidence("keystroke", score, model_version="registry:v1")], amount=50)

    assert decide(8.0).outcome == "approve"  # a large finite score is still strong evidence
    up = decide(float("inf"))
    assert up.outcome == "step_up"
    assert [c.code for c in up.reasons] == ["invalid_score", "no_evidence"]
    down = decide(float("-inf"))
    assert down.reasons[0].code == "strong_mismatch" and down.outcome != "approve"
