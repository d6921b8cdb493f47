"""Review G: a device's bad update cannot poison the global model; operator edge cases.

Fast: strategies are driven in-process with hand-made replies (no Flower process started).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from federated.config import RunSettings
from federated.records import array_record, get_array
from federated.strategies import QuorumError, build_strategy

W = {"a": np.zeros(3, np.float32), "b": np.ones((2, 2), np.float32)}


def _global() -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in W.items()})


def _reply(node: int, shift: float = 0.1, *, num_examples: float = 4, unit_weight: float = 1) -> Message:
    sent = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    arrays = ArrayRecord({k: Array((v + np.float32(shift)).astype(np.float32)) for k, v in W.items()})
    metrics = MetricRecord({"num-examples": num_examples, "unit-weight": unit_weight, "train-loss": 1.0})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=sent)


def _round(settings: dict, replies: list[Message], nodes: int) -> dict[str, np.ndarray]:
    class Grid:
        def get_node_ids(self) -> list[int]:
            return list(range(1, nodes + 1))

    st = build_strategy(RunSettings.from_config({"round-timeout": 0.2, **settings}), nodes)
    list(st.configure_train(1, _global(), ConfigRecord(), Grid()))  # type: ignore[arg-type]  # DP and momentum read the global model here
    arrays, _ = st.aggregate_train(1, replies)
    assert arrays is not None
    return {k: v.numpy() for k, v in arrays.items()}


# ---------------------------------------------------------------- 1. a NaN update or a bogus weight


@pytest.mark.parametrize("settings", [{"min-nodes": 2}, {"min-nodes": 2, "weighting": "num-examples"},
                                      {"min-nodes": 3, "strategy": "fedmedian"},
                                      {"min-nodes": 2, "server-momentum": 0.5}])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_device_sending_non_finite_weights_is_left_out(task_identity, settings: dict, bad: float) -> None:
    """Before: one NaN update made the aggregate NaN (FedAvg and even the median), silently, every round after."""
    out = _round(settings, [_reply(1), _reply(2), _reply(3), _reply(4, bad)], nodes=4)
    for k, v in out.items():
        assert np.isfinite(v).all(), f"{k} poisoned by one device"
        np.testing.assert_allclose(v, W[k] + 0.1, rtol=1e-6)


@pytest.mark.parametrize("metric", [{"num-examples": -1e9}, {"num-examples": math.nan}, {"unit-weight": -3},
                                    {"unit-weight": math.inf}])
def test_a_device_claiming_a_non_positive_or_non_finite_weight_is_left_out(task_identity, metric: dict) -> None:
    """Before: a negative or NaN weight made FedAvg's weights sum to ~0 or NaN: the model exploded or went NaN."""
    kw = {k.replace("-", "_"): v for k, v in metric.items()}
    weighting = "num-examples" if "num-examples" in metric else "unit"
    out = _round({"min-nodes": 2, "weighting": weighting}, [_reply(1), _reply(2), _reply(3, 50.0, **kw)], nodes=3)
    for k, v in out.items():
        np.testing.assert_allclose(v, W[k] + 0.1, rtol=1e-6)


def test_dp_round_with_a_non_finite_update_fails_by_name_instead_of_publishing_nan(task_identity) -> None:
    """Under DP every device of m0 is needed: the round fails naming why, not NaN plus noise."""
    s = {"min-nodes": 3, "dp": True, "noise-multiplier": 5.0}
    with pytest.raises(QuorumError, match=r"2 device\(s\) replied.*3 needed.*left out: 1 device\(s\) sent non-finite"):
        _round(s, [_reply(1), _reply(2), _reply(3, math.nan)], nodes=3)


# ---------------------------------------------------------------- 2. one device of other features at the scaling round


def _devices_one_of_other_features(bad: str):  # type: ignore[no-untyped-def]
    from tests.federated.test_run_devices_and_limits import _Devices

    class Devices(_Devices):
        def _answer(self, m: Message) -> Message:
            r = super()._answer(m)
            if m.metadata.message_type == MessageType.QUERY and m.metadata.dst_node_id == 3:
                sums = array_record(r.content, "sums")
                a, b = get_array(sums, "sum"), get_array(sums, "sumsq")
                if bad == "dim":  # a device file of another feature set: 5-d windows
                    a, b = a[:5], b[:5]
                else:
                    a = np.full_like(a, np.nan)
                r.content["sums"] = ArrayRecord({"sum": Array(a), "sumsq": Array(b)})
            return r

    return Devices([1, 2, 3], [])


@pytest.mark.parametrize("bad", ["dim", "nan"])
def test_one_device_of_other_features_is_left_out_not_the_whole_run(task_identity, bad: str) -> None:
    """Before: 'data: devices hold windows of different sizes' (or a NaN scaling) failed every device's run."""
    from federated.orchestration import FederatedRunError, run_training

    s = RunSettings.from_config({"num-server-rounds": 1, "min-nodes": 2, "round-timeout": 0.5})
    out = run_training(_devices_one_of_other_features(bad), s)
    assert out.num_devices == 2
    assert out.scorer is not None and all(np.isfinite(v).all() for v in out.scorer.get_state().values())
    need_all = RunSettings.from_config({"num-server-rounds": 1, "min-nodes": 3, "round-timeout": 0.5})
    with pytest.raises(FederatedRunError, match=r"scaling round: 2/3 devices .*min-nodes 3 needed; left out: 1 "
                                                 r"device\(s\) (holds 5-d windows|sent non-finite)"):
        run_training(_devices_one_of_other_features(bad), need_all)


def test_a_device_file_of_another_feature_width_is_refused_as_the_supernode_starts(tmp_path: Path) -> None:
    """It was read, and the device was only left out at the run's scaling round (or failed it before)."""
    from federated.features import DeviceDataError, feature_spec, read_device_file, write_device_file

    spec = feature_spec("keystroke")
    narrow = write_device_file(tmp_path / "device-1.npz", np.ones((10, 5)), spec, 1)
    with pytest.raises(DeviceDataError, match=rf"windows of 5 features, keystroke features .* have {spec.dim}"):
        read_device_file(narrow)  # `cadence federated supernode` checks it before starting
    with pytest.raises(DeviceDataError, match="windows of 5 features"):
        read_device_file(narrow, "keystroke")
    good = write_device_file(tmp_path / "device-2.npz", np.ones((10, spec.dim)), spec, 2)
    assert read_device_file(good, "keystroke").shape == (10, spec.dim)
