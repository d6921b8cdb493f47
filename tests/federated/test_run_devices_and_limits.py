"""A run's devices are fixed at its scaling round; robust rules, DP budgets and SecAgg+ keys are checked.

Fast: fake devices answer the ServerApp's messages in-process (no Flower process started).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict

from federated import task
from federated.config import MAX_EPSILON, RunSettings, SettingsError
from federated.features import feature_spec
from federated.orchestration import FederatedRunError, run_training
from federated.privacy import epsilon
from federated.records import array_record, config_record, get_int
from federated.strategies import QuorumError, build_strategy

DIM = feature_spec("keystroke").dim
W = {"a": np.zeros(3, np.float32)}


class _Devices:
    """Fake SuperNodes: they answer the scaling query and train (global + 0.01); `late` connects after scaling."""

    def __init__(self, nodes: list[int], late: list[int], gone: tuple[int, ...] = ()) -> None:
        self.nodes, self.late = list(nodes), late
        #: listed by the SuperLink but dead (as for ~45 s after a SuperNode is killed): they answer nothing
        self.gone = set(gone)
        self.trained: dict[int, list[int]] = {}
        self.rng = np.random.default_rng(0)

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages, timeout):  # type: ignore[no-untyped-def]
        replies = [self._answer(m) for m in messages]
        if any(m.metadata.message_type == MessageType.QUERY for m in messages):
            self.nodes += self.late  # a SuperNode started just after the scaling round
        return replies

    def _answer(self, m: Message) -> Message:
        node = m.metadata.dst_node_id
        if node in self.gone:
            return Message(Error(code=0, reason="timed out"), reply_to=m)
        if m.metadata.message_type == MessageType.QUERY:
            X = self.rng.normal(size=(12, DIM))  # one person's 12 keystroke windows
            content = RecordDict({"sums": ArrayRecord({"sum": Array(X.sum(0)), "sumsq": Array((X**2).sum(0))}),
                                  "metrics": MetricRecord({"num-examples": 12}),
                                  "device": ConfigRecord({"key": f"key-{node}"})})
        else:
            self.trained.setdefault(get_int(config_record(m.content), "server-round"), []).append(node)
            arrays = ArrayRecord({k: Array(v + np.float32(0.01))
                                  for k, v in task.to_numpy(array_record(m.content, "arrays")).items()})
            content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 12, "unit-weight": 1,
                                                                            "train-loss": 1.0})})
        return Message(content, reply_to=m)


def _arrays() -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in W.items()})


def _sent(node: int) -> Message:
    return Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)


def _reply(node: int) -> Message:
    content = RecordDict({"arrays": _arrays(), "metrics": MetricRecord({"num-examples": 4, "unit-weight": 1,
                                                                        "train-loss": 1.0})})
    return Message(content, reply_to=_sent(node))


def _failed(node: int) -> Message:
    return Message(Error(code=0, reason="node went offline"), reply_to=_sent(node))


# ---------------------------------------------------------------- 1. devices fixed at the scaling round


@pytest.mark.parametrize("dp", [False, True])
def test_a_device_connecting_after_the_scaling_round_waits_for_the_next_run(tmp_path: Path, dp: bool,
                                                                            task_identity) -> None:
    """2 devices scaled, a 3rd joins: it must not train (DP divided 3 clipped updates by m0 = 2)."""
    grid = _Devices([11, 12], late=[13])
    s = RunSettings.from_config({"min-nodes": 2, "num-server-rounds": 2, "dp": dp, "dp-noise-seed": 0,
                                 "round-timeout": 5, "status-file": str(tmp_path / "status.json")})
    outcome = run_training(grid, s)  # type: ignore[arg-type]
    assert {rnd: sorted(nodes) for rnd, nodes in grid.trained.items()} == {1: [11, 12], 2: [11, 12]}
    assert outcome.num_devices == 2
    doc = json.loads((tmp_path / "status.json").read_text())
    assert doc["state"] == "done" and doc["num_devices"] == 2


@pytest.mark.parametrize("dp", [False, True])
def test_a_listed_device_that_does_not_answer_the_scaling_round_is_left_out(tmp_path: Path, dp: bool,
                                                                             task_identity) -> None:
    """4 listed, 1 dead (the SuperLink lists a killed SuperNode for a while): the run goes on with 3 (min-nodes 3)."""
    grid = _Devices([11, 12, 13, 14], late=[], gone=(13,))
    s = RunSettings.from_config({"min-nodes": 3, "num-server-rounds": 2, "dp": dp, "dp-noise-seed": 0,
                                 "round-timeout": 5, "status-file": str(tmp_path / "status.json")})
    outcome = run_training(grid, s)  # type: ignore[arg-type]
    assert {rnd: sorted(nodes) for rnd, nodes in grid.trained.items()} == {1: [11, 12, 14], 2: [11, 12, 14]}
    assert outcome.num_devices == 3
    if dp:  # the fixed denominator is the devices that are the run's: 3, not the 4 listed
        assert outcome.dp_accounting is not None and outcome.dp_accounting["fixed_devices_per_round"] == 3
    # fewer than min-nodes answer: the run fails, naming how many and what it needed
    with pytest.raises(FederatedRunError, match=r"scaling round: 2/3 devices answered within round-timeout 5 s, "
                                                r"min-nodes 3 needed; errors: 1 device\(s\): timed out"):
        run_training(_Devices([11, 12, 13], late=[], gone=(13,)), s)  # type: ignore[arg-type]


def test_late_joiners_are_logged_once_and_never_sampled(task_identity, caplog) -> None:
    s = RunSettings.from_config({"min-nodes": 2, "dp": True, "round-timeout": 0.3})
    st = build_strategy(s, 2, devices=[1, 2])
    with caplog.at_level(logging.WARNING, logger="federated.strategies.quorum"):
        for rnd in (1, 2):
            sent = list(st.configure_train(rnd, _arrays(), ConfigRecord(),
                                            _Devices([1, 2, 3], [])))  # type: ignore[arg-type]
            assert sorted(m.metadata.dst_node_id for m in sent) == [1, 2]
    late = [r for r in caplog.records if "after the scaling round" in r.getMessage()]
    assert len(late) == 1 and "next run" in late[0].getMessage()
    # a device of the run gone, a late joiner there instead: not enough of the run's devices
    with pytest.raises(QuorumError, match=r"1 device\(s\) connected, 2 needed"):
        st.configure_train(3, _arrays(), ConfigRecord(), _Devices([1, 3], []))  # type: ignore[arg-type]


# ---------------------------------------------------------------- 2. device key


def test_device_key_is_not_a_hash_of_the_guessable_path(tmp_path: Path) -> None:
    data = tmp_path / "device-7.npz"
    data.write_bytes(b"windows")
    key = task.device_key({"data": str(data)})
    assert key and key == task.device_key({"data": str(data)})  # stable across runs
    assert key != "data-" + hashlib.sha256(str(data).encode()).hexdigest()[:32]
    secret = task.device_secret_path(data)
    assert secret.parent == data.parent and secret.stat().st_mode & 0o077 == 0  # owner-only, next to the data
    secret.unlink()  # another phone keeping its data at the same (guessable) path
    assert task.device_key({"data": str(data)}) != key
    assert task.device_key({"partition-id": 3}) == "partition-000000003"  # simulation unchanged


def test_device_key_without_its_data_file_is_empty_and_writes_nothing(tmp_path: Path) -> None:
    assert task.device_key({"data": str(tmp_path / "missing" / "device-1.npz")}) == ""
    assert not any(tmp_path.rglob("*"))


# ---------------------------------------------------------------- 3. robust rules with too few devices


@pytest.mark.parametrize(("strategy", "extra", "need"), [("trimmed-mean", {}, 5), ("krum", {"krum-byzantine": 1}, 5),
                                                         ("krum", {"krum-byzantine": 2}, 7), ("fedmedian", {}, 3)])
def test_a_robust_rule_min_nodes_cannot_keep_robust_is_refused_up_front(strategy: str, extra: dict,
                                                                        need: int) -> None:
    with pytest.raises(SettingsError, match=rf"min-nodes: .*{strategy}.*min-nodes {need}"):
        RunSettings.from_config({"strategy": strategy, "min-nodes": need - 1, **extra})
    assert RunSettings.from_config({"strategy": strategy, "min-nodes": need, **extra}).min_nodes == need


def test_trimmed_mean_that_trims_nothing_is_refused() -> None:
    with pytest.raises(SettingsError, match="trim-beta"):
        RunSettings.from_config({"strategy": "trimmed-mean", "trim-beta": 0.0, "min-nodes": 10})
    with pytest.raises(SettingsError, match="krum-byzantine"):
        RunSettings.from_config({"strategy": "krum", "krum-byzantine": -1, "min-nodes": 10})


def test_a_round_with_too_few_replies_for_the_robust_rule_fails(task_identity) -> None:
    """Unvalidated settings (min-nodes 2): the round still refuses to publish a plain mean as trimmed-mean."""
    st = build_strategy(RunSettings(strategy="trimmed-mean", min_nodes=2), 6)
    with pytest.raises(QuorumError, match=r"round 1: 3 device\(s\) replied .*, 5 needed \(trimmed-mean"):
        st.aggregate_train(1, [_reply(1), _reply(2), _reply(3), _failed(4), _failed(5), _failed(6)])
    arrays, _ = st.aggregate_train(1, [_reply(n) for n in range(1, 6)])
    assert arrays is not None


# ---------------------------------------------------------------- 4. the quorum names its reason


def test_the_dp_quorum_error_names_m0_not_min_nodes(task_identity) -> None:
    st = build_strategy(RunSettings.from_config({"min-nodes": 2, "dp": True, "round-timeout": 0.2}), 3)
    with pytest.raises(QuorumError, match=r"2 device\(s\) replied .*3 needed \(dp: .*m0 = 3") as exc:
        st.aggregate_train(1, [_reply(1), _reply(2), _failed(3)])
    assert "min-nodes" not in str(exc.value)


# ---------------------------------------------------------------- 5. an epsilon too large to be called DP


def test_a_noise_multiplier_spending_too_much_epsilon_is_refused() -> None:
    with pytest.raises(SettingsError, match=rf"noise-multiplier: .*epsilon .*at most {MAX_EPSILON:g}"):
        RunSettings.from_config({"dp": True, "noise-multiplier": 0.000001})
    assert RunSettings.from_config({"dp": True, "noise-multiplier": 1.0, "num-server-rounds": 5}).dp


def test_the_epsilon_bound_is_checked_again_for_the_devices_of_the_run(task_identity) -> None:
    """Under fraction-train < 1 the sampling rate is known only once the devices are: checked then."""
    s = replace(RunSettings.from_config({"dp": True, "fraction-train": 0.5, "min-nodes": 2}), noise_multiplier=1e-6)
    with pytest.raises(SettingsError, match="noise-multiplier"):
        build_strategy(s, 4)


def test_a_run_refused_for_its_epsilon_collects_no_feature_sums(tmp_path: Path, task_identity) -> None:
    """The check runs before the scaling round: a refused run must not first take every device's sums."""
    grid = _Devices([11, 12, 13, 14], late=[])
    sent: list[Message] = []
    answer = grid.send_and_receive
    grid.send_and_receive = lambda messages, timeout: sent.extend(messages) or answer(messages, timeout)  # type: ignore[method-assign]
    s = replace(RunSettings.from_config({"dp": True, "fraction-train": 0.5, "min-nodes": 2, "round-timeout": 5,
                                         "status-file": str(tmp_path / "status.json")}), noise_multiplier=1e-6)
    with pytest.raises(SettingsError, match="noise-multiplier"):
        run_training(grid, s)  # type: ignore[arg-type]
    assert sent == []


def test_a_huge_noise_multiplier_spends_no_epsilon_and_does_not_overflow() -> None:
    s = RunSettings.from_config({"dp": True, "noise-multiplier": 1e200})
    assert s.noise_multiplier == 1e200
    assert epsilon(rounds=20, q=0.5, noise_multiplier=1e200, delta=1e-5) < 0.05  # the (eps, delta) conversion only


# ---------------------------------------------------------------- 6. SecAgg+ keys


def test_secagg_keys_are_refused_where_secagg_is_not_applied(tmp_path: Path) -> None:
    from federated import server_app

    ctx = Context(run_id=5, node_id=0, node_config={}, state=RecordDict(),
                  run_config={"status-file": str(tmp_path / "status-{run-id}.json"), "num-shares": 2,
                              "reconstruction-threshold": 9})
    with pytest.raises(SettingsError, match="num-shares, reconstruction-threshold: SecAgg\\+ is not applied"):
        server_app.make_app()(None, ctx)  # type: ignore[arg-type]
    doc = json.loads((tmp_path / "status-5.json").read_text())
    assert doc["state"] == "failed" and "SecAgg+" in doc["error"]


def test_secagg_threshold_must_fit_the_shares() -> None:
    with pytest.raises(SettingsError, match="reconstruction-threshold: .*9.*num-shares 3"):
        RunSettings.from_config({"num-shares": 3, "reconstruction-threshold": 9})
    with pytest.raises(SettingsError, match="num-shares"):
        RunSettings.from_config({"num-shares": 2, "reconstruction-threshold": 2})
    assert RunSettings.from_config({"num-shares": 5, "reconstruction-threshold": 3}).num_shares == 5
    for shares, threshold in ((4, 2), (5, 2), (7, 3)):  # twice the threshold held: one device unmaskable
        with pytest.raises(SettingsError, match="rebuild both of a device's secrets"):
            RunSettings.from_config({"num-shares": shares, "reconstruction-threshold": threshold})
