"""Fusion under hostile or broken input: non-finite evidence, damaged calibration and policy files."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from fusion.calibration import LLR_CLIP, LogisticCalibrator
from fusion.engine import FusionEngine
from fusion.policy import MAX_ABS_LLR, MAX_FUSED_LLR, ModalityEvidence, Policy, decide, load_policy
from server.fusion_source import FusionSource

E = ModalityEvidence
NAN, INF = float("nan"), float("inf")


def test_nan_evidence_is_left_out_with_a_reason() -> None:
    for ev in (E("gait", NAN), E("gait", 0.0, llr=NAN), E("gait", NAN, llr=3.0)):
        d = decide([ev], amount=10)
        assert d.outcome == "step_up" and d.risk == 0.5 and d.fused_llr == 0.0
        assert [r.code for r in d.reasons] == ["invalid_score", "no_evidence"]
    d = decide([E("gait", NAN), E("touch", 0.0, llr=3.0), E("keystroke", 0.0, llr=3.0)], amount=10)
    assert d.outcome == "approve" and math.isfinite(d.risk) and d.fused_llr == 6.0
    # a NaN quality or window count is no usable evidence either
    for ev in (E("gait", 0.0, llr=9.0, quality=NAN), E("gait", 0.0, llr=9.0, n_windows=NAN)):  # type: ignore[arg-type]
        assert [r.code for r in decide([ev], amount=10).reasons] == ["low_quality", "no_evidence"]


def test_infinite_llrs_are_clipped_and_never_approve_alone() -> None:
    assert MAX_ABS_LLR == LLR_CLIP
    d = decide([E("gait", 0.0, llr=INF), E("touch", 0.0, llr=-1000.0)], amount=5000)
    assert d.outcome == "step_up" and d.fused_llr == 0.0
    assert [r.contribution for r in d.reasons] == [12.0, -12.0]
    d = decide([E("gait", 0.0, llr=INF), E("touch", 0.0, llr=-INF)], amount=10)
    assert math.isfinite(d.risk) and d.fused_llr == 0.0
    d = decide([E("gait", 0.0, llr=1e308), E("touch", 0.0, llr=1e308)], amount=10)
    assert d.outcome == "approve" and d.fused_llr == 24.0
    # a score without a calibrated LLR says nothing, however extreme: left out, step up
    d = decide([E("gait", -INF)], amount=10)
    assert d.outcome == "step_up" and [r.code for r in d.reasons] == ["uncalibrated", "no_evidence"]


def test_corroboration_counts_distinct_modalities() -> None:
    alone = [E("gait", 0.0, llr=8.0)]
    d = decide(alone, amount=500)
    assert d.outcome == "step_up" and "uncorroborated" in {r.code for r in d.reasons}
    assert decide(alone, amount=50).outcome == "approve"  # the low tier does not ask for it
    # the strongest modality must not carry the sum alone
    d = decide(alone + [E("touch", 0.0, llr=-0.5)], amount=500)
    assert d.outcome == "step_up" and d.reasons[-1].contribution == -0.5
    assert decide([E("gait", 0.0, llr=4.0), E("touch", 0.0, llr=4.0)], amount=500).outcome == "approve"


def test_a_second_item_of_one_modality_is_refused() -> None:
    """Two windows of one modality share its errors: their LLRs are not independent evidence to sum.

    Two gait items at 2.5 were summed to 5.0 >= ln(100) and approved a low-tier payment that
    one gait item at 2.5 steps up.
    """
    one = E("gait", 0.0, llr=2.5)
    assert decide([one], amount=50).outcome == "step_up"
    with pytest.raises(ValueError, match=r"evidence\[1\]\.modality: 'gait' already given at evidence\[0\]"):
        decide([one, one], amount=50)
    # refused whatever the second item says and wherever it stands: low quality, uncalibrated
    for second in (E("gait", 0.0, llr=2.5, quality=0.0), E("gait", 0.0)):
        with pytest.raises(ValueError, match=r"evidence\[2\]\.modality: 'gait' already given at evidence\[0\]"):
            decide([one, E("touch", 0.0, llr=1.0), second], amount=50)
    # the callers that pass evidence through: the server's engine and the session trackers
    with pytest.raises(ValueError, match="'gait'"):
        FusionEngine().decide([one, one], amount=50)
    from continuous.session import SessionRiskTracker

    with pytest.raises(ValueError, match="'gait'"):
        SessionRiskTracker().update([one, one])


def test_an_unknown_modality_is_refused_not_summed() -> None:
    """Three known modalities at the clip make MAX_FUSED_LLR; a fourth name summed beside them exceeded it."""
    at_clip = [E(m, 0.0, llr=MAX_ABS_LLR) for m in ("keystroke", "touch", "gait")]
    assert decide(at_clip, amount=50).fused_llr == pytest.approx(MAX_FUSED_LLR)
    with pytest.raises(ValueError, match=r"evidence\[3\]\.modality: 'mouse' is not one of keystroke, touch, gait"):
        decide([*at_clip, E("mouse", 0.0, llr=MAX_ABS_LLR)], amount=50)


@pytest.fixture(scope="module")
def qcal() -> LogisticCalibrator:
    rng = np.random.default_rng(0)
    g, i = rng.normal(0, 1, 200), rng.normal(-3, 1, 2000)
    return LogisticCalibrator(use_quality=True).fit(genuine=g, impostor=i, genuine_quality=rng.uniform(0.2, 1, 200),
                                                    impostor_quality=rng.uniform(0.2, 1, 2000))


@pytest.mark.parametrize(("score", "quality"), [(-INF, 1.0), (-INF, 0.0), (INF, 1.0), (-1e308, 1.0), (1e308, 0.7),
                                                (-INF, NAN)])
def test_calibration_never_returns_nan(qcal: LogisticCalibrator, score: float, quality: float) -> None:
    one = qcal.llr_one(score, quality)
    arr = qcal.llr(np.array([score]), np.array([quality]))[0]
    assert one == pytest.approx(arr) and qcal.lo_ <= one <= qcal.hi_
    assert one == (qcal.hi_ if score > 0 else qcal.lo_)
    with pytest.raises(ValueError, match="score"):
        qcal.llr_one(NAN, 1.0)
    assert np.isnan(qcal.llr(np.array([NAN]))[0])  # the array path keeps NaN as "missing" for the fusion rules


def test_engine_leaves_a_nan_score_uncalibrated(qcal: LogisticCalibrator) -> None:
    """A registry model returning NaN steps up (reason invalid_score) instead of a NaN risk."""
    eng = FusionEngine(calibrators={"touch": qcal})
    ev = E("touch", NAN, model_version="registry:v0001")
    assert eng.calibrate(ev).llr is None
    d = eng.decide([ev], amount=10)
    assert d.outcome == "step_up" and d.risk == 0.5 and d.reasons[0].code == "invalid_score"


def _good_dict() -> dict:
    cal = LogisticCalibrator().fit(genuine=np.array([5.0, 6, 7]), impostor=np.array([0.0, 1, 2]))
    return cal.to_dict()


@pytest.mark.parametrize(("change", "field"), [
    ({"sd": [0.0]}, "sd"), ({"sd": [-1.0]}, "sd"), ({"coef": [1.0, 2.0]}, "coef"), ({"coef": [NAN]}, "coef"),
    ({"mu": ["1"]}, "mu"), ({"intercept": INF}, "intercept"), ({"intercept": None}, "intercept"),
    ({"bounds": [-1e9, 1e9]}, "bounds"), ({"bounds": [1.0, 2.0]}, "bounds"), ({"use_quality": "yes"}, "use_quality"),
    ({"use_quality": True}, "mu"), ({"kind": "isotonic"}, "kind"), ({"mu": None}, "mu"),
])
def test_calibrator_from_dict_validates(change: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        LogisticCalibrator.from_dict({**_good_dict(), **change})
    with pytest.raises(ValueError, match="mu"):
        LogisticCalibrator.from_dict({k: v for k, v in _good_dict().items() if k != "mu"})
    with pytest.raises(ValueError, match="mapping"):
        LogisticCalibrator.from_dict([1])


def _save_good(path: Path) -> None:
    rng = np.random.default_rng(0)
    FusionEngine().fit_modality("gait", genuine=rng.normal(0, 1, 50), impostor=rng.normal(-4, 1, 50)).save(path)


@pytest.mark.parametrize("damage", [
    {"calibrators": "gait"}, {"calibrators": [1]}, {"calibrators": {"gait": {"sd": [0.0]}}},
    {"calibrators": {"gait": {"coef": [1.0, 2.0]}}}, {"report": []}, {"calibrators": {"gait": 5}},
])
def test_a_damaged_calibration_file_keeps_the_previous_engine(tmp_path: Path, damage: dict,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "cal.json"
    _save_good(p)
    src = FusionSource(p, check_every_s=0.0)
    before = src.current()
    assert before is not None
    doc = json.loads(p.read_text())
    for key, value in damage.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {m: {**doc[key][m], **v} if isinstance(v, dict) else v for m, v in value.items()}
        else:
            doc[key] = value
    p.write_text(json.dumps(doc) + " ")  # another size: the stamp changes
    with caplog.at_level(logging.ERROR, logger="server.fusion_source"):
        assert src.decide([E("gait", -1.0)], amount=10).outcome in ("approve", "step_up", "deny")
    assert src.current() is before and "keeping the calibration loaded before" in caplog.text


def test_fusion_source_survives_any_loader_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "cal.json"
    _save_good(p)
    src = FusionSource(p, check_every_s=0.0)
    before = src.current()

    def boom(*_a: object, **_k: object) -> FusionEngine:
        raise AttributeError("unexpected")

    monkeypatch.setattr(FusionEngine, "load", boom)
    p.write_text(p.read_text() + " ")
    assert src.current() is before


@pytest.mark.parametrize(("text", "field"), [
    ("", "mapping"), ("- 1\n- 2\n", "mapping"), ("tiers: []\n", "tiers"), ("tiers: 5\n", "tiers"),
    ("tiers:\n  - {name: a, max_amount: .inf, target_fmr: 0.01, approve_llr: -5}\n", "approve_llr"),
    ("tiers:\n  - {name: a, max_amount: .inf, target_fmr: 0.01, approve_llr: .nan}\n", "approve_llr"),
    ("tiers:\n  - {name: a, max_amount: .inf, target_fmr: 0.01}\ndeny_llr: .nan\n", "deny_llr"),
    ("tiers:\n  - {name: a, max_amount: .inf, target_fmr: 0.01}\ndeny_llr: 3\n", "deny_llr"),
    ("tiers:\n  - {name: a, max_amount: .nan, target_fmr: 0.01}\n", "max_amount"),
    ("tiers:\n  - {name: a, max_amount: -5, target_fmr: 0.01}\n", "max_amount"),
    ("tiers:\n  - {name: a, max_amount: 100, target_fmr: 0.01}\n  - {name: b, max_amount: 100, target_fmr: 0.001}\n",
     "max_amount"),
    ("tiers:\n  - {name: a, max_amount: 100, target_fmr: 0.0001}\n  - {name: b, max_amount: .inf, target_fmr: 0.5}\n",
     "target_fmr"),
    ("tiers:\n  - {name: a, max_amount: 100, target_fmr: 0.01, approve_llr: 9}\n"
     "  - {name: b, max_amount: .inf, target_fmr: 0.001, approve_llr: 7}\n", "approve_llr"),
    ("tiers:\n  - {name: a, max_amount: 100, target_fmr: 0.01}\n  - {name: a, max_amount: .inf, target_fmr: 0.001}\n",
     "duplicate"),
    ("tiers:\n  - {name: a, max_amount: .inf, target_fmr: 0.01}\nmin_quality: 5\n", "min_quality"),
    ("tiers:\n  - {name: a, max_amount: .inf, target_fmr: 0.01}\nmin_quality: .nan\n", "min_quality"),
    ("tiers:\n  - {name: a, max_amount: .inf, target_fmr: 0.01}\nmin_quality: -1\n", "min_quality"),
    ("tiers:\n  - {name: a, max_amount: .inf, target_fmr: 0.001, corroborrate: true}\n", "corroborrate"),
    ("tiers:\n  - {name: a, max_amount: .inf, target_fmr: 0.01}\ndeny: -3\n", "deny"),
    ("tiers:\n  - {max_amount: .inf, target_fmr: 0.01}\n", "name"),
    ("tiers: [\n", "pol.yaml"),
])
def test_policy_files_are_fully_validated(tmp_path: Path, text: str, field: str) -> None:
    p = tmp_path / "pol.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=field) as exc:
        load_policy(p)
    assert str(p) in str(exc.value)


def test_a_valid_policy_still_loads(tmp_path: Path) -> None:
    p = tmp_path / "pol.yaml"
    p.write_text("tiers:\n  - {name: a, max_amount: 100, target_fmr: 0.01}\n"
                 "  - {name: b, max_amount: .inf, target_fmr: 0.01, approve_llr: 6, corroborate: true}\n"
                 "deny_llr: -3\nmin_quality: 0\n")
    pol = load_policy(p)
    assert [(t.name, t.approve_llr, t.deny_llr, t.corroborate) for t in pol.tiers] == [
        ("a", pytest.approx(math.log(100)), -3.0, False), ("b", 6.0, -3.0, True)]
    with pytest.raises(ValueError, match="tier"):
        Policy(())
