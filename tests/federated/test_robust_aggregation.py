"""One poisoning device must not wreck the model under robust aggregation (FedAvg is wrecked)."""

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from federated import task
from federated.config import RunSettings
from federated.evaluate import pooled_eer, score_table
from federated.features import subject_windows
from federated.scorer import EmbeddingScorer
from federated.strategies import build_strategy


def _reply(node: int, weights: dict, n: int) -> Message:
    arrays = ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in weights.items()})
    metrics = MetricRecord({"num-examples": n, "unit-weight": 1, "train-loss": 1.0})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), dst_node_id=node, message_type=MessageType.TRAIN)


def test_median_and_trimmed_mean_survive_one_poisoned_device(data_dir, task_identity) -> None:
    windows = subject_windows("keystroke", data_dir, [1, 2, 3, 4, 6, 7, 8, 11, 13, 16])
    subs = sorted(windows)
    train, held = {s: windows[s] for s in subs[:6]}, {s: windows[s] for s in subs[6:]}
    norm = task.Normaliser.fit(np.vstack(list(train.values())))
    P = task.prototypes(128)
    dim = norm.mean.shape[0]
    # a few honest FedAvg rounds to get a useful global model, then one more round with a poisoner
    g = task.initial_weights(dim, 64, 0)
    net = task.make_net(dim)
    for rnd in range(6):
        updates = []
        for i, s in enumerate(sorted(train)):
            task.set_weights(net, g)
            task.train(net, norm(train[s]), np.full(len(train[s]), i), P, task.TrainConfig(seed=rnd * 10 + i))
            updates.append(task.get_weights(net))
        g = {k: np.mean([u[k] for u in updates], axis=0) for k in g}
    rng = np.random.default_rng(0)
    poisoned = {k: rng.normal(scale=50.0, size=v.shape).astype(np.float32) for k, v in updates[0].items()}

    def aggregate(strategy: str) -> dict:
        # fresh replies each time: Flower's robust strategies consume the arrays they aggregate
        replies = [_reply(i + 1, u, len(train[s])) for i, (s, u) in enumerate(zip(sorted(train), updates))]
        replies[0] = _reply(1, poisoned, len(train[subs[0]]))
        # min-nodes 5: trim-beta 0.2 trims nothing below 5 devices (refused up front)
        st = build_strategy(RunSettings.from_config({"strategy": strategy, "min-nodes": 5}), len(replies))
        arrays, _ = st.aggregate_train(1, replies)
        return task.to_numpy(arrays)

    honest = {k: np.mean([u[k] for u in updates[1:]], axis=0) for k in g}

    def dist(w: dict) -> float:
        return float(np.sqrt(sum(((w[k] - honest[k]) ** 2).sum() for k in w)) / np.sqrt(sum((honest[k] ** 2).sum() for k in w)))

    def eer_of(w: dict) -> float:
        sc = EmbeddingScorer.from_weights(w, norm.mean, norm.std, modality="keystroke", feature_version="t")
        return pooled_eer(score_table(sc, held, method="m", window="w", modality="keystroke"), "m", "w")

    fedavg, median, trimmed = aggregate("fedavg"), aggregate("fedmedian"), aggregate("trimmed-mean")
    assert dist(fedavg) > 3.0  # the mean is dragged far away by one device
    assert dist(median) < 0.3 and dist(trimmed) < 0.3
    e_honest, e_median, e_avg = eer_of(honest), eer_of(median), eer_of(fedavg)
    assert e_median <= e_honest + 0.05
    assert e_avg > e_median
