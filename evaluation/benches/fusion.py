"""`cadence bench fusion`: calibrated multi-modal decisions on people with all three modalities.

Per fold (subject-disjoint): each modality's population model is trained on the training
subjects; calibrators and learned fusion weights are fitted on scores of training subjects
only (an inner split: models trained on one half of the training subjects score the other
half); everything is then applied unchanged to the evaluation subjects. Trials take a fixed
evidence budget from the test part of the probe's data: "standard" = one 100-key window + one
5-swipe group + one 10 s gait window; "extended" = three of each (scores averaged).
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


def _fusion_folds(ctx: BenchContext) -> list[tuple[Any, Any, list[int], list[int]]]:
    """(train_dir, eval_dir, train_subjects, eval_subjects) over subjects having all three modalities.

    With --train-dir and --eval-dir, each modality's files are checked as `ctx.folds` checks
    them (`protocols.check_disjoint`): an evaluation file holding a training file's data is refused.
    """
    from evaluation.datasets import available_subjects, data_folder
    from evaluation.protocols import check_disjoint, subject_folds

    def common(folder: Any) -> list[int]:
        sets = [set(available_subjects(folder, m)) for m in MODALITIES]
        return sorted(set.intersection(*sets))

    rng = np.random.default_rng(ctx.seed)
    cap = 16 if ctx.quick else None
    if ctx.train_dir is not None and ctx.eval_dir is not None and ctx.train_dir.resolve() != ctx.eval_dir.resolve():
        for d in (ctx.train_dir, ctx.eval_dir):
            data_folder(d)
        tr, ev = common(ctx.train_dir), common(ctx.eval_dir)
        for m in MODALITIES:
            ctx.note(*check_disjoint(m, ctx.train_dir, tr, ctx.eval_dir, ev))
        if cap:
            tr = sorted(rng.choice(tr, size=min(cap, len(tr)), replace=False).tolist())
            ev = sorted(rng.choice(ev, size=min(cap // 2, len(ev)), replace=False).tolist())
        if not tr or not ev:
            raise ValueError("no subjects with all three modalities in --train-dir or --eval-dir")
        return [(ctx.train_dir, ctx.eval_dir, tr, ev)]
    folder = ctx.require_data_dir() if ctx.train_dir is None else ctx.train_dir
    subs = common(folder)
    if cap:
        subs = sorted(rng.choice(subs, size=min(cap, len(subs)), replace=False).tolist())
    if len(subs) < 8:
        raise ValueError(f"need at least 8 subjects with all three modalities in {folder}, found {len(subs)}")
    folds = subject_folds(subs, 2, ctx.seed)
    if ctx.quick:
        folds = folds[:1]
    return [(folder, folder, tr, ev) for tr, ev in folds]


@register("fusion", "multi-modal fusion rules and the tier policy on people with keystroke, touch and gait", version="1")
def bench_fusion(ctx: BenchContext) -> BenchOutput:
    from evaluation.bench import check_writable
    from evaluation.datasets import loader_warnings
    from evaluation.pair_scores import pair_scores
    from evaluation.protocols import ScoreTable
    from fusion.calibration import LogisticCalibrator, cllr
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
    folds = _fusion_folds(ctx)
    all_train: set[int] = set()
    all_eval: set[int] = set()
    calib_report: dict[str, Any] = {}
    #: per budget, per tier: the outcomes of genuine and of impostor trials, one array per fold
    policy_acc: dict[str, dict[Any, tuple[list[np.ndarray], list[np.ndarray]]]] = {}
    consulted: dict[str, list[float]] = {}
    engine = FusionEngine()
    for fi, (train_dir, eval_dir, train, evals) in enumerate(folds):
        all_train |= set(train)
        all_eval |= set(evals)
        # gait is read through a feature cache that skips the loader: its data caveats are asked for
        ctx.note(*loader_warnings(train_dir, "gait", train), *loader_warnings(eval_dir, "gait", evals))
        rng = np.random.default_rng(ctx.seed + fi)
        perm = rng.permutation(train)
        half_a, half_b = sorted(perm[: len(perm) // 2].tolist()), sorted(perm[len(perm) // 2:].tolist())
        cal_pairs, ev_pairs = {}, {}
        for m in MODALITIES:
            cal_pairs[m] = pair_scores(m, train_dir, half_a, train_dir, half_b, seed=ctx.seed, quick=ctx.quick)
            ev_pairs[m] = pair_scores(m, train_dir, train, eval_dir, evals, seed=ctx.seed, quick=ctx.quick)
        for budget, per in BUDGETS:
            cal = build_trials(cal_pairs, half_b, per=per, impostor_per_pair=POLICY_IMPOSTORS_PER_PAIR)
            ev = build_trials(ev_pairs, evals, per=per)
            cg, ci = cal.genuine(), cal.impostor()
            cals = [LogisticCalibrator().fit(genuine=cg[:, j], impostor=ci[:, j]) for j in range(len(MODALITIES))]
            if budget == "standard" and fi == 0:
                for j, m in enumerate(MODALITIES):
                    engine.fit_modality(m, genuine=cg[:, j], impostor=ci[:, j])

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
