"""One bench command gives the same rows every run: slots by device key, seeded DP noise, paired central."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from federated import task
from federated.config import RunSettings, SettingsError
from federated.features import device_order
from federated.strategies import SlotAssigner, build_strategy


def _reply(node: int, weights: dict, n: int) -> Message:
    arrays = ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in weights.items()})
    metrics = MetricRecord({"num-examples": n, "unit-weight": 1, "train-loss": 1.0})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), dst_node_id=node, message_type=MessageType.TRAIN)


def test_slots_follow_device_keys_not_node_ids() -> None:
    keys = {9_001: "partition-000000002", 17: "partition-000000000", 555: "partition-000000001", 3: ""}
    st = SlotAssigner(object(), 8)  # type: ignore[arg-type]
    st.assign(keys)
    assert [st.slot_of(n) for n in (17, 555, 9_001, 3)] == [0, 1, 2, 3]  # keyless last
    assert st.slot_of(42) == 4  # a late joiner takes the next free slot
    # other node ids, same devices: the same slots
    again = SlotAssigner(object(), 8)  # type: ignore[arg-type]
    again.assign({1: keys[9_001], 2: keys[17], 3: keys[555]})
    assert [again.slot_of(n) for n in (2, 3, 1)] == [0, 1, 2]


def test_device_key_is_stable_and_opaque(tmp_path) -> None:
    assert task.device_key({"partition-id": 3}) < task.device_key({"partition-id": 12})  # numeric order
    data = tmp_path / "alice" / "device-7.npz"
    data.parent.mkdir()
    data.write_bytes(b"windows")
    k = task.device_key({"data": str(data)})
    assert k.startswith("data-") and k == task.device_key({"data": str(data)})
    assert "alice" not in k and "device-7" not in k
    assert task.device_key({"device-key": "x", "data": str(data)}) != k
    assert task.device_key({}) == ""


def test_simulation_slots_are_the_central_order() -> None:
    # partition ids number the device files in name order; central training takes the same order
    assert device_order([4, 10, 2, 30]) == [10, 2, 30, 4]


def _dp_round(seed: int) -> dict[str, np.ndarray]:
    s = RunSettings.from_config({"dp": True, "noise-multiplier": 1.0, "clipping-norm": 1.0, "min-nodes": 4,
                                 "dp-noise-seed": seed})
    st = build_strategy(s, 4)
    w = {"a": np.zeros((3, 2), np.float32), "b": np.ones(5, np.float32)}
    replies = [_reply(i + 1, {k: v + 0.01 * i for k, v in w.items()}, 10) for i in range(4)]
    st.configure_train(1, ArrayRecord({k: Array(v) for k, v in w.items()}), ConfigRecord(), _Grid([1, 2, 3, 4]))
    return task.to_numpy(st.aggregate_train(1, replies)[0])


class _Grid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def test_seeded_dp_noise_is_reproducible_and_of_the_right_size(task_identity) -> None:
    a, b, c = _dp_round(0), _dp_round(0), _dp_round(1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.allclose(a["a"], c["a"])
    mean_b = 1 + 0.01 * 1.5
    noise = np.concatenate([a["a"].ravel() - 0.015, a["b"] - mean_b])
    assert 0.05 < noise.std() < 0.6  # std z C / m = 0.25


def test_unit_weighting_is_the_default_and_checked(task_identity) -> None:
    assert RunSettings().weighting == "unit"
    with pytest.raises(SettingsError, match="weighting"):
        RunSettings.from_config({"weighting": "bytes"})
    replies = lambda: [_reply(1, {"a": np.zeros(2)}, 1), _reply(2, {"a": np.ones(2)}, 3)]  # noqa: E731
    unit = build_strategy(RunSettings.from_config({"min-nodes": 2}), 2)
    by_n = build_strategy(RunSettings.from_config({"min-nodes": 2, "weighting": "num-examples"}), 2)
    assert np.allclose(task.to_numpy(unit.aggregate_train(1, replies())[0])["a"], 0.5)
    assert np.allclose(task.to_numpy(by_n.aggregate_train(1, replies())[0])["a"], 0.75)


def test_central_takes_the_federated_slot_order() -> None:
    rng = np.random.default_rng(0)
    windows = {s: rng.normal(loc=s % 3, size=(12, 6)) for s in (2, 4, 10)}
    cfg = task.TrainConfig(seed=0)
    a, _ = task.train_central(windows, epochs=2, cfg=cfg, num_slots=8, hidden=8)
    b, _ = task.train_central(windows, epochs=2, cfg=cfg, num_slots=8, hidden=8, order=[2, 4, 10])
    c, _ = task.train_central(windows, epochs=2, cfg=cfg, num_slots=8, hidden=8, order=device_order(windows))
    assert all(np.array_equal(a[k], b[k]) for k in a) and not np.allclose(a["fc2.weight"], c["fc2.weight"])
    with pytest.raises(ValueError, match="order"):
        task.train_central(windows, epochs=1, cfg=cfg, num_slots=8, hidden=8, order=[2, 4])
