"""Which feature windows a modality's models read, and how many make evidence: one rule for the server and its clients.

A window the models do not read (a touch tap: `modalities.touch.scored`) still counts for
replay protection, but is neither enrolled nor scored. Windows of another feature version than
the package's are left to the version checks. A decision reads at least `decision_windows`
of a modality's read windows (touch: 5 swipes), the unit its calibration was fitted on.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar


class _Window(Protocol):
    @property
    def modality(self) -> str: ...
    @property
    def feature_version(self) -> str: ...
    @property
    def values(self) -> Any: ...


W = TypeVar("W", bound=_Window)


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


@functools.lru_cache(maxsize=8)
def decision_windows(modality: str) -> int:
    """Read windows one decision needs of `modality`: its package's `DECISION_WINDOWS`, else 1.

    The fusion calibration maps the mean score of this many windows to an LLR; the server
    leaves out a modality with fewer (reason `too_few_for_decision`) and its clients send at least
    this many.
    """
    try:
        pkg = importlib.import_module(f"modalities.{modality}")
    except ModuleNotFoundError:
        return 1
    return max(1, int(getattr(pkg, "DECISION_WINDOWS", 1)))


def read_windows(windows: Iterable[W]) -> list[W]:
    """The windows of `windows` (anything with `modality`, `feature_version`, `values`) the models read, in order."""
    return [w for w in windows if read_by_models(w.modality, w.feature_version, w.values)]
