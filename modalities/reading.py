"""Which feature windows a modality's models read: one rule for the server and its clients.

A window the models do not read (a touch tap: `modalities.touch.scored`) still counts for
replay protection, but is neither enrolled nor scored. Windows of another feature version than
the package's are left to the version checks.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from typing import Any


@functools.lru_cache(maxsize=8)
def _reader(modality: str) -> tuple[str, Callable[[Any], bool]] | None:
    """(feature version, `scored`) of a modality package that defines `scored`, else None."""
    try:
        pkg = importlib.import_module(f"modalities.{modality}")
    except ModuleNotFoundError:
        return None
    read = getattr(pkg, "scored", None)
    return (pkg.FEATURE_VERSION, read) if callable(read) else None


def read_by_models(modality: str, feature_version: str, values: Sequence[float] | Any) -> bool:
    """Whether the modality's models read a window of these values (its package's `scored`, where it has one)."""
    read = _reader(modality)
    return read is None or feature_version != read[0] or bool(read[1](values))
