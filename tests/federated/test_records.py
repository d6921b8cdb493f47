"""Flower records are read with the type they must hold; anything else is a named error."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from federated.records import (
    RecordError,
    array_record,
    config_record,
    get_array,
    get_float,
    get_floats,
    get_int,
    get_str,
    metric_record,
)


def test_well_formed_records_read_back_with_their_types() -> None:
    content = RecordDict({"config": ConfigRecord({"slot": 3, "lr": 0.05, "modality": "gait", "norm-mean": [0.5, 1.0]}),
                          "metrics": MetricRecord({"num-examples": 12}),
                          "sums": ArrayRecord({"sum": Array(np.arange(3.0))})})
    cfg = config_record(content)
    assert get_int(cfg, "slot") == 3 and get_float(cfg, "lr") == 0.05 and get_str(cfg, "modality") == "gait"
    assert get_floats(cfg, "norm-mean").dtype == np.float32
    assert get_float(cfg, "proximal-mu", 0.0) == 0.0
    assert get_int(metric_record(content), "num-examples") == 12
    np.testing.assert_array_equal(get_array(array_record(content, "sums"), "sum"), np.arange(3.0))


@pytest.mark.parametrize("read, message", [
    (lambda c: config_record(c, "missing"), "missing: record missing"),
    (lambda c: config_record(c, "metrics"), "metrics: expected a ConfigRecord"),
    (lambda c: get_int(config_record(c), "lr"), "lr: expected an integer"),
    (lambda c: get_int(config_record(c), "flag"), "flag: expected an integer"),
    (lambda c: get_str(config_record(c), "slot"), "slot: expected a string"),
    (lambda c: get_floats(config_record(c), "modality"), "modality: expected a list of numbers"),
    (lambda c: get_float(config_record(c), "absent"), "absent: missing"),
    (lambda c: get_array(array_record(c, "sums"), "sumsq"), "sumsq: array missing"),
])
def test_malformed_records_raise_a_named_error(read, message) -> None:  # type: ignore[no-untyped-def]
    content = RecordDict({"config": ConfigRecord({"slot": 3, "lr": 0.05, "modality": "gait", "flag": True}),
                          "metrics": MetricRecord({"num-examples": 12}),
                          "sums": ArrayRecord({"sum": Array(np.arange(3.0))})})
    with pytest.raises(RecordError, match=message):
        read(content)
