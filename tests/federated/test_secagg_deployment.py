"""SecAgg+ on the deployment engine (`cadence federated run --secagg`): fast tests, no Flower process started.

The end-to-end run (a real SuperLink and two SuperNodes) is in test_deployment.py; the
protocol's arithmetic (the aggregate equals the clear mean) in test_simulation.py.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from flwr.common import Parameters
from flwr.compat.common.parameter import ndarrays_to_parameters

from federated import deployment as d
from federated import secagg
from federated.config import RunSettings, SettingsError
from federated.orchestration import FederatedRunError, RunOutcome, model_card
from tests.federated.conftest import _cli, _run_args, _write


def _app(app_dir: Path) -> dict[str, Any]:
    return tomllib.loads((app_dir / "pyproject.toml").read_text())["tool"]["flwr"]["app"]


def test_the_secagg_app_declares_the_plain_apps_settings_and_starts_the_secagg_components() -> None:
    """`run` sends the same run config to either app; an undeclared key would be refused by the SuperLink."""
    assert d.app_config(d.SECAGG_APP_DIR) == d.app_config(d.APP_DIR)
    components = _app(d.SECAGG_APP_DIR)["components"]
    assert components == {"serverapp": "federated.secagg:server_app", "clientapp": "federated.secagg:client_app"}
    from flwr.client.mod import secaggplus_mod

    assert secaggplus_mod in secagg.client_app._mods  # every device masks its update


def test_cli_secagg_submits_the_secagg_app_with_its_shares(tmp_path: Path, fake_flower: dict[str, Any]) -> None:
    def write(run_id: str, path: Path, config: dict[str, Any]) -> None:
        _write(path, {"run_id": run_id, "state": "done", "round": 3, "num_rounds": 3, "version": "v0001"})

    fake_flower.update(next_id=["1", "2"], write=write)
    code, out = _cli(*_run_args(tmp_path, "--timeout", "20", "--secagg", "--min-nodes", "3", "--num-shares", "5",
                                "--reconstruction-threshold", "3"))
    assert code == 0, out
    assert "published keystroke v0001" in out and "SecAgg+" in out
    assert fake_flower["apps"] == [d.SECAGG_APP_DIR]
    sent = fake_flower["submitted"][0]
    assert (sent["num-shares"], sent["reconstruction-threshold"], sent["min-nodes"]) == (5, 3, 3)
    code, out = _cli(*_run_args(tmp_path, "--timeout", "20"))  # without --secagg: the plain app
    assert code == 0, out
    assert fake_flower["apps"] == [d.SECAGG_APP_DIR, d.APP_DIR] and "SecAgg+" not in out


def test_cli_secagg_waits_for_three_devices_unless_told(tmp_path: Path, fake_flower: dict[str, Any]) -> None:
    def write(run_id: str, path: Path, config: dict[str, Any]) -> None:
        _write(path, {"run_id": run_id, "state": "done", "round": 3, "num_rounds": 3, "version": "v0001"})

    fake_flower.update(next_id=["1", "2", "3"], write=write)
    for extra, expected in ((("--secagg",), 3), ((), 2), (("--secagg", "--min-nodes", "4"), 4)):
        code, out = _cli(*_run_args(tmp_path, "--timeout", "20", *extra))
        assert code == 0, out
        assert fake_flower["submitted"][-1]["min-nodes"] == expected


def test_cli_secagg_with_dp_is_submitted_with_its_noise(tmp_path: Path, fake_flower: dict[str, Any]) -> None:
    def write(run_id: str, path: Path, config: dict[str, Any]) -> None:
        _write(path, {"run_id": run_id, "state": "done", "round": 3, "num_rounds": 3, "version": "v0001"})

    fake_flower.update(next_id=["1"], write=write)
    code, out = _cli(*_run_args(tmp_path, "--timeout", "20", "--secagg", "--dp", "--noise-multiplier", "1.5"))
    assert code == 0, out
    sent = fake_flower["submitted"][0]
    assert fake_flower["apps"] == [d.SECAGG_APP_DIR] and sent["dp"] is True and sent["noise-multiplier"] == 1.5


@pytest.mark.parametrize("extra, named", [
    (("--secagg", "--strategy", "krum", "--min-nodes", "5"), "strategy"),
    (("--secagg", "--strategy", "fedprox"), "strategy"),
    (("--secagg", "--server-momentum", "0.8"), "server-momentum"),
    (("--secagg", "--min-nodes", "2"), "min-nodes"),  # each of two would learn the other's update
    (("--secagg", "--min-nodes", "200"), "min-nodes"),  # more than num-slots (128): it would wait, then fail
    (("--secagg", "--num-shares", "5", "--reconstruction-threshold", "4"), "reconstruction-threshold"),  # > min-nodes 3
    (("--secagg", "--num-shares", "1025", "--reconstruction-threshold", "3"), "num-shares"),  # overflows the sum
    (("--noise-multiplier", "5"), "--dp"),  # DP options without --dp would be ignored
    (("--secagg", "--clipping-norm", "0.1"), "--dp"),
    (("--secagg", "--num-shares", "2"), "num-shares"),
    (("--num-shares", "5", "--reconstruction-threshold", "3"), "--secagg"),  # shares asked for, updates in the clear
    # 4 shares (Flower makes 5) at threshold 2: the holders of one device's secrets can rebuild both of them
    (("--secagg", "--min-nodes", "4", "--num-shares", "4"), "num-shares: 4 (5 shares per device)"),
])
def test_cli_refuses_what_secagg_cannot_do_before_submitting(tmp_path: Path, fake_flower: dict[str, Any],
                                                            extra: tuple[str, ...], named: str) -> None:
    code, out = _cli(*_run_args(tmp_path, "--timeout", "5", *extra))
    assert code == 2 and "Traceback" not in out, out
    assert named in out
    assert fake_flower["submitted"] == []


def test_the_secagg_server_app_reports_a_refused_setting_in_the_runs_status(tmp_path: Path) -> None:
    template = str(d.status_template(tmp_path))
    ctx = Context(run_id=77, node_id=0, node_config={}, state=RecordDict(),
                  run_config={"status-file": template, "strategy": "fedprox"})
    with pytest.raises(SettingsError, match="strategy"):
        secagg.make_server_app()(None, ctx)  # type: ignore[arg-type]
    doc = json.loads((tmp_path / "status-77.json").read_text())
    assert doc["state"] == "failed" and "SecAgg+" in doc["error"] and doc["run_id"] == "77"


class _Proxy:
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id


class _Clients:
    def __init__(self, ids: list[int]) -> None:
        self.proxies = {str(i): _Proxy(i) for i in ids}

    def all(self) -> dict[str, _Proxy]:
        return self.proxies


def test_rounds_go_to_the_runs_devices_only_each_with_its_own_slot() -> None:
    """A SuperNode that connected after the scaling round is not sampled; slots follow the device keys."""
    slots = secagg.slot_order({30: "key-b", 10: "key-c", 20: "key-a"}, 128)
    assert slots == {20: 0, 30: 1, 10: 2}
    strategy = secagg.SecAggFedAvg(devices=[10, 20, 30], slots=slots, min_fit_clients=2,
                                   on_fit_config_fn=lambda rnd: {"server-round": rnd})
    strategy.rounds_done += [1, 2, 3]
    fit = strategy.configure_fit(4, Parameters(tensors=[], tensor_type=""), _Clients([10, 20, 30, 99]))
    assert [(c.node_id, ins.config) for c, ins in fit] == [
        (20, {"server-round": 4, "slot": 0}), (30, {"server-round": 4, "slot": 1}), (10, {"server-round": 4, "slot": 2})]
    # fewer of the run's devices than min-nodes: no round (the workflow cancels it; the run then fails by name)
    strategy.rounds_done.append(4)
    assert strategy.configure_fit(5, Parameters(tensors=[], tensor_type=""), _Clients([10, 99])) == []


def test_a_round_secagg_could_not_unmask_fails_the_run_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The legacy workflow only logs a halted round and goes on: the run must not publish the last good model."""
    from federated import task

    dim = secagg.feature_spec("keystroke").dim
    monkeypatch.setattr(secagg, "wait_for_nodes", lambda grid, n, t: [1, 2])
    monkeypatch.setattr(secagg, "population_scaling", lambda grid, nodes, s, keys: (
        keys.update({1: "a", 2: "b"}), task.Normaliser(np.zeros(dim, np.float32), np.ones(dim, np.float32)))[1])

    class HaltsInRoundTwo:
        def __init__(self, fit_workflow: Any) -> None:
            pass

        def __call__(self, grid: Any, legacy: Any) -> None:
            params = legacy.strategy.initial_parameters
            legacy.strategy.aggregate_fit(1, [(_Proxy(1), _fitres(params)), (_Proxy(2), _fitres(params))], [])

    monkeypatch.setattr(secagg, "DefaultWorkflow", HaltsInRoundTwo)
    s = RunSettings.from_config({"num-server-rounds": 2, "status-file": str(tmp_path / "status.json"),
                                 "registry": str(tmp_path / "reg")})
    ctx = Context(run_id=5, node_id=0, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(FederatedRunError, match="round 2: SecAgg\\+ produced no aggregate"):
        secagg.run_secagg_training(None, ctx, s)  # type: ignore[arg-type]
    doc = json.loads((tmp_path / "status.json").read_text())
    assert doc["state"] == "failed" and doc["round"] == 1 and "round 2" in doc["error"]
    assert not (tmp_path / "reg").exists()  # nothing published


def _fitres(params: Parameters) -> Any:
    from flwr.common import Code, FitRes, Status

    return FitRes(status=Status(Code.OK, ""), parameters=params, num_examples=1, metrics={})


def test_dp_release_is_the_fixed_denominator_estimate_with_noise_of_std_z_c_over_m0() -> None:
    """The mechanism of the plain app's DP runs (strategies/dp.py), from SecAgg+'s mean of k clipped models."""
    s = RunSettings(dp=True, noise_multiplier=2.0, clipping_norm=0.5, dp_noise_seed=3, min_nodes=3)
    release = secagg.DPRelease(s, m0=4)
    g = [np.zeros((400, 500), np.float32), np.ones(7, np.float32)]
    mean = [np.full((400, 500), 0.2, np.float32), np.full(7, 1.4, np.float32)]
    out = release.release(g, mean, k=3)  # 3 of the 4 devices of the run answered
    noise = out[0] - 0.2 * 3 / 4
    assert abs(noise.mean()) < 1e-3 and noise.std() == pytest.approx(2.0 * 0.5 / 4, rel=0.01)
    assert np.allclose(out[1], 1 + 0.4 * 3 / 4, atol=1.0)  # same estimator on every array
    again = secagg.DPRelease(s, m0=4).release(g, mean, k=3)
    assert all(np.array_equal(a, b) for a, b in zip(out, again))  # seeded (benchmarks only)
    fresh = secagg.DPRelease(RunSettings(dp=True, min_nodes=3), m0=4)
    assert not np.array_equal(fresh.release(g, mean, 3)[0], secagg.DPRelease(RunSettings(dp=True, min_nodes=3), m0=4)
                              .release(g, mean, 3)[0])  # unseeded: fresh noise every run


def test_under_dp_a_device_sends_its_update_clipped() -> None:
    from federated import task

    spec = secagg.feature_spec("keystroke")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(24, spec.dim)).astype(np.float32)
    init = task.initial_weights(spec.dim, 16, 0)
    client = secagg.DeviceClient(X, list(init))
    config = {"slot": 1, "norm": np.concatenate([np.zeros(spec.dim), np.ones(spec.dim)]).astype(np.float32).tobytes(),
              "hidden": 16, "local-epochs": 2, "lr": 0.5, "batch-size": 8, "seed": 0, "num-slots": 8, "server-round": 1}
    free, n, metrics = client.fit(list(init.values()), config)
    clipped, _, _ = client.fit(list(init.values()), {**config, "clipping-norm": 0.01})

    def norm(ws: list[np.ndarray]) -> float:
        return float(np.sqrt(sum(((w - w0) ** 2).sum() for w, w0 in zip(ws, init.values()))))

    assert norm(free) > 0.05 and norm(clipped) == pytest.approx(0.01, rel=1e-3)
    assert (n, metrics) == (1, {})  # one example, no loss: nothing of this device in the clear


def test_a_halted_round_stops_the_run_before_the_next_one_trains() -> None:
    strategy = secagg.SecAggFedAvg(devices=[1, 2, 3], slots={1: 0, 2: 1, 3: 2}, min_fit_clients=3,
                                   halted=lambda rnd: f"round {rnd}: SecAgg+ halted at its unmasking stage")
    with pytest.raises(FederatedRunError, match="round 1: SecAgg\\+ halted at its unmasking stage"):
        strategy.configure_fit(2, Parameters(tensors=[], tensor_type=""), _Clients([1, 2, 3]))
    strategy.rounds_done.append(1)
    assert len(strategy.configure_fit(2, Parameters(tensors=[], tensor_type=""), _Clients([1, 2, 3]))) == 3


def test_the_record_names_everything_the_server_sees_in_the_clear() -> None:
    from federated import task

    rec = secagg.secure_aggregation_record(RunSettings(num_shares=4, reconstruction_threshold=3, min_nodes=3), 3)
    clear = " ".join(rec["released_in_clear"])
    assert all(w in clear for w in ("window count", "feature sum", "sum of squares", "device key"))
    assert rec["shares_per_device"] == 3  # 4 made odd (5), but only 3 devices
    assert secagg.shares_per_device(4, 10) == 5 and secagg.shares_per_device(3, 10) == 3
    init = task.initial_weights(secagg.feature_spec("keystroke").dim, 64, 0)
    n = sum(w.size for w in init.values())
    assert 8 * n < secagg.masked_update_nbytes(init) < 8 * n + 1024  # int64 per weight, not float32


def test_a_device_refuses_a_round_without_its_slot() -> None:
    client = secagg.DeviceClient(np.zeros((4, 3), np.float32), ["w"])
    with pytest.raises(ValueError, match="slot"):
        client.fit([np.zeros(1, np.float32)], {"server-round": 1})


def test_the_model_card_says_the_server_saw_only_sums() -> None:
    o = RunOutcome(modality="keystroke", strategy="fedavg", rounds=1, num_devices=3, dp=False, epsilon=None,
                   delta=None, noise_multiplier=None, clipping_norm=None, bytes_per_client_per_round=1,
                   download_bytes_per_client_per_round=1, wall_seconds=1.0,
                   secure_aggregation=secagg.secure_aggregation_record(RunSettings(num_shares=5,
                                                                                   reconstruction_threshold=3), 3))
    card = model_card(o)
    assert "SecAgg+, 5 shares, reconstruction threshold 3" in card and "never one device's update" in card
    assert "window counts" in card
    assert o.summary()["secure_aggregation"]["server_sees"].startswith("the sum")
    plain = RunOutcome(**{**o.__dict__, "secure_aggregation": None})
    assert "SecAgg+" not in model_card(plain)
    assert "sum held" not in card  # no round record: nothing said about it
    dropped = RunOutcome(**{**o.__dict__, "secure_aggregation": {**o.secure_aggregation, "devices_per_round": [3, 2]}})
    assert "each round's sum held 2-3 of them" in model_card(dropped)


def test_a_secagg_only_supernode_says_so_in_its_node_config() -> None:
    plain = d.supernode_cmd("127.0.0.1:9092", "d.npz", 9401, root_certificates="ca.crt")
    only = d.supernode_cmd("127.0.0.1:9092", "d.npz", 9401, root_certificates="ca.crt", secagg_only=True)
    node_config = only[only.index("--node-config") + 1]
    assert node_config.endswith(" secagg-only=true") and "secagg-only" not in " ".join(plain)


@pytest.mark.parametrize("value, refuses", [(True, True), ("true", True), ("True", True), (False, False),
                                            ("false", False), (None, False)])
def test_a_secagg_only_device_answers_no_plain_run_but_the_secagg_scaling_round(
        tmp_path: Path, task_identity: None, value: Any, refuses: bool) -> None:
    from flwr.app import ConfigRecord, Message, MessageType

    from federated.client_app import PlainRunRefused, make_app
    from federated.features import write_device_file

    spec = secagg.feature_spec("keystroke")
    data = write_device_file(tmp_path / "d.npz", np.ones((6, spec.dim), np.float32), spec, 1)
    node_config = {"data": str(data)} if value is None else {"data": str(data), "secagg-only": value}
    ctx = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})
    query = Message(RecordDict({"config": ConfigRecord({"modality": "keystroke"})}), dst_node_id=1,
                    message_type=MessageType.QUERY)
    if refuses:
        with pytest.raises(PlainRunRefused, match="--secagg"):
            make_app()(query, ctx)
    else:
        assert make_app()(query, ctx).content["sums"] is not None
    assert make_app(in_secagg=True)(query, ctx).content["sums"] is not None


@pytest.mark.parametrize("n", [1, 2, 4])
def test_a_device_with_too_few_windows_sends_no_feature_sums(tmp_path: Path, task_identity: None, n: int) -> None:
    """The scaling round's sums are not masked: of one window they are the window, of two each feature's values."""
    from flwr.app import ConfigRecord, Message, MessageType

    from federated.client_app import MIN_SUMMARY_WINDOWS, TooFewWindows, make_app
    from federated.features import write_device_file

    spec = secagg.feature_spec("keystroke")
    data = write_device_file(tmp_path / "d.npz", np.random.default_rng(n).normal(size=(n, spec.dim)), spec, 1)
    ctx = Context(run_id=1, node_id=1, node_config={"data": str(data)}, state=RecordDict(), run_config={})
    query = Message(RecordDict({"config": ConfigRecord({"modality": "keystroke"})}), dst_node_id=1,
                    message_type=MessageType.QUERY)
    for app in (make_app(), make_app(in_secagg=True)):
        with pytest.raises(TooFewWindows, match=f"holds {n} feature window.*from {MIN_SUMMARY_WINDOWS} on"):
            app(query, ctx)


def test_device_errors_are_one_line_each_reason_once() -> None:
    from federated.records import device_errors

    class Reply:
        def __init__(self, reason: str | None) -> None:
            self.reason = reason

        def has_error(self) -> bool:
            return self.reason is not None

        @property
        def error(self) -> Any:
            return type("E", (), {"reason": self.reason})()

    wrapped = "<class 'federated.client_app.PlainRunRefused'>:<'runs only\n (SecAgg+)'>"
    replies = [Reply(wrapped), Reply(wrapped), Reply(None), Reply("timeout"), Reply("a"), Reply("b")]
    assert device_errors(replies) == ("2 device(s): PlainRunRefused: runs only (SecAgg+); 1 device(s): timeout; "
                                      "1 device(s): a; and 1 other reason(s)")
    assert device_errors([Reply(None)]) == ""


class _Protocol:
    """Three real SecAgg+ devices (`secagg.client_app`, secagg-only) driven through the protocol in-process.

    What the server of a SecAgg+ run sends, stage by stage; the test plays that server.
    """

    MOD = 1 << 32

    def __init__(self, tmp_path: Path) -> None:
        from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage

        from federated.features import write_device_file

        self.Key, self.Stage = Key, Stage
        spec = secagg.feature_spec("keystroke")
        rng = np.random.default_rng(7)
        self.nids = [11, 22, 33]
        self.X = {n: rng.normal(size=(20, spec.dim)).astype(np.float32) for n in self.nids}
        self.ctxs = {n: Context(run_id=1, node_id=n, state=RecordDict(), run_config={"modality": "keystroke"},
                                node_config={"data": str(write_device_file(tmp_path / f"d{n}.npz", self.X[n], spec, n)),
                                             "secagg-only": True}) for n in self.nids}
        self.init = secagg.task.initial_weights(spec.dim, 64, 0)
        self.cfg = {"norm": np.concatenate([np.zeros(spec.dim), np.ones(spec.dim)]).astype(np.float32).tobytes(),
                    "hidden": 64, "local-epochs": 1, "lr": 0.05, "batch-size": 8, "seed": 0, "num-slots": 8,
                    "server-round": 1}

    def send(self, nid: int, cfg: dict[str, Any], content: Any = None) -> Any:
        from flwr.app import ConfigRecord, Message, MessageType
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

        content = content if content is not None else RecordDict()
        content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(cfg)
        msg = Message(content=content, dst_node_id=nid, message_type=MessageType.TRAIN, group_id="1")
        return secagg.client_app(msg, self.ctxs[nid]).content

    def until_unmasking(self) -> dict[int, Any]:
        """Set-up, key sharing and the masked updates; returns each device's collect-stage reply."""
        import flwr.compat.common.recorddict_compat as compat
        from flwr.common import FitIns
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

        K, S = self.Key, self.Stage
        setup = {K.STAGE: S.SETUP, K.SAMPLE_NUMBER: 3, K.SHARE_NUMBER: 3, K.THRESHOLD: 2,
                 K.CLIPPING_RANGE: secagg.CLIPPING_RANGE, K.TARGET_RANGE: secagg.QUANTIZATION_RANGE,
                 K.MOD_RANGE: self.MOD, K.MAX_WEIGHT: secagg.MAX_WEIGHT}
        self.pk = {}
        for n in self.nids:
            r = self.send(n, dict(setup)).config_records[RECORD_KEY_CONFIGS]
            self.pk[n] = [r[K.PUBLIC_KEY_1], r[K.PUBLIC_KEY_2]]
        fwd: dict[int, tuple[list[bytes], list[int]]] = {n: ([], []) for n in self.nids}
        for n in self.nids:
            r = self.send(n, {K.STAGE: S.SHARE_KEYS, **{str(m): self.pk[m] for m in self.nids}}).config_records[
                RECORD_KEY_CONFIGS]
            for dst, ct in zip(r[K.DESTINATION_LIST], r[K.CIPHERTEXT_LIST]):
                fwd[dst][0].append(ct)
                fwd[dst][1].append(n)
        replies = {}
        for slot, n in enumerate(self.nids):
            fit = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(list(self.init.values())),
                                                     {**self.cfg, "slot": slot}), True)
            replies[n] = self.send(n, {K.STAGE: S.COLLECT_MASKED_VECTORS, K.CIPHERTEXT_LIST: fwd[n][0],
                                       K.SOURCE_LIST: fwd[n][1]}, fit)
        return replies


def test_a_secagg_device_sends_only_its_masked_update_and_the_honest_sum_is_the_mean(
        tmp_path: Path, task_identity: None) -> None:
    """The protocol run for real on three devices: no model, count or loss in the clear; the sum unmasks."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.common import bytes_to_ndarray
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_extract,
        get_parameters_shape,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    p = _Protocol(tmp_path)
    K, S = p.Key, p.Stage
    replies = p.until_unmasking()
    models = [secagg.DeviceClient(p.X[n], list(p.init)).fit(list(p.init.values()), {**p.cfg, "slot": i})[0]
              for i, n in enumerate(p.nids)]
    total = None
    for reply in replies.values():
        fitres = compat.recorddict_to_fitres(reply, keep_input=True)
        assert fitres.num_examples == 1 and fitres.metrics == {} and fitres.parameters.tensors == []
        masked = [bytes_to_ndarray(b) for b in reply.config_records[RECORD_KEY_CONFIGS][K.MASKED_PARAMETERS]]
        total = masked if total is None else parameters_addition(total, masked)
    # every device active: the pairwise masks cancel; take the self masks off with the shares of the others
    seeds: dict[int, list[bytes]] = {n: [] for n in p.nids}
    for n in p.nids:
        r = p.send(n, {K.STAGE: S.UNMASK, K.ACTIVE_NODE_ID_LIST: p.nids, K.DEAD_NODE_ID_LIST: []}).config_records[
            RECORD_KEY_CONFIGS]
        for owner, share in zip(r[K.NODE_ID_LIST], r[K.SHARE_LIST]):
            seeds[owner].append(share)
    for n in p.nids:
        total = parameters_subtraction(total, pseudo_rand_gen(combine_shares(seeds[n]), p.MOD,
                                                              get_parameters_shape(total)))
    ratio, q = factor_extract(parameters_mod(total, p.MOD))
    mean = [(v - 2 * secagg.CLIPPING_RANGE) * secagg.QUANTIZATION_RANGE / ratio
            for v in dequantize(q, secagg.CLIPPING_RANGE, secagg.QUANTIZATION_RANGE)]
    for k, got in enumerate(mean):
        np.testing.assert_allclose(got, sum(m[k] for m in models) / 3, atol=1e-5)
    one = dequantize(factor_extract(parameters_mod([bytes_to_ndarray(b) for b in replies[11].config_records[
        RECORD_KEY_CONFIGS][K.MASKED_PARAMETERS]], p.MOD))[1], secagg.CLIPPING_RANGE, secagg.QUANTIZATION_RANGE)
    assert not np.allclose(one[0], models[0][0], atol=0.1)  # one device's masked vector is not its model


def test_a_secagg_device_refuses_to_unmask_one_device(tmp_path: Path, task_identity: None) -> None:
    """Naming a device as both active and dropped would hand over its self-mask seed and its key: refused."""
    p = _Protocol(tmp_path)
    K, S = p.Key, p.Stage
    p.until_unmasking()
    with pytest.raises(secagg.UnmaskRefused, match="both active and dropped out"):
        p.send(22, {K.STAGE: S.UNMASK, K.ACTIVE_NODE_ID_LIST: p.nids, K.DEAD_NODE_ID_LIST: [11]})
    # the device asked is plainly alive: listed as dropped, it would hand over shares of its own key while the
    # server tells the others it is active (their seeds' shares): its update unmasked
    others = [n for n in p.nids if n != 22]
    with pytest.raises(secagg.UnmaskRefused, match="this device is listed as dropped out"):
        p.send(22, {K.STAGE: S.UNMASK, K.ACTIVE_NODE_ID_LIST: others, K.DEAD_NODE_ID_LIST: [22]})


# ---------------------------------------------------------------- a secagg-only SuperNode runs Cadence's SecAgg+ app only


def _fab(app_dir: Path, extra: dict[str, bytes] | None = None) -> bytes:
    """The FAB `flwr run APP_DIR` ships (Flower's own builder), with `extra` files added as a changed app would."""
    from flwr.cli.build import build_fab_from_files

    files: dict[str, bytes | Path] = {"pyproject.toml": (app_dir / "pyproject.toml").read_bytes(), **(extra or {})}
    return build_fab_from_files(files)[0]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Flower's FAB builder uses a deprecated pathspec API
def test_the_pinned_clientapp_accepts_the_secagg_app_and_refuses_any_other() -> None:
    from federated.pinned_app import AppRefused, check_fab

    check_fab(_fab(d.SECAGG_APP_DIR))  # what `cadence federated run --secagg` ships
    with pytest.raises(AppRefused, match="names 'federated.client_app:app'"):
        check_fab(_fab(d.APP_DIR))  # the plain app
    with pytest.raises(AppRefused, match="carries files of its own \\(evil.py\\)"):
        check_fab(_fab(d.SECAGG_APP_DIR, {"evil.py": b"import os\n"}))  # its own code, whatever it names
    renamed = (d.SECAGG_APP_DIR / "pyproject.toml").read_text().replace(
        'clientapp = "federated.secagg:client_app"', 'clientapp = "evil:app"')
    with pytest.raises(AppRefused, match="names 'evil:app'"):
        check_fab(_fab(d.SECAGG_APP_DIR, {"pyproject.toml": renamed.encode()}))
    with pytest.raises(AppRefused, match="unreadable"):
        check_fab(b"not a zip")


def test_a_secagg_only_supernode_starts_with_the_pinned_launchers_first_on_its_path(tmp_path: Path) -> None:
    import subprocess
    import sys

    from flwr.supercore.constant import TASK_TYPE_TO_COMMAND

    from federated import pinned_app

    # every program Flower's SuperExec may start by name has a launcher (a new task type must get one)
    assert set(pinned_app.TASK_COMMANDS) == set(TASK_TYPE_TO_COMMAND.values())
    bin_dir = tmp_path / "my bin"  # a space: no #! line could name such a Python
    cmd = d.supernode_cmd("127.0.0.1:9092", tmp_path / "d.npz", 9401, root_certificates="ca.crt", secagg_only=True,
                          pinned_bin=bin_dir)
    assert cmd[:5] == [sys.executable, "-m", "federated.pinned_app", "supernode", str(bin_dir.resolve())]
    assert "flower-supernode" in Path(cmd[5]).name
    # the SuperNode is exec'd with the launchers first on PATH (a shell stands in for Flower)
    out = subprocess.run([*cmd[:5], "/bin/sh", "-c", "command -v flwr-clientapp; flwr-agentapp --x; echo $?"],
                         capture_output=True, text=True, timeout=120, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == str(bin_dir.resolve() / "flwr-clientapp") and lines[-1] == "1"
    assert "runs Cadence's SecAgg+ ClientApp only" in out.stderr  # an agent task is refused
    assert "refused a flwr-agentapp task" in (tmp_path / "pinned-apps.log").read_text()
    assert all((bin_dir / c).stat().st_mode & 0o777 == 0o700 for c in pinned_app.TASK_COMMANDS)


def test_a_launcher_that_cannot_run_stops_the_supernode_before_it_starts(tmp_path: Path) -> None:
    """A launcher skipped by the PATH search (no exec bit, a noexec mount) would let Flower's own program run."""
    from federated import pinned_app

    bin_dir = pinned_app.install_launchers(tmp_path / "bin")
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    pinned_app.self_test(bin_dir, path)  # all six run
    (bin_dir / "flwr-agentapp").write_text("#!/bin/sh\nexit 0\n")  # runs, but is not ours
    with pytest.raises(SystemExit, match="flwr-agentapp does not run as it should"):
        pinned_app.self_test(bin_dir, path)
    os.chmod(bin_dir / "flwr-agentapp", 0o600)
    with pytest.raises(SystemExit, match="flwr-agentapp resolves to"):
        pinned_app.self_test(bin_dir, path)  # not executable: the search skips it
    pinned_app.install_launchers(bin_dir)  # rewritten and executable again
    pinned_app.self_test(bin_dir, path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Flower's FAB builder uses a deprecated pathspec API
def test_the_pinned_app_is_cadences_by_name_and_version_and_the_run_names_it(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower builds the install folder from the run's app id and version: a path in them, or another app, is refused."""
    from types import SimpleNamespace

    from flwr.common.config import get_project_dir

    from federated.pinned_app import AppRefused, check_fab, check_run

    text = (d.SECAGG_APP_DIR / "pyproject.toml").read_text()
    assert check_fab(_fab(d.SECAGG_APP_DIR)) == ("cadence/cadence-federated-secagg", "1.0.0")
    for old, new in (('version = "1.0.0"', 'version = "1.0.0/../../../../tmp/escaped"'),
                     ('name = "cadence-federated-secagg"', 'name = "other"'),
                     ('publisher = "cadence"', 'publisher = "someone"')):
        with pytest.raises(AppRefused):
            check_fab(_fab(d.SECAGG_APP_DIR, {"pyproject.toml": text.replace(old, new).encode()}))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    content = _fab(d.SECAGG_APP_DIR)
    import hashlib

    fab = SimpleNamespace(content=content, hash_str=hashlib.sha256(content).hexdigest())
    run = SimpleNamespace(fab_id="cadence/cadence-federated-secagg", fab_version="1.0.0")
    check_run(fab, run)
    with pytest.raises(AppRefused, match="this run names app"):
        check_run(fab, SimpleNamespace(fab_id="cadence/other", fab_version="1.0.0"))  # loads another folder
    folder = get_project_dir(run.fab_id, run.fab_version, fab.hash_str)
    folder.mkdir(parents=True)
    import io
    import zipfile

    (folder / "pyproject.toml").write_bytes(zipfile.ZipFile(io.BytesIO(content)).read("pyproject.toml"))
    check_run(fab, run)  # installed by an earlier run: the same app
    (folder / "evil.py").write_text("import os\n")
    with pytest.raises(AppRefused, match="holds other files"):
        check_run(fab, run)


def test_the_pinned_folder_holds_the_launchers_only_and_is_the_owners_alone(tmp_path: Path) -> None:
    from federated import pinned_app

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(mode=0o777)
    os.chmod(bin_dir, 0o777)
    (bin_dir / "flower-superexec").write_text("#!/bin/sh\necho planted\n")  # would run before Flower's own
    pinned_app.install_launchers(bin_dir)
    assert bin_dir.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in bin_dir.iterdir()) == sorted([*pinned_app.TASK_COMMANDS, pinned_app.LOCK_NAME])


def test_supernodes_of_one_workdir_starting_at_once_all_get_their_launchers(tmp_path: Path) -> None:
    """The operator flow starts several SuperNodes of one workdir at once: one cleaned another's half-written file away."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from federated.pinned_app import install_launchers\n"
            "for i in range(40):\n    install_launchers(Path(sys.argv[1]) / str(i))\n")  # 40 fresh folders
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stderr=subprocess.PIPE, text=True)
             for _ in range(6)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errors


def test_a_secagg_only_supernode_never_installs_a_runs_dependencies() -> None:
    """The pin checks the FAB's files, not its `dependencies`: Flower would pip-install them after the check."""
    cmd = d.supernode_cmd("127.0.0.1:9092", "d.npz", 9401, root_certificates="ca.crt", secagg_only=True)
    assert not any("dependency-installation" in c for c in cmd)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Flower's FAB builder uses a deprecated pathspec API
@pytest.mark.parametrize("app_dir, refused", [(d.SECAGG_APP_DIR, False), (d.APP_DIR, True)])
def test_the_pinned_clientapp_checks_in_place_of_flowers_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  app_dir: Path, refused: bool) -> None:
    """Flower pulls the task, then installs the FAB: the check stands in the install, so a refusal is an error reply."""
    import hashlib
    import importlib
    from types import SimpleNamespace

    import flwr.supernode.runtime.run_clientapp as runner

    cli = importlib.import_module("flwr.supernode.cli.flwr_clientapp")  # the package re-exports a function of that name

    from federated import pinned_app

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    content = _fab(app_dir)
    name = "cadence-federated-secagg" if app_dir == d.SECAGG_APP_DIR else "cadence-federated"
    fab = SimpleNamespace(content=content, hash_str=hashlib.sha256(content).hexdigest())
    run = SimpleNamespace(run_id=7, fab_id=f"cadence/{name}", fab_version="1.0.0")
    installed: list[bytes] = []
    monkeypatch.setattr(runner, "pull_task_input", lambda client: ("message", "context", run, fab))
    monkeypatch.setattr(runner, "install_from_fab", lambda c, **k: installed.append(c))

    def flower(*_a: Any) -> None:  # what run_clientapp does, in order
        _message, _context, run_, fab_ = runner.pull_task_input(None)
        runner.install_from_fab(fab_.content, skip_prompt=True)

    monkeypatch.setattr(cli, "flwr_clientapp", flower)
    monkeypatch.setattr(sys, "argv", sys.argv[:])
    if refused:
        with pytest.raises(pinned_app.AppRefused, match="names 'federated.client_app:app'"):
            pinned_app.clientapp(tmp_path / "bin", [])
        assert installed == [] and "refused run 7" in (tmp_path / "pinned-apps.log").read_text()
    else:
        pinned_app.clientapp(tmp_path / "bin", [])
        assert installed == [content] and "accepted run 7" in (tmp_path / "pinned-apps.log").read_text()
