"""Recent behavioural evidence kept in memory, flushed to the encrypted store in batches.

The sink every collector writes to. A transaction asks for the most recent evidence of each
modality ("the last 100 keys", "the last 5 swipes", "the last 10 s of walking"); enrolment
asks for everything captured during a task. Events of a modality the person has not consented
to are dropped at the door.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable

from mobile_client.collectors import Event, modality_of
from mobile_client.raw_store import RawEventStore
from modalities.events import AccelSample, KeyEvent, TouchEvent

#: how many events of each modality are kept in memory
CAPACITY = {"keystroke": 2000, "touch": 6000, "gait": 12000}
FLUSH_EVERY = 500


class EvidenceBuffer:
    """Thread-safe per-modality ring buffers (the accelerometer pushes from its own thread)."""

    def __init__(self, store: RawEventStore | None = None, allowed: Callable[[str], bool] = lambda m: True) -> None:
        self._buf: dict[str, deque[Event]] = {m: deque(maxlen=n) for m, n in CAPACITY.items()}
        self._pending: list[Event] = []
        self._lock = threading.Lock()
        self.store = store
        self.allowed = allowed
        self._marks: dict[str, int] = {m: 0 for m in CAPACITY}
        self._total: dict[str, int] = {m: 0 for m in CAPACITY}

    def add(self, ev: Event) -> None:
        m = modality_of(ev)
        if not self.allowed(m):
            return
        with self._lock:
            self._buf[m].append(ev)
            self._total[m] += 1
            self._pending.append(ev)
            flush = len(self._pending) >= FLUSH_EVERY
        if flush:
            self.flush()

    def extend(self, events: Iterable[Event]) -> None:
        for ev in events:
            self.add(ev)

    def flush(self) -> int:
        with self._lock:
            batch, self._pending = self._pending, []
        if self.store is not None and batch:
            return self.store.append(batch)
        return 0

    def count(self, modality: str) -> int:
        """Events of `modality` seen since start (not only those still in memory)."""
        return self._total[modality]

    def mark(self, modality: str) -> None:
        """Remember where a task starts, so `since_mark` returns only its events."""
        with self._lock:
            self._marks[modality] = self._total[modality]

    def since_mark(self, modality: str) -> list[Event]:
        with self._lock:
            n = self._total[modality] - self._marks[modality]
            buf = list(self._buf[modality])
        return buf[-n:] if n > 0 else []

    def keys(self, last: int | None = None) -> list[KeyEvent]:
        with self._lock:
            buf = list(self._buf["keystroke"])
        return buf[-last:] if last else buf  # type: ignore[return-value]

    def touches(self, last_strokes: int | None = None) -> list[TouchEvent]:
        """The touch events of the last `last_strokes` strokes (from their DOWN)."""
        with self._lock:
            buf: list[TouchEvent] = list(self._buf["touch"])  # type: ignore[arg-type]
        if not last_strokes:
            return buf
        downs = [i for i, e in enumerate(buf) if int(e.action) == 0]
        return buf[downs[-last_strokes]:] if len(downs) >= last_strokes else buf[downs[0]:] if downs else []

    def accel(self, last_seconds: float | None = None) -> list[AccelSample]:
        with self._lock:
            buf: list[AccelSample] = list(self._buf["gait"])  # type: ignore[arg-type]
        if not buf or not last_seconds:
            return buf
        t_end = buf[-1].time
        return [s for s in buf if s.time >= t_end - last_seconds]

    def clear(self) -> None:
        with self._lock:
            for d in self._buf.values():
                d.clear()
            self._pending.clear()
