"""Keystroke benches: `keystroke-cmu` (Killourhy & Maxion's protocol) and `keystroke` (BB-MAS).

keystroke-cmu, exactly as DSN 2009: for each of the 51 subjects, enrol on repetitions 1-200,
genuine tests are repetitions 201-400, impostor tests the first 5 repetitions of every other
subject; the row's `eer` is the MEAN per-subject EER (sd in `eer_sd_per_subject`). Methods
that learn from other people use a 2-fold split by subject: trained on one half, evaluated on
the other with impostors from that half only.

keystroke: BB-MAS desktop typing cut into 50- and 100-key windows (hop half a window); each
evaluation subject enrols on windows of the earliest 50% of their keys and is tested on the
rest; impostors are the test windows of the other evaluation subjects; population models are
trained only on the fold's training subjects. Row `eer` is pooled over all trials.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evaluation.bench import BenchContext, BenchError, BenchOutput, register

CMU_WINDOW = ".tie5Roanl"
WINDOWS = {"50 keys": 50, "100 keys": 100}
#: CMU times have 0.1 ms resolution: a 1 ms spread floor only guards against exact zeros
CMU_MIN_SCALE = 1e-3


def _set_threads() -> None:
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        pass


def _learned_scorers() -> dict[str, Any]:
    from modalities.keystroke.learned import BackgroundSVMScorer, FusedScorer, LikelihoodRatioScorer

    return {"llr": LikelihoodRatioScorer(), "background-svm": BackgroundSVMScorer(), "fused": FusedScorer()}


def _one_class(min_scale: float | None = None) -> dict[str, Any]:
    from modalities.keystroke.detectors import DEFAULT_MIN_SCALE, ONE_CLASS

    return {name: cls(min_scale=min_scale or DEFAULT_MIN_SCALE) for name, cls in ONE_CLASS.items()}


# --------------------------------------------------------------------------- CMU

#: training subjects the population methods learn from (`modalities.keystroke.learned`: 3 or more)
MIN_TRAIN_SUBJECTS = 3
#: subjects a 2-fold split by subject needs so that each fold trains on `MIN_TRAIN_SUBJECTS` (the
#: smaller half trains one fold); each evaluation half then has the 2+ subjects impostors need
KFOLD_MIN_SUBJECTS = 2 * MIN_TRAIN_SUBJECTS
#: subjects keystroke-cmu needs: its population methods use that 2-fold split
CMU_MIN_SUBJECTS = KFOLD_MIN_SUBJECTS


def cmu_subject_ids(names: list[Any], where: Any = "CMU file") -> dict[Any, int]:
    """Integer id of each CMU subject name: its digits (``s002`` -> 2), else its index in `names`.

    Two names given one id (``s002`` and ``t002``, or a name without digits whose index is
    another's number) are a `DatasetError` naming both (and `where`, the file): one would silently
    replace the other.
    """
    from evaluation.datasets import DatasetError

    ids: dict[Any, int] = {}
    owner: dict[int, Any] = {}
    for i, s in enumerate(names):
        digits = "".join(ch for ch in str(s) if ch.isdigit())
        sid = int(digits) if digits else i
        if sid in owner:
            raise DatasetError(f"{where}: subjects {owner[sid]!r} and {s!r} both map to subject id {sid} "
                               "(ids are the digits of the name): rename one")
        ids[s], owner[sid] = sid, s
    return ids


def cmu_file(data_dir: Any) -> Any:
    """The CMU file of `data_dir` (for messages)."""
    from evaluation.datasets import PATTERNS, listing, modality_dir

    folder = modality_dir(data_dir, "cmu")
    return next((f for f in listing(folder) if PATTERNS["cmu"].match(f.name)), folder)


@register("keystroke-cmu", "CMU password typing, Killourhy & Maxion protocol: mean per-subject EER of each detector")
def bench_cmu(ctx: BenchContext) -> BenchOutput:
    from evaluation.datasets import DatasetError, cmu_feature_columns, load_cmu
    from evaluation.protocols import ScoreTable, subject_folds

    _set_threads()
    df = load_cmu(ctx.require_data_dir())
    path = cmu_file(ctx.require_data_dir())
    cols = cmu_feature_columns(df)
    names = sorted(df["subject"].unique(), key=str)
    ids = cmu_subject_ids(names, path)
    if len(names) < CMU_MIN_SUBJECTS:
        raise DatasetError(f"--data-dir: {path}: {len(names)} subject{'s' if len(names) != 1 else ''} "
                           f"({', '.join(map(str, names[:5]))}); keystroke-cmu needs at least {CMU_MIN_SUBJECTS} "
                           f"(its population methods train on one half of a 2-fold split by subject, at least "
                           f"{MIN_TRAIN_SUBJECTS} subjects)")
    data: dict[int, np.ndarray] = {}
    for s in names:
        rows = df[df["subject"] == s].sort_values(["sessionIndex", "rep"])
        data[ids[s]] = rows[cols].to_numpy(float)
    subjects = sorted(data)
    if ctx.quick:
        rng = np.random.default_rng(ctx.seed)
        subjects = sorted(int(s) for s in rng.choice(subjects, size=min(16, len(subjects)), replace=False))
    n_train, n_imp = 200, 5
    bad = [s for s in subjects if data[s].shape[0] < 2 * n_train]
    if bad:
        raise DatasetError(f"{path}: subjects {bad[:5]} have fewer than {2 * n_train} repetitions")

    table = ScoreTable()

    def trials(method: str, scorer: Any, pool: list[int]) -> None:
        for s in pool:
            tmpl = scorer.enroll(data[s][:n_train])
            table.add(method=method, window=CMU_WINDOW, modality="keystroke", template_subject=s,
                      probe_subject=s, scores=scorer.compare(tmpl, data[s][n_train:]))
            others = [o for o in pool if o != s]
            probes = np.vstack([data[o][:n_imp] for o in others])
            table.add(method=method, window=CMU_WINDOW, modality="keystroke", template_subject=s,
                      probe_subject=np.repeat(others, n_imp), scores=scorer.compare(tmpl, probes),
                      probe_index=np.tile(np.arange(n_imp), len(others)))

    for method, det in _one_class(CMU_MIN_SCALE).items():
        trials(method, det, subjects)
    folds = subject_folds(subjects, 2, ctx.seed)
    for tr, ev in folds:
        X = np.vstack([data[s] for s in tr])
        y = np.repeat(tr, [data[s].shape[0] for s in tr])
        for method, scorer in _learned_scorers().items():
            scorer.fit(X, y)
            trials(method, scorer, ev)

    return BenchOutput(
        protocol={
            "dataset": "CMU DSL-StrongPasswordData (.tie5Roanl)",
            "enrol": f"repetitions 1-{n_train} of each subject",
            "genuine": f"repetitions {n_train + 1}-400",
            "impostor": f"first {n_imp} repetitions of each other subject",
            "eer": "mean of per-subject EERs (sd in eer_sd_per_subject)",
            "population_methods": "2-fold by subject: trained on one half, evaluated on the other with impostors of that half only",
            "one_class_methods": sorted(_one_class()),
            "population_methods_names": ["llr", "background-svm", "fused"],
            "features": "31 CMU columns (H, DD, UD); learned methods use log H and log DD",
        },
        train_subjects=subjects,
        eval_subjects=subjects,
        scores=table,
        primary="mean_per_subject",
        extra={"folds": [{"train": tr, "eval": ev} for tr, ev in folds]},
    )


# --------------------------------------------------------------------------- BB-MAS


def _subject_windows(seq: Any, n_keys: int, enrol_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(enrolment, test) window matrices from the earliest / latest part of one recording."""
    from evaluation.protocols import chronological_split
    from modalities.keystroke.features import window_matrix

    a, b = chronological_split(len(seq), enrol_fraction)
    return window_matrix(seq[a], n_keys), window_matrix(seq[b], n_keys)


def _check_training_subjects(folds: list[Any]) -> None:
    """Refuse, before loading anything, folds with fewer training subjects than the population methods need."""
    for fold in folds:
        n = len(fold.train_subjects)
        if n >= MIN_TRAIN_SUBJECTS:
            continue
        if fold.train_dir.resolve() == fold.eval_dir.resolve():  # a k-fold split of one folder
            everyone = sorted(fold.train_subjects + fold.eval_subjects)
            raise BenchError(f"--data-dir {fold.train_dir} has {len(everyone)} keystroke subjects "
                             f"({', '.join(map(str, everyone))}); bench keystroke needs at least {KFOLD_MIN_SUBJECTS}: "
                             f"each of its 2 folds trains the population methods on one half, at least "
                             f"{MIN_TRAIN_SUBJECTS} subjects")
        subs = ", ".join(map(str, fold.train_subjects))
        raise BenchError(f"--train-dir {fold.train_dir} has {n} keystroke subject{'s' * (n != 1)} ({subs}); bench "
                         f"keystroke's population methods need at least {MIN_TRAIN_SUBJECTS} training subjects")


@register("keystroke", "BB-MAS desktop typing, 50/100-key windows: pooled EER of each detector on unseen subjects")
def bench_bbmas(ctx: BenchContext) -> BenchOutput:
    from evaluation.datasets import load_bbmas_keystrokes
    from evaluation.protocols import ScoreTable, zero_effort_trials
    from modalities.keystroke.features import FEATURE_VERSION, window_matrix

    _set_threads()
    folds = ctx.folds("keystroke", max_subjects=16)
    _check_training_subjects(folds)
    table = ScoreTable()
    train_all: set[int] = set()
    eval_all: set[int] = set()
    skipped: dict[str, set[int]] = {label: set() for label in WINDOWS}
    for fold in folds:
        train = load_bbmas_keystrokes(fold.train_dir, fold.train_subjects)
        evals = load_bbmas_keystrokes(fold.eval_dir, fold.eval_subjects)
        for label, n_keys in WINDOWS.items():
            Xs = {s: window_matrix(q, n_keys) for s, q in train.items()}
            Xs = {s: x for s, x in Xs.items() if x.shape[0] >= 2}
            train_all |= set(Xs)  # the people the population models learned from, not all that were read
            if len(Xs) < MIN_TRAIN_SUBJECTS:
                raise BenchError(f"fold {fold.index}: the keystroke population models need two {label} windows "
                                 f"of at least {MIN_TRAIN_SUBJECTS} training subjects; {len(Xs)} in {fold.train_dir} "
                                 "have them")
            X = np.vstack(list(Xs.values()))
            y = np.repeat(list(Xs), [x.shape[0] for x in Xs.values()])
            enrol: dict[int, np.ndarray] = {}
            probes: dict[int, np.ndarray] = {}
            for s, q in evals.items():
                if len(q) < 2 * n_keys:  # too short to enrol (and an empty half would not even cut)
                    skipped[label].add(s)
                    continue
                e, t = _subject_windows(q, n_keys)
                if e.shape[0] < 3 or t.shape[0] < 1:
                    skipped[label].add(s)
                    continue
                enrol[s], probes[s] = e, t
            eval_all |= set(enrol)  # the people scored: a skipped one is not evaluated
            scorers = {**_one_class(), **_learned_scorers()}
            for method, scorer in scorers.items():
                scorer.fit(X, y)
                templates = {s: scorer.enroll(e) for s, e in enrol.items()}
                zero_effort_trials(table, method=method, window=label, modality="keystroke", templates=templates,
                                   probes=probes, score=scorer.compare, seed=ctx.seed)
    never = ctx.note_skipped(skipped, eval_all, "keys")
    return BenchOutput(
        protocol={
            "dataset": "BB-MAS desktop keystrokes (processed prefix per subject)",
            "windows": {k: f"{v} keys, hop {v // 2}" for k, v in WINDOWS.items()},
            "enrol": "windows of each evaluation subject's earliest 50% of keys",
            "genuine": "windows of the remaining 50%",
            "impostor": "test windows of every other evaluation subject",
            "population": "trained only on the fold's training subjects (2-fold by subject, or --train-dir/--eval-dir)",
            "eer": "pooled over all trials",
            "feature_version": FEATURE_VERSION,
            "skipped_subjects": never,
            "skipped_by_window": {label: sorted(ids) for label, ids in skipped.items()},
        },
        train_subjects=sorted(train_all),
        eval_subjects=sorted(eval_all),
        scores=table,
        primary="pooled",
        extra={"folds": [{"train": list(f.train_subjects), "eval": list(f.eval_subjects)} for f in folds]},
    )
