"""Metric properties (hypothesis) and known values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from evaluation.metrics import auc, eer, fnmr_at_fmr, plot_det, rates_at, roc, summarize, threshold_at_fmr

scores = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=60)


@given(g=scores, i=scores)
@settings(max_examples=150, deadline=None)
def test_perfect_separation_gives_zero(g: list[float], i: list[float]) -> None:
    gs = np.asarray(g) + 3e3  # every genuine above every impostor
    assert eer(genuine=gs, impostor=i) == 0.0
    assert fnmr_at_fmr(genuine=gs, impostor=i, fmr=0.0) == 0.0
    assert auc(genuine=gs, impostor=i) == 1.0


@given(g=scores, i=scores)
@settings(max_examples=150, deadline=None)
def test_swapping_labels_mirrors_the_curve(g: list[float], i: list[float]) -> None:
    a = eer(genuine=g, impostor=i)
    b = eer(genuine=np.negative(i), impostor=np.negative(g))
    assert a == pytest.approx(b, abs=1e-9)
    assert 0.0 <= a <= 1.0
    assert auc(genuine=g, impostor=i) + auc(genuine=i, impostor=g) == pytest.approx(1.0)


@given(x=scores)
@settings(max_examples=100, deadline=None)
def test_identical_distributions_give_half(x: list[float]) -> None:
    assert eer(genuine=x, impostor=x) == pytest.approx(0.5, abs=1e-9)


def test_gaussian_eer_matches_theory() -> None:
    rng = np.random.default_rng(1)
    g, i = rng.normal(1, 1, 40000), rng.normal(-1, 1, 40000)
    assert eer(genuine=g, impostor=i) == pytest.approx(norm.cdf(-1), abs=0.006)
    # FNMR at FMR 1%: threshold at the 99th impostor percentile
    assert fnmr_at_fmr(genuine=g, impostor=i, fmr=0.01) == pytest.approx(norm.cdf(norm.ppf(0.99) - 2), abs=0.01)


def test_roc_endpoints_and_threshold_semantics() -> None:
    thr, fmr, fnmr = roc(genuine=[3, 4], impostor=[1, 2])
    assert (fmr[0], fnmr[0]) == (0.0, 1.0) and (fmr[-1], fnmr[-1]) == (1.0, 0.0)
    assert np.all(np.diff(thr) < 0)
    assert rates_at(genuine=[3, 4], impostor=[1, 2], threshold=3) == (0.0, 0.0)
    t = threshold_at_fmr(impostor=[1, 2, 3, 4], fmr=0.25)
    assert rates_at(genuine=[5], impostor=[1, 2, 3, 4], threshold=t)[0] <= 0.25


def test_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="genuine"):
        eer(genuine=[], impostor=[1.0])
    with pytest.raises(ValueError, match="impostor"):
        eer(genuine=[1.0], impostor=[np.nan])
    with pytest.raises(TypeError):
        eer([1.0], [0.0])  # type: ignore[misc]  # keyword-only by design


def test_summary_and_per_subject(tmp_path) -> None:
    rng = np.random.default_rng(0)
    g = rng.normal(1, 1, 200)
    i = rng.normal(-1, 1, 400)
    s = summarize(genuine=g, impostor=i, genuine_subject=np.repeat([1, 2], 100), impostor_subject=np.repeat([1, 2], 200))
    assert 0.05 < s.eer < 0.3 and 0.05 < s.eer_mean_per_subject < 0.3
    assert s.n_genuine == 200 and s.n_impostor == 400
    assert s.fnmr_at_fmr_1pct is not None and s.fnmr_at_fmr_1pct >= s.eer * 0.5
    out = tmp_path / "det.png"
    plot_det({"a": (g, i)}, str(out))
    assert out.stat().st_size > 5000


def test_an_unmeasurable_operating_point_is_reported_as_none() -> None:
    """50 impostors cannot show an FMR of 1 %: the FNMR there would read optimistically."""
    rng = np.random.default_rng(0)
    s = summarize(genuine=rng.normal(1, 1, 500), impostor=rng.normal(-1, 1, 50))
    assert s.fnmr_at_fmr_1pct is None and s.fnmr_at_fmr_0_1pct is None and s.fnmr_at_fmr_0_01pct is None
    s = summarize(genuine=rng.normal(1, 1, 500), impostor=rng.normal(-1, 1, 100))
    assert s.fnmr_at_fmr_1pct is not None and s.fnmr_at_fmr_0_1pct is None


@pytest.mark.parametrize("fmr", [-0.01, 1.5, float("nan"), float("inf")])
def test_a_target_fmr_outside_zero_to_one_is_refused(fmr: float) -> None:
    """A negative rate indexed from the far end (a threshold accepting 99 % of impostors)."""
    with pytest.raises(ValueError, match="fmr: a rate between 0 and 1"):
        threshold_at_fmr(impostor=np.arange(100.0), fmr=fmr)
    with pytest.raises(ValueError, match="fmr"):
        fnmr_at_fmr(genuine=[1.0], impostor=np.arange(100.0), fmr=fmr)


def test_at_an_fmr_of_one_every_score_is_accepted() -> None:
    assert fnmr_at_fmr(genuine=[0.0, 5.0, 6.0], impostor=[1.0, 2.0, 3.0], fmr=1.0) == 0.0
    assert rates_at(genuine=[0.0], impostor=[1.0, 2.0], threshold=threshold_at_fmr(impostor=[1.0, 2.0], fmr=1.0)) == (1.0, 0.0)


@pytest.mark.parametrize("threshold", [float("nan"), np.float64("nan"), "0.5", None])
def test_a_threshold_that_is_no_number_is_refused_not_read_as_perfect(threshold: object) -> None:
    # a NaN threshold compared false everywhere: FMR 0 and FNMR 0, a flawless-looking system
    with pytest.raises(ValueError, match="threshold"):
        rates_at(genuine=[0.9, 0.8], impostor=[0.1, 0.95], threshold=threshold)  # type: ignore[arg-type]
    assert rates_at(genuine=[0.9, 0.8], impostor=[0.1, 0.95], threshold=float("inf")) == (0.0, 1.0)


def test_plain_lists_and_mismatched_subject_lists() -> None:
    from evaluation.metrics import measurable_fnmr

    assert measurable_fnmr(genuine=[0.9, 0.2], impostor=[0.1] * 100, fmr=0.01) == 0.0
    with pytest.raises(ValueError, match="impostor_subject: one subject per impostor score"):
        summarize(genuine=[0.9, 0.8], impostor=[0.1, 0.2, 0.3], genuine_subject=[1, 1], impostor_subject=[1, 1])
