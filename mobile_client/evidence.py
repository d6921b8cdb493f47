"""Recent behavioural evidence kept in memory, flushed to the encrypted store in batches.

The sink every collector writes to. A transaction asks for the most recent evidence of each
modality ("the last 100 keys", "the last 5 swipes", "the last 15 s of walking"); enrolment
asks for everything captured during a task. Events of a modality the person has not consented
to are dropped at the door.

Why the buffer also remembers what left the phone (`note_sent`): the server refuses a feature
window it has already received (replay protection), so evidence must be new behaviour, never
windows cut again from events an earlier enrolment or payment already sent. "Recent" is
measured on the collectors' clock (`now`), not from the newest stored event, so an old walk
does not count as recent just because nothing came after it.

Erasure and flushing: `flush` writes its batch to the store outside the buffer's lock (encrypting
takes a while, and the sensor thread must not wait for it), but under a flush lock of its own.
`clear` (what an erasure calls before deleting the store) voids what was not flushed yet and then
waits for a flush already writing, so that batch is on disk before the store is deleted and
never written after it, with the new key. An event that was being added while `clear` ran is
dropped (`_epoch`), so nothing recorded before an erasure is flushed after it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from mobile_client.clock import Clock, monotonic
from mobile_client.collectors import Event, modality_of
from mobile_client.raw_store import RawEventStore
from modalities.events import AccelSample, FeatureWindow, KeyEvent, TouchEvent

log = logging.getLogger(__name__)
#: how many events of each modality are kept in memory
CAPACITY = {"keystroke": 2000, "touch": 6000, "gait": 12000}
FLUSH_EVERY = 500
#: events kept waiting for the store while it cannot be written (a full disk): the oldest go beyond
MAX_PENDING = sum(CAPACITY.values())


class EvidenceBuffer:
    """Thread-safe per-modality ring buffers (the accelerometer pushes from its own thread)."""

    def __init__(self, store: RawEventStore | None = None, allowed: Callable[[str], bool] = lambda m: True,
                 clock: Clock = monotonic) -> None:
        self._buf: dict[str, deque[Event]] = {m: deque(maxlen=n) for m, n in CAPACITY.items()}
        self._pending: list[Event] = []
        #: `add` flushes once this many events wait (more after a write failed: not one try per event)
        self._flush_at = FLUSH_EVERY
        self._lock = threading.Lock()
        #: held while a batch is written to the store (`clear` waits for it)
        self._flush_lock = threading.Lock()
        #: bumped by `clear`: an `add` that began before is dropped
        self._epoch = 0
        #: bumped by `forget` for one modality: an `add` of it that began before is dropped
        self._forgotten: dict[str, int] = {m: 0 for m in CAPACITY}
        self.store = store
        self.allowed = allowed
        #: nothing is collected while set (an erasure waits for the bank)
        self.paused = False
        #: the clock the collectors stamp events with (recency is measured on it)
        self.clock = clock
        self._marks: dict[str, int] = {m: 0 for m in CAPACITY}
        self._total: dict[str, int] = {m: 0 for m in CAPACITY}
        self._sent_until: dict[str, float] = {m: -math.inf for m in CAPACITY}
        self._sent_digests: set[str] = set()

    def add(self, ev: Event) -> None:
        m = modality_of(ev)
        epoch, forgotten = self._epoch, self._forgotten[m]
        if self.paused or not self.allowed(m):
            return
        with self._lock:
            if epoch != self._epoch or forgotten != self._forgotten[m]:  # cleared or forgotten meanwhile: it goes too
                return
            self._buf[m].append(ev)
            self._total[m] += 1
            self._pending.append(ev)
            flush = len(self._pending) >= self._flush_at
        if flush:
            self.flush()

    def extend(self, events: Iterable[Event]) -> None:
        for ev in events:
            self.add(ev)

    def flush(self) -> int:
        """Write what is pending to the store; returns how many events were written.

        A store that cannot be written (a full disk, an I/O error) is logged, never raised: this
        runs from the collectors' handlers (a key released, a sensor sample) and after a payment's
        answer, which must neither crash the app nor be lost. The batch then waits for the next
        flush (at most `MAX_PENDING` events, the oldest dropped), unless cleared or forgotten meanwhile.
        """
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, []
                epoch, forgotten = self._epoch, dict(self._forgotten)
            if self.store is None or not batch:
                return 0
            by_mod: dict[str, list[Event]] = {}
            for ev in batch:
                by_mod.setdefault(modality_of(ev), []).append(ev)
            n, failed, error = 0, {}, None
            for m, events in by_mod.items():  # one store batch each: a modality written is not written twice
                try:
                    n += self.store.append(events)
                except OSError as exc:
                    failed[m], error = events, exc
            with self._lock:
                if epoch == self._epoch:  # not cleared (nor that modality forgotten) meanwhile: it waits
                    back = [e for m, evs in failed.items() if forgotten[m] == self._forgotten[m] for e in evs]
                    self._pending = (back + self._pending)[-MAX_PENDING:]
                self._flush_at = len(self._pending) + FLUSH_EVERY if error is not None else FLUSH_EVERY
                waiting = len(self._pending)
            if error is not None:
                log.warning("recordings could not be stored on this phone (%s): %d event(s) wait in memory for "
                            "the next try", error, waiting)
            return n

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

    # -- what already left the phone ------------------------------------------------------
    def note_sent(self, windows: Iterable[FeatureWindow]) -> None:
        """Record windows the server received, so their events are never cut into evidence again."""
        with self._lock:
            for w in windows:
                self._sent_until[w.modality] = max(self._sent_until[w.modality], float(w.end))
                self._sent_digests.add(window_digest(w))

    def sent_until(self, modality: str) -> float:
        """End time of the newest `modality` window sent (-inf when none was)."""
        return self._sent_until[modality]

    def unsent(self, windows: Sequence[FeatureWindow]) -> list[FeatureWindow]:
        """`windows` less any identical to one already sent (a second guard besides `sent_until`)."""
        with self._lock:
            return [w for w in windows if window_digest(w) not in self._sent_digests]

    def _fresh(self, modality: str, max_age_s: float | None) -> list[Event]:
        """Events of `modality` newer than what was sent and, with `max_age_s`, than now - max_age_s."""
        with self._lock:
            buf = list(self._buf[modality])
            after = self._sent_until[modality]
        oldest = self.clock() - max_age_s if max_age_s is not None else -math.inf
        return [e for e in buf if _time(e) > after and _time(e) >= oldest]

    # -- recent evidence (never events already sent) ---------------------------------------------
    def keys(self, last: int | None = None, max_age_s: float | None = None) -> list[KeyEvent]:
        """The last `last` unsent key presses, pressed at most `max_age_s` ago."""
        buf: list[KeyEvent] = self._fresh("keystroke", max_age_s)  # type: ignore[assignment]
        return buf[-last:] if last else buf

    def touches(self, last_strokes: int | None = None, max_age_s: float | None = None) -> list[TouchEvent]:
        """The unsent touch events of the last `last_strokes` strokes (from their DOWN)."""
        buf: list[TouchEvent] = self._fresh("touch", max_age_s)  # type: ignore[assignment]
        if not last_strokes:
            return buf
        downs = [i for i, e in enumerate(buf) if int(e.action) == 0]
        return buf[downs[-last_strokes]:] if len(downs) >= last_strokes else buf[downs[0]:] if downs else []

    def accel(self, last_seconds: float | None = None) -> list[AccelSample]:
        """Unsent accelerometer samples of the last `last_seconds` seconds before now."""
        return self._fresh("gait", last_seconds)  # type: ignore[return-value]

    def forget(self, modality: str) -> int:
        """Drop every event of `modality` in memory, those waiting to be flushed included; returns how many.

        What a withdrawn consent calls before deleting the modality's stored batches
        (`RawEventStore.delete_modality`): it waits for a batch being written, so that batch is on
        disk to be deleted, and nothing of the modality is flushed afterwards (`AppServices.close`
        flushes). What already left the phone stays noted (`note_sent`): only fingerprints.
        """
        with self._lock:
            self._forgotten[modality] += 1
            n = len(self._buf[modality])
            self._buf[modality].clear()
            self._pending = [e for e in self._pending if modality_of(e) != modality]
        with self._flush_lock:  # a flush that took its batch before: it is written now, and deleted next
            pass
        return n

    def clear(self) -> None:
        """Forget every event in memory and wait for a batch being written (see the module's docstring).

        Call it before deleting the store: what it waits for is one batch's encryption and write.
        """
        with self._lock:
            self._epoch += 1
            for d in self._buf.values():
                d.clear()
            self._pending.clear()
        with self._flush_lock:  # a flush that took its batch before: it is written now, and deleted next
            pass


def _time(ev: Event) -> float:
    """When an event happened (a key press counts from its press)."""
    return float(ev.press if isinstance(ev, KeyEvent) else ev.time)


def window_digest(w: FeatureWindow) -> str:
    """A fingerprint of one window (what the server's replay check compares, near enough)."""
    h = hashlib.sha256(f"{w.modality}|{w.feature_version}|{w.n_events}|{w.start!r}|{w.end!r}".encode())
    h.update(w.values.tobytes())
    return h.hexdigest()
