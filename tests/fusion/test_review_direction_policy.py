"""Review fixes: a calibrator must read a higher score as more genuine, and the policy cannot be misread.

A falling score->LLR map (swapped genuine/impostor scores, a broken model) denies the best
matches and approves the worst; a deny threshold below what evidence can reach never denies;
YAML booleans are not numbers; huge scores, NaN scores and huge amounts fail clearly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fusion.calibration import IsotonicCalibrator, LogisticCalibrator
from fusion.engine import FusionEngine
from fusion.policy import MAX_FUSED_LLR, load_policy, tier_for

ROOT = Path(__file__).resolve().parents[2]


def _scores(seed: int = 0, n: int = 500) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(2.0, 1.0, n), rng.normal(0.0, 1.0, 10 * n)


# -- 1. a calibrator whose LLR falls as the score rises is refused -------------------------------

@pytest.mark.parametrize("use_quality", [False, True])
def test_a_fit_on_swapped_scores_is_refused(use_quality: bool) -> None:
    """Swapped genuine/impostor scores used to fit (Cllr 0.53) and deny a score of 4, approve one of -3."""
    g, i = _scores()
    rng = np.random.default_rng(1)
    q = {"genuine_quality": rng.uniform(0.3, 1, i.size), "impostor_quality": rng.uniform(0.3, 1, g.size)} \
        if use_quality else {}
    with pytest.raises(ValueError, match=r"^coef: .*falls as the score rises"):
        LogisticCalibrator(use_quality=use_quality).fit(genuine=i, impostor=g, **q)
    with pytest.raises(ValueError, match=r"keystroke calibration: coef: .*falls as the score rises"):
        FusionEngine().fit_modality("keystroke", genuine=i, impostor=g)


@pytest.mark.parametrize("use_quality", [False, True])
def test_a_file_with_a_falling_calibrator_is_refused(tmp_path: Path, use_quality: bool) -> None:
    g, i = _scores()
    rng = np.random.default_rng(2)
    q = {"genuine_quality": rng.uniform(0.3, 1, g.size), "impostor_quality": rng.uniform(0.3, 1, i.size)} \
        if use_quality else {}
    eng = FusionEngine().fit_modality("keystroke", genuine=g, impostor=i, **q)
    d = eng.to_dict()
    c = d["calibrators"]["keystroke"]
    assert LogisticCalibrator.from_dict(c).llr_one(4.0, 1.0) > 0  # the right way round loads
    c["coef"], c["intercept"] = [-x for x in c["coef"]], -c["intercept"]
    with pytest.raises(ValueError, match=r"^coef: .*falls as the score rises"):
        LogisticCalibrator.from_dict(c)
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"calibrators\.keystroke\.coef: .*falls as the score rises"):
        FusionEngine.load(path)


# -- 2. the policy refuses an unreachable deny_llr and YAML booleans -----------------------------

def _policy(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "pol.yaml"
    p.write_text(text)
    return p


def test_an_unreachable_deny_llr_is_refused(tmp_path: Path) -> None:
    """deny_llr -46 loaded, and three modalities at -12 (fused -36) stepped up instead of denying."""
    base = (ROOT / "fusion" / "policy.yaml").read_text()
    assert "deny_llr: -4.6" in base
    with pytest.raises(ValueError, match=r"deny_llr: -46 can never be reached"):
        load_policy(_policy(tmp_path, base.replace("deny_llr: -4.6", "deny_llr: -46")))
    at_floor = load_policy(_policy(tmp_path, base.replace("deny_llr: -4.6", f"deny_llr: {-MAX_FUSED_LLR}")))
    assert at_floor.tiers[0].deny_llr == -MAX_FUSED_LLR  # reachable: every modality at the clip


@pytest.mark.parametrize(("text", "field"), [
    ("tiers:\n  - {name: a, max_amount: true, target_fmr: 0.01}\n  - {name: b, max_amount: .inf, target_fmr: 0.01}\n",
     "tiers.a.max_amount"),
    ("tiers:\n  - {name: a, max_amount: .inf, target_fmr: yes}\n", "tiers.a.target_fmr"),
    ("tiers:\n  - {name: a, max_amount: .inf, target_fmr: 0.01, approve_llr: on}\n", "tiers.a.approve_llr"),
    ("tiers:\n  - {name: a, max_amount: .inf, target_fmr: 0.01}\ndeny_llr: false\n", "deny_llr"),
    ("tiers:\n  - {name: a, max_amount: .inf, target_fmr: 0.01}\nmin_quality: yes\n", "min_quality"),
    ("tiers:\n  - {name: a, max_amount: .inf, target_fmr: 0.01}\nmin_quality: no\n", "min_quality"),
])
def test_yaml_booleans_are_not_numbers(tmp_path: Path, text: str, field: str) -> None:
    """`min_quality: yes` loaded as 1.0 (every window left out), `max_amount: true` as 1."""
    with pytest.raises(ValueError, match=rf"{field}: must be a number, not the boolean"):
        load_policy(_policy(tmp_path, text))


def test_yaml_ints_are_still_numbers(tmp_path: Path) -> None:
    pol = load_policy(_policy(tmp_path, "tiers:\n  - {name: a, max_amount: 100, target_fmr: 0.01, approve_llr: 5}\n"
                                        "  - {name: b, max_amount: .inf, target_fmr: 0.01, approve_llr: 6}\n"
                                        "deny_llr: -3\nmin_quality: 0\n"))
    assert [(t.max_amount, t.approve_llr, t.deny_llr) for t in pol.tiers] == [(100.0, 5.0, -3.0), (math.inf, 6.0, -3.0)]
    assert pol.min_quality == 0.0


# -- 3. huge scores: a sign comparison, and no division by a zero column ------------------------

@pytest.mark.parametrize("scale", [1.0, 1e100, 1e170, 1e200])
def test_huge_quality_aware_scores_fit(scale: float) -> None:
    """At 1e170 the slopes' product underflowed to 0 and the fit was refused as 'reverses at quality 3.08'."""
    g, i = _scores(n=200)
    rng = np.random.default_rng(3)
    cal = LogisticCalibrator(use_quality=True).fit(genuine=g * scale, impostor=i * scale,
                                                   genuine_quality=rng.uniform(0.3, 1, g.size),
                                                   impostor_quality=rng.uniform(0.3, 1, i.size))
    lo, hi = cal.llr(np.array([0.0, 2 * scale]), np.array([1.0, 1.0]))
    assert lo < 0 < hi
    assert LogisticCalibrator.from_dict(cal.to_dict()).llr_one(2 * scale, 1.0) == pytest.approx(hi)


def test_huge_scores_with_an_all_zero_column_fit() -> None:
    """Huge scores whose score x quality column is all 0 divided 0 by 0: sklearn's 'Input X contains NaN'."""
    s = np.array([1e300, 2e300, 0.0, 0.0])
    q = np.array([0.0, 0.0, 1.0, 1.0])
    cal = LogisticCalibrator(use_quality=True).fit(genuine=np.tile(s, 50), impostor=np.tile(-s, 50),
                                                   genuine_quality=np.tile(q, 50), impostor_quality=np.tile(q, 50))
    assert np.isfinite(cal.coef_).all() and np.isfinite(cal.mu_).all() and np.isfinite(cal.sd_).all()
    assert cal.llr_one(1.5e300, 0.0) > 0 > cal.llr_one(-1.5e300, 0.0)


# -- 4. the isotonic calibrator keeps NaN; a huge amount is a ValueError --------------------------

def test_isotonic_keeps_a_nan_score_missing() -> None:
    g, i = _scores(n=200)
    iso = IsotonicCalibrator().fit(genuine=g, impostor=i)
    out = iso.llr(np.array([np.nan, -np.inf, 0.0, np.inf, np.nan]))
    assert np.isnan(out[[0, 4]]).all()
    assert out[1] == -iso.clip and out[3] == iso.clip and -iso.clip < out[2] < iso.clip
    assert np.isnan(iso.llr(np.array([np.nan]))).all()
    logistic = LogisticCalibrator().fit(genuine=g, impostor=i)
    assert np.isnan(logistic.llr(np.array([np.nan]))).all()  # the same convention


@pytest.mark.parametrize("amount", [10**400, -(10**400)], ids=["huge", "huge-negative"])
def test_tier_for_a_huge_amount_is_a_value_error(amount: int) -> None:
    with pytest.raises(ValueError, match="amount"):
        tier_for(amount)


# -- 5. a quality-aware fit needs qualities that vary ---------------------------------------------

@pytest.mark.parametrize("quality", [0.0, 0.7, 1.0, None])
def test_a_quality_aware_fit_on_constant_qualities_is_refused(quality: float | None) -> None:
    """All-equal qualities gave an arbitrary quality effect (LLR 1.02 at quality 0.5, 2.05 at 1, score 2)."""
    g, i = _scores(n=200)
    q = {} if quality is None else {"genuine_quality": np.full(g.size, quality),
                                    "impostor_quality": np.full(i.size, quality)}
    with pytest.raises(ValueError, match=r"^quality: .*no spread"):
        LogisticCalibrator(use_quality=True).fit(genuine=g, impostor=i, **q)
    # huge scores with all-zero qualities ended in sklearn's "Input X contains NaN"
    with pytest.raises(ValueError, match=r"^quality: .*no spread"):
        LogisticCalibrator(use_quality=True).fit(genuine=g * 1e300, impostor=i * 1e300, **q)
    rng = np.random.default_rng(4)
    near = {"genuine_quality": 0.9 + rng.uniform(0, 1e-6, g.size), "impostor_quality": 0.9 + rng.uniform(0, 1e-6, i.size)}
    with pytest.raises(ValueError, match=r"^quality: .*no spread"):
        LogisticCalibrator(use_quality=True).fit(genuine=g, impostor=i, **near)
    LogisticCalibrator().fit(genuine=g, impostor=i)  # without quality it fits
