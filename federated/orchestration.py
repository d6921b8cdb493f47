"""Server-side work of a federated run: scaling round, N strategy rounds, the resulting scorer.

`run_training` is what the ServerApp's ``main`` calls with Flower's `Grid`. It waits for
`min-nodes` devices, asks each for its feature sums once (population standardisation; the
server keeps only the total; the devices connected then are the run's devices, the only ones
sampled in its rounds), runs the strategy stack for `num-server-rounds` rounds while
writing progress to `status-file`, and returns a `RunOutcome` with the global scorer, the
per-round training loss, bytes per device per round, wall time and the epsilon spent.
"""

from __future__ import annotations

import functools
import logging
import math
import operator
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from federated import task
from federated.config import RunSettings, write_json_atomic
from federated.features import feature_spec
from federated.records import RecordError, array_record, device_errors, get_array, get_float, metric_record
from federated.scorer import EmbeddingScorer
from federated.strategies import build_strategy, epsilon_spent
from federated.strategies.dp import sampled_per_round

log = logging.getLogger(__name__)


class FederatedRunError(RuntimeError):
    """Too few devices, failed replies, or devices holding incompatible data."""


@dataclass
class RunOutcome:
    """What a finished run produced (the scorer is kept out of `summary`)."""

    modality: str
    strategy: str
    rounds: int
    num_devices: int
    dp: bool
    epsilon: float | None
    delta: float | None
    noise_multiplier: float | None
    clipping_norm: float | None
    bytes_per_client_per_round: int
    download_bytes_per_client_per_round: int
    wall_seconds: float
    train_loss: list[float] = field(default_factory=list)
    server_momentum: float = 0.0
    #: under DP: adjacency, sensitivity, the fixed denominator and what is released outside the guarantee
    dp_accounting: dict[str, Any] | None = None
    #: under SecAgg+ (`federated/secagg.py`): the protocol, its parameters and what the server saw
    secure_aggregation: dict[str, Any] | None = None
    scorer: EmbeddingScorer | None = None
    version: str | None = None

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("scorer")
        return d


class StatusFile:
    """Progress of a run as a small JSON file (`cadence federated status` reads it)."""

    def __init__(self, path: str, run_id: int | str | None = None) -> None:
        self.path = Path(path) if path else None
        # the run id lets a reader tell this run's progress from another run's (`wait_for_run`)
        self.doc: dict[str, Any] = {} if run_id is None else {"run_id": str(run_id)}

    def update(self, **kw: Any) -> None:
        if self.path is None:
            return
        self.doc.update(kw, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
        write_json_atomic(self.path, self.doc, default=float)

    def fail(self, exc: BaseException) -> None:
        """Record that the run failed and why, so `wait_for_run` and `status` stop saying 'waiting'."""
        self.update(state="failed", error=failure_reason(exc))


def failure_reason(exc: BaseException) -> str:
    """One line for the operator: the error's own message, its type where it has none."""
    if isinstance(exc, (SystemExit, KeyboardInterrupt)):  # what `flwr stop` looks like from inside
        return f"stopped before it finished ({type(exc).__name__}: `flwr stop`, or the ServerApp was ended)"
    msg = " ".join(str(exc).split())
    return msg if msg else type(exc).__name__


def wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    t0 = time.monotonic()
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n:
            return nodes
        if time.monotonic() - t0 > timeout:
            raise FederatedRunError(f"min-nodes: waited {timeout:.0f} s for {n} SuperNodes, {len(nodes)} connected")
        time.sleep(0.5)


def population_scaling(grid: Grid, nodes: list[int], s: RunSettings,
                       keys: dict[int, str] | None = None) -> task.Normaliser:
    """One query round: each device returns (n, sum, sum of squares); the server keeps the total.

    Devices also return their opaque key (`task.device_key`); with `keys` given, node id ->
    key is written there for every device that answered (slot order, `SlotAssigner.assign`):
    those are the run's devices. A device that does not answer (the SuperLink lists a
    SuperNode for a while after it died) is left out while at least `min-nodes` answer.
    """
    msgs = [Message(RecordDict({"config": ConfigRecord({"modality": s.modality})}), dst_node_id=nid,
                    message_type=MessageType.QUERY) for nid in nodes]
    answers = list(grid.send_and_receive(msgs, timeout=s.round_timeout))
    # a device whose sums are not of the run's feature size (or not finite) is left out like one that
    # failed: before, one such device (a file of other features) failed the run of every device
    dim = feature_spec(s.modality).dim
    replies, unusable = [], []
    for r in answers:
        if r.has_error():
            continue
        why = _unusable_sums(r, dim)
        if why is None:
            replies.append(r)
        else:
            log.warning("scaling round: device %s %s; it is left out", r.metadata.src_node_id, why)
            unusable.append(why)
    left_out = f"; left out: {len(unusable)} device(s) {'; '.join(sorted(set(unusable)))}" if unusable else ""
    if len(replies) < s.min_nodes:
        errors = device_errors(answers)
        raise FederatedRunError(f"scaling round: {len(replies)}/{len(nodes)} devices answered within round-timeout "
                                f"{s.round_timeout:g} s, min-nodes {s.min_nodes} needed"
                                f"{'; errors: ' + errors if errors else ''}{left_out}")
    if len(replies) < len(nodes):
        errors = device_errors(answers)
        log.warning("scaling round: %d of %d devices answered; the run goes on with them%s%s", len(replies),
                    len(nodes), f" (errors: {errors})" if errors else "", left_out)
    n = sum(get_float(metric_record(r.content), "num-examples") for r in replies)
    sums = [(get_array(array_record(r.content, "sums"), "sum"), get_array(array_record(r.content, "sums"), "sumsq"))
            for r in replies]
    _refuse_duplicate_data(replies, sums)
    if keys is not None:
        for r in replies:
            dev = r.content.get("device")
            keys[r.metadata.src_node_id] = str(dev.get("key", "")) if isinstance(dev, ConfigRecord) else ""
        dup = sorted({k for k in keys.values() if k and list(keys.values()).count(k) > 1})
        if dup:  # e.g. two phones keeping their data at the same path: slot order then falls back to node ids
            log.warning("scaling round: %d device key(s) shared by several devices; their slots follow "
                        "Flower's node ids (set node config device-key per device)", len(dup))
    # added in reply order, one after another, as before (same bits as earlier runs)
    total = functools.reduce(operator.add, [a.astype(np.float64) for a, _ in sums])
    total_sq = functools.reduce(operator.add, [b.astype(np.float64) for _, b in sums])
    return task.Normaliser.from_sums(n, total, total_sq)


def _unusable_sums(reply: Message, dim: int) -> str | None:
    """Why a scaling reply cannot be summed (malformed, of another feature size, not finite); None if it can."""
    try:
        n = get_float(metric_record(reply.content), "num-examples")
        a = get_array(array_record(reply.content, "sums"), "sum")
        b = get_array(array_record(reply.content, "sums"), "sumsq")
    except RecordError as exc:
        return f"sent a malformed reply ({exc})"
    if a.shape != (dim,) or b.shape != (dim,):
        return f"holds {a.shape[0] if a.ndim == 1 else a.shape}-d windows, {dim}-d features needed (another feature set?)"
    if not (math.isfinite(n) and n > 0 and np.isfinite(a).all() and np.isfinite(b).all()):
        return "sent non-finite or empty feature sums"
    return None


def _refuse_duplicate_data(replies: list[Message], sums: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Refuse two devices holding the same windows (one device file served by two SuperNodes).

    Identical (n, sum, sum of squares) means the same data: one person would count twice in
    every average and, under DP, contribute two clipped updates where the accounting assumes one.
    """
    seen: dict[bytes, int] = {}
    for r, (a, b) in zip(replies, sums, strict=True):
        n = get_float(metric_record(r.content), "num-examples")
        fp = np.float64(n).tobytes() + np.ascontiguousarray(a, np.float64).tobytes() \
            + np.ascontiguousarray(b, np.float64).tobytes()
        node = r.metadata.src_node_id
        if fp in seen:
            raise FederatedRunError(f"scaling round: SuperNodes {seen[fp]} and {node} hold the same data (the same "
                                    f"device file served twice?); start each SuperNode with its own device's file")
        seen[fp] = node


def run_training(grid: Grid, s: RunSettings, run_id: int | str | None = None) -> RunOutcome:
    """Scaling round plus `num-server-rounds` rounds of the configured strategy.

    Any error (or stop) is written to the status file as ``failed`` before it propagates.
    """
    status = StatusFile(s.status_file, run_id)
    try:
        return _train(grid, s, status)
    except BaseException as exc:
        status.fail(exc)
        raise


def _train(grid: Grid, s: RunSettings, status: StatusFile) -> RunOutcome:
    t0 = time.perf_counter()
    status.update(state="waiting", modality=s.modality, strategy=s.strategy, num_rounds=s.num_server_rounds, round=0)
    nodes = wait_for_nodes(grid, s.min_nodes, s.round_timeout)
    # the run's devices are those of the scaling round (m0, num_devices, the scaling): later ones wait for the next run.
    # Built before that round: a DP run refused for its epsilon must not first collect every device's feature sums
    strategy = build_strategy(s, len(nodes), devices=nodes)
    keys: dict[int, str] = {}
    norm = population_scaling(grid, nodes, s, keys)
    if len(keys) < len(nodes):  # some did not answer: the run's devices are those that did
        nodes = sorted(keys)
        strategy = build_strategy(s, len(nodes), devices=nodes)
    spec = feature_spec(s.modality)
    if norm.mean.shape[0] != spec.dim:
        raise FederatedRunError(f"data: devices hold {norm.mean.shape[0]}-d windows, {s.modality} features are {spec.dim}-d")
    strategy.assign(keys)  # slots in device-key order: the same device, the same prototype, every run
    init = task.initial_weights(spec.dim, s.hidden, s.seed)
    nbytes = task.weights_nbytes(init)
    train_cfg = ConfigRecord({
        "modality": s.modality, "local-epochs": s.local_epochs, "lr": s.lr, "batch-size": s.batch_size,
        "hidden": s.hidden, "num-slots": s.num_slots, "seed": s.seed,
        "norm-mean": [float(v) for v in norm.mean], "norm-std": [float(v) for v in norm.std],
    })
    losses: list[float] = []
    status.update(state="running", num_devices=len(nodes))

    def progress(rnd: int, arrays: ArrayRecord) -> MetricRecord | None:
        if rnd == 0:
            return None
        eps = epsilon_spent(s, len(nodes), rnd) if s.dp else None
        status.update(round=rnd, elapsed_s=round(time.perf_counter() - t0, 1), epsilon=eps)
        return MetricRecord({"round": rnd})

    result = strategy.start(grid=grid, initial_arrays=ArrayRecord({k: Array(v) for k, v in init.items()}),
                            num_rounds=s.num_server_rounds, timeout=s.round_timeout, train_config=train_cfg,
                            evaluate_fn=progress)
    for rnd in range(1, s.num_server_rounds + 1):
        m = result.train_metrics_clientapp.get(rnd)
        if m is None:
            raise FederatedRunError(f"round {rnd}: no usable replies from the devices (see the SuperLink log)")
        if not s.dp:  # under DP the devices' losses are not aggregated: no accounting covers them
            losses.append(get_float(m, "train-loss"))
    weights = task.to_numpy(result.arrays)
    scorer = EmbeddingScorer.from_weights(weights, norm.mean, norm.std, modality=s.modality,
                                          feature_version=spec.feature_version)
    outcome = RunOutcome(modality=s.modality, strategy=s.strategy, rounds=s.num_server_rounds, num_devices=len(nodes),
                         bytes_per_client_per_round=nbytes, download_bytes_per_client_per_round=nbytes,
                         wall_seconds=round(time.perf_counter() - t0, 2), train_loss=losses,
                         server_momentum=s.server_momentum, scorer=scorer, **privacy_fields(s, len(nodes)))
    return finish_run(outcome, s, status)


def privacy_fields(s: RunSettings, num_nodes: int) -> dict[str, Any]:
    """A finished run's DP fields of `RunOutcome` (all None without DP; an infinite epsilon as None)."""
    if not s.dp:
        return {"dp": False, "epsilon": None, "delta": None, "noise_multiplier": None, "clipping_norm": None,
                "dp_accounting": None}
    eps = epsilon_spent(s, num_nodes, s.num_server_rounds)
    return {"dp": True, "epsilon": eps if math.isfinite(eps) else None, "delta": s.dp_delta,
            "noise_multiplier": s.noise_multiplier, "clipping_norm": s.clipping_norm,
            "dp_accounting": dp_accounting(s, num_nodes)}


def finish_run(outcome: RunOutcome, s: RunSettings, status: StatusFile) -> RunOutcome:
    """Publish the outcome to the registry (when the run has one) and record the run as done."""
    if s.registry:
        outcome.version = publish(outcome, s)
    status.update(state="done", round=s.num_server_rounds, version=outcome.version, summary=outcome.summary())
    return outcome


#: what a DP run releases without noise, outside its (epsilon, delta) guarantee
OUTSIDE_DP = ("the population feature mean and standard deviation (exact, from the scaling round; stored with the "
              "model), which reveal each device's feature sums to the SuperLink",
              "the number of devices (the fixed denominator m0 and num_devices)")


def dp_accounting(s: RunSettings, num_nodes: int) -> dict[str, Any]:
    """What the epsilon of a DP run covers, and what it does not (model card, metrics.json)."""
    return {"adjacency": "add/remove one device (all of one person's data)",
            "estimator": "fixed denominator: global + sum of clipped updates / m0",
            "fixed_devices_per_round": sampled_per_round(s, num_nodes),
            "sensitivity": "clipping_norm / m0 per round",
            "noise_std": "noise_multiplier * clipping_norm / m0",
            "covers": "the model updates of every round",
            "not_released": "per-round device training loss",
            "outside_dp_guarantee": list(OUTSIDE_DP),
            # a fixed seed (benchmarks) makes the noise known to whoever knows the seed: no privacy then
            "noise_seed": s.dp_noise_seed if s.dp_noise_seed >= 0 else None}


def model_card(o: RunOutcome) -> str:
    if o.dp and o.epsilon is not None:
        m0 = (o.dp_accounting or {}).get("fixed_devices_per_round", o.num_devices)
        dp = (f"client-level DP (add/remove one device) on the model updates: each device's update clipped to "
              f"{o.clipping_norm}, aggregate = sum of the clipped updates / {m0} devices (fixed denominator, "
              f"sensitivity {o.clipping_norm}/{m0}), Gaussian noise multiplier {o.noise_multiplier}; "
              f"epsilon {o.epsilon:.2f} at delta {o.delta}. Released OUTSIDE this guarantee: "
              f"{'; '.join(OUTSIDE_DP)}. The devices' training losses were not released")
        seed = (o.dp_accounting or {}).get("noise_seed")
        if seed is not None:
            dp = (f"NOT PRIVATE: the DP noise was drawn from the fixed seed {seed} (a benchmark setting), so anyone "
                  f"who knows the seed can take it off and the guarantee below does not hold. {dp}")
    elif o.dp:
        dp = "DP noise was added, but too little for a finite epsilon: no differential privacy"
    else:
        dp = "no differential privacy"
    if o.secure_aggregation:
        sa = o.secure_aggregation
        per_round = sa.get("devices_per_round") or []
        summed = (f" (each round's sum held {min(per_round)}-{max(per_round)} of them)" if per_round and
                  (min(per_round) < o.num_devices) else "")
        dp += (f"; updates combined by secure aggregation (SecAgg+, {sa['num_shares']} shares, reconstruction "
               f"threshold {sa['reconstruction_threshold']}): the server saw only each round's sum of masked updates{summed}, "
               f"never one device's update or training loss")
    scaling = ("" if o.dp else " The one-off scaling round reveals per-device window counts, feature sums and "
               "sums of squares to the SuperLink.")
    return (f"# Federated {o.modality} embedding model\n\n"
            f"- Trained with Flower ({o.strategy}, server momentum {o.server_momentum}) over {o.num_devices} devices, {o.rounds} rounds; each device held "
            f"only its owner's {o.modality} feature windows; raw signals never left the devices.\n"
            f"- Model: 2-layer MLP embedding, fixed-prototype cosine-softmax loss (docs/federated.md).\n"
            f"- Privacy: {dp}.{scaling}\n"
            f"- Scoring: enrol = mean embedding, compare = cosine similarity (higher is more genuine).\n"
            f"- Limits: accuracy depends on how many devices took part; check the federated bench before activating.\n")


def publish(o: RunOutcome, s: RunSettings) -> str:
    """Write the global scorer to the model registry (not activated) and return its version.

    Raises `FederatedRunError` (nothing written) when a weight is NaN or infinite.
    """
    from modalities.registry import ModelRegistry

    assert o.scorer is not None
    bad = sorted(k for k, v in o.scorer.get_state().items() if not np.isfinite(v).all())
    if bad:  # such a model can never be activated: fail the run instead of publishing it
        raise FederatedRunError(f"the global model has non-finite values (NaN or inf) in {', '.join(bad)} after "
                                f"{o.rounds} round(s); nothing was published (training diverged: lower lr, "
                                f"server-lr or server-momentum, check noise-multiplier and clipping-norm)")
    metrics = {k: v for k, v in o.summary().items() if k != "version"}
    source = f"federated:{o.strategy}{'+dp' if o.dp else ''}{'+secagg' if o.secure_aggregation else ''}"
    return ModelRegistry(s.registry).publish(o.modality, o.scorer, metrics=metrics, card=model_card(o), source=source)
