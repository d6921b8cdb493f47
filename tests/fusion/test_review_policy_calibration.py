"""Review fixes to the fusion policy and calibration.

Corroboration needs evidence for the person, calibrators must carry information, the policy
file cannot loosen or be misread, and a broken policy or calibration file is named in one line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fusion import policy as policy_mod
from fusion.calibration import IsotonicCalibrator, LogisticCalibrator
from fusion.engine import FusionEngine
from fusion.policy import ModalityEvidence, Tier, decide, load_policy, tier_for
from fusion.rules import DecisionRule
from server.fusion_source import FusionSource

E = ModalityEvidence
ROOT = Path(__file__).resolve().parents[2]


def _informative(seed: int = 0, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(2.0, 1.0, n), rng.normal(0.0, 1.0, n)


# -- 1. corroboration needs positive evidence; uninformative calibrators are refused --------------

def test_a_neutral_modality_does_not_corroborate() -> None:
    """An LLR of 0 says nothing about the person: it must not turn 'uncorroborated' into 'approve'."""
    for others in ([E("touch", 0.0, llr=0.0)], [E("touch", 0.0, llr=0.0), E("gait", 0.0, llr=0.0)],
                   [E("touch", 0.0, llr=0.4), E("gait", 0.0, llr=-0.4)]):  # the others sum to 0
        for amount in (500, 5000):
            d = decide([E("keystroke", 0.0, llr=9.5), *others], amount=amount)
            assert d.outcome == "step_up" and "uncorroborated" in {r.code for r in d.reasons}, (others, amount)
        assert decide([E("keystroke", 0.0, llr=9.5), *others], amount=50).outcome == "approve"  # low: not asked
    # a neutral modality is labelled as what it is for the person: no match
    d = decide([E("keystroke", 0.0, llr=9.5), E("touch", 0.0, llr=0.0)], amount=5000)
    assert ("touch", "mismatch", 0.0) in [(r.modality, r.code, r.contribution) for r in d.reasons]
    # positive evidence from a second modality, at the `match` level, still corroborates
    for small in (0.1, 1e-6):
        assert decide([E("keystroke", 0.0, llr=9.5), E("touch", 0.0, llr=small)], amount=5000).outcome == "approve"


def test_a_calibrator_fitted_on_constant_scores_is_refused() -> None:
    """The tester's case: a constant touch calibrator gave LLR 0 to every probe and corroborated keystroke."""
    eng = FusionEngine()
    eng.fit_modality("keystroke", genuine=np.tile(np.arange(10.0, 20.0), 100), impostor=np.tile(np.arange(10.0), 100))
    with pytest.raises(ValueError, match=r"touch calibration: .*one value carry no information"):
        eng.fit_modality("touch", genuine=np.ones(50), impostor=np.ones(50))
    assert eng.calibrated_modalities == ["keystroke"]
    d = eng.decide([E("keystroke", 25.0), E("touch", -999.0)], amount=5000)
    assert d.outcome == "step_up" and ("touch", "uncalibrated", 0.0) in [(r.modality, r.code, r.contribution)
                                                                         for r in d.reasons]
    with pytest.raises(ValueError, match="one value"):
        LogisticCalibrator().fit(genuine=np.full(2, 3.0), impostor=np.full(3, 3.0))


def test_a_calibrator_on_scores_without_information_is_refused() -> None:
    """Noise scores reach a Cllr just under 1 by chance; their LLRs would still count as evidence."""
    rng = np.random.default_rng(1)
    g, i = rng.normal(0, 1, 200), rng.normal(0, 1, 200)
    with pytest.raises(ValueError, match=r"gait calibration: scores: carry no information: Cllr (0\.9|1\.0)"):
        FusionEngine().fit_modality("gait", genuine=g, impostor=i)
    # informative scores, even few of them, still calibrate
    LogisticCalibrator().fit(genuine=np.array([5.0, 6, 7]), impostor=np.array([0.0, 1, 2]))
    g, i = _informative()
    assert FusionEngine().fit_modality("gait", genuine=g, impostor=i).report["gait"]["cllr"] < 0.6


def test_a_calibration_file_whose_llr_ignores_the_score_is_refused(tmp_path: Path) -> None:
    g, i = _informative()
    d = LogisticCalibrator().fit(genuine=g, impostor=i).to_dict()
    for change, field in (({"coef": [0.0]}, "coef"), ({"bounds": [0.0, 3.0]}, "bounds"),
                          ({"bounds": [-3.0, 0.0]}, "bounds")):
        with pytest.raises(ValueError, match=field):
            LogisticCalibrator.from_dict({**d, **change})
        path = tmp_path / "cal.json"
        path.write_text(json.dumps({"version": 1, "calibrators": {"touch": {**d, **change}}, "report": {}}))
        with pytest.raises(ValueError, match=f"calibrators.touch.{field}"):
            FusionEngine.load(path)


# -- 2. the policy file cannot loosen or be misread -------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    # a higher tier dropping the corroboration a lower one asks for (9.5 alone approved at 5000, not at 500)
    ("tiers:\n - {name: medium, max_amount: 1000, target_fmr: 0.001, corroborate: true}\n"
     " - {name: high, max_amount: .inf, target_fmr: 0.0001}\n", r"tiers\.high\.corroborate: .*must not drop"),
    # a repeated key: the last value would win silently
    ("tiers:\n - {name: high, max_amount: .inf, target_fmr: 0.0001, corroborate: true, corroborate: false}\n",
     r"line 2, .*'corroborate' appears more than once"),
    ("tiers:\n - name: high\n   max_amount: .inf\n   target_fmr: 0.0001\n   corroborate: true\n   corroborate: false\n",
     r"line 6, .*'corroborate' appears more than once"),
    ("tiers:\n - {name: a, max_amount: .inf, target_fmr: 0.01}\ndeny_llr: -3\ndeny_llr: -5\n",
     r"'deny_llr' appears more than once"),
    # amounts above a bounded last tier would silently take its rule
    ("tiers:\n - {name: low, max_amount: 100, target_fmr: 0.01}\n", r"tiers\.low\.max_amount: the last tier must be open"),
    # an approve_llr no fused LLR reaches: 3 modalities x 12
    ("tiers:\n - {name: low, max_amount: .inf, target_fmr: 1.0e-30}\n", r"tiers\.low\.approve_llr .*69\.08 can never"),
    ("tiers:\n - {name: low, max_amount: .inf, target_fmr: 0.01, approve_llr: 36.5}\n", r"at most 36"),
    # a typo'd number names the tier and what was read
    ("tiers:\n - {name: low, max_amount: 100, target_fmr: 0.01}\n - {name: medium, max_amount: .inf, target_fmr: 0.0o1}\n",
     r"tiers\.medium\.target_fmr: .*'0\.0o1'"),
])
def test_policy_files_that_loosen_or_mislead_are_refused(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "pol.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=message) as exc:
        load_policy(p)
    assert str(p) in str(exc.value) and "\n" not in str(exc.value)
    assert type(exc.value).__name__ == "PolicyError"  # what `cadence.cli.main` reports in one line


def test_reachable_and_monotone_policies_still_load(tmp_path: Path) -> None:
    p = tmp_path / "pol.yaml"
    p.write_text("tiers:\n - {name: a, max_amount: 100, target_fmr: 0.01}\n"
                 " - {name: b, max_amount: 1000, target_fmr: 0.001, corroborate: true}\n"
                 " - {name: c, max_amount: .inf, target_fmr: 0.0001, approve_llr: 36, corroborate: true}\n")
    pol = load_policy(p)
    assert [(t.name, t.corroborate) for t in pol.tiers] == [("a", False), ("b", True), ("c", True)]
    assert pol.tiers[-1].approve_llr == 36.0
    assert [t.corroborate for t in load_policy().tiers] == [False, True, True]


def test_hand_built_tiers_refuse_an_amount_above_their_top() -> None:
    tiers = (Tier("low", 100.0, 0.01, math.log(100), -4.6),)
    assert tier_for(100.0, tiers).name == "low"
    with pytest.raises(ValueError, match="amount: 1000000000.0 is above the last tier"):
        decide([E("keystroke", 0.0, llr=9.5)], amount=1e9, tiers=tiers)


# -- 3. a broken policy file: read at first use, named in one line -------------------------------

def _broken_fusion_package(tmp_path: Path) -> Path:
    """A copy of the fusion package whose policy.yaml has a typo'd number; first on PYTHONPATH."""
    pkg = tmp_path / "shadow" / "fusion"
    shutil.copytree(ROOT / "fusion", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    y = pkg / "policy.yaml"
    y.write_text(y.read_text().replace("target_fmr: 0.001\n", "target_fmr: 0.0o1\n", 1))
    assert "0.0o1" in y.read_text()
    return tmp_path / "shadow"


def test_a_broken_policy_file_does_not_break_imports_and_is_one_line(tmp_path: Path) -> None:
    shadow = _broken_fusion_package(tmp_path)
    reg = tmp_path / "reg"
    reg.mkdir()
    g, i = _informative()
    FusionEngine(policy=load_policy()).fit_modality("gait", genuine=g, impostor=i).save(reg / "fusion-calibration.json")
    env = {**os.environ, "PYTHONPATH": f"{shadow}{os.pathsep}{ROOT}", "CADENCE_MODEL_REGISTRY": str(reg),
           "CADENCE_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    code = ("import fusion.policy, fusion.engine, server.fusion_source, server.app\n"
            f"assert fusion.policy.__file__.startswith({str(shadow)!r})\n"
            "from server.fusion_source import FusionSource\n"
            "try:\n    FusionSource(None)\nexcept ValueError as exc:\n    print('refused:', exc)\n"
            # `cadence serve --workers N` checks the settings once, before any worker would fail and restart
            "from cadence.settings import Settings\nfrom server.app import check_settings\n"
            "try:\n    check_settings(Settings())\nexcept ValueError as exc:\n    print('serve refused:', exc)\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "refused: invalid policy file" in r.stdout and "tiers.medium.target_fmr" in r.stdout
    assert "serve refused: invalid policy file" in r.stdout, r.stdout
    # a command that decides (here: reads the calibration with the policy) says so in one line, exit 2
    cli = "import sys; sys.argv = ['cadence', 'models', 'list']; from cadence.cli import main; main()"
    r = subprocess.run([sys.executable, "-c", cli], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid policy file") and "0.0o1" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_a_policy_error_is_not_reported_as_a_damaged_calibration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    g, i = _informative()
    path = tmp_path / "fusion-calibration.json"
    FusionEngine().fit_modality("gait", genuine=g, impostor=i).save(path)

    def broken(path: object = None) -> object:
        raise policy_mod.PolicyError("invalid policy file policy.yaml: tiers.medium.target_fmr: not a number")

    policy_mod.default_policy.cache_clear()
    monkeypatch.setattr(policy_mod, "load_policy", broken)
    try:
        with pytest.raises(policy_mod.PolicyError, match="target_fmr"):
            FusionSource(path)
        with pytest.raises(policy_mod.PolicyError):
            FusionEngine.load(path)
        assert "cannot load" not in caplog.text
    finally:
        monkeypatch.undo()
        policy_mod.default_policy.cache_clear()
    assert policy_mod.DEFAULT_POLICY.tiers[0].name == "low"


# -- 4. a broken calibration file: one true message -----------------------------------------------

def test_a_broken_calibration_file_is_reported_once_and_truly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "fusion-calibration.json"
    path.write_text("{junk")
    with caplog.at_level(logging.ERROR, logger="server.fusion_source"):
        assert FusionSource(path).current() is None  # a one-shot reader (`cadence models list`)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "keeping the calibration loaded before" not in errors[0] and "no calibration is loaded" in errors[0]
    assert errors[0].count(str(path)) == 1


def test_a_calibration_path_that_is_a_folder_is_a_value_error(tmp_path: Path) -> None:
    folder = tmp_path / "fusion-calibration.json"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"fusion-calibration.json: cannot read the fusion calibration file"):
        FusionEngine.load(folder)


# -- 5. degenerate calibration input --------------------------------------------------------------

def test_degenerate_calibration_input_is_named() -> None:
    with pytest.raises(ValueError, match=r"genuine: scores must be finite") as exc:
        LogisticCalibrator().fit(genuine=np.array([1, np.inf, 3]), impostor=np.array([0.0, 1]))
    assert "NaN" not in str(exc.value)
    with pytest.raises(ValueError, match=r"impostor: scores must be finite"):
        LogisticCalibrator().fit(genuine=np.array([1.0, 2, 3]), impostor=np.array([0, np.nan]))
    with pytest.raises(ValueError, match=r"genuine: calibration needs at least 1 score"):
        IsotonicCalibrator().fit(genuine=np.array([]), impostor=np.array([1.0, 2]))
    with pytest.raises(ValueError, match=r"impostor: calibration needs at least 2 scores"):
        LogisticCalibrator().fit(genuine=np.array([1.0, 2]), impostor=np.array([0.0]))


def test_huge_separated_scores_still_calibrate() -> None:
    """Scores of +-1e300 overflowed the variance: every LLR came out 0."""
    cal = LogisticCalibrator().fit(genuine=np.full(5, 1e300), impostor=np.full(5, -1e300))
    assert cal.llr(np.array([1e300, -1e300])).tolist() == [cal.hi_, cal.lo_]
    assert cal.llr_one(1e300) == cal.hi_ > 0 and cal.llr_one(-1e300) == cal.lo_ < 0
    assert LogisticCalibrator.from_dict(cal.to_dict()).llr_one(1e300) == cal.hi_


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["calibrators"].__setitem__("mouse", d["calibrators"]["gait"]), r"calibrators\.mouse: unknown modality"),
    (lambda d: d["report"].__setitem__("mouse", {"cllr": 0.3}), r"report\.mouse: unknown modality"),
    (lambda d: d["report"]["gait"].__setitem__("model_version", ["v0001"]), r"report\.gait\.model_version: must be"),
    (lambda d: d["report"]["gait"].__setitem__("model_version", 3), r"report\.gait\.model_version"),
])
def test_a_calibration_file_for_unknown_modalities_or_versions_is_refused(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    g, i = _informative()
    eng = FusionEngine().fit_modality("gait", genuine=g, impostor=i)
    eng.report["gait"]["model_version"] = "v0001"
    d = eng.to_dict()
    change(d)
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=message):
        FusionEngine.load(path)
    with pytest.raises(ValueError, match="modality: unknown 'mouse'"):
        FusionEngine().fit_modality("mouse", genuine=g, impostor=i)


# -- 6. majority is a majority of votes ----------------------------------------------------------

def test_majority_needs_more_than_half_of_the_votes() -> None:
    rule = DecisionRule("majority", np.zeros(3))
    L = np.array([[5.0, -1.0, np.nan],  # one of two: a tie, not a majority
                  [5.0, 1.0, np.nan],  # two of two
                  [5.0, -1.0, 2.0],  # two of three: as the median
                  [-5.0, -1.0, 2.0],  # one of three
                  [3.0, np.nan, np.nan],  # one of one
                  [np.nan, np.nan, np.nan]])
    out = rule(L)
    assert out.tolist() == [-1.0, 1.0, 2.0, -1.0, 3.0, -np.inf]
    assert [bool(x >= 0) for x in out] == [False, True, True, False, True, False]
    four = DecisionRule("majority", np.zeros(4))(np.array([[1.0, 2.0, -1.0, -2.0], [1.0, 2.0, 3.0, -2.0]]))
    assert four.tolist() == [-1.0, 1.0]  # two of four is a tie; three of four a majority
    with pytest.raises(ValueError, match="kind"):
        DecisionRule("median", np.zeros(3))(L)
