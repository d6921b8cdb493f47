"""SecAgg+ option: the same training, with Flower's legacy API (the only one with SecAgg+).

The server sees only the sum of the masked, quantised updates (Bell et al. 2020, SecAgg+;
`SecAggPlusWorkflow` + `secaggplus_mod`), never one device's model. The legacy API takes
scalar configs only, so the population scaling travels as float32 bytes, and each device's
slot comes from its node config (``slot`` or the simulation's ``partition-id``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flwr.app import Context, MessageType
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.compat.common.parameter import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Grid, LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import ServerApp

from federated import task
from federated.config import RunSettings
from federated.features import feature_spec
from federated.orchestration import population_scaling, wait_for_nodes
from federated.scorer import EmbeddingScorer


def _slot(node_config: Mapping[str, Any]) -> int:
    for key in ("slot", "partition-id"):
        if key in node_config:
            return int(node_config[key])
    raise ValueError("slot: SecAgg+ devices need node config 'slot' (or a simulation partition-id)")


class DeviceClient(NumPyClient):
    """One device: local training from the global weights, update returned for masking."""

    def __init__(self, X: np.ndarray, slot: int, names: list[str]) -> None:
        self.X, self.slot, self.names = X, slot, names

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        ms = np.frombuffer(config["norm"], dtype=np.float32)
        d = ms.size // 2
        X = task.Normaliser(ms[:d], ms[d:])(self.X)
        weights = dict(zip(self.names, parameters, strict=True))
        net = task.make_net(X.shape[1], hidden=int(config["hidden"]))
        task.set_weights(net, weights)
        tc = task.TrainConfig(epochs=int(config["local-epochs"]), lr=float(config["lr"]),
                              batch_size=int(config["batch-size"]),
                              seed=int(config["seed"]) * 100003 + int(config["server-round"]) * 1009 + self.slot)
        loss = task.train(net, X, np.full(len(X), self.slot), task.prototypes(int(config["num-slots"])), tc)
        return list(task.get_weights(net).values()), len(X), {"train-loss": float(loss)}


def make_client_app(defaults: Mapping[str, Any] | None = None) -> ClientApp:
    base = dict(defaults or {})

    def client_fn(context: Context) -> Any:
        run = {**base, **dict(context.run_config)}
        s = RunSettings.from_config(run)
        X = task.load_device_windows(dict(context.node_config), s.modality, str(run.get("feature-dir", "")))
        names = list(task.initial_weights(X.shape[1], s.hidden, s.seed))
        return DeviceClient(X, _slot(context.node_config), names).to_client()

    def scaling_mod(msg: Any, context: Context, call_next: Any) -> Any:
        """The scaling round (a query) is answered by the Message-API client app."""
        if msg.metadata.message_type == MessageType.QUERY:
            from federated.client_app import make_app

            return make_app(base)(msg, context)
        return call_next(msg, context)

    return ClientApp(client_fn=client_fn, mods=[scaling_mod, secaggplus_mod])


class _KeepFinal(LegacyFedAvg):
    """Legacy FedAvg that remembers the last aggregate (the global model)."""

    final: list[np.ndarray] | None = None

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        params, metrics = super().aggregate_fit(server_round, results, failures)
        if params is not None:
            self.final = parameters_to_ndarrays(params)
        return params, metrics


def make_server_app(defaults: Mapping[str, Any] | None = None,
                    on_result: Callable[[EmbeddingScorer], None] | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        s = RunSettings.from_config(defaults or {}, dict(context.run_config))
        nodes = wait_for_nodes(grid, s.min_nodes, s.round_timeout)
        norm = population_scaling(grid, nodes, s)
        spec = feature_spec(s.modality)
        init = task.initial_weights(spec.dim, s.hidden, s.seed)
        norm_bytes = np.concatenate([norm.mean, norm.std]).astype(np.float32).tobytes()

        def fit_config(rnd: int) -> dict[str, Any]:
            return {"norm": norm_bytes, "hidden": s.hidden, "local-epochs": s.local_epochs, "lr": s.lr,
                    "batch-size": s.batch_size, "seed": s.seed, "num-slots": s.num_slots, "server-round": rnd}

        strategy = _KeepFinal(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=s.min_nodes,
                              min_evaluate_clients=0, min_available_clients=s.min_nodes,
                              initial_parameters=ndarrays_to_parameters(list(init.values())),
                              on_fit_config_fn=fit_config)
        legacy = LegacyContext(context, config=ServerConfig(num_rounds=s.num_server_rounds), strategy=strategy)
        workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=s.num_shares,
                                                                    reconstruction_threshold=s.reconstruction_threshold))
        workflow(grid, legacy)
        if strategy.final is None:
            raise RuntimeError("SecAgg+ produced no global model (too many devices dropped?)")
        weights = dict(zip(init, strategy.final, strict=True))
        scorer = EmbeddingScorer.from_weights(weights, norm.mean, norm.std, modality=s.modality,
                                              feature_version=spec.feature_version)
        if on_result is not None:
            on_result(scorer)

    return app


client_app = make_client_app()
server_app = make_server_app()
