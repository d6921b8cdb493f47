"""Touch modality: segmentation, features, scorers (synthetic streams and real BB-MAS shapes)."""

from __future__ import annotations

import numpy as np
import pytest

from modalities.base import ModelVersionError, Scorer
from modalities.events import EventValidationError, TouchAction, TouchStream
from modalities.touch import (
    FEATURE_DIM,
    FEATURE_VERSION,
    BackgroundLR,
    FusedTouch,
    PLDATouch,
    QuadBackgroundLR,
    TouchKNN,
    TouchManhattan,
    TouchOneClassSVM,
    accumulate,
    default_scorer,
    direction_class,
    segment,
    stream_features,
    stroke_windows,
    window_features,
    windows_for_subject,
)
from modalities.touch.features import IDX

D, U, M, PD, PU = (int(TouchAction.DOWN), int(TouchAction.UP), int(TouchAction.MOVE),
                   int(TouchAction.POINTER_DOWN), int(TouchAction.POINTER_UP))


def make_stream(strokes: list[dict], device: str = "HTC_One", width: float = 1080.0) -> TouchStream:
    """Build a stream from stroke specs: start (x, y), end (x, y), n points, t0, duration, size."""
    cols: dict[str, list] = {k: [] for k in ("time", "x", "y", "pressure", "touch_major", "touch_minor", "action", "pointer_id")}
    for s in strokes:
        n = s.get("n", 10)
        t = s["t0"] + np.linspace(0, s.get("dur", 0.2), n)
        xs = np.linspace(s["start"][0], s["end"][0], n)
        ys = np.linspace(s["start"][1], s["end"][1], n)
        acts = [D] + [M] * (n - 2) + [U] if n > 1 else [D]
        for i in range(n):
            row = {"time": t[i], "x": xs[i], "y": ys[i], "pressure": s.get("pressure", 0.2),
                   "touch_major": s.get("size", 12.0), "touch_minor": s.get("size", 12.0) * 0.7,
                   "action": acts[i], "pointer_id": s.get("pid", 0)}
            for k, v in row.items():
                cols[k].append(v)
    return TouchStream(screen_width=width, screen_height=width * 16 / 9, device=device, **cols)


def test_segment_swipes_taps_and_units() -> None:
    st = make_stream([
        {"start": (500, 1500), "end": (500, 600), "t0": 0.0},          # upward swipe
        {"start": (300, 800), "end": (302, 801), "t0": 1.0, "n": 3},   # tap
        {"start": (900, 900), "end": (100, 900), "t0": 2.0},           # leftward swipe
    ])
    seg = segment(st)
    assert len(seg.strokes) == 3 and len(seg.swipes) == 2 and len(seg.taps) == 1
    up = seg.strokes[0]
    assert up.y[0] == pytest.approx(1500 / 1080) and up.displacement == pytest.approx(900 / 1080)
    assert up.size[0] == pytest.approx(1.0)  # HTC One contact scale 12
    assert seg.strokes[1].prev_up == pytest.approx(0.2)
    X, tap, _ = stream_features(st)
    assert X.shape == (3, FEATURE_DIM) and tap.tolist() == [False, True, False]
    assert direction_class(X[[0, 2]]).tolist() == [3, 1]  # up, left
    assert X[1, IDX["log_inter_stroke"]] == pytest.approx(np.log(0.8 + 0.05))


def test_multitouch_and_unfinished_strokes_are_dropped_and_counted() -> None:
    st = make_stream([{"start": (500, 1500), "end": (500, 600), "t0": 0.0},
                      {"start": (500, 1500), "end": (400, 600), "t0": 1.0}])
    action = st.action.copy()
    action[13] = PD  # a second finger lands during the second stroke
    pid = st.pointer_id.copy()
    pid[14] = 1
    action[9] = M    # ... and the first stroke loses its UP
    st2 = TouchStream(st.time, st.x, st.y, st.pressure, st.touch_major, st.touch_minor, action, pid,
                      st.screen_width, st.screen_height, st.device)
    seg = segment(st2)
    assert seg.strokes == [] and seg.n_multitouch == 1 and seg.n_unfinished == 1


def test_samsung_has_no_pressure_channel() -> None:
    st = make_stream([{"start": (500, 1500), "end": (500, 600), "t0": 0.0, "pressure": 1.0, "size": 3.9}],
                     device="Samsung_S6", width=1440.0)
    s = segment(st).strokes[0]
    assert not s.has_pressure and np.allclose(s.pressure, 1.0) and s.size[0] == pytest.approx(1.0)
    w = window_features(st)
    assert w.quality < 1.0 and w.feature_version == FEATURE_VERSION and w.values.shape == (FEATURE_DIM,)


def test_window_features_needs_a_complete_stroke() -> None:
    st = make_stream([{"start": (500, 1500), "end": (500, 600), "t0": 0.0}])
    cut = TouchStream(st.time[:5], st.x[:5], st.y[:5], st.pressure[:5], st.touch_major[:5], st.touch_minor[:5],
                      st.action[:5], st.pointer_id[:5])
    with pytest.raises(EventValidationError, match="events"):
        window_features(cut)
    with pytest.raises(EventValidationError, match="stream"):
        segment("not a stream")  # type: ignore[arg-type]


def _population(seed: int = 0, n_sub: int = 6, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Real-shaped strokes: each synthetic person has their own speed and finger size."""
    rng = np.random.default_rng(seed)
    X, y = [], []
    for s in range(n_sub):
        strokes = []
        for i in range(n):
            vertical = rng.random() < 0.7
            L = rng.uniform(300, 800)
            start = (rng.uniform(200, 900), rng.uniform(900, 1500))
            end = (start[0], start[1] - L) if vertical else (start[0] - L, start[1])
            strokes.append({"start": start, "end": end, "t0": 2.0 * i, "n": int(rng.integers(6, 15)),
                            "dur": 0.1 + 0.05 * s + rng.normal(0, 0.01), "size": 8 + 1.5 * s + rng.normal(0, 0.5),
                            "pressure": 0.15 + 0.02 * s})
        F, _, _ = stream_features(make_stream(strokes))
        X.append(F)
        y.append(np.full(len(F), s))
    return np.vstack(X), np.concatenate(y)


ALL = [TouchManhattan(), TouchKNN(), TouchOneClassSVM(), BackgroundLR(), QuadBackgroundLR(), PLDATouch(n_components=4),
       FusedTouch()]


@pytest.mark.parametrize("scorer", ALL, ids=lambda s: s.name)
def test_scorers_separate_people_and_round_trip(scorer: Scorer, tmp_path) -> None:
    X, y = _population()
    scorer.fit(X, y)
    own = X[y == 0]
    t = scorer.enroll(own[:20])
    gen = scorer.compare(t, own[20:])
    imp = scorer.compare(t, X[y == 5])
    assert gen.mean() > imp.mean()
    path = tmp_path / "s.npz"
    scorer.save(path)
    again = Scorer.load(path)
    assert type(again) is type(scorer)
    assert np.allclose(again.compare(again.enroll(own[:20]), own[20:]), gen)


def test_population_scorer_refuses_use_before_fit_and_bad_input() -> None:
    with pytest.raises(ModelVersionError):
        PLDATouch().enroll(np.zeros((3, FEATURE_DIM)))
    with pytest.raises(EventValidationError, match="subjects"):
        BackgroundLR().fit(np.zeros((4, FEATURE_DIM)))
    with pytest.raises(EventValidationError, match="values"):
        default_scorer().enroll(np.zeros((3, FEATURE_DIM - 1)))


def test_quadratic_lr_learns_a_band_that_a_linear_one_cannot() -> None:
    """A person in the middle of the population on one trait: others lie on both sides."""
    rng = np.random.default_rng(3)
    n_sub, n = 8, 60
    X = np.zeros((n_sub * n, FEATURE_DIM))  # one informative trait, the rest constant
    X[:, IDX["e2e_cos"]], X[:, IDX["e2e_sin"]] = 0.0, 1.0  # all downward swipes
    y = np.repeat(np.arange(n_sub), n)
    j = IDX["size_median"]
    X[:, j] = np.where(np.arange(n_sub) % 2 == 0, -3.0, 3.0)[y] + rng.normal(0, 0.3, len(y))
    X[y == 0, j] = rng.normal(0, 0.3, n)  # subject 0: typical finger size, everyone else is not
    train, probe = X[y > 0], X[y == 0]
    aucs = {}
    for scorer in (BackgroundLR(), QuadBackgroundLR()):
        scorer.fit(train, y[y > 0])
        t = scorer.enroll(probe[:30])
        g, i = scorer.compare(t, probe[30:]), scorer.compare(t, train)
        aucs[scorer.name] = float(np.mean(g[:, None] > i[None, :]))
    assert aucs["touch-background-qlr"] > 0.95 and aucs["touch-background-lr"] < 0.75
    lin = BackgroundLR().fit(train, y[y > 0])
    quad = QuadBackgroundLR().fit(train, y[y > 0])
    with pytest.raises(ModelVersionError, match="weights"):
        quad.compare(lin.enroll(probe[:30]), probe[30:])


def test_saved_version_mismatch_is_refused(tmp_path) -> None:
    s = TouchManhattan()
    s.save(tmp_path / "m.npz")
    old = TouchManhattan.version
    TouchManhattan.version = "999"
    try:
        with pytest.raises(ModelVersionError, match="version"):
            Scorer.load(tmp_path / "m.npz")
    finally:
        TouchManhattan.version = old


def test_accumulate_means_non_overlapping_groups() -> None:
    assert accumulate(np.arange(11.0), 5).tolist() == [2.0, 7.0]
    with pytest.raises(ValueError):
        accumulate(np.ones(3), 0)


def test_real_bbmas_strokes(data_dir) -> None:
    from evaluation.datasets import load_bbmas_touch

    streams = load_bbmas_touch(data_dir, [1, 2])
    for st in streams.values():
        seg = segment(st)
        downs = int((st.action == D).sum())
        assert len(seg.strokes) + seg.n_multitouch + seg.n_unfinished == downs
        assert len(seg.swipes) > 30 and len(seg.taps) > 5
        ws = stroke_windows(st)
        assert all(w.values.shape == (FEATURE_DIM,) and 0 < w.quality <= 1 for w in ws)
        five = windows_for_subject(st, "5 swipes")
        assert len(five) == len(seg.swipes) // 5 and all(len(w) == 5 for w in five)
        # swipes span a good part of the screen: positions are in screen widths
        X = np.vstack([w.values for w in ws])
        assert 0.2 < np.median(np.abs(X[~X[:, IDX["is_tap"]].astype(bool), IDX["dy"]])) < 1.5
