"""`cadence bench fusion`: calibrated multi-modal decisions on people with all three modalities.

Per fold (subject-disjoint): each modality's population model is trained on the training
subjects; calibrators and learned fusion weights are fitted on scores of training subjects
only (an inner split: models trained on one half of the training subjects score the other
half); everything is then applied unchanged to the evaluation subjects. Trials take a fixed
evidence budget from the test part of the probe's data: "standard" = one 100-key window + one
5-swipe group + one 10 s gait window; "extended" = three of each (scores averaged).

Only the evaluation subjects scored are listed as evaluated: one whose data a modality's split
cannot cut (`SPLIT_NEEDS`) is left out, and the JSON's warnings name them and why. The
calibrators written to OUT/fusion-calibration.json record the model whose scores they were
fitted on (`served_model_id`): the bench's own population models, which no server serves, so
a server loading that file leaves them out (and logs why) rather than read another model's
scores on their scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evaluation.bench import BenchContext, BenchError, BenchOutput, register

MODALITIES = ("keystroke", "touch", "gait")
BUDGETS = (("standard", 1), ("extended", 3))
#: impostor trials per (template, probe) pair for the policy's tiers (the rule rows keep 2):
#: a 0.01 % target needs every impostor window there is
POLICY_IMPOSTORS_PER_PAIR = 50


def policy_outcomes(L: np.ndarray, tier: Any) -> np.ndarray:
    """The policy's outcome for each trial's per-modality LLRs, through the server's own `decide`."""
    from fusion.policy import ModalityEvidence, decide

    return np.array([decide([ModalityEvidence(m, 0.0, llr=float(v)) for m, v in zip(MODALITIES, row, strict=True)
                             if np.isfinite(v)], amount=0.0, tiers=(tier,)).outcome for row in L])


def policy_rates(tier: Any, genuine: np.ndarray, impostor: np.ndarray) -> dict[str, Any]:
    """Outcome rates of one tier, with the impostor approvals' count and 95 % upper bound.

    The bound (Clopper-Pearson, one-sided) says whether the trial count can show the target
    at all: 0 approvals of 3,000 trials bound the rate only by 0.1 %.
    """
    from scipy.stats import beta

    k, n = int(np.sum(impostor == "approve")), int(impostor.size)
    return {"target_fmr": tier.target_fmr, "approve_llr": tier.approve_llr, "corroborate": tier.corroborate,
            "genuine_approve": float(np.mean(genuine == "approve")), "genuine_step_up": float(np.mean(genuine == "step_up")),
            "genuine_deny": float(np.mean(genuine == "deny")), "impostor_approve": k / max(n, 1),
            "impostor_deny": float(np.mean(impostor == "deny")), "impostor_approvals": k, "n_impostor": n,
            "n_genuine": int(genuine.size),
            "impostor_approve_upper95": float(beta.ppf(0.95, k + 1, n - k)) if n else 1.0}


def _fusion_folds(ctx: BenchContext, *, min_train: int = 1) -> list[tuple[Any, Any, list[int], list[int]]]:
    """(train_dir, eval_dir, train_subjects, eval_subjects) over subjects having all three modalities.

    --train-dir and --eval-dir go together (one alone is refused, as every bench refuses it);
    without them, --data-dir is split in 2 subject-disjoint folds. Each fold needs at least
    `min_train` training subjects and 2 evaluation subjects (impostor trials are another
    evaluation subject's). Each modality's files are checked as `ctx.folds` checks them: with
    --train-dir and --eval-dir an evaluation file holding a training file's data is refused
    (`protocols.check_disjoint`), in one folder two subjects' files holding the same data
    (`protocols.check_distinct`).
    """
    from evaluation.datasets import DatasetError, available_subjects, data_folder
    from evaluation.protocols import check_disjoint, check_distinct, subject_folds, training_apart

    def common(folder: Any, label: str) -> list[int]:
        """Subjects with all three modalities; those with only some are named in the notes."""
        sets = {m: set(available_subjects(folder, m)) for m in MODALITIES}
        both = set.intersection(*sets.values())
        partial = sorted(set.union(*sets.values()) - both)
        if partial:  # left out without a word before: a new folder's evaluation could shrink unseen
            missing = [f"{s} (no {', '.join(m for m in MODALITIES if s not in sets[m])})" for s in partial]
            ctx.note(f"{label}: subjects left out for lacking a modality: {', '.join(missing)}")
        return sorted(both)

    if (ctx.train_dir is None) != (ctx.eval_dir is None):
        raise ValueError("--train-dir and --eval-dir go together")
    rng = np.random.default_rng(ctx.seed)
    cap = 16 if ctx.quick else None
    if ctx.train_dir is not None and ctx.eval_dir is not None and ctx.train_dir.resolve() != ctx.eval_dir.resolve():
        for label, d in (("--train-dir", ctx.train_dir), ("--eval-dir", ctx.eval_dir)):
            data_folder(d, label)
        tr, ev = common(ctx.train_dir, "--train-dir"), common(ctx.eval_dir, "--eval-dir")
        for m in MODALITIES:
            ctx.note(*check_disjoint(m, ctx.train_dir, tr, ctx.eval_dir, ev))
        if tr and ev:  # an id on both sides is one person: evaluated, not trained on
            tr = training_apart("all-modality", ctx.train_dir, tr, ev)
        if cap:
            tr = sorted(rng.choice(tr, size=min(cap, len(tr)), replace=False).tolist())
            ev = sorted(rng.choice(ev, size=min(cap // 2, len(ev)), replace=False).tolist())
        if not tr or not ev:
            raise ValueError("no subjects with all three modalities in --train-dir or --eval-dir")
        if len(tr) < min_train:
            raise DatasetError(f"--train-dir {ctx.train_dir} has {len(tr)} subject{'s' * (len(tr) != 1)} with all three "
                               f"modalities ({_ids(tr)}): this bench needs at least {min_train}{_TRAIN_WHY.get(min_train, '')}")
        if len(ev) < 2:
            raise DatasetError(f"--eval-dir {ctx.eval_dir} has one subject with all three modalities ({ev[0]}): "
                               "impostor trials need at least 2 evaluation subjects")
        return [(ctx.train_dir, ctx.eval_dir, tr, ev)]
    folder = ctx.require_data_dir()
    subs = common(folder, "--data-dir")
    if cap:
        subs = sorted(rng.choice(subs, size=min(cap, len(subs)), replace=False).tolist())
    need = max(8, 2 * min_train)  # the smaller half trains
    if len(subs) < need:
        raise ValueError(f"need at least {need} subjects with all three modalities in {folder}, found {len(subs)}: "
                         f"each of 2 folds trains on half of them{_TRAIN_WHY.get(min_train, '')}")
    for m in MODALITIES:  # one person under two ids could train in one fold and be evaluated in the other
        check_distinct(m, folder, "--data-dir" if ctx.data_dir is not None else "--train-dir (= --eval-dir)")
    folds = subject_folds(subs, 2, ctx.seed)
    if ctx.quick:
        folds = folds[:1]
    return [(folder, folder, tr, ev) for tr, ev in folds]


#: the fusion bench's calibration trains each modality's population model (at least 3 subjects,
#: `modalities.*.train_scorer`) on half of the training subjects and scores the other half
CALIBRATION_MIN_TRAIN = 6
_TRAIN_WHY = {CALIBRATION_MIN_TRAIN: f" (its calibration trains each modality's model on half of the training subjects, "
                                     f"at least {CALIBRATION_MIN_TRAIN // 2}, and scores the other half)"}

#: what each modality's split (`evaluation.pair_scores.SPLITS`) needs of a subject to score them
SPLIT_NEEDS = {
    "keystroke": "fewer than 3 enrolment windows or no test window of 100 keys",
    "touch": "fewer than 10 swipes",
    "gait": "fewer than 2 enrolment windows or no test window of 10 s walking",
}


def _calibrator(modality: str, genuine: np.ndarray, impostor: np.ndarray) -> Any:
    """A `LogisticCalibrator` fitted on one modality's scores; a refusal names the modality, as `FusionEngine`'s."""
    from fusion.calibration import LogisticCalibrator

    try:
        return LogisticCalibrator().fit(genuine=genuine, impostor=impostor)
    except ValueError as exc:
        raise ValueError(f"{modality} calibration: {exc}") from exc


def _ids(ids: Any) -> str:
    ids = sorted(int(s) for s in ids)
    return ", ".join(map(str, ids[:20])) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")


def served_model_id(modality: str, scorer: Any) -> str:
    """The id a server would report serving `scorer` (`server.services.scoring`), for `FusionEngine.applies`.

    The package default scorer (same class, name and version: a one-class scorer has no
    population state) is ``default:<name>:<version>``, as the server reports it; any other
    scorer this bench trained is ``bench:fusion:<name>:<version>``, an id no served model has,
    so a server leaves the calibrator out (and logs why) rather than read another model's
    scores on its scale.
    """
    from evaluation.pair_scores import _Grouped
    from server.services.scoring import ScorerProvider

    inner = scorer.scorer if isinstance(scorer, _Grouped) else scorer  # touch: scored per 5 swipes, as served
    name, version = getattr(inner, "name", type(inner).__name__), getattr(inner, "version", "")
    default = ScorerProvider(None).get(modality)
    if type(inner) is type(default.scorer) and default.model_id == f"default:{name}:{version}":
        return default.model_id
    return f"bench:fusion:{name}:{version}"


def _pair_scores(m: str, train_dir: Any, train: list[int], eval_dir: Any, evals: list[int],
                 seed: int) -> tuple[Any, dict[tuple[int, int], np.ndarray], set[int]]:
    """`evaluation.pair_scores.pair_scores`, with the scorer it trained and the subjects it could score."""
    from pathlib import Path

    from evaluation.pair_scores import PROVIDERS, scores_of

    scorer, split = PROVIDERS[m](Path(train_dir), tuple(sorted(int(s) for s in train)), Path(eval_dir),
                                 tuple(sorted(int(s) for s in evals)), seed)
    return scorer, scores_of(scorer, split), {int(s) for s in split}


@register("fusion", "multi-modal fusion rules and the tier policy on people with keystroke, touch and gait", version="1")
def bench_fusion(ctx: BenchContext) -> BenchOutput:
    from evaluation.bench import check_writable
    from evaluation.datasets import DatasetError, loader_warnings
    from evaluation.protocols import ScoreTable
    from fusion.calibration import cllr
    from fusion.engine import FusionEngine
    from fusion.policy import DEFAULT_POLICY
    from fusion.rules import (
        FIXED_RULES,
        DecisionRule,
        LearnedWeights,
        Sequential,
        ZNormSum,
        per_modality_thresholds,
    )
    from fusion.trials import build_trials

    calibration_file = ctx.out / "fusion-calibration.json"
    check_writable(calibration_file)  # before the run, as the harness checks its own files
    table = ScoreTable()
    folds = _fusion_folds(ctx, min_train=CALIBRATION_MIN_TRAIN)
    all_train: set[int] = set()
    all_eval: set[int] = set()  # the evaluation subjects scored: those with genuine trials
    #: per modality, the subjects its split could not score (evaluation; training subjects the calibration scores)
    skipped: dict[str, set[int]] = {}
    cal_skipped: dict[str, set[int]] = {}
    #: per budget, the evaluation subjects scored at another budget but without trials at this one
    unbudgeted: dict[str, set[int]] = {}
    calib_report: dict[str, Any] = {}
    #: per budget, per tier: the outcomes of genuine and of impostor trials, one array per fold
    policy_acc: dict[str, dict[Any, tuple[list[np.ndarray], list[np.ndarray]]]] = {}
    consulted: dict[str, list[float]] = {}
    engine = FusionEngine()
    for fi, (train_dir, eval_dir, train, evals) in enumerate(folds):
        all_train |= set(train)
        # gait is read through a feature cache that skips the loader: its data caveats are asked for
        ctx.note(*loader_warnings(train_dir, "gait", train), *loader_warnings(eval_dir, "gait", evals))
        rng = np.random.default_rng(ctx.seed + fi)
        perm = rng.permutation(train)
        half_a, half_b = sorted(perm[: len(perm) // 2].tolist()), sorted(perm[len(perm) // 2:].tolist())
        cal_pairs, ev_pairs, cal_scorers = {}, {}, {}
        cal_left: dict[str, set[int]] = {}  # per modality, the subjects its split could not score
        ev_left: dict[str, set[int]] = {}
        for m in MODALITIES:
            try:
                cal_scorers[m], cal_pairs[m], got = _pair_scores(m, train_dir, half_a, train_dir, half_b, ctx.seed)
            except (DatasetError, ValueError) as exc:
                raise BenchError(f"the calibration's {m} model is trained on half of the {len(train)} training subjects "
                                 f"in {train_dir} ({_ids(half_a)}) and cannot be: {exc}. The folder needs more subjects "
                                 f"with enough {m} data") from None
            cal_left[m] = set(half_b) - got
            _, ev_pairs[m], got = _pair_scores(m, train_dir, train, eval_dir, evals, ctx.seed)
            ev_left[m] = set(evals) - got
            skipped.setdefault(m, set()).update(ev_left[m])
            cal_skipped.setdefault(m, set()).update(cal_left[m])
        ev_ok = set(evals).difference(*ev_left.values())  # the subjects every modality's split could score
        cal_ok = set(half_b).difference(*cal_left.values())
        if len(ev_ok) < 2:
            why = "; ".join(f"{m}: {_ids(ev_left[m])} ({SPLIT_NEEDS[m]})" for m in MODALITIES if ev_left[m])
            raise BenchError(f"impostor trials need at least 2 evaluation subjects with enough data in every modality; "
                             f"{len(ev_ok)} of the {len(evals)} in {eval_dir} have it"
                             f"{f' ({_ids(ev_ok)})' if ev_ok else ''}; left out: {why}")
        if len(cal_ok) < 2:
            why = "; ".join(f"{m}: {_ids(cal_left[m])} ({SPLIT_NEEDS[m]})" for m in MODALITIES if cal_left[m])
            raise BenchError(f"the calibration scores half of the {len(train)} training subjects in {train_dir} "
                             f"({_ids(half_b)}) and needs at least 2 of them with enough data in every modality, "
                             f"has {len(cal_ok)}; left out: {why}. The folder needs more subjects with enough data")
        for budget, per in BUDGETS:
            cal = build_trials(cal_pairs, half_b, per=per, impostor_per_pair=POLICY_IMPOSTORS_PER_PAIR)
            ev = build_trials(ev_pairs, evals, per=per)
            scored = {int(t) for t in ev.template[ev.label == 1]}
            all_eval |= scored
            unbudgeted.setdefault(budget, set()).update(ev_ok - scored)
            cg, ci = cal.genuine(), cal.impostor()
            cals = [_calibrator(m, cg[:, j], ci[:, j]) for j, m in enumerate(MODALITIES)]
            if budget == "standard" and fi == 0:
                for j, m in enumerate(MODALITIES):
                    engine.fit_modality(m, genuine=cg[:, j], impostor=ci[:, j])
                    # fitted on this model's scores only: a server applies it to no other (`FusionEngine.applies`)
                    engine.report[m]["model_version"] = served_model_id(m, cal_scorers[m])

            def to_llr(S: np.ndarray) -> np.ndarray:
                return np.column_stack([c.llr(S[:, j]) for j, c in enumerate(cals)])  # noqa: B023

            L_cal_g, L_cal_i = to_llr(cg), to_llr(ci)
            L_ev = to_llr(ev.scores)
            for j, m in enumerate(MODALITIES):
                rep = calib_report.setdefault(f"{m}/{budget}", {"cllr_eval": []})
                lg, li = L_ev[ev.label == 1, j], L_ev[ev.label == 0, j]
                rep["cllr_eval"].append(cllr(genuine_llr=lg, impostor_llr=li))
            methods: dict[str, np.ndarray] = {m: ev.scores[:, j] for j, m in enumerate(MODALITIES)}
            for name, rule in FIXED_RULES.items():
                methods[name] = rule(L_ev)
            methods["learned-weights"] = LearnedWeights().fit(L_cal_g, L_cal_i)(L_ev)
            methods["znorm-sum"] = ZNormSum().fit(ci)(ev.scores)
            thr = per_modality_thresholds(L_cal_i, 0.05)
            for kind in ("and", "or", "majority"):
                methods[kind] = DecisionRule(kind, thr)(L_ev)
            # passive first: gait, then touch, then typing (the one that asks the user for work)
            seq = Sequential(order=[MODALITIES.index("gait"), MODALITIES.index("touch"), MODALITIES.index("keystroke")], stop=6.0)
            methods["sequential"] = seq(L_ev)
            consulted.setdefault(budget, []).append(float(np.mean(seq.consulted_)))
            for name, s in methods.items():
                s = np.where(np.isfinite(s), s, -1e6)
                for t in np.unique(ev.template):
                    msk = ev.template == t
                    table.add(method=name, window=budget, modality="fusion" if name not in MODALITIES else name,
                              template_subject=int(t), probe_subject=ev.probe[msk], scores=s[msk])
            # the policy as configured (`fusion.policy.decide`, the server's own call) on the same
            # calibrated LLRs, over every impostor window pair there is: a tier's target is a tail
            pol = build_trials(ev_pairs, evals, per=per, impostor_per_pair=POLICY_IMPOSTORS_PER_PAIR)
            L_pol = to_llr(pol.scores)
            for tier in DEFAULT_POLICY.tiers:
                gen, imp = policy_acc.setdefault(budget, {}).setdefault(tier, ([], []))
                out = policy_outcomes(L_pol, tier)
                gen.append(out[pol.label == 1])
                imp.append(out[pol.label == 0])
    for m in MODALITIES:
        if skipped.get(m):
            ctx.note(f"evaluation subjects skipped ({m}: {SPLIT_NEEDS[m]}): {sorted(skipped[m])}")
    for budget, per in BUDGETS:
        if unbudgeted.get(budget):
            ctx.note(f"evaluation subjects without {budget} trials (fewer than {per} test window{'s' * (per > 1)} "
                     f"in a modality): {sorted(unbudgeted[budget])}")
    for m in MODALITIES:
        if cal_skipped.get(m):
            ctx.note(f"training subjects left out of the calibration's scores ({m}: {SPLIT_NEEDS[m]}; they still "
                     f"train the evaluated models): {sorted(cal_skipped[m])}")
    policy = {b: {t.name: policy_rates(t, np.concatenate(gen), np.concatenate(imp)) for t, (gen, imp) in tiers.items()}
              for b, tiers in policy_acc.items()}
    try:
        engine.save(calibration_file)
    except OSError as exc:
        raise BenchError(f"cannot write {calibration_file}: {exc.strerror or exc}") from None
    return BenchOutput(
        protocol={
            "population": "subject-disjoint folds over subjects with all three modalities",
            "folds": len(folds),
            "calibration": "logistic (per modality, per budget) fitted on training subjects scored by models trained on the other half of the training subjects",
            "standard": "one 100-key window + one 5-swipe group + one 10 s gait window from the probe's test part",
            "extended": "three of each, scores averaged",
            "genuine": "template owner's own test windows; impostor: another evaluation subject's",
            "decision_rule_thresholds": "per-modality LLR at FMR 5% on calibration impostors",
            "sequential": "gait -> touch -> keystroke, stop when |sum LLR| >= 6",
            "policy": f"fusion/policy.yaml through fusion.policy.decide on the llr-sum calibration; impostor trials: "
                      f"up to {POLICY_IMPOSTORS_PER_PAIR} per (template, probe) pair, pooled over folds",
            "calibration_file": "fusion-calibration.json: fold 1's standard-budget calibrators, each recorded as fitted "
                                "for the model whose scores it read (" + ", ".join(
                                    f"{m} {engine.fitted_for(m)}" for m in engine.calibrated_modalities)
                                + "): a server applies a calibrator to that model only",
            "skipped_subjects": sorted(set().union(*skipped.values())),
        },
        train_subjects=sorted(all_train),
        eval_subjects=sorted(all_eval),
        scores=table,
        extra={
            "policy": policy,
            "calibration": {k: {"cllr_eval": float(np.mean(v["cllr_eval"]))} for k, v in calib_report.items()},
            "sequential_mean_modalities_consulted": {b: float(np.mean(v)) for b, v in consulted.items()},
        },
    )
