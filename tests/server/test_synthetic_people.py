"""evaluation/synthetic.py: stable people, valid event streams, people differ more than sessions."""

from __future__ import annotations

import numpy as np

from evaluation.synthetic import SyntheticPerson
from modalities.events import TouchAction
from server.client.features import fallback_gait, fallback_keystroke, fallback_touch


def test_same_seed_same_person_and_valid_streams() -> None:
    a, b = SyntheticPerson(3), SyntheticPerson(3)
    ka, kb = a.keystrokes(200, 1), b.keystrokes(200, 1)
    assert np.array_equal(ka.press, kb.press) and len(ka) == 200
    assert np.all(ka.release >= ka.press) and np.all(np.diff(ka.press) > 0)
    t = a.touch(6, 2)
    assert (t.action == int(TouchAction.DOWN)).sum() == 6 == (t.action == int(TouchAction.UP)).sum()
    w = a.walk(10.0, rate_hz=100, rng=3)
    assert len(w) == 1000 and abs(float(np.median(np.linalg.norm(w.xyz, axis=1))) - 9.8) < 1.5


def test_people_differ_more_than_sessions() -> None:
    def feats(p: SyntheticPerson, seed: int) -> np.ndarray:
        return np.concatenate([fallback_keystroke(p.keystrokes(100, seed)).values,
                               fallback_touch(p.touch(5, seed)).values,
                               fallback_gait(p.walk(5.0, rng=seed)).values])

    p, q = SyntheticPerson(1), SyntheticPerson(2)
    within = np.mean([np.abs(feats(p, s) - feats(p, s + 10)).sum() for s in range(5)])
    between = np.mean([np.abs(feats(p, s) - feats(q, s + 10)).sum() for s in range(5)])
    assert between > 1.5 * within
