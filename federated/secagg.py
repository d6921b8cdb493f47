"""SecAgg+: the same training, with Flower's legacy API (the only one with SecAgg+).

The server sees only the sum of the devices' masked, quantised updates (Bell et al. 2020,
SecAgg+; `SecAggPlusWorkflow` + `secaggplus_mod`), never one device's model. This is the app
of `cadence federated run --secagg` (``federated/app-secagg``: `server_app`, `client_app`) and
of the simulation's SecAgg+ option (`simulation.simulate_secagg`).

As in the plain app (`orchestration.run_training`): the devices of the scaling round are the
run's devices, slots follow their opaque keys and reach each device in its own fit config,
and every device counts once (it reports one example, so the workflow's weighted sum is the
plain sum). Devices send no training loss: the server gets nothing of one device but its
masked vector. The legacy API takes scalar configs only, so the population scaling travels
as float32 bytes.

With DP (`dp`), each device clips its update to `clipping-norm` before masking, and the
server turns the unmasked mean into DP-FedAvg's fixed-denominator estimate with Gaussian
noise (`DPRelease`, the same estimator and noise as `strategies/dp.py`): the server never sees
one update, and the published model carries the epsilon of the plain app's DP runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from flwr.app import Context, MessageType
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import FitIns
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common.parameter import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Grid, LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import ServerApp
from flwr.supercore.differential_privacy import compute_clip_model_update, compute_stdv

from federated import task
from federated.config import RunSettings, status_path
from federated.features import feature_spec
from federated.orchestration import (
    FederatedRunError,
    RunOutcome,
    StatusFile,
    finish_run,
    population_scaling,
    privacy_fields,
    wait_for_nodes,
)
from federated.scorer import EmbeddingScorer
from federated.strategies.dp import epsilon_spent, sampled_per_round
from federated.strategies.slots import slot_order

#: Flower's SecAgg+ quantisation (its defaults, recorded with the model): every weight is
#: clipped to +-CLIPPING_RANGE and mapped to QUANTIZATION_RANGE levels before masking
CLIPPING_RANGE = 8.0
QUANTIZATION_RANGE = 2**22
#: every device reports weight 1; Flower scales each update by weight / max_weight before
#: quantising, so its default of 1000 would cost three decimal digits of every weight
MAX_WEIGHT = 1.0


class DeviceClient(NumPyClient):
    """One device: local training from the global weights, the update returned for masking."""

    def __init__(self, X: np.ndarray, names: list[str]) -> None:
        self.X, self.names = X, names

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        if "slot" not in config:  # every fit config of `SecAggFedAvg` has one
            raise ValueError("slot: the server sent no slot for this device")
        slot = int(config["slot"])
        ms = np.frombuffer(config["norm"], dtype=np.float32)
        d = ms.size // 2
        X = task.Normaliser(ms[:d], ms[d:])(self.X)
        weights = dict(zip(self.names, parameters, strict=True))
        net = task.make_net(X.shape[1], hidden=int(config["hidden"]))
        task.set_weights(net, weights)
        tc = task.TrainConfig(epochs=int(config["local-epochs"]), lr=float(config["lr"]),
                              batch_size=int(config["batch-size"]),
                              seed=task.round_seed(int(config["seed"]), int(config["server-round"]), slot))
        task.train(net, X, np.full(len(X), slot), task.prototypes(int(config["num-slots"])), tc)
        trained = list(task.get_weights(net).values())
        if "clipping-norm" in config:  # DP: the update (trained - global) leaves clipped, then masked
            compute_clip_model_update(trained, parameters, float(config["clipping-norm"]))
        # one example: equal weights, no window count in the rounds; no loss: nothing of the training in the clear
        return trained, 1, {}


def make_client_app(defaults: Mapping[str, Any] | None = None, *, outer_mods: Sequence[Any] = ()) -> ClientApp:
    """The SecAgg+ ClientApp; `outer_mods` run first on every message (tests inject dropouts with them)."""
    base = dict(defaults or {})

    def client_fn(context: Context) -> Any:
        run = {**base, **dict(context.run_config)}
        s = RunSettings.from_config(run)
        X = task.load_device_windows(dict(context.node_config), s.modality, str(run.get("feature-dir", "")))
        names = list(task.initial_weights(X.shape[1], s.hidden, s.seed))
        return DeviceClient(X, names).to_client()

    def scaling_mod(msg: Any, context: Context, call_next: Any) -> Any:
        """The scaling round (a query) is answered by the Message-API client app."""
        if msg.metadata.message_type == MessageType.QUERY:
            from federated.client_app import make_app

            return make_app(base, in_secagg=True)(msg, context)
        return call_next(msg, context)

    return ClientApp(client_fn=client_fn, mods=[*outer_mods, scaling_mod, unmask_guard, secaggplus_mod])


class UnmaskRefused(RuntimeError):
    """The server asked this device for key shares that would unmask one device's update."""


def unmask_guard(msg: Any, context: Context, call_next: Any) -> Any:
    """Refuse an unmasking request naming a device both as still active and as dropped out, or this device as dropped.

    For an active device the server may learn its self-mask seed, for a dropped one its
    secret key; both for one device take its whole mask off, and Flower's `secaggplus_mod`
    hands over whatever is asked. A server that follows the protocol never asks this. Only
    a partial defence: a server may still tell different devices different lists.
    """
    cfg = msg.content.config_records.get(RECORD_KEY_CONFIGS) if msg.metadata.message_type == MessageType.TRAIN else None
    if cfg is not None and cfg.get(Key.STAGE) == Stage.UNMASK:
        dead = set(cfg.get(Key.DEAD_NODE_ID_LIST, []))
        both = set(cfg.get(Key.ACTIVE_NODE_ID_LIST, [])) & dead
        if both:
            raise UnmaskRefused(f"unmasking: {len(both)} device(s) listed as both active and dropped out; that "
                                f"would reveal their own update, so this device sends no key shares")
        if context.node_id in dead:  # it is answering: alive, whatever the server says of it to others
            raise UnmaskRefused("unmasking: this device is listed as dropped out while it is asked for shares; the "
                                "server may be telling the others it is active, so it sends no key shares")
    return call_next(msg, context)


class DPRelease:
    """DP-FedAvg's fixed-denominator estimate from a SecAgg+ mean, plus Gaussian noise.

    SecAgg+ gives the mean of the `k` clipped models that took part; ``g + k (mean - g) / m0``
    is ``g`` plus the sum of the clipped updates over the `m0` devices fixed before training
    (sensitivity ``C / m0`` whoever drops out), and the noise has std ``z C / m0``: the
    mechanism `strategies/dp.py` runs on the plain app, so the same accountant applies.
    """

    def __init__(self, s: RunSettings, m0: int) -> None:
        if m0 < 1:
            raise ValueError(f"m0: the fixed number of devices per round must be >= 1, got {m0}")
        self.m0 = m0
        self.std = compute_stdv(s.noise_multiplier, s.clipping_norm, m0)
        # a seed only for benchmarks (anyone knowing it can take the noise off); else OS entropy
        self.rng = np.random.default_rng(s.dp_noise_seed if s.dp_noise_seed >= 0 else None)

    def release(self, g: list[np.ndarray], mean: list[np.ndarray], k: int) -> list[np.ndarray]:
        out = []
        for w0, m in zip(g, mean, strict=True):
            w0 = np.asarray(w0, np.float64)
            est = w0 + (np.asarray(m, np.float64) - w0) * (k / self.m0)
            out.append((est + self.rng.normal(0.0, self.std, w0.shape)).astype(np.float32))
        return out


class SecAggWorkflow(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, with two changes for devices that drop out, and a record of halts.

    - A device that shared no keys (it dropped out at set-up or while keys were shared)
      exchanged no masks with anyone (a device masks only with those whose key shares it
      received), so it is left out of the round instead of being unmasked as "dead": Flower
      1.41 asked for its shares, found none, and halted the round whatever the threshold.
    - The sum is unmasked only when at least `min_devices` devices sent their masked update:
      the sum of fewer is (nearly) one device's update.
    - Where a round halts, and how many devices had answered, is kept in `halts` (Flower only
      logs it) for the run's error.
    """

    def __init__(self, *, min_devices: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.min_devices = min_devices
        self.halts: dict[int, str] = {}

    def __call__(self, grid: Grid, context: Context) -> None:
        if not isinstance(context, LegacyContext):
            raise TypeError(f"Expect a LegacyContext, but get {type(context).__name__}.")
        state = WorkflowState()
        rnd = int(context.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND])  # type: ignore[arg-type]
        sampled = 0  # counted after set-up: Flower deletes `nid_to_fitins` in the masked-update stage
        for name, step in (("set-up", self.setup_stage), ("key-sharing", self.share_keys_stage),
                           ("masked-update", self.collect_masked_vectors_stage), ("unmasking", self.unmask_stage)):
            ok = step(grid, context, state)
            if name == "set-up":
                sampled = len(getattr(state, "nid_to_fitins", {}))
            if not ok:
                self.halts[rnd] = (f"halted at its {name} stage with {len(state.active_node_ids)} of the round's "
                                   f"{sampled} devices still answering" if sampled else
                                   "did not start: fewer of the run's devices than min-nodes were connected")
                return

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        ok = super().share_keys_stage(grid, context, state)
        state.sampled_node_ids = set(state.active_node_ids)  # only they can be in the sum, or be unmasked
        return ok

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        if len(state.active_node_ids) < self.min_devices:
            return False  # never unmask a sum of too few devices
        return super().unmask_stage(grid, context, state)


class SecAggFedAvg(LegacyFedAvg):
    """Legacy FedAvg over the run's devices only, each fit config carrying that device's slot.

    Keeps the last aggregate (the global model) and the rounds that completed: a round whose
    SecAgg+ protocol halted (too few devices to unmask) never reaches `aggregate_fit`.
    """

    def __init__(self, *, devices: Sequence[int], slots: Mapping[int, int],
                 on_round: Callable[[int], None] | None = None, dp: DPRelease | None = None,
                 halted: Callable[[int], str] = lambda rnd: f"round {rnd}: SecAgg+ produced no aggregate",
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.devices, self.slots, self.on_round, self.dp = set(devices), dict(slots), on_round, dp
        self.halted = halted
        self.final: list[np.ndarray] | None = None
        #: how many devices' updates each round's sum held (devices may drop out of a round)
        self.summed: list[int] = []
        #: the global model of the round under way (what the devices' updates are relative to)
        self.current = parameters_to_ndarrays(self.initial_parameters) if self.initial_parameters else None
        self.rounds_done: list[int] = []

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[tuple[Any, FitIns]]:
        if server_round > 1 and server_round - 1 not in self.rounds_done:
            # the workflow only logs a halted round and goes on: stop here, no device trains for nothing
            raise FederatedRunError(self.halted(server_round - 1))
        config = self.on_fit_config_fn(server_round) if self.on_fit_config_fn is not None else {}
        # SuperNodes that joined after the scaling round wait for the next run (the plain app's `Quorum` too)
        clients = sorted((c for c in client_manager.all().values() if c.node_id in self.devices),
                         key=lambda c: self.slots[c.node_id])
        if len(clients) < self.min_fit_clients:
            return []  # the workflow cancels the round; `run_secagg_training` names it
        return [(c, FitIns(parameters, {**config, "slot": self.slots[c.node_id]})) for c in clients]

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        params, metrics = super().aggregate_fit(server_round, results, failures)
        if params is None:
            return params, metrics
        model = parameters_to_ndarrays(params)  # the mean of the models that took part (SecAgg+ unmasked only it)
        if self.dp is not None:
            if self.current is None:
                raise FederatedRunError("dp: no global model to measure the updates from")
            model = self.dp.release(self.current, model, len(results))
            params = ndarrays_to_parameters(model)
        self.final = self.current = model
        self.rounds_done.append(server_round)
        self.summed.append(len(results))
        if self.on_round is not None:
            self.on_round(server_round)
        return params, metrics


def shares_per_device(num_shares: int, num_devices: int) -> int:
    """The devices each device's secrets are shared with (itself included), as Flower builds them.

    Flower makes an even share count odd (when it is not the device count) and takes the
    neighbours at offsets -k..k of a ring of the round's devices.
    """
    return min(2 * (num_shares // 2) + 1, num_devices)


def masked_update_nbytes(weights: Mapping[str, np.ndarray]) -> int:
    """Bytes of one device's masked update as Flower serialises it (int64 arrays and the weight factor)."""
    from flwr.common.secure_aggregation.ndarrays_arithmetic import factor_combine

    quantized = [np.zeros(w.shape, np.int64) for w in weights.values()]
    return sum(len(t) for t in ndarrays_to_parameters(factor_combine(1, quantized)).tensors)


def secure_aggregation_record(s: RunSettings, num_devices: int) -> dict[str, Any]:
    """What the server saw and what protected the rest (metrics.json, model card)."""
    return {"protocol": "SecAgg+ (Bell et al. 2020), Flower SecAggPlusWorkflow + secaggplus_mod",
            "num_shares": s.num_shares, "shares_per_device": shares_per_device(s.num_shares, num_devices),
            "reconstruction_threshold": s.reconstruction_threshold,
            "clipping_range": CLIPPING_RANGE, "quantization_range": QUANTIZATION_RANGE,
            "server_sees": "the sum of the devices' masked updates each round, never one device's update, "
                           "against a server that follows the protocol; the server together with other devices "
                           "of a round can learn more (with all but one of them: the last one's update)",
            "released_in_clear": ["each device's window count, feature sum and sum of squares (the scaling round)",
                                  "each device's opaque device key", "which devices took part in each round"],
            "quantization": "stochastic rounding: a run is reproducible to about 1e-5, not bit for bit"}


def run_secagg_training(grid: Grid, context: Context, s: RunSettings) -> RunOutcome:
    """Scaling round, then `num-server-rounds` SecAgg+ rounds; any error is written to the status file."""
    status = StatusFile(s.status_file, context.run_id)
    try:
        return _train(grid, context, s, status)
    except BaseException as exc:
        status.fail(exc)
        raise


def _train(grid: Grid, context: Context, s: RunSettings, status: StatusFile) -> RunOutcome:
    t0 = time.perf_counter()
    status.update(state="waiting", modality=s.modality, strategy=s.strategy, secagg=True,
                  num_rounds=s.num_server_rounds, round=0)
    nodes = wait_for_nodes(grid, s.min_nodes, s.round_timeout)
    keys: dict[int, str] = {}
    norm = population_scaling(grid, nodes, s, keys)
    nodes = sorted(keys)  # the run's devices: those that answered the scaling round
    spec = feature_spec(s.modality)
    if norm.mean.shape[0] != spec.dim:
        raise FederatedRunError(f"data: devices hold {norm.mean.shape[0]}-d windows, {s.modality} features are {spec.dim}-d")
    slots = slot_order(keys, s.num_slots)
    init = task.initial_weights(spec.dim, s.hidden, s.seed)
    norm_bytes = np.concatenate([norm.mean, norm.std]).astype(np.float32).tobytes()
    status.update(state="running", num_devices=len(nodes))

    def fit_config(rnd: int) -> dict[str, Any]:
        clip = {"clipping-norm": s.clipping_norm} if s.dp else {}
        return {"norm": norm_bytes, "hidden": s.hidden, "local-epochs": s.local_epochs, "lr": s.lr,
                "batch-size": s.batch_size, "seed": s.seed, "num-slots": s.num_slots, "server-round": rnd, **clip}

    def progress(rnd: int) -> None:
        eps = epsilon_spent(s, len(nodes), rnd) if s.dp else None
        status.update(round=rnd, elapsed_s=round(time.perf_counter() - t0, 1), epsilon=eps)

    strategy = SecAggFedAvg(devices=nodes, slots=slots, fraction_fit=1.0, fraction_evaluate=0.0,
                            min_fit_clients=s.min_nodes, min_evaluate_clients=0, min_available_clients=s.min_nodes,
                            initial_parameters=ndarrays_to_parameters(list(init.values())),
                            on_fit_config_fn=fit_config, on_round=progress,
                            dp=DPRelease(s, sampled_per_round(s, len(nodes))) if s.dp else None)
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=s.num_server_rounds,
                                                       round_timeout=s.round_timeout),
                           strategy=strategy)
    secure = SecAggWorkflow(min_devices=s.min_nodes, num_shares=s.num_shares,
                            reconstruction_threshold=s.reconstruction_threshold, clipping_range=CLIPPING_RANGE,
                            quantization_range=QUANTIZATION_RANGE, max_weight=MAX_WEIGHT, timeout=s.round_timeout)

    def halted(rnd: int) -> str:
        why = secure.halts.get(rnd, "produced no aggregate")
        return (f"round {rnd}: SecAgg+ {why} (the run has {len(nodes)} devices; min-nodes {s.min_nodes}, "
                f"reconstruction-threshold {s.reconstruction_threshold}, round-timeout {s.round_timeout:g} s); "
                f"nothing was published (details: `flwr log RUN_ID --show` with FLWR_HOME=WORKDIR/flwr-home)")

    strategy.halted = halted
    DefaultWorkflow(fit_workflow=secure)(grid, legacy)
    missing = [r for r in range(1, s.num_server_rounds + 1) if r not in strategy.rounds_done]
    if missing or strategy.final is None:
        raise FederatedRunError(halted(missing[0] if missing else 1))
    weights = dict(zip(init, strategy.final, strict=True))
    scorer = EmbeddingScorer.from_weights(weights, norm.mean, norm.std, modality=s.modality,
                                          feature_version=spec.feature_version)
    nbytes = task.weights_nbytes(init)
    outcome = RunOutcome(modality=s.modality, strategy=s.strategy, rounds=s.num_server_rounds, num_devices=len(nodes),
                         bytes_per_client_per_round=masked_update_nbytes(init),  # up: int64, masked
                         download_bytes_per_client_per_round=nbytes,  # down: the float32 global model
                         wall_seconds=round(time.perf_counter() - t0, 2), scorer=scorer,
                         **privacy_fields(s, len(nodes)),
                         secure_aggregation={**secure_aggregation_record(s, len(nodes)),
                                             "devices_per_round": list(strategy.summed)})
    return finish_run(outcome, s, status)


def make_server_app(defaults: Mapping[str, Any] | None = None,
                    on_result: Callable[[RunOutcome], None] | None = None) -> ServerApp:
    """A SecAgg+ ServerApp whose settings are `defaults` overridden by the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        merged = {**(defaults or {}), **dict(context.run_config)}
        try:
            settings = RunSettings.from_config(merged)
            settings.check_secagg_run()
        except Exception as exc:  # a bad value: say so where `cadence federated run` is waiting
            template = str(merged.get("status-file", ""))
            StatusFile(str(status_path(template, context.run_id)) if template else "", context.run_id).fail(exc)
            raise
        if settings.status_file:
            settings = replace(settings, status_file=str(status_path(settings.status_file, context.run_id)))
        outcome = run_secagg_training(grid, context, settings)
        if on_result is not None:
            on_result(outcome)

    return app


client_app = make_client_app()
server_app = make_server_app()
