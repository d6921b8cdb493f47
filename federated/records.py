"""Typed, checked access to Flower message records.

Flower's records hold unions (an entry may be an Array, a number, a string or a list), so
every read names the type it expects. A device or server that sends something else gets a
`RecordError` naming the record and key, not an AttributeError deep in training code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict


class RecordError(ValueError):
    """A message record is missing or holds the wrong type."""


def _record(content: RecordDict, name: str, kind: type) -> Any:
    if name not in content:
        raise RecordError(f"{name}: record missing from the message")
    rec = content[name]
    if not isinstance(rec, kind):
        raise RecordError(f"{name}: expected a {kind.__name__}, got {type(rec).__name__}")
    return rec


def config_record(content: RecordDict, name: str = "config") -> ConfigRecord:
    return _record(content, name, ConfigRecord)  # type: ignore[no-any-return]


def metric_record(content: RecordDict, name: str = "metrics") -> MetricRecord:
    return _record(content, name, MetricRecord)  # type: ignore[no-any-return]


def array_record(content: RecordDict, name: str) -> ArrayRecord:
    return _record(content, name, ArrayRecord)  # type: ignore[no-any-return]


def _value(rec: ConfigRecord | MetricRecord, key: str, default: Any = None) -> Any:
    if key in rec:
        return rec[key]
    if default is not None:
        return default
    raise RecordError(f"{key}: missing from the record")


def get_int(rec: ConfigRecord | MetricRecord, key: str, default: int | None = None) -> int:
    v = _value(rec, key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
        raise RecordError(f"{key}: expected an integer, got {v!r}")
    return int(v)


def get_float(rec: ConfigRecord | MetricRecord, key: str, default: float | None = None) -> float:
    v = _value(rec, key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RecordError(f"{key}: expected a number, got {v!r}")
    return float(v)


def get_str(rec: ConfigRecord, key: str, default: str | None = None) -> str:
    v = _value(rec, key, default)
    if not isinstance(v, str):
        raise RecordError(f"{key}: expected a string, got {type(v).__name__}")
    return v


def get_floats(rec: ConfigRecord, key: str) -> np.ndarray:
    """A list of numbers as a float32 vector."""
    v = _value(rec, key)
    if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise RecordError(f"{key}: expected a list of numbers")
    return np.asarray(v, np.float32)


def get_array(rec: ArrayRecord, key: str) -> np.ndarray:
    if key not in rec:
        raise RecordError(f"{key}: array missing from the record")
    arr = rec[key]
    if not isinstance(arr, Array):
        raise RecordError(f"{key}: expected an Array, got {type(arr).__name__}")
    return arr.numpy()


_FLOWER_REASON = re.compile(r"^<class '(?:[\w.]*\.)?(\w+)'>:<'(.*)'>$", re.S)


def device_errors(replies: Iterable[Message], limit: int = 3) -> str:
    """The devices' error replies as one line: each distinct reason once, with how many sent it.

    Flower wraps a ClientApp's exception as ``<class 'pkg.Name'>:<'message'>``; shown as
    ``Name: message``. "" when no reply is an error.
    """
    counts: dict[str, int] = {}
    for r in replies:
        if r.has_error():
            reason = " ".join(str(r.error.reason).split())
            m = _FLOWER_REASON.match(reason)
            reason = f"{m.group(1)}: {m.group(2)}" if m else reason
            counts[reason] = counts.get(reason, 0) + 1
    shown = [f"{n} device(s): {reason}" for reason, n in list(counts.items())[:limit]]
    more = len(counts) - limit
    return "; ".join(shown) + (f"; and {more} other reason(s)" if more > 0 else "")
