"""Sensors behind one interface: each collector pushes plain event objects into a sink.

A collector is started with a sink (any callable taking one `KeyEvent`, `TouchEvent` or
`AccelSample`) and stopped when capture must end. Nothing here computes features; the sink is
usually `EvidenceBuffer.add`. Window-bound collectors live in `keyboard` and `touch`,
accelerometers in `accelerometer`, and `replay` plays recordings through the same interface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, Union, runtime_checkable

from modalities.events import AccelSample, KeyEvent, TouchEvent

Event = Union[KeyEvent, TouchEvent, AccelSample]
Sink = Callable[[Event], None]


@runtime_checkable
class Collector(Protocol):
    """One source of behavioural events for one modality."""

    modality: str

    @property
    def running(self) -> bool: ...

    def start(self, sink: Sink) -> None:
        """Begin pushing events into `sink` (idempotent)."""

    def stop(self) -> None:
        """Stop capture and release the sensor (idempotent)."""


class WindowCollector:
    """Lifecycle shared by collectors that listen to Kivy window events.

    Subclasses set `modality` and return their handlers from `_bindings()`; start/stop bind
    and unbind them exactly once, and `_on_stop()` clears per-capture state.
    """

    modality: str

    def __init__(self, window: Any) -> None:
        self.window = window
        self._sink: Sink | None = None

    @property
    def running(self) -> bool:
        return self._sink is not None

    def _bindings(self) -> dict[str, Callable[..., Any]]:
        raise NotImplementedError

    def _on_stop(self) -> None:
        """Forget per-capture state (default: nothing)."""

    def start(self, sink: Sink) -> None:
        if self._sink is not None:
            return
        self._sink = sink
        self.window.bind(**self._bindings())

    def stop(self) -> None:
        if self._sink is None:
            return
        self.window.unbind(**self._bindings())
        self._sink = None
        self._on_stop()


def modality_of(event: Event) -> str:
    """The modality an event belongs to."""
    if isinstance(event, KeyEvent):
        return "keystroke"
    if isinstance(event, TouchEvent):
        return "touch"
    if isinstance(event, AccelSample):
        return "gait"
    raise TypeError(f"event: not a Cadence event object: {type(event).__name__}")
