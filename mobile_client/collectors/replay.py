"""Replay source: plays recorded or synthetic signals through the collector interface.

Desktop builds and tests have no accelerometer (and nobody to type): a `ReplaySource` takes
a recording (`KeySequence`, `TouchStream` or `AccelSeries`) and pushes its events into the
sink exactly as a live collector would, with times shifted onto the session clock. It can
play everything at once (`play_all`, tests) or in real time at some speed through a
scheduler (`start`, the desktop app's walk step).

`recorded_walk` always gives the length asked for: a recording shorter than that is looped
(logged), so the walk step never stops part-way for want of data; a data folder that cannot be
used is named in a warning, with the reason, before the synthetic walk stands in. A real walk
starts where the person walks on long enough for set-up's gait windows, and a walk started again
replays another such stretch, so a retry after a failed check can pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mobile_client.clock import Clock, monotonic
from mobile_client.collectors import Event, Sink
from modalities.events import AccelSeries, KeyEvent, KeySequence, TouchStream

log = logging.getLogger(__name__)

Recording = KeySequence | TouchStream | AccelSeries
Scheduler = Callable[[Callable[[float], bool | None], float], Any]


def events_of(rec: Recording) -> list[Event]:
    """The single events of a recording, in time order."""
    if isinstance(rec, KeySequence):
        return list(rec.to_events())
    if isinstance(rec, TouchStream):
        return list(rec.to_events())
    if isinstance(rec, AccelSeries):
        return list(rec.to_samples())
    raise TypeError(f"recording: expected KeySequence, TouchStream or AccelSeries, got {type(rec).__name__}")


def _time(ev: Event) -> float:
    return float(getattr(ev, "press", getattr(ev, "time", 0.0)))


def shifted(ev: Event, offset: float) -> Event:
    """The same event `offset` seconds later."""
    from dataclasses import replace

    if isinstance(ev, KeyEvent):
        return replace(ev, press=ev.press + offset, release=ev.release + offset)
    return replace(ev, time=ev.time + offset)


class ReplaySource:
    """Plays one recording as a collector of its modality."""

    def __init__(self, recording: Recording, clock: Clock = monotonic, speed: float = 1.0,
                 schedule: Scheduler | None = None, on_done: Callable[[], None] | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed: must be > 0")
        self.recording = recording
        self.modality = {KeySequence: "keystroke", TouchStream: "touch", AccelSeries: "gait"}[type(recording)]
        self.clock = clock
        self.speed = speed
        self.schedule = schedule
        self.on_done = on_done
        self._events = events_of(recording)
        self._i = 0
        self._sink: Sink | None = None
        self._t0_rec = _time(self._events[0])
        self._t0_clock = 0.0
        self._elapsed = 0.0
        self._tick: Any = None

    @property
    def running(self) -> bool:
        return self._sink is not None

    @property
    def progress(self) -> float:
        return self._i / len(self._events)

    @property
    def duration(self) -> float:
        return (_time(self._events[-1]) - self._t0_rec) / self.speed

    def play_all(self, sink: Sink) -> int:
        """Push every event now, times placed on the session clock; returns the count."""
        offset = self.clock() - self._t0_rec
        for ev in self._events:
            sink(shifted(ev, offset))
        self._i = len(self._events)
        return len(self._events)

    def start(self, sink: Sink) -> None:
        """Play in (scaled) real time on `schedule` (Kivy's Clock by default)."""
        if self._sink is not None:
            return
        self._sink = sink
        self._t0_clock = self.clock()
        self._elapsed = 0.0
        if self.schedule is None:
            from kivy.clock import Clock as KivyClock

            self._tick = KivyClock.schedule_interval(self._step, 1 / 30)
        else:
            self._tick = self.schedule(self._step, 1 / 30)

    def _step(self, dt: float) -> bool | None:
        if self._sink is None:
            return False
        self._elapsed += dt * self.speed
        horizon = self._t0_rec + self._elapsed
        offset = self._t0_clock - self._t0_rec
        while self._i < len(self._events) and _time(self._events[self._i]) <= horizon:
            # times keep the recording's own spacing (not the UI frame times)
            self._sink(shifted(self._events[self._i], offset))
            self._i += 1
        if self._i >= len(self._events):
            self.stop()
            if self.on_done:
                self.on_done()
            return False
        return None

    def stop(self) -> None:
        if self._tick is not None and hasattr(self._tick, "cancel"):
            self._tick.cancel()
        self._tick = None
        self._sink = None


def recorded_walk(data_dir: str | Path | None, seconds: float, seed: int = 1,
                  attempt: int = 0) -> tuple[AccelSeries, str]:
    """A walk to replay: a real BB-MAS pocket recording if a data folder is given, else synthetic.

    `attempt` counts the walks replayed before in this run: each replays another stretch (a walk
    started again after a failed quality check must be able to pass, not replay the one that
    failed). A real walk starts where subject `seed` walks on without a stop for as long as set-up's
    gait windows need (`walk_starts`); the same attempt always replays the same stretch, so a
    longer one continues it. Returns the series and a label saying where it came from (shown in the app).
    """
    if data_dir:
        try:
            from evaluation.datasets import available_subjects, load_bbmas_gait

            subjects = available_subjects(data_dir, "gait")
            if not subjects:
                log.warning("walk replay: no BB-MAS gait recording in %s (missing or not a data folder): "
                            "replaying a synthetic walk instead", data_dir)
            else:
                sid = subjects[seed % len(subjects)]
                recs = load_bbmas_gait(data_dir, [sid])
                if sid not in recs:
                    raise ValueError(f"subject {sid} has no usable walking segment")
                starts = walk_starts(recs[sid].segments)
                seg, start = starts[attempt % len(starts)]
                series = stretch(seg, start, seconds)
                if len(series) < 2:
                    raise ValueError(f"subject {sid}'s walk has fewer than 2 samples")
                return looped(series, seconds), f"BB-MAS subject {sid}, from {start - seg.t[0]:.0f} s (replayed)"
        except (ImportError, OSError, RuntimeError, ValueError, KeyError, IndexError) as exc:  # DatasetError: Runtime
            log.warning("walk replay: cannot use the recordings in %s (%s: %s): replaying a synthetic walk instead",
                        data_dir, type(exc).__name__, exc)
    from evaluation.synthetic import SyntheticPerson

    return SyntheticPerson(seed).walk(seconds, 100.0, rng=seed + 1000 + attempt), "synthetic walk (replayed)"


def walk_starts(segments: Sequence[AccelSeries]) -> list[tuple[AccelSeries, float]]:
    """(segment, start time) of each stretch of continuous walking long enough for set-up's gait windows.

    Longest segment first, in time order within one (the batch's walking detection,
    `modalities.gait.features.walking_parts`). A recording without such a stretch gives its
    longest segment from its first sample: replayed, it fails set-up's check as it would on a phone.
    """
    from mobile_client.features import MIN_ENROL_WINDOWS, gait_walk_seconds
    from modalities.gait.features import walking_parts

    need = gait_walk_seconds(MIN_ENROL_WINDOWS["gait"])
    ordered = sorted(segments, key=lambda s: s.duration, reverse=True)
    starts = [(seg, float(part.t0)) for seg in ordered for part in walking_parts(seg, min_s=need)]
    return starts or [(ordered[0], float(ordered[0].t[0]))]


def stretch(series: AccelSeries, start: float, seconds: float) -> AccelSeries:
    """`seconds` of `series` from `start`: up to the first sample at or past ``start + seconds``.

    So the span is never short of `seconds` where the recording goes on that long.
    """
    a = int(np.searchsorted(series.t, start, side="left"))
    b = _through(series.t, series.t[a] + seconds) if a < len(series) else a
    return AccelSeries(series.t[a:b], series.xyz[a:b], series.device)


def _through(t: np.ndarray, end: float) -> int:
    """How many of the sorted times `t` to keep to reach `end`: through the first at or past it."""
    return min(int(np.searchsorted(t, end, side="left")) + 1, len(t))


def looped(series: AccelSeries, seconds: float) -> AccelSeries:
    """`series` repeated end to end until it lasts `seconds` (unchanged if it already does)."""
    span = series.duration
    if span >= seconds or len(series) < 2:
        return series
    step = float(np.median(np.diff(series.t))) or 0.01
    period = span + step
    reps = math.ceil(seconds / period) + 1
    t = np.concatenate([series.t + k * period for k in range(reps)])
    xyz = np.concatenate([series.xyz] * reps)
    n = _through(t, t[0] + seconds)
    log.warning("walk replay: the recording lasts only %.1f s: looped to fill %.0f s", span, seconds)
    return AccelSeries(t[:n], xyz[:n], series.device)
