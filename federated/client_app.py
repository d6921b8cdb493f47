"""Flower ClientApp (Message API): one device, one person's feature windows. Wiring only.

Handlers: ``query`` returns this device's feature sums (for the population scaling) and its opaque
device key (`task.device_key`, by which the server orders slots),
``train`` runs local training from the global model (`federated.task.train`), ``evaluate``
reports on-device loss/accuracy. Client-side DP clipping is a mod that acts only when the
server asks for it. Start with ``flwr-clientapp`` via a SuperNode, or in simulation.

A device whose SuperNode has node config ``secagg-only`` (`cadence federated supernode
--secagg-only`, what the desktop app starts) gets an error reply from this app for every
message, before its data is read: its update would reach the server readable. It takes part
in SecAgg+ runs only (`federated/secagg.py`, whose scaling round this app answers with
`in_secagg`); its SuperNode also refuses any app but that one (`federated.pinned_app`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

from federated import task
from federated.features import MIN_SUMMARY_WINDOWS
from federated.records import array_record, config_record, get_float, get_floats, get_int, get_str

KEY_CLIPPING_NORM = "clipping_norm"
#: node config of a device that takes part in SecAgg+ runs only
SECAGG_ONLY = "secagg-only"


class TooFewWindows(RuntimeError):
    """Too few windows on this device for its feature sums to stay a summary."""


class PlainRunRefused(RuntimeError):
    """A secagg-only device was asked to take part in a run without secure aggregation."""


def secagg_only(node_config: Mapping[str, Any]) -> bool:
    """Whether this device refuses runs without SecAgg+ (node config ``secagg-only``, true or "true")."""
    value = node_config.get(SECAGG_ONLY, False)
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def optional_clipping_mod(msg: Message, ctxt: Context, call_next: Any) -> Message:
    """Apply Flower's `fixedclipping_mod` only to DP train rounds (config has a clipping norm)."""
    if msg.metadata.message_type == MessageType.TRAIN:
        cfg: ConfigRecord | dict[str, Any] = next(iter(msg.content.config_records.values()), {})
        if KEY_CLIPPING_NORM in cfg:
            return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def _arrays(weights: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in weights.items()})


def make_app(defaults: Mapping[str, Any] | None = None, *, in_secagg: bool = False) -> ClientApp:
    """A ClientApp; `defaults` (e.g. the simulation's ``feature-dir``) sit under the run config.

    `in_secagg`: answering the scaling round of a SecAgg+ run (`federated/secagg.py`), which a
    secagg-only device takes part in; otherwise such a device refuses every message.
    """
    base = dict(defaults or {})

    def refuse_plain_runs(msg: Message, context: Context, call_next: Any) -> Message:
        if not in_secagg and secagg_only(context.node_config):
            # the reason reaches the operator (the scaling round's error names it); nothing of the data is read
            raise PlainRunRefused("this device takes part in SecAgg+ runs only (its SuperNode was started with "
                                  "--secagg-only): start the run with `cadence federated run --secagg`")
        return call_next(msg, context)

    app = ClientApp(mods=[refuse_plain_runs, optional_clipping_mod])

    def windows(context: Context, cfg: ConfigRecord) -> np.ndarray:
        run = {**base, **dict(context.run_config)}
        return task.load_device_windows(dict(context.node_config), get_str(cfg, "modality"), str(run.get("feature-dir", "")))

    @app.query()
    def stats(msg: Message, context: Context) -> Message:
        cfg = config_record(msg.content)
        X = windows(context, cfg)
        if len(X) < MIN_SUMMARY_WINDOWS:  # the reason reaches the operator; the sums stay here
            raise TooFewWindows(f"this device holds {len(X)} feature window(s): its feature sums (the scaling round, "
                                f"not masked) would give them back, so it takes part from {MIN_SUMMARY_WINDOWS} on")
        n, s, ss = task.feature_sums(X)
        content = RecordDict({"sums": ArrayRecord({"sum": Array(s), "sumsq": Array(ss)}),
                              "metrics": MetricRecord({"num-examples": n}),
                              "device": ConfigRecord({"key": task.device_key(dict(context.node_config))})})
        return Message(content=content, reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = config_record(msg.content)
        norm = task.Normaliser(get_floats(cfg, "norm-mean"), get_floats(cfg, "norm-std"))
        X = norm(windows(context, cfg))
        global_w = task.to_numpy(array_record(msg.content, "arrays"))
        net = task.make_net(X.shape[1], hidden=get_int(cfg, "hidden"))
        task.set_weights(net, global_w)
        slot = get_int(cfg, "slot")
        tc = task.TrainConfig(epochs=get_int(cfg, "local-epochs"), lr=get_float(cfg, "lr"),
                              batch_size=get_int(cfg, "batch-size"), proximal_mu=get_float(cfg, "proximal-mu", 0.0),
                              seed=task.round_seed(get_int(cfg, "seed"), get_int(cfg, "server-round"), slot))
        loss = task.train(net, X, np.full(len(X), slot), task.prototypes(get_int(cfg, "num-slots")), tc, global_w)
        weights = task.get_weights(net)
        metrics = MetricRecord({"num-examples": int(len(X)), "unit-weight": 1, "train-loss": float(loss),
                                "update-bytes": task.weights_nbytes(weights)})
        return Message(content=RecordDict({"arrays": _arrays(weights), "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        cfg = config_record(msg.content)
        norm = task.Normaliser(get_floats(cfg, "norm-mean"), get_floats(cfg, "norm-std"))
        X = norm(windows(context, cfg))
        net = task.make_net(X.shape[1], hidden=get_int(cfg, "hidden"))
        task.set_weights(net, task.to_numpy(array_record(msg.content, "arrays")))
        res = task.test(net, X, get_int(cfg, "slot"), task.prototypes(get_int(cfg, "num-slots")))
        metrics = MetricRecord({"num-examples": int(len(X)), "unit-weight": 1, "eval-loss": res["loss"],
                                "eval-accuracy": res["accuracy"]})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app


app = make_app()
