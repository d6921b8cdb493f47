"""Verification metrics: EER, FMR/FNMR, FNMR at fixed FMR, AUC, DET curves.

Conventions (one for the whole project): scores are "higher is more genuine"; every function
takes keyword-only ``genuine=`` and ``impostor=`` arrays, so argument order can never be
swapped; nothing loops over thresholds in Python.

>>> round(eer(genuine=[0.9, 0.8, 0.7], impostor=[0.1, 0.2, 0.3]), 6)
0.0
>>> round(eer(genuine=[0.1, 0.2, 0.3], impostor=[0.9, 0.8, 0.7]), 6)
1.0
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

FMR_TARGETS = (1e-2, 1e-3, 1e-4)


def _clean(name: str, x: ArrayLike) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"{name}: no scores")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: scores must be finite")
    return a


def roc(*, genuine: ArrayLike, impostor: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Operating points for every distinct threshold, accepting when ``score >= threshold``.

    Returns ``(thresholds, fmr, fnmr)`` with thresholds decreasing; the first point
    (threshold +inf) accepts nobody (fmr 0, fnmr 1), the last accepts everybody.
    """
    g = _clean("genuine", genuine)
    i = _clean("impostor", impostor)
    scores = np.concatenate([g, i])
    labels = np.concatenate([np.ones(g.size, bool), np.zeros(i.size, bool)])
    order = np.argsort(-scores, kind="mergesort")
    s, lab = scores[order], labels[order]
    tp = np.cumsum(lab)
    fp = np.cumsum(~lab)
    last = np.r_[s[1:] != s[:-1], True]  # keep the last index of each run of tied scores
    thr = np.r_[np.inf, s[last]]
    fmr = np.r_[0.0, fp[last] / i.size]
    fnmr = np.r_[1.0, 1.0 - tp[last] / g.size]
    return thr, fmr, fnmr


def eer(*, genuine: ArrayLike, impostor: ArrayLike) -> float:
    """Equal error rate: where the interpolated FMR and FNMR curves cross.

    >>> eer(genuine=[1, 2, 3, 4], impostor=[1, 2, 3, 4])
    0.5
    """
    _, fmr, fnmr = roc(genuine=genuine, impostor=impostor)
    d = fnmr - fmr  # decreasing from 1 to -1
    k = int(np.flatnonzero(d <= 0)[0])
    if d[k] == 0 or k == 0:
        return float(fmr[k])
    # linear interpolation between points k-1 (d>0) and k (d<=0)
    w = d[k - 1] / (d[k - 1] - d[k])
    return float(fmr[k - 1] + w * (fmr[k] - fmr[k - 1]))


def rates_at(*, genuine: ArrayLike, impostor: ArrayLike, threshold: float) -> tuple[float, float]:
    """(FMR, FNMR) when accepting scores ``>= threshold``; a NaN threshold is refused (it would read 0 and 0)."""
    if not isinstance(threshold, int | float | np.floating | np.integer) or np.isnan(threshold):
        raise ValueError(f"threshold: a number (+-inf allowed), not {threshold!r}")
    g = _clean("genuine", genuine)
    i = _clean("impostor", impostor)
    return float(np.mean(i >= threshold)), float(np.mean(g < threshold))


def threshold_at_fmr(*, impostor: ArrayLike, fmr: float) -> float:
    """Smallest threshold whose FMR does not exceed `fmr` (computed from impostor scores only).

    `fmr` is a rate in [0, 1]; at 1 every score is accepted (the threshold is -inf).
    """
    if not (isinstance(fmr, int | float | np.floating | np.integer) and 0.0 <= float(fmr) <= 1.0):
        raise ValueError(f"fmr: a rate between 0 and 1, not {fmr!r}")
    i = np.sort(_clean("impostor", impostor))[::-1]
    # number of impostors we may accept; the tolerance keeps a product like 0.29 * 100 = 28.999... at 29
    k = int(np.floor(fmr * i.size + 1e-9))
    if k >= i.size:
        return float("-inf")
    # accept strictly above the (k+1)-th highest impostor score
    return float(np.nextafter(i[k], np.inf))


def fnmr_at_fmr(*, genuine: ArrayLike, impostor: ArrayLike, fmr: float) -> float:
    """FNMR at the threshold where FMR first drops to `fmr` or below.

    With fewer than ``1/fmr`` impostor trials the operating point cannot be measured: the
    result is then the FNMR at an empirical FMR of 0, whose true FMR is about 1/(n+1), above
    the target, so it is biased low. Reports use `measurable_fnmr`, which gives None then.
    """
    t = threshold_at_fmr(impostor=impostor, fmr=fmr)
    return rates_at(genuine=genuine, impostor=impostor, threshold=t)[1]


def measurable_fnmr(*, genuine: ArrayLike, impostor: ArrayLike, fmr: float) -> float | None:
    """`fnmr_at_fmr`, or None when there are fewer than 1/fmr impostor trials to measure it with."""
    if np.size(impostor) * fmr < 1.0 - 1e-9:
        return None
    return fnmr_at_fmr(genuine=genuine, impostor=impostor, fmr=fmr)


def auc(*, genuine: ArrayLike, impostor: ArrayLike) -> float:
    """Area under the ROC curve = P(genuine score > impostor score), ties counted half."""
    g = _clean("genuine", genuine)
    i = _clean("impostor", impostor)
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([g, i]))
    return float((ranks[: g.size].sum() - g.size * (g.size + 1) / 2) / (g.size * i.size))


@dataclass(frozen=True)
class Summary:
    """Every figure a bench row reports."""

    eer: float
    eer_mean_per_subject: float
    eer_sd_per_subject: float
    #: None where the impostor trials are too few (under 1/FMR) to measure the operating point
    fnmr_at_fmr_1pct: float | None
    fnmr_at_fmr_0_1pct: float | None
    fnmr_at_fmr_0_01pct: float | None
    auc: float
    n_genuine: int
    n_impostor: int


def per_subject_eer(
    *, genuine: ArrayLike, impostor: ArrayLike, genuine_subject: ArrayLike, impostor_subject: ArrayLike
) -> dict[object, float]:
    """EER of each template subject with at least one genuine and one impostor score."""
    g, i = np.asarray(genuine, float), np.asarray(impostor, float)
    gs, is_ = np.asarray(genuine_subject), np.asarray(impostor_subject)
    for name, scores, subjects in (("genuine", g, gs), ("impostor", i, is_)):
        if subjects.shape != scores.shape:
            raise ValueError(f"{name}_subject: one subject per {name} score ({scores.size}), got shape {subjects.shape}")
    out: dict[object, float] = {}
    for s in np.unique(gs):
        gm, im = g[gs == s], i[is_ == s]
        if gm.size and im.size:
            out[s.item() if hasattr(s, "item") else s] = eer(genuine=gm, impostor=im)
    return out


def summarize(
    *,
    genuine: ArrayLike,
    impostor: ArrayLike,
    genuine_subject: ArrayLike | None = None,
    impostor_subject: ArrayLike | None = None,
) -> Summary:
    """Pooled metrics, plus mean/sd of per-subject EER when template subjects are given."""
    g, i = _clean("genuine", genuine), _clean("impostor", impostor)
    if genuine_subject is not None and impostor_subject is not None:
        per = np.array(list(per_subject_eer(genuine=g, impostor=i, genuine_subject=genuine_subject,
                                            impostor_subject=impostor_subject).values()))
        mean, sd = (float(per.mean()), float(per.std(ddof=1)) if per.size > 1 else 0.0) if per.size else (np.nan, np.nan)
    else:
        mean, sd = float("nan"), float("nan")
    return Summary(
        eer=eer(genuine=g, impostor=i),
        eer_mean_per_subject=mean,
        eer_sd_per_subject=sd,
        fnmr_at_fmr_1pct=measurable_fnmr(genuine=g, impostor=i, fmr=1e-2),
        fnmr_at_fmr_0_1pct=measurable_fnmr(genuine=g, impostor=i, fmr=1e-3),
        fnmr_at_fmr_0_01pct=measurable_fnmr(genuine=g, impostor=i, fmr=1e-4),
        auc=auc(genuine=g, impostor=i),
        n_genuine=int(g.size),
        n_impostor=int(i.size),
    )


def det_points(*, genuine: ArrayLike, impostor: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(fmr, fnmr) operating points for a DET curve."""
    _, fmr, fnmr = roc(genuine=genuine, impostor=impostor)
    return fmr, fnmr


def plot_det(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]] | Sequence[tuple[str, ArrayLike, ArrayLike]],
    path: str,
    *,
    title: str = "DET",
) -> None:
    """Write a DET plot (normal-deviate axes, as in ISO/IEC 19795-1) of ``label -> (genuine, impostor)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    items: Iterable[tuple[str, ArrayLike, ArrayLike]]
    items = [(k, v[0], v[1]) for k, v in curves.items()] if isinstance(curves, Mapping) else curves
    ticks = np.array([0.0001, 0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8])
    lo, hi = 1e-4, 0.8
    items = list(items)
    wide = len(items) > 6
    fig, ax = plt.subplots(figsize=(10.5 if wide else 6.4, 6.0))
    cmap = plt.get_cmap("tab20" if len(items) > 10 else "tab10")
    colours = [cmap(i) for i in range(cmap.N)]
    styles = ["-", "--", ":", "-."]
    for k, (label, gen, imp) in enumerate(items):
        fmr, fnmr = det_points(genuine=gen, impostor=imp)
        x = norm.ppf(np.clip(fmr, lo / 2, 1 - 1e-9))
        y = norm.ppf(np.clip(fnmr, lo / 2, 1 - 1e-9))
        ax.plot(x, y, label=f"{label} (EER {eer(genuine=gen, impostor=imp):.3f})", lw=1.3,
                color=colours[k % len(colours)], ls=styles[(k // len(colours)) % len(styles)])
    t = norm.ppf(ticks)
    ax.set_xticks(t, [f"{v:g}" for v in ticks * 100], rotation=45)
    ax.set_yticks(t, [f"{v:g}" for v in ticks * 100])
    ax.set_xlim(norm.ppf(lo), norm.ppf(hi))
    ax.set_ylim(norm.ppf(lo), norm.ppf(hi))
    ax.plot([norm.ppf(lo), norm.ppf(hi)], [norm.ppf(lo), norm.ppf(hi)], ls=":", c="grey", lw=0.8)
    ax.set_xlabel("False match rate (%)")
    ax.set_ylabel("False non-match rate (%)")
    ax.set_title(title)
    ax.grid(True, ls=":", lw=0.5)
    if wide:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
