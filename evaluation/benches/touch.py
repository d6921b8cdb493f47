"""`cadence bench touch`: BB-MAS phone swipes and taps, one-class vs population-trained scorers.

Protocol: population models are trained on the fold's training subjects only (2-fold by
subject in --data-dir, or --train-dir / --eval-dir). Each evaluation subject enrols on the
earliest half of their swipes (taps) and is tested on the rest, in non-overlapping windows of
1 or 5 strokes scored by the mean per-stroke score. Impostors are the other evaluation
subjects' test windows (zero effort); rows whose method ends in "-same-device" keep only
impostors holding the same phone model as the template's owner.

Window "5 swipes, adapted" (`touch-fused` only) is a different protocol, reported beside the
static one and never instead of it: the same test windows, but each owner's template is
re-enrolled with every test window after scoring it, as the deployed app re-enrols the
evidence of approved transactions (`evaluation.protocols.adaptive_trials`).
"""

from __future__ import annotations

from typing import Any

from evaluation.bench import BenchContext, BenchError, BenchOutput, register

#: subjects of `--quick`, which runs in the test suite (the whole suite must stay < 10 min on 2 cores)
QUICK_SUBJECTS = 12
#: strokes of a kind (swipes or taps) an evaluation subject needs to be enrolled and tested on it
MIN_STROKES = 10
#: training subjects with strokes of a kind that the population models need (`PLDATouch` needs 3)
MIN_TRAIN_SUBJECTS = 3


def _features(data_dir: Any, subjects: tuple[int, ...], progress: bool) -> dict[int, tuple[Any, Any, str]]:
    """Map subject -> (swipe features, tap features, device) for the subjects of one folder."""
    from evaluation.datasets import load_bbmas_touch
    from modalities.touch.features import stream_features

    out = {}
    for s, stream in load_bbmas_touch(data_dir, subjects, progress=progress).items():
        X, tap, _ = stream_features(stream)
        out[s] = (X[~tap], X[tap], stream.device)
    return out


#: the adapted protocol's window (a label of its own: the issue's "5 swipes" rows stay static)
ADAPTED_WINDOW = ("5 swipes, adapted", 5)
#: strokes an adapted enrolment keeps, as the server keeps windows (`server.services.enrolment.MAX_ENROL_WINDOWS`)
ADAPTED_KEEP_LAST = 200


def _adapted(table: Any, scorer: Any, splits: dict[int, tuple[Any, Any]], device: dict[int, str]) -> None:
    """`scorer` under `adaptive_trials`: templates re-enrolled with their owner's scored test windows."""
    import numpy as np

    from evaluation.protocols import adaptive_trials
    from modalities.touch.scorers import accumulate

    label, k = ADAPTED_WINDOW
    trials = adaptive_trials(enroll=scorer.enroll, window_scores=lambda t, X: accumulate(scorer.compare(t, X), k),
                             enrolment={s: v[0] for s, v in splits.items()}, tests={s: v[1] for s, v in splits.items()},
                             k=k, keep_last=ADAPTED_KEEP_LAST)
    for (s, p), sc in trials.items():
        if sc.size == 0:
            continue
        for name in (scorer.name, f"{scorer.name}-same-device") if p == s or device[p] == device[s] else (scorer.name,):
            table.add(method=name, window=label, modality="touch", template_subject=s, probe_subject=p, scores=sc,
                      probe_index=np.arange(sc.size))


@register("touch", "Touch strokes (BB-MAS phone): 1/5 swipes and taps, all and same-phone-model impostors")
def bench_touch(ctx: BenchContext) -> BenchOutput:
    import numpy as np

    from evaluation.protocols import ScoreTable, chronological_split
    from modalities.touch import scorers as S

    folds = ctx.folds("touch", max_subjects=QUICK_SUBJECTS)
    table = ScoreTable()
    one_class: list[S._TouchScorer] = [S.TouchManhattan(), S.TouchKNN(), S.TouchOneClassSVM()]
    windows = {"swipe": (("1 swipe", 1), ("5 swipes", 5)), "tap": (("1 tap", 1), ("5 taps", 5))}
    train_all: set[int] = set()
    eval_all: set[int] = set()
    skipped: set[int] = set()
    for fold in folds:
        tr = _features(fold.train_dir, fold.train_subjects, ctx.progress)
        ev = _features(fold.eval_dir, fold.eval_subjects, ctx.progress)
        train_all |= set(tr)
        for kind, col in (("swipe", 0), ("tap", 1)):
            n_train = sum(1 for s in tr if len(tr[s][col]))
            if n_train < MIN_TRAIN_SUBJECTS:
                raise BenchError(f"fold {fold.index}: the touch population models need {kind}s of at least "
                                 f"{MIN_TRAIN_SUBJECTS} training subjects; {n_train} in {fold.train_dir} have any")
            Xtr = [tr[s][col] for s in tr if len(tr[s][col])]
            ytr = np.concatenate([[s] * len(tr[s][col]) for s in tr if len(tr[s][col])])
            lr = S.BackgroundLR(seed=ctx.seed).fit(np.vstack(Xtr), ytr)
            qlr = S.QuadBackgroundLR(seed=ctx.seed)
            qlr.set_state(lr.get_state())  # same standardiser and background: only enrolment differs
            plda = S.PLDATouch().fit(np.vstack(Xtr), ytr)
            fused = S.FusedTouch(seed=ctx.seed)
            fused.plda, fused.lr = plda, qlr  # same fits, no second training
            population: list[S._TouchScorer] = [lr, qlr, plda, fused]
            splits = {}  # subject -> (enrolment strokes, test strokes), shared by every scorer
            for s, v in ev.items():
                X = np.asarray(v[col])
                if len(X) < MIN_STROKES:  # too few strokes of this kind to enrol and test
                    continue
                en, te = chronological_split(len(X))
                splits[s] = (X[en], X[te])
            eval_all |= set(splits)  # scored people only
            for scorer in one_class + population:
                templates = {s: scorer.enroll(E) for s, (E, _) in splits.items()}
                probes = {s: T for s, (_, T) in splits.items()}
                for s, tmpl in templates.items():
                    for p, P in probes.items():
                        per_stroke = scorer.compare(tmpl, P)
                        for label, k in windows[kind]:
                            sc = S.accumulate(per_stroke, k)
                            if sc.size == 0:
                                continue
                            idx = np.arange(sc.size)
                            table.add(method=scorer.name, window=label, modality="touch", template_subject=s,
                                      probe_subject=p, scores=sc, probe_index=idx)
                            if p == s or ev[p][2] == ev[s][2]:
                                table.add(method=f"{scorer.name}-same-device", window=label, modality="touch",
                                          template_subject=s, probe_subject=p, scores=sc, probe_index=idx)
            if kind == "swipe":
                _adapted(table, fused, splits, {s: v[2] for s, v in ev.items()})
        skipped |= set(ev) - eval_all
    skipped -= eval_all
    if skipped:
        ctx.note(f"evaluation subjects skipped (fewer than {MIN_STROKES} swipes and fewer than {MIN_STROKES} taps "
                 f"to enrol and test): {sorted(skipped)}")
    protocol = {
        "dataset": "BB-MAS HandPhone touch",
        "folds": len(folds),
        "split": "subject-disjoint population models (ctx.folds('touch'))",
        "enrolment": "earliest half of each subject's swipes (taps)",
        "test": "later half, non-overlapping windows of 1 or 5 strokes, score = mean per-stroke score",
        "adapted": f"window {ADAPTED_WINDOW[0]!r} (touch-fused): each owner's template re-enrolled with each of its "
                   "test windows after scoring it (confirmed evidence); impostor windows never adapt and meet the "
                   "template state of the same relative time (evaluation.protocols.adaptive_trials)",
        "impostors": "zero-effort: other evaluation subjects' test windows; '-same-device' rows: same phone model only",
        "multitouch": "strokes with a second pointer are dropped",
        "quick": ctx.quick,
        "skipped_subjects": sorted(skipped),
    }
    return BenchOutput(protocol=protocol, train_subjects=sorted(train_all), eval_subjects=sorted(eval_all),
                       scores=table)
