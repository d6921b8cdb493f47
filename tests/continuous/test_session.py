import json
import math

import pytest

from continuous.session import SessionRiskTracker
from fusion.policy import ModalityEvidence


def ev(llr: float | None, score: float = 0.0, quality: float = 1.0) -> list[ModalityEvidence]:
    return [ModalityEvidence("keystroke", score, quality=quality, llr=llr)]


def test_owner_stays_ok_and_an_impostor_is_stepped_up_then_terminated() -> None:
    t = SessionRiskTracker(window=5, step_up_risk=0.6, terminate_risk=0.9)
    for _ in range(8):
        s = t.update(ev(2.0))
    assert s.status == "ok" and s.risk < 0.2 and s.n_windows == 8
    statuses = [t.update(ev(-4.0)).status for _ in range(5)]
    assert statuses[0] in ("ok", "step_up") and statuses[-1] == "terminate"
    assert "step_up" in statuses  # the risk climbs through step-up before terminating
    # termination is final
    assert t.update(ev(5.0)).status == "terminate"


def test_risk_is_the_sigmoid_of_the_mean_window_llr() -> None:
    t = SessionRiskTracker(window=3)
    for llr in (1.0, -2.0, 0.5, 2.0):
        s = t.update(ev(llr))
    mean = (-2.0 + 0.5 + 2.0) / 3  # the first window slid out
    assert math.isclose(s.risk, 1 / (1 + math.exp(mean)))
    assert s.window_llr == 2.0


def test_uncalibrated_scores_say_nothing_either_way() -> None:
    """Without a calibrated LLR a window neither clears nor ends a session.

    Raw scores live on each scorer's scale: real owners score -200 to -460 on the keystroke default.
    """
    for score in (-0.5, -6.0, -300.0):
        s = SessionRiskTracker().update(ev(None, score=score))
        assert (s.risk, s.status, s.window_llr) == (0.5, "ok", 0.0)


def test_missing_evidence_changes_neither_risk_nor_status() -> None:
    """Evidence-free windows must not clear a step-up (they used to count as LLR 0)."""
    t = SessionRiskTracker(window=2)
    stepped = t.update(ev(-1.0))
    assert stepped.status == "step_up"
    for empty in ([], ev(None, score=-50.0, quality=0.0), ev(float("nan")), ev(None, score=float("nan"))):
        s = t.update(empty)
        assert (s.risk, s.status) == (stepped.risk, "step_up")
    assert s.n_windows == 5 and s.window_llr == 0.0
    assert t.update(ev(3.0)).status == "ok"  # genuine evidence still clears it


def test_round_trip_through_json() -> None:
    t = SessionRiskTracker(window=4, step_up_risk=0.55, terminate_risk=0.8)
    for llr in (1.0, -1.0, -2.0):
        t.update(ev(llr))
    u = SessionRiskTracker.from_dict(json.loads(json.dumps(t.to_dict())))
    assert u.state == t.state and u.window == 4
    assert u.update(ev(-3.0)) == t.update(ev(-3.0))


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"window": 0}, "window"), ({"step_up_risk": 1.2}, "step_up_risk"),
    ({"step_up_risk": 0.9, "terminate_risk": 0.7}, "step_up_risk"),
])
def test_bad_parameters_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SessionRiskTracker(**kwargs)


def test_bad_state_and_evidence_are_refused() -> None:
    good = SessionRiskTracker().to_dict()
    for key, value, field in (("version", 99, "version"), ("llrs", [float("nan")], "llrs"),
                              ("state", {"status": "maybe", "risk": 0.1, "n_windows": 1}, "state.status")):
        with pytest.raises(ValueError, match=field):
            SessionRiskTracker.from_dict({**good, key: value})
    with pytest.raises(ValueError, match="llrs"):
        SessionRiskTracker.from_dict({**good, "llrs": [0.0] * 6})
    with pytest.raises(TypeError, match=r"evidence\[0\]"):
        SessionRiskTracker().update([{"modality": "keystroke", "score": 1.0}])  # type: ignore[list-item]
    # a calibrated LLR overflowing on extreme features: a bounded strong mismatch, not an error
    s = SessionRiskTracker().update(ev(float("-inf")))
    assert s.status == "step_up" and s.window_llr == -12.0 and s.risk > 0.9  # one window: held, not ended


def test_docstring_example_holds() -> None:
    import doctest

    import continuous.session

    assert doctest.testmod(continuous.session).failed == 0


def test_a_step_up_threshold_at_or_below_a_fresh_sessions_risk_is_refused() -> None:
    """At 0.5 a fresh tracker stored 'ok' at risk 0.5 that it then refused to read back (`from_dict`)."""
    for risk in (0.5, 0.3):
        with pytest.raises(ValueError, match="step_up_risk: must be above 0.5"):
            SessionRiskTracker(window=3, step_up_risk=risk, terminate_risk=0.9)
    t = SessionRiskTracker(window=3, step_up_risk=0.51, terminate_risk=0.9)
    assert SessionRiskTracker.from_dict(t.to_dict()).state == t.state
