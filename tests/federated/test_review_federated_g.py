"""Review G: a device's bad update cannot poison the global model; operator edge cases.

Fast: strategies are driven in-process with hand-made replies (no Flower process started).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from federated.config import RunSettings
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
