"""`cadence bench gait`: pocket-phone gait verification on people the population models never saw.

Protocol: windows of 5 s and 10 s of walking (hop half a window) on the internal 25 Hz grid;
per evaluation subject the windows in the earliest 50% of walking time enrol and the windows
after it are probes; impostors are the other evaluation subjects' probes (zero effort).
Population models are trained only on the fold's training subjects (`ctx.folds("gait")`),
so ``--train-dir A --eval-dir B`` works for any phone in B (other rate, units, name).

Rows: ``gait-manhattan`` (one-class baseline); discriminant embeddings learned from the
training subjects with a per-user logistic regression against them and s-norm, on the
orientation-invariant blocks (``gait-lda-inv``), the phone's raw axes (``gait-lda-raw``) or
both (``gait-lda``): what each view costs and gains; ``gait-fusion`` (the three fused, our
best: `modalities.gait.train_scorer`), and evidence accumulation rows whose window is ``"<w> x3"``
(mean score of 3 consecutive windows of one walk: 2 windows' span, e.g. 20 s for 10 s).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from evaluation.bench import BenchContext, BenchError, BenchOutput, register

log = logging.getLogger(__name__)

ACCUMULATE = 3
QUICK_SUBJECTS = 16
#: methods fitted on the training recordings' own windows only, even when rate-augmented copies
#: are configured (`modalities.gait.data.AUGMENT_COPIES`, 0 by default): the one-class baseline
ORIGINAL_ONLY = {"gait-manhattan"}


def _methods() -> dict[str, Any]:
    from modalities.gait import GaitFusion, GaitLDA, GaitManhattan
    from modalities.gait.scorers import FUSION_VIEWS

    def view(name: str) -> GaitLDA:
        blocks, n_pca = FUSION_VIEWS[name]
        return GaitLDA(template="logreg", blocks=blocks, n_pca=n_pca)

    return {
        "gait-manhattan": lambda: GaitManhattan(),
        "gait-lda-inv": lambda: view("invariant"),
        "gait-lda-raw": lambda: view("raw"),
        "gait-lda": lambda: view("all"),
        "gait-fusion": lambda: GaitFusion(),
    }


@register("gait", "Pocket-phone gait EER on unseen subjects (5 s / 10 s windows, any phone and rate)")
def bench_gait(ctx: BenchContext) -> BenchOutput:
    from evaluation.datasets import loader_warnings
    from evaluation.protocols import ScoreTable
    from modalities.gait import FEATURE_DIM, FEATURE_VERSION, WINDOWS, moving_mean
    from modalities.gait.data import AUGMENT_COPIES, AUGMENT_MIN_HOP_S, load_training_windows, load_windows, stack
    from modalities.gait.signal import CUTOFF_HZ, RATE

    folds = ctx.folds("gait", k=2, max_subjects=QUICK_SUBJECTS)
    if ctx.quick:
        folds = folds[:1]
    methods = _methods()
    table = ScoreTable()
    timing: dict[str, float] = {"features_s": 0.0, "fit_s": 0.0, "score_s": 0.0}
    train_all: set[int] = set()
    eval_all: set[int] = set()
    n_windows: dict[str, int] = {}
    #: evaluation subjects a window length could not use (too little walking before or after the cut)
    skipped: dict[str, set[int]] = {label: set() for label in WINDOWS}
    for fold in folds:
        # windows come from a feature cache that skips the loader: its data caveats are asked for
        ctx.note(*loader_warnings(fold.train_dir, "gait", fold.train_subjects),
                 *loader_warnings(fold.eval_dir, "gait", fold.eval_subjects))
        for label, secs in WINDOWS.items():
            t0 = time.perf_counter()
            train, X, y = load_training_windows(fold.train_dir, fold.train_subjects, secs, progress=ctx.progress)
            X0, y0 = stack(train)
            evals = load_windows(fold.eval_dir, fold.eval_subjects, secs, progress=ctx.progress)
            timing["features_s"] += time.perf_counter() - t0
            enrol: dict[int, np.ndarray] = {}
            probes: dict[int, np.ndarray] = {}
            for s, sw in evals.items():
                e, t = sw.chronological(0.5)
                if e.size >= 2 and t.size >= 1:
                    enrol[s], probes[s] = sw.X[e], sw.X[t]
            if len(enrol) < 2:
                raise BenchError(f"fold {fold.index}: fewer than 2 evaluation subjects with {label} windows "
                                 f"before and after the enrolment cut in {fold.eval_dir}")
            if X0.shape[0] == 0 or np.unique(y0).size < 3:
                raise BenchError(f"fold {fold.index}: need {label} windows of 3+ training subjects in {fold.train_dir}")
            train_all.update(int(s) for s in np.unique(y))
            eval_all.update(enrol)
            skipped[label].update(int(s) for s in fold.eval_subjects if s not in enrol)
            n_windows[label] = n_windows.get(label, 0) + X0.shape[0] + sum(len(p) + len(enrol[s]) for s, p in probes.items())
            for name, make in methods.items():
                t0 = time.perf_counter()
                scorer = make().fit(X0, y0) if name in ORIGINAL_ONLY else make().fit(X, y)
                templates = {s: scorer.enroll(E) for s, E in enrol.items()}
                timing["fit_s"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                for s, tmpl in templates.items():
                    for p, P in probes.items():
                        sc = scorer.compare(tmpl, P)
                        table.add(method=name, window=label, modality="gait", template_subject=s,
                                  probe_subject=p, scores=sc)
                        acc = moving_mean(sc, ACCUMULATE)
                        if acc.size:
                            table.add(method=name, window=f"{label} x{ACCUMULATE}", modality="gait",
                                      template_subject=s, probe_subject=p, scores=acc)
                timing["score_s"] += time.perf_counter() - t0
    never = ctx.note_skipped(skipped, eval_all, "seconds of walking")  # a short recording left out was silent
    protocol = {
        "windows": {k: {"seconds": v, "hop_seconds": v / 2} for k, v in WINDOWS.items()},
        "accumulated_windows": {f"{k} x{ACCUMULATE}": f"mean score of {ACCUMULATE} consecutive {k} windows "
                                f"(hop {v / 2:g} s, spans {v * (1 + (ACCUMULATE - 1) / 2):g} s of walking)"
                                for k, v in WINDOWS.items()},
        "enrolment": "earliest 50% of each subject's walking time; windows after the cut are probes",
        "impostors": "zero-effort: other evaluation subjects' probe windows",
        "population_models": "trained on the fold's training subjects only (subject-disjoint)",
        "rate_augmentation": {"copies": AUGMENT_COPIES, "hop_seconds": f"max(window, {AUGMENT_MIN_HOP_S:g})",
                              "recipe": "modalities.gait.augment.random_phone: 20-50 Hz, nearest sample, "
                                        "half with anti-alias filter, clock jitter up to 4 ms",
                              "not_used_by": sorted(ORIGINAL_ONLY)},
        "folds": [{"index": f.index, "train_dir": str(f.train_dir), "eval_dir": str(f.eval_dir),
                   "n_train": len(f.train_subjects), "n_eval": len(f.eval_subjects)} for f in folds],
        "signal": {"internal_rate_hz": RATE, "lowpass_hz": CUTOFF_HZ, "walking_detection": True},
        "feature_version": FEATURE_VERSION,
        "feature_dim": FEATURE_DIM,
        "skipped_subjects": never,
        "quick": ctx.quick,
    }
    return BenchOutput(
        protocol=protocol,
        train_subjects=sorted(train_all),
        eval_subjects=sorted(eval_all),
        scores=table,
        extra={"timing": {k: round(v, 2) for k, v in timing.items()}, "n_windows": n_windows},
        det_groups=[(m, w) for m in ("gait-manhattan", "gait-fusion") for w in ("10 s", f"10 s x{ACCUMULATE}")],
    )
