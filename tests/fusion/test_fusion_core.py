"""Calibration, fusion rules and the tier policy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.metrics import eer, fnmr_at_fmr
from fusion.calibration import IsotonicCalibrator, LogisticCalibrator, cllr, min_cllr
from fusion.engine import FusionEngine
from fusion.policy import ModalityEvidence, decide, load_policy, tier_for
from fusion.rules import (
    DecisionRule,
    LearnedWeights,
    Sequential,
    ZNormSum,
    llr_max,
    llr_min,
    llr_sum,
    per_modality_thresholds,
)


def _scores(rng: np.random.Generator, n: int, d: float, shift: float = 0.0, scale: float = 1.0):
    return rng.normal(d + shift, scale, n), rng.normal(shift, scale, n)


def test_logistic_calibration_recovers_gaussian_llr() -> None:
    rng = np.random.default_rng(0)
    g, i = _scores(rng, 20000, 2.0, shift=-7.0, scale=0.5)  # raw scores far from LLR scale
    cal = LogisticCalibrator().fit(genuine=g, impostor=i)
    # for equal-variance Gaussians the true LLR is linear: d/s^2 * (x - mid)
    x = np.array([-7.0, -6.0, -5.0])
    true = 2.0 / 0.25 * (x - (-6.0))
    assert np.allclose(cal.llr(x), true, rtol=0.06, atol=0.1)
    c = cllr(genuine_llr=cal.llr(g), impostor_llr=cal.llr(i))
    assert c < 0.2 and c >= min_cllr(genuine=g, impostor=i) - 0.02
    assert cllr(genuine_llr=np.zeros(5), impostor_llr=np.zeros(5)) == pytest.approx(1.0)


@pytest.mark.parametrize("use_quality", [False, True])
def test_one_score_calibration_matches_the_array_path(use_quality: bool) -> None:
    """`llr_one` (the per-request path) gives `llr`'s values, clipping and quality clamp included."""
    rng = np.random.default_rng(4)
    g, i = _scores(rng, 3000, 1.2)
    gq, iq = (rng.uniform(0.3, 1.0, g.size), rng.uniform(0.0, 0.8, i.size)) if use_quality else (None, None)
    cal = LogisticCalibrator(use_quality=use_quality).fit(genuine=g, impostor=i, genuine_quality=gq, impostor_quality=iq)
    scores = np.r_[rng.normal(0.5, 2.0, 200), -1e6, 1e6]  # the last two clip at the support bounds
    quality = rng.uniform(-0.5, 1.5, scores.size)  # outside [0, 1] on purpose: both clamp it
    want = cal.llr(scores, quality if use_quality else None)
    got = np.array([cal.llr_one(s, q if use_quality else None) for s, q in zip(scores, quality, strict=True)])
    assert np.allclose(got, want, rtol=1e-12, atol=1e-12)
    assert got[-2] == pytest.approx(-math.log(3000)) and got[-1] == pytest.approx(math.log(3000))
    with pytest.raises(ValueError, match="score"):  # never a NaN LLR from the request path
        cal.llr_one(float("nan"), 0.5)


def test_llrs_stay_within_what_the_calibration_data_support(tmp_path) -> None:
    """A calibration set of n impostor scores supports no LR above n, however far a score extrapolates."""
    rng = np.random.default_rng(5)
    g, i = rng.normal(3.0, 1.0, 40), rng.normal(0.0, 1.0, 900)
    cal = LogisticCalibrator().fit(genuine=g, impostor=i)
    assert cal.llr(np.array([50.0]))[0] == pytest.approx(math.log(900))
    assert cal.llr(np.array([-50.0]))[0] == pytest.approx(-math.log(40))
    assert cal.llr(np.array([1.5]))[0] == pytest.approx(LogisticCalibrator(C=1e3).fit(genuine=g, impostor=i).llr(np.array([1.5]))[0])
    eng = FusionEngine().fit_modality("gait", genuine=g, impostor=i)
    eng.save(tmp_path / "cal.json")
    back = FusionEngine.load(tmp_path / "cal.json")
    assert back.calibrate(ModalityEvidence("gait", score=50.0)).llr == pytest.approx(math.log(900))
    # a file from before the bounds keeps the old fixed clip
    d = eng.to_dict()
    del d["calibrators"]["gait"]["bounds"]
    assert LogisticCalibrator.from_dict(d["calibrators"]["gait"]).llr_one(50.0) == 12.0


def test_isotonic_is_monotone_and_bounded() -> None:
    rng = np.random.default_rng(1)
    g, i = _scores(rng, 2000, 1.5)
    cal = IsotonicCalibrator(clip=6).fit(genuine=g, impostor=i)
    x = np.linspace(-5, 5, 50)
    y = cal.llr(x)
    assert np.all(np.diff(y) >= -1e-12) and np.all(np.abs(y) <= 6)


def test_rules_handle_missing_explicitly() -> None:
    L = np.array([[1.0, np.nan, 2.0], [np.nan, np.nan, np.nan], [-3.0, 4.0, 0.5]])
    assert llr_sum(L).tolist() == [3.0, 0.0, 1.5]
    assert llr_min(L).tolist() == [1.0, 0.0, -3.0]
    assert llr_max(L).tolist() == [2.0, 0.0, 4.0]
    and_ = DecisionRule("and", np.zeros(3))(L)
    assert and_[0] > 0 and and_[2] < 0 and and_[1] == -np.inf  # nothing present never accepts
    seq = Sequential(order=[2, 0, 1], stop=1.0)
    out = seq(L)
    assert out[0] == 2.0 and out[2] == -2.5 and seq.consulted_.tolist() == [1, 0, 2]


def test_fusion_beats_single_modalities_on_independent_evidence() -> None:
    rng = np.random.default_rng(2)
    n = 4000
    G = np.column_stack([rng.normal(d, 1, n) for d in (1.5, 2.0, 1.0)])
    I = rng.normal(0, 1, (n, 3))
    cals = [LogisticCalibrator().fit(genuine=G[:, m], impostor=I[:, m]) for m in range(3)]
    LG = np.column_stack([c.llr(G[:, m]) for m, c in enumerate(cals)])
    LI = np.column_stack([c.llr(I[:, m]) for m, c in enumerate(cals)])
    best_single = min(eer(genuine=LG[:, m], impostor=LI[:, m]) for m in range(3))
    fused = eer(genuine=llr_sum(LG), impostor=llr_sum(LI))
    assert fused < 0.6 * best_single
    w = LearnedWeights().fit(LG, LI)
    assert eer(genuine=w(LG), impostor=w(LI)) <= fused + 0.01
    z = ZNormSum().fit(I)
    assert eer(genuine=z(G), impostor=z(I)) < best_single
    thr = per_modality_thresholds(LI, 0.01)
    and_ = DecisionRule("and", thr)
    assert np.mean(and_(LI) >= 0) <= 0.01 + 1e-9
    assert fnmr_at_fmr(genuine=llr_sum(LG), impostor=llr_sum(LI), fmr=0.01) < 0.5


def test_policy_tiers_and_outcomes(tmp_path) -> None:
    pol = load_policy()
    assert [t.name for t in pol.tiers] == ["low", "medium", "high"]
    assert pol.tiers[0].approve_llr == pytest.approx(math.log(100))
    assert tier_for(50).name == "low" and tier_for(5000).name == "high"
    with pytest.raises(ValueError):
        tier_for(float("nan"))
    strong = [ModalityEvidence("gait", 0, llr=5.0), ModalityEvidence("touch", 0, llr=3.0)]
    assert decide(strong, amount=50).outcome == "approve"
    assert decide(strong, amount=500).outcome == "approve"
    assert decide(strong, amount=50000).outcome == "step_up"  # 8 < ln(1e4)
    # medium and high tiers approve only corroborated evidence: one modality alone, or one
    # carrying the sum against the others, steps up (the reason says so); low does not ask
    alone = [ModalityEvidence("keystroke", 0, llr=12.0)]
    lookalike = [ModalityEvidence("keystroke", 0, llr=12.0), ModalityEvidence("touch", 0, llr=-0.5),
                 ModalityEvidence("gait", 0, llr=0.3)]
    for ev in (alone, lookalike):
        assert decide(ev, amount=50).outcome == "approve"
        for amount in (500, 50000):
            d = decide(ev, amount=amount)
            assert d.outcome == "step_up" and "uncorroborated" in {r.code for r in d.reasons}
    agreeing = [ModalityEvidence("keystroke", 0, llr=9.2), ModalityEvidence("touch", 0, llr=0.1)]
    assert decide(agreeing, amount=50000).outcome == "approve"
    assert decide(lookalike[:1] + [ModalityEvidence("touch", 0, llr=-7.0), ModalityEvidence("gait", 0, llr=-7.0)],
                  amount=500).outcome == "step_up"  # 12 - 14 = -2: neither approve nor deny
    assert decide([ModalityEvidence("gait", 0, llr=-6.0)], amount=50).outcome == "deny"
    assert decide([ModalityEvidence("gait", 0, llr=-1.0)], amount=50).outcome == "step_up"  # weak: step up, not deny
    d = decide([ModalityEvidence("gait", 0, llr=9.0, quality=0.05)], amount=50)
    assert d.outcome == "step_up" and {r.code for r in d.reasons} == {"low_quality", "no_evidence"}
    bad = tmp_path / "p.yaml"
    bad.write_text("tiers:\n  - name: x\n    max_amount: 1\n    target_fmr: 2\n")
    with pytest.raises(ValueError, match="target_fmr"):
        load_policy(bad)
    bad.write_text("tiers:\n  - name: x\n    max_amount: 1\n    target_fmr: 0.1\n    corroborate: maybe\n")
    with pytest.raises(ValueError, match="corroborate"):
        load_policy(bad)
    assert [t.corroborate for t in pol.tiers] == [False, True, True]


def test_engine_roundtrip(tmp_path) -> None:
    rng = np.random.default_rng(3)
    g, i = _scores(rng, 500, 3.0, shift=-4)
    eng = FusionEngine().fit_modality("keystroke", genuine=g, impostor=i)
    eng.save(tmp_path / "cal.json")
    back = FusionEngine.load(tmp_path / "cal.json")
    ev = ModalityEvidence("keystroke", score=-0.5)
    assert back.calibrate(ev).llr == pytest.approx(eng.calibrate(ev).llr)
    assert back.decide([ev], amount=10).outcome == "approve"
    assert back.decide([ModalityEvidence("keystroke", score=-6.0)], amount=10).outcome == "deny"
    assert back.report["keystroke"]["cllr"] < 0.5


def test_a_calibrator_applies_only_to_the_model_it_was_fitted_for(tmp_path) -> None:
    """A calibrator reads only its own model's scores; other registry models are left out.

    After another version is activated its scores are on another scale: the old calibrator
    must not read them, and a registry model without its own calibrator is never pushed
    through the rough mapping meant for the one-class defaults.
    """
    rng = np.random.default_rng(3)
    g, i = _scores(rng, 500, 3.0, shift=-4)
    eng = FusionEngine().fit_modality("keystroke", genuine=g, impostor=i)
    eng.report["keystroke"]["model_version"] = "v0001"
    eng.save(tmp_path / "cal.json")
    eng = FusionEngine.load(tmp_path / "cal.json")
    fitted = ModalityEvidence("keystroke", score=-0.5, model_version="registry:v0001")
    assert eng.calibrate(fitted).llr is not None and eng.decide([fitted], amount=10).outcome == "approve"
    # a federated embedding activated as v0002 scores cosines: 0.9 is unremarkable there
    other = ModalityEvidence("keystroke", score=0.9, model_version="registry:v0002")
    assert eng.calibrate(other).llr is None
    d = eng.decide([other], amount=10)
    assert d.outcome == "step_up" and [(r.modality, r.code, r.contribution) for r in d.reasons][0] == (
        "keystroke", "uncalibrated", 0.0)
    # the package default (e.g. after a registry model failed to load) is left out the same way
    default = ModalityEvidence("keystroke", score=-6.0, model_version="default:keystroke-manhattan-scaled:1")
    assert eng.calibrate(default).llr is None
    d = eng.decide([default], amount=10)
    assert d.outcome == "step_up" and d.reasons[0].code == "uncalibrated"
    # a calibration that names no model (older files) applies to whatever is served
    eng.report["keystroke"].pop("model_version")
    assert eng.calibrate(other).llr is not None
