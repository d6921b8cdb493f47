"""`cadence bench federated`: the same model trained centrally and federated, on the same people.

For each modality: training windows of the fold's training subjects (one device file per
subject), then (1) central training on the pooled windows, (2) FedAvg with server momentum
and (3) DP-FedAvg on Flower's simulation engine (Ray; both federated runs share one
simulation, so the virtual devices start once), one virtual device per subject holding only
its own windows. All three models are evaluated on the evaluation subjects with the modality
bench's protocol (`federated.features.eval_splits`: earliest half enrols, zero-effort
impostors; windows "50 keys", "10 s", "5 swipes"). Federated rows also record rounds, bytes
per client per round, wall time, and epsilon/delta for DP.

Central and federated runs are paired: the same initial weights, every subject on the same
prototype (slots follow the device files' order, `federated.features.device_order`), the
same loss; DP noise is seeded, so one command gives the same rows every run.

Hyper-parameters below were chosen on inner splits of the TRAINING subjects only (even ids:
0 vs 2 mod 4, both ways), never on the evaluation subjects.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.bench import BenchContext, BenchError, BenchOutput, register

log = logging.getLogger(__name__)

#: full run: every modality (DP runs fewer rounds: less noise per round at the same epsilon);
#: --quick: keystroke only, 10 subjects (5 devices), 3 rounds
@dataclass(frozen=True)
class Plan:
    modalities: tuple[str, ...]
    rounds: dict[str, int]
    dp_rounds: int
    max_subjects: int | None


#: FedAvg rounds per modality, chosen on two inner splits of the training folder (ids 0 vs 2
#: mod 4, both ways, 3 seeds, paired with central): where every modality's FedAvg/central
#: EER ratio had flattened out (touch devices hold ~2x the windows: more drift per round)
FULL = Plan(("keystroke", "gait", "touch"), rounds={"keystroke": 60, "gait": 90, "touch": 80}, dp_rounds=20,
            max_subjects=None)
QUICK = Plan(("keystroke",), rounds={"keystroke": 3}, dp_rounds=3, max_subjects=10)
#: server momentum of the FedAvg rows (FedAvgM): 0.8 was as good as or better than 0.7 for every
#: modality on the inner splits (gait mean ratio 0.99 vs 1.02 at 90 rounds)
SERVER_MOMENTUM = 0.8
DP_SERVER_MOMENTUM = 0.7
#: central baseline: passes over the pooled windows (more overfit on the validation split)
CENTRAL_EPOCHS = 10
#: target epsilon of the DP row (noise multiplier calibrated to reach it after all rounds)
TARGET_EPSILON = 8.0
DP_DELTA = 1e-3
CLIPPING_NORM = 1.0


def _fed_row(modality: str, info: dict[str, Any]) -> dict[str, Any]:
    keys = ("rounds", "num_devices", "bytes_per_client_per_round", "download_bytes_per_client_per_round",
            "wall_seconds", "epsilon", "delta", "noise_multiplier", "clipping_norm", "strategy", "server_momentum")
    # under DP the devices' losses are not released (no accounting covers them): None
    return {"modality": modality, **{k: info.get(k) for k in keys},
            "final_train_loss": info["train_loss"][-1] if info.get("train_loss") else None}


def _person_folds(ctx: BenchContext, plan: Plan) -> dict[str, Any] | None:
    """One subject split of the people of all planned modalities (None: --train-dir/--eval-dir are two folders).

    The union of the modalities' subject ids is split as `evaluation.protocols.resolve_folds`
    splits one modality's (`--quick`: the same seeded subset, then `subject_folds`, fold 0);
    each modality then takes its available subjects on each side. With one modality (--quick)
    this is exactly `ctx.folds(modality)[0]`.
    """
    import numpy as np

    from evaluation.datasets import available_subjects
    from evaluation.protocols import Fold, check_distinct, subject_folds

    if ctx.train_dir is not None and ctx.eval_dir is not None \
            and Path(ctx.train_dir).resolve() != Path(ctx.eval_dir).resolve():
        return None
    folder = ctx.train_dir or ctx.data_dir
    if folder is None or not Path(folder).is_dir():
        return None
    folder = Path(folder)
    avail = {m: set(available_subjects(folder, m)) for m in plan.modalities}
    people = sorted(set().union(*avail.values()))
    if not people:
        return None
    for m in plan.modalities:  # one person under two ids could train on one side and be evaluated on the other
        if avail[m]:
            check_distinct(m, folder, "--train-dir (= --eval-dir)" if ctx.train_dir is not None else "--data-dir")
    if ctx.quick and plan.max_subjects is not None and len(people) > plan.max_subjects:
        rng = np.random.default_rng(ctx.seed)  # as `resolve_folds`' pick (salt 0)
        people = sorted(int(s) for s in rng.choice(people, size=plan.max_subjects, replace=False))
    try:
        tr, ev = subject_folds(people, 2, ctx.seed)[0]
    except ValueError as exc:
        raise BenchError(f"{exc} (people in {folder})") from None
    return {m: Fold(0, folder, tuple(s for s in tr if s in avail[m]), folder, tuple(s for s in ev if s in avail[m]))
            for m in plan.modalities if avail[m]}


def data_caveats(modality: str, fold: Any) -> list[str]:
    """What the loader says of a fold's gait files (dropped or repaired rows), as `cadence bench gait` reports it.

    Gait windows come from a feature cache that skips the loader, so these notes appeared only
    when the cache was cold; keystroke and touch are read through the loader, which logs them.
    """
    from evaluation.datasets import loader_warnings

    if modality != "gait":
        return []
    return [*loader_warnings(fold.train_dir, "gait", fold.train_subjects),
            *loader_warnings(fold.eval_dir, "gait", fold.eval_subjects)]


@register("federated", "Federated (Flower simulation) vs central training of the same embedding model, per modality")
def bench_federated(ctx: BenchContext) -> BenchOutput:
    from evaluation.datasets import available_subjects
    from evaluation.protocols import ScoreTable
    from federated import task
    from federated.config import RunSettings
    from federated.evaluate import score_splits
    from federated.features import device_order, eval_splits, feature_spec, subject_windows, write_device_files
    from federated.privacy import noise_for_epsilon
    from federated.scorer import EmbeddingScorer
    from federated.simulation import simulate_many

    if (ctx.train_dir is None) != (ctx.eval_dir is None):  # one alone was split in two, silently
        raise BenchError("--train-dir and --eval-dir go together")
    plan = QUICK if ctx.quick else FULL
    table = ScoreTable()
    row_extra: dict[tuple[str, str], dict[str, Any]] = {}
    train_all: list[int] = []
    eval_all: list[int] = []
    runs: dict[str, Any] = {}
    benched = []
    given = ctx.train_dir or ctx.data_dir
    if given is not None and not given.is_dir():  # e.g. a stale CADENCE_DATA_DIR (the CLI leaves it to the bench)
        raise BenchError(f"data folder not found: {given}")
    # one folder split by the bench: one person-level split for every modality (a BB-MAS id is the
    # same person in every modality), so nobody trains in one modality and is evaluated in another
    person_folds = _person_folds(ctx, plan)
    for modality in plan.modalities:
        folder = ctx.train_dir or ctx.data_dir
        if folder is None or not available_subjects(folder, modality):
            log.warning("federated bench: no %s data, skipped", modality)
            continue
        t_mod = time.perf_counter()
        if person_folds is not None and modality in person_folds:
            fold = person_folds[modality]
        else:
            fold = ctx.folds(modality, max_subjects=plan.max_subjects)[0]
        ctx.note(*data_caveats(modality, fold))
        spec = feature_spec(modality)
        tr = subject_windows(modality, fold.train_dir, fold.train_subjects)
        ev = eval_splits(modality, fold.eval_dir, fold.eval_subjects)
        if len(tr) < 2 or len(ev) < 2:
            raise BenchError(f"{modality}: need >= 2 train and eval subjects with windows, got {len(tr)} and {len(ev)}")
        train_all += sorted(tr)
        eval_all += sorted(ev)
        benched.append(modality)
        base = {"modality": modality, "num-server-rounds": plan.rounds[modality], "min-nodes": len(tr), "seed": ctx.seed,
                "num-slots": max(128, len(tr)), "server-momentum": SERVER_MOMENTUM, "weighting": "unit"}
        s = RunSettings.from_config(base)
        window = spec.window

        def add(method: str, scorer: EmbeddingScorer, window: str = window, modality: str = modality,
                ev: dict[int, Any] = ev) -> None:
            table.extend(score_splits(scorer, ev, method=method, window=window, modality=modality, seed=ctx.seed))

        t0 = time.perf_counter()
        tc = task.TrainConfig(epochs=s.local_epochs, lr=s.lr, batch_size=s.batch_size, seed=ctx.seed)
        # paired with the federated runs: same initial weights (seed), same person on the same
        # prototype (slots follow the device files' order), same loss; only the optimiser differs
        weights, norm = task.train_central(tr, epochs=CENTRAL_EPOCHS, cfg=tc, num_slots=s.num_slots, hidden=s.hidden,
                                           order=device_order(tr))
        add(f"{modality}-central", EmbeddingScorer.from_weights(weights, norm.mean, norm.std, modality=modality,
                                                                feature_version=spec.feature_version))
        row_extra[(f"{modality}-central", window)] = {"modality": modality, "epochs": CENTRAL_EPOCHS,
                                                      "wall_seconds": round(time.perf_counter() - t0, 2)}
        noise = noise_for_epsilon(TARGET_EPSILON, rounds=plan.dp_rounds, q=1.0, delta=DP_DELTA)
        variants = {
            f"{modality}-fedavg": {},
            f"{modality}-fedavg-dp": {"dp": True, "noise-multiplier": noise, "dp-delta": DP_DELTA,
                                      "clipping-norm": CLIPPING_NORM, "num-server-rounds": plan.dp_rounds,
                                      "server-momentum": DP_SERVER_MOMENTUM,
                                      # reproducible bench rows; a deployment never seeds its noise
                                      "dp-noise-seed": ctx.seed},
        }
        with tempfile.TemporaryDirectory(prefix="cadence-fed-") as tmp:
            write_device_files(tmp, tr, spec)
            # one Ray actor starts faster than two on a busy machine; the full run wants the throughput
            outcomes = simulate_many([RunSettings.from_config(base, extra) for extra in variants.values()], tmp,
                                     num_cpus=1 if ctx.quick else 2)
        for method, outcome in zip(variants, outcomes, strict=True):
            assert outcome.scorer is not None
            add(method, outcome.scorer)
            info = outcome.summary()
            row_extra[(method, window)] = _fed_row(modality, info)
            runs[method] = info
        log.info("federated bench: %s done in %.0f s", modality, time.perf_counter() - t_mod)
    if not benched:
        raise BenchError("no modality data found: give --data-dir or --train-dir/--eval-dir")
    protocol = {
        "name": "federated-vs-central",
        "modalities": benched,
        "windows": {m: feature_spec(m).window for m in benched},
        "model": "2-layer MLP embedding (hidden 64, 32-d), fixed-prototype cosine-softmax loss",
        "federated": (f"Flower simulation engine (Ray), one virtual device per training subject, every device every "
                      f"round, 1 local epoch, equal device weights; FedAvg + server momentum {SERVER_MOMENTUM}, "
                      f"rounds {plan.rounds}; DP-FedAvg + server momentum {DP_SERVER_MOMENTUM}, {plan.dp_rounds} "
                      f"rounds, seeded noise (seed {ctx.seed}); slots in device-file order"),
        "central": (f"same model, loss and initial weights on pooled windows, {CENTRAL_EPOCHS} epochs, each subject "
                    f"on the same prototype as in the federated runs (paired)"),
        "tuning": "inner splits of the training subjects only (ids 0 vs 2 mod 4, both ways)",
        "enrolment": "earliest half of each evaluation subject's data (as the modality bench); mean embedding; cosine",
        "impostors": "zero-effort: other evaluation subjects' probe decisions",
        "dp": {"target_epsilon": TARGET_EPSILON, "delta": DP_DELTA, "clipping_norm": CLIPPING_NORM,
               "adjacency": "add/remove one device",
               "estimator": "fixed denominator: sum of clipped updates / m0 (m0 = devices of the run, fixed before "
                            "training); sensitivity clipping_norm / m0, noise std noise_multiplier * clipping_norm / m0",
               "accountant": "RDP, Gaussian mechanism per round, q = 1 (no sampling amplification claimed)",
               "outside_dp_guarantee": "exact population feature mean/std (scaling round) and the number of devices; "
                                       "device training losses are not released under DP"},
    }
    return BenchOutput(protocol=protocol, train_subjects=sorted(set(train_all)), eval_subjects=sorted(set(eval_all)),
                       scores=table, row_extra=row_extra, extra={"federated_runs": runs})
