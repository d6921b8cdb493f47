"""`cadence bench federated`: the same model trained centrally and federated, on the same people.

For each modality: feature windows of the training subjects (one device file per subject),
then (1) central training on the pooled windows, (2) FedAvg and (3) DP-FedAvg on Flower's
simulation engine (Ray), one virtual device per subject holding only its own windows. All
three global models are evaluated on the evaluation subjects with the modality's protocol
(chronological enrol/test split, zero-effort impostors). Federated rows also record rounds,
bytes per client per round, wall time, and epsilon/delta for DP.
"""

from __future__ import annotations

import logging
import tempfile
import time
from typing import Any

from evaluation.bench import BenchContext, BenchError, BenchOutput, register

log = logging.getLogger(__name__)

#: full run: modalities and rounds (touch and gait run through the same code; not yet benched, see
#: docs/federated.md); --quick: few subjects and rounds
FULL = {"modalities": ("keystroke",), "rounds": 20, "max_subjects": None}
QUICK = {"modalities": ("keystroke",), "rounds": 4, "max_subjects": 12}
#: target epsilon of the DP row (noise multiplier calibrated to reach it after all rounds)
TARGET_EPSILON = 8.0
DP_DELTA = 1e-3


@register("federated", "Federated (Flower simulation) vs central training of the same embedding model, per modality")
def bench_federated(ctx: BenchContext) -> BenchOutput:
    from evaluation.datasets import available_subjects
    from evaluation.protocols import ScoreTable
    from federated import task
    from federated.config import RunSettings
    from federated.evaluate import score_table
    from federated.features import feature_spec, subject_windows, write_device_files
    from federated.privacy import noise_for_epsilon
    from federated.scorer import EmbeddingScorer
    from federated.simulation import simulate

    plan = QUICK if ctx.quick else FULL
    table = ScoreTable()
    row_extra: dict[tuple[str, str], dict[str, Any]] = {}
    train_all: list[int] = []
    eval_all: list[int] = []
    runs: dict[str, Any] = {}
    benched = []
    for modality in plan["modalities"]:
        folder = ctx.train_dir or ctx.data_dir
        if folder is None or not available_subjects(folder, modality):
            log.warning("federated bench: no %s data, skipped", modality)
            continue
        fold = ctx.folds(modality, max_subjects=plan["max_subjects"])[0]
        spec = feature_spec(modality)
        tr = subject_windows(modality, fold.train_dir, fold.train_subjects)
        ev = subject_windows(modality, fold.eval_dir, fold.eval_subjects)
        if len(tr) < 2 or len(ev) < 2:
            raise BenchError(f"{modality}: need >= 2 train and eval subjects with windows, got {len(tr)} and {len(ev)}")
        train_all += sorted(tr)
        eval_all += sorted(ev)
        benched.append(modality)
        base = {"modality": modality, "num-server-rounds": plan["rounds"], "min-nodes": len(tr), "seed": ctx.seed,
                "num-slots": max(128, len(tr))}
        s = RunSettings.from_config(base)
        tc = task.TrainConfig(epochs=s.local_epochs, lr=s.lr, batch_size=s.batch_size, seed=ctx.seed)
        window = spec.window
        # central: same model, same loss, as many passes over the data as federated rounds x local epochs
        t0 = time.perf_counter()
        weights, norm = task.train_central(tr, epochs=s.num_server_rounds * s.local_epochs, cfg=tc,
                                           num_slots=s.num_slots, hidden=s.hidden)
        central = EmbeddingScorer.from_weights(weights, norm.mean, norm.std, modality=modality,
                                               feature_version=spec.feature_version)
        method = f"{modality}-central"
        table.extend(score_table(central, ev, method=method, window=window, modality=modality, seed=ctx.seed))
        row_extra[(method, window)] = {"modality": modality, "wall_seconds": round(time.perf_counter() - t0, 2),
                                       "epochs": s.num_server_rounds * s.local_epochs}
        noise = noise_for_epsilon(TARGET_EPSILON, rounds=s.num_server_rounds, q=1.0, delta=DP_DELTA)
        variants = {
            f"{modality}-fedavg": {},
            f"{modality}-fedavg-dp": {"dp": True, "noise-multiplier": noise, "dp-delta": DP_DELTA, "clipping-norm": 1.0},
        }
        with tempfile.TemporaryDirectory(prefix="cadence-fed-") as tmp:
            write_device_files(tmp, tr, spec)
            for method, extra in variants.items():
                settings = RunSettings.from_config(base, extra)
                outcome = simulate(settings, tmp)
                assert outcome.scorer is not None
                table.extend(score_table(outcome.scorer, ev, method=method, window=window, modality=modality,
                                         seed=ctx.seed))
                info = outcome.summary()
                row_extra[(method, window)] = {
                    "modality": modality, "rounds": info["rounds"], "num_devices": info["num_devices"],
                    "bytes_per_client_per_round": info["bytes_per_client_per_round"],
                    "download_bytes_per_client_per_round": info["download_bytes_per_client_per_round"],
                    "wall_seconds": info["wall_seconds"], "epsilon": info["epsilon"], "delta": info["delta"],
                    "noise_multiplier": info["noise_multiplier"], "clipping_norm": info["clipping_norm"],
                    "strategy": info["strategy"], "final_train_loss": info["train_loss"][-1],
                }
                runs[method] = info
    if not benched:
        raise BenchError("no modality data found: give --data-dir or --train-dir/--eval-dir")
    protocol = {
        "name": "federated-vs-central",
        "modalities": benched,
        "model": "2-layer MLP embedding (hidden 64, 32-d), fixed-prototype cosine-softmax loss",
        "federated": "Flower simulation engine (Ray), one virtual device per training subject, every device every round",
        "central": "same model and loss on pooled windows, epochs = rounds x local epochs",
        "enrolment": "earliest half of each evaluation subject's windows; mean embedding; cosine score",
        "impostors": "zero-effort: other evaluation subjects' test windows (<= 20 per impostor subject)",
        "dp": {"target_epsilon": TARGET_EPSILON, "delta": DP_DELTA, "adjacency": "add/remove one device",
               "accountant": "RDP, Gaussian mechanism per round, q = 1 (no sampling amplification claimed)"},
    }
    return BenchOutput(protocol=protocol, train_subjects=sorted(set(train_all)), eval_subjects=sorted(set(eval_all)),
                       scores=table, row_extra=row_extra, extra={"federated_runs": runs})
