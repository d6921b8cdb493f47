"""`cadence bench touch`: BB-MAS phone swipes and taps, one-class vs population-trained scorers.

Protocol: population models are trained on the fold's training subjects only (2-fold by
subject in --data-dir, or --train-dir / --eval-dir). Each evaluation subject enrols on the
earliest half of their swipes (taps) and is tested on the rest, in non-overlapping windows of
1 or 5 strokes scored by the mean per-stroke score. Impostors are the other evaluation
subjects' test windows (zero effort); rows whose method ends in "-same-device" keep only
impostors holding the same phone model as the template's owner.

Window "5 swipes, adapted" (`touch-fused` only) is a different protocol, reported beside the
static one and never instead of it: the same test windows, but each owner window is a
confirmed transaction that adapts its template after it is scored, under the server's rules
for controlled adaptation (`evaluation.protocols.adaptive_trials`): only a window whose touch
evidence matched in the decision (calibrated LLR > 0, `_touch_matched`), at most
`ADAPT_MAX_WINDOWS` of its strokes, and the enrolment cut as the server cuts it
(`server.services.enrolment.evicted`).
"""

from __future__ import annotations

from collections.abc import Callable
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


def _touch_matched(tr: dict[int, tuple[Any, Any, str]], seed: int) -> Callable[[float], bool]:
    """Whether a 5-swipe window's `touch-fused` score is a touch `match` in a decision, as on the server.

    The server's reason code for a modality is `match` or `strong_match` when its calibrated
    LLR is above 0 (`fusion.policy.decide`), and only those windows adapt
    (`server.services.enrolment.MATCHED`). Its touch calibrator is a `LogisticCalibrator`
    fitted on scores of training people by a model that did not train on them, as `cadence
    bench fusion` fits it: here the fold's training subjects are split in two seeded halves,
    `touch-fused` is trained on one and scores the other's later-half 5-swipe windows
    against their earliest-half templates (owners and impostors). The evaluation subjects
    choose nothing.
    """
    import numpy as np

    from evaluation.protocols import chronological_split
    from fusion.calibration import LogisticCalibrator
    from fusion.policy import ModalityEvidence, decide, default_policy
    from modalities.touch import scorers as S
    from server.services.enrolment import MATCHED

    label, k = ADAPTED_WINDOW
    usable = sorted(s for s, v in tr.items() if len(v[0]) >= MIN_STROKES)
    perm = np.random.default_rng(seed).permutation(usable)
    cut = len(perm) - len(perm) // 2  # the larger half trains
    half_a, half_b = sorted(perm[:cut].tolist()), sorted(perm[cut:].tolist())
    if len(half_a) < MIN_TRAIN_SUBJECTS or len(half_b) < 2:
        raise BenchError(f"window {label!r}: calibrating touch needs at least {MIN_TRAIN_SUBJECTS + 2} training "
                         f"subjects with {MIN_STROKES} or more swipes (an inner split); {len(usable)} have them")
    model = S.FusedTouch(seed=seed).fit(np.vstack([tr[s][0] for s in half_a]),
                                        np.concatenate([[s] * len(tr[s][0]) for s in half_a]))
    splits = {s: chronological_split(len(tr[s][0])) for s in half_b}
    genuine: list[Any] = []
    impostor: list[Any] = []
    for s in half_b:
        tmpl = model.enroll(tr[s][0][splits[s][0]])
        for p in half_b:
            sc = S.accumulate(model.compare(tmpl, tr[p][0][splits[p][1]]), k)
            (genuine if p == s else impostor).append(sc)
    try:
        cal = LogisticCalibrator().fit(genuine=np.concatenate(genuine), impostor=np.concatenate(impostor))
    except ValueError as exc:
        raise BenchError(f"window {label!r}: touch calibration on training subjects {half_b}: {exc}") from None
    policy = default_policy()

    def matched(score: float) -> bool:
        ev = ModalityEvidence("touch", score, llr=float(cal.llr(np.array([score]))[0]))
        d = decide([ev], amount=0.0, tiers=policy.tiers, min_quality=policy.min_quality)
        return any(r.modality == "touch" and r.code in MATCHED for r in d.reasons)

    return matched


def _adapted(table: Any, scorer: Any, splits: dict[int, tuple[Any, Any]], device: dict[int, str],
             matched: Callable[[float], bool]) -> dict[str, int]:
    """`scorer` under `adaptive_trials` with the server's rules: returns how many owner windows adapted, of how many."""
    import numpy as np

    from evaluation.protocols import adaptive_trials
    from modalities.touch.scorers import accumulate
    from server.services.enrolment import ADAPT_MAX_WINDOWS, evicted

    label, k = ADAPTED_WINDOW
    n = {"owner_windows": 0, "adapted_windows": 0}

    def adapts(score: float) -> bool:
        ok = matched(score)
        n["owner_windows"] += 1
        n["adapted_windows"] += ok
        return ok

    trials = adaptive_trials(enroll=scorer.enroll, window_scores=lambda t, X: accumulate(scorer.compare(t, X), k),
                             enrolment={s: v[0] for s, v in splits.items()}, tests={s: v[1] for s, v in splits.items()},
                             k=k, adapts=adapts, max_adapt=ADAPT_MAX_WINDOWS, evict=evicted)
    for (s, p), sc in trials.items():
        if sc.size == 0:
            continue
        for name in (scorer.name, f"{scorer.name}-same-device") if p == s or device[p] == device[s] else (scorer.name,):
            table.add(method=name, window=label, modality="touch", template_subject=s, probe_subject=p, scores=sc,
                      probe_index=np.arange(sc.size))
    return n


@register("touch", "Touch strokes (BB-MAS phone): 1/5 swipes and taps, all and same-phone-model impostors")
def bench_touch(ctx: BenchContext) -> BenchOutput:
    import numpy as np

    from evaluation.protocols import ScoreTable, chronological_split
    from modalities.touch import scorers as S
    from server.services.enrolment import ADAPT_MAX_WINDOWS, MAX_ADAPTED_WINDOWS, MAX_ENROL_WINDOWS

    folds = ctx.folds("touch", max_subjects=QUICK_SUBJECTS)
    table = ScoreTable()
    one_class: list[S._TouchScorer] = [S.TouchManhattan(), S.TouchKNN(), S.TouchOneClassSVM()]
    windows = {"swipe": (("1 swipe", 1), ("5 swipes", 5)), "tap": (("1 tap", 1), ("5 taps", 5))}
    train_all: set[int] = set()
    eval_all: set[int] = set()
    skipped: set[int] = set()
    adapted_counts: dict[str, int] = {}
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
                try:
                    matched = _touch_matched(tr, ctx.seed + fold.index)
                except BenchError as exc:  # too few training people: the static rows still stand
                    ctx.note(f"fold {fold.index}: {exc}; its adapted rows are left out")
                    continue
                counts = _adapted(table, fused, splits, {s: v[2] for s, v in ev.items()}, matched)
                for key, c in counts.items():
                    adapted_counts[key] = adapted_counts.get(key, 0) + c
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
        "adapted": f"window {ADAPTED_WINDOW[0]!r} (touch-fused): each owner test window is a confirmed transaction "
                   "scored by the template as it stood before it; it adapts the template only if touch matched "
                   "(LLR > 0 by a calibrator fitted on an inner split of the training subjects, "
                   f"fusion.policy.decide), with at most {ADAPT_MAX_WINDOWS} strokes, the enrolment cut as the server "
                   f"cuts it ({MAX_ENROL_WINDOWS} kept, adapted ones at most {MAX_ADAPTED_WINDOWS}: "
                   "server.services.enrolment.evicted); impostor windows never adapt and meet the template state of "
                   "the same relative time (evaluation.protocols.adaptive_trials)",
        "adapted_counts": adapted_counts,
        "impostors": "zero-effort: other evaluation subjects' test windows; '-same-device' rows: same phone model only",
        "multitouch": "strokes with a second pointer are dropped",
        "quick": ctx.quick,
        "skipped_subjects": sorted(skipped),
    }
    return BenchOutput(protocol=protocol, train_subjects=sorted(train_all), eval_subjects=sorted(eval_all),
                       scores=table)
