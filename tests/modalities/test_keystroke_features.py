"""Keystroke features: exact latencies, robustness to stuck keys, idle gaps and coarse clocks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from modalities.events import EventValidationError, KeyEvent, KeySequence
from modalities.keystroke import FEATURE_DIM, FEATURE_VERSION, window_features, windows_for_subject
from modalities.keystroke.features import (
    FEATURE_NAMES,
    MAX_GAP,
    fixed_text_names,
    fixed_text_vector,
    normalise_key,
    sequence_from_fixed_vector,
    window_slices,
)

TEXT = list("the cat sat on the mat and then the rat ate the hat ") * 4


def typed(text: list[str], *, dd: float = 0.2, hold: float = 0.09, seed: int = 0, jitter: float = 0.02,
          tick: float | None = None) -> KeySequence:
    """A synthetic typist: keys every `dd` s held `hold` s, with jitter, optionally on a coarse clock."""
    rng = np.random.default_rng(seed)
    keys = ["space" if c == " " else c for c in text]
    press = np.cumsum(np.maximum(dd + rng.normal(0, jitter, len(keys)), 0.03))
    release = press + np.maximum(hold + rng.normal(0, jitter / 2, len(keys)), 0.02)
    if tick:
        press, release = np.floor(press / tick) * tick, np.ceil(release / tick) * tick
    return KeySequence(np.array(keys, dtype=object), press, release)


def col(name: str) -> int:
    return FEATURE_NAMES.index(name)


def test_window_has_version_dimension_and_quality() -> None:
    w = window_features(typed(TEXT[:100]))
    assert w.modality == "keystroke" and w.feature_version == FEATURE_VERSION
    assert w.values.shape == (FEATURE_DIM,) and w.n_events == 100
    assert 0.0 < w.quality <= 1.0
    assert np.all(np.isfinite(w.values))


def test_exact_latencies_of_a_known_digraph() -> None:
    # t pressed at 0.0 held 0.1, h pressed at 0.25 held 0.08: DD 0.25, UD 0.15, UU 0.23
    seq = KeySequence.from_events([KeyEvent("t", 0.0, 0.1), KeyEvent("h", 0.25, 0.33), KeyEvent("e", 0.5, 0.6)])
    v = window_features(seq).values
    # one observation shrunk 1:1 towards the window median of that latency type
    assert v[col("DD.t.h")] == pytest.approx((0.25 + 0.25) / 2)
    assert v[col("UD.t.h")] == pytest.approx((0.15 + np.median([0.15, 0.17])) / 2)
    assert v[col("n.DG.t.h")] == 1 and v[col("n.DG.h.e")] == 1 and v[col("n.T.t.h.e")] == 1
    assert v[col("T.t.h.e")] == pytest.approx((0.5 + 2 * 0.25) / 2)
    assert v[col("n.H.t")] == 1 and v[col("n.H.space")] == 0


def test_stuck_key_and_idle_gap_do_not_move_rhythm_features() -> None:
    base = typed(TEXT[:100])
    v0 = window_features(base).values
    press, release = base.press.copy(), base.release.copy()
    release[10] = press[10] + 300.0  # key held for five minutes
    press[50:] += 600.0  # ten-minute pause in the middle
    release[50:] += 600.0
    v1 = window_features(KeySequence(base.keys, press, release)).values
    assert v1[col("rate.pause")] > 0
    for name in ("hold.p50", "dd.p50", "DD.t.h", "H.e", "UD.space.t"):
        assert abs(v1[col(name)] - v0[col(name)]) < 0.02, name
    assert np.all(np.abs(v1[col("H.space"):col("hold.p25")]) < MAX_GAP + 1)


def test_coarse_clock_features_stay_close_to_fine_ones() -> None:
    fine = window_features(typed(TEXT[:100])).values
    coarse = window_features(typed(TEXT[:100], tick=0.015625)).values
    assert abs(coarse[col("dd.p50")] - fine[col("dd.p50")]) < 0.02
    assert abs(coarse[col("hold.p50")] - fine[col("hold.p50")]) < 0.03


def test_windows_for_subject_hop_half_a_window() -> None:
    seq = typed(TEXT)  # 208 keys
    ws = windows_for_subject(seq, 50)
    assert len(ws) == len(window_slices(len(seq), 50)) == (208 - 50) // 25 + 1
    assert all(w.n_events == 50 for w in ws)
    # a window cut from the recording equals the same keys featurised alone
    alone = window_features(seq[25:75]).values
    np.testing.assert_allclose(ws[1].values, alone)


def test_bad_windows_are_refused_with_the_field_named() -> None:
    with pytest.raises(EventValidationError, match="keys"):
        window_features(KeySequence.from_events([KeyEvent("a", 0.0, 0.1)]))
    with pytest.raises(EventValidationError, match="n_keys"):
        windows_for_subject(typed(TEXT), 1)
    with pytest.raises(EventValidationError, match="keys"):
        window_features([KeyEvent("a", 0.0, 0.1)] * 3)  # type: ignore[arg-type]


def test_key_names_are_normalised() -> None:
    assert [normalise_key(k) for k in ("T", " ", "Return", "lshift", "backspace")] == ["t", "space", "enter", "shift", "backspace"]


def test_fixed_text_vector_matches_cmu_layout() -> None:
    keys = [".", "t", "i", "e", "5", "Shift.r", "o", "a", "n", "l", "Return"]
    names = fixed_text_names(["period", "t", "i", "e", "five", "Shift.r", "o", "a", "n", "l", "Return"])
    assert names[:4] == ["H.period", "DD.period.t", "UD.period.t", "H.t"] and len(names) == 31
    rng = np.random.default_rng(1)
    vec = np.empty(31)
    vec[0::3] = rng.uniform(0.05, 0.15, 11)
    vec[1::3] = rng.uniform(0.1, 0.4, 10)
    vec[2::3] = vec[1::3] - vec[0:-1:3]  # UD = DD - H of the first key (CMU identity)
    seq = sequence_from_fixed_vector(vec, keys)
    np.testing.assert_allclose(fixed_text_vector(seq, expected=keys), vec, atol=1e-12)
    with pytest.raises(EventValidationError, match="index 1"):
        fixed_text_vector(seq, expected=[".", "x"] + keys[2:])


def test_cmu_rows_round_trip(data_dir) -> None:
    from evaluation.datasets import cmu_feature_columns, load_cmu

    df = load_cmu(data_dir)
    cols = cmu_feature_columns(df)
    keys = [c[2:] for c in cols if c.startswith("H.")]
    assert fixed_text_names(keys) == cols
    for row in df[cols].to_numpy(float)[:: 2000]:
        np.testing.assert_allclose(fixed_text_vector(sequence_from_fixed_vector(row, keys)), row, atol=1e-9)


def test_features_of_real_bbmas_windows(data_dir) -> None:
    from evaluation.datasets import load_bbmas_keystrokes

    seq = next(iter(load_bbmas_keystrokes(data_dir, [101, 102, 103]).values()))
    ws = windows_for_subject(seq, 100)
    assert len(ws) >= 10
    X = np.vstack([w.values for w in ws])
    assert np.all(np.isfinite(X))
    assert 0.04 < np.median(X[:, col("hold.p50")]) < 0.2  # real holds are tens of ms
    assert np.median([w.quality for w in ws]) > 0.3


def test_features_import_without_torch_or_sklearn() -> None:
    code = ("import sys, modalities.keystroke as k; k.window_features; "
            "bad = [m for m in ('torch', 'sklearn', 'kivy', 'pandas') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_keys_committed_at_one_instant_give_finite_features() -> None:
    """A soft keyboard commits a word at once: zero latencies must not divide by zero."""
    from modalities.keystroke.features import CLOCK_TICK

    keys = np.array(list("jordan lee"), dtype=object)
    t = np.full(len(keys), 100.0)
    w = window_features(KeySequence(keys, t, t.copy()))
    assert np.isfinite(w.values).all()
    assert w.values[col("speed.keys_per_s")] == pytest.approx(1.0 / CLOCK_TICK)  # capped, not infinite
    assert np.isfinite(windows_for_subject(KeySequence(keys, t, t.copy()), 5)[0].values).all()
