"""Stroke segmentation: raw touch samples -> down..up strokes, taps vs swipes.

A stroke is the samples of one pointer from its DOWN to the next UP. Decisions taken here on
purpose, so every consumer (phone, bench, server) sees the same strokes:

* **Multi-touch is dropped.** A stroke during which a second pointer is active (a
  POINTER_DOWN/POINTER_UP row, or any row of another pointer id between its DOWN and UP) is a
  pinch or an accidental second finger, not a swipe; BB-MAS has a handful of them (11 users).
  They are counted in `Segmentation.n_multitouch` rather than silently mixed in.
* **Unfinished strokes are dropped**: a DOWN followed by another DOWN before any UP (lost UP
  row) or a stream that ends mid-stroke.
* **Taps vs swipes**: a stroke whose end-to-end displacement is below `TAP_MAX_DISPLACEMENT`
  screen widths (about 2.5 mm on a 6 cm wide phone) is a tap.
* **Per-device normalisation**: positions are divided by the screen width (both axes, so
  geometry and angles are kept; physical widths of 1080 px HTC One and 1440 px Galaxy S6 are
  58-63 mm, so one screen width is a similar physical length on both); contact size and
  pressure are divided by the device's typical value (`DEVICE_PROFILES`), and a device whose
  pressure never varies (Galaxy S6 reports 1.0 always) gets `has_pressure=False`.

Pure numpy; runs on the phone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modalities.events import EventValidationError, TouchAction, TouchStream

#: strokes moving less than this (in screen widths) end to end are taps
TAP_MAX_DISPLACEMENT = 0.04


@dataclass(frozen=True)
class DeviceProfile:
    """Typical contact-size and pressure values of one phone model (population medians)."""

    contact_scale: float
    pressure_scale: float | None  # None: the device reports no pressure signal


#: medians over the BB-MAS phone touch recordings (touchMajor; pressure where it varies)
DEVICE_PROFILES: dict[str, DeviceProfile] = {
    "HTC_One": DeviceProfile(contact_scale=12.0, pressure_scale=0.21),
    "Samsung_S6": DeviceProfile(contact_scale=3.9, pressure_scale=None),
}


@dataclass(frozen=True)
class Stroke:
    """One finger stroke in device-normalised units.

    `x`, `y` in screen widths; `t` in seconds; `pressure` and `size` (contact major axis)
    relative to the device's typical value; `minor` likewise for the minor axis.
    """

    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    pressure: np.ndarray
    size: np.ndarray
    minor: np.ndarray
    has_pressure: bool
    pointer_id: int
    prev_up: float | None  # UP time of the previous stroke in the stream (None for the first)

    @property
    def displacement(self) -> float:
        return float(np.hypot(self.x[-1] - self.x[0], self.y[-1] - self.y[0]))

    @property
    def is_tap(self) -> bool:
        return self.displacement < TAP_MAX_DISPLACEMENT

    @property
    def start(self) -> float:
        return float(self.t[0])

    @property
    def end(self) -> float:
        return float(self.t[-1])

    def __len__(self) -> int:
        return int(self.t.shape[0])


@dataclass(frozen=True)
class Segmentation:
    """Strokes of a stream plus what was dropped and why."""

    strokes: list[Stroke]
    n_multitouch: int
    n_unfinished: int

    @property
    def swipes(self) -> list[Stroke]:
        return [s for s in self.strokes if not s.is_tap]

    @property
    def taps(self) -> list[Stroke]:
        return [s for s in self.strokes if s.is_tap]


def device_profile(stream: TouchStream) -> tuple[float, float | None]:
    """(contact scale, pressure scale or None) for the stream's device.

    The stream's own measured scales (`TouchStream.contact_scale`, set by a loader that pooled
    a phone model's files), else the model's entry in `DEVICE_PROFILES`, else the stream's own
    medians: still comparable within one person, and the pressure channel is dropped when it
    never varies.
    """
    prof = DEVICE_PROFILES.get(stream.device)
    if stream.contact_scale is not None:
        prof = DeviceProfile(stream.contact_scale, stream.pressure_scale)
    if prof is None:
        prof = measured_profile(stream.touch_major, stream.pressure)
    varies = bool(np.ptp(stream.pressure) > 1e-9) if len(stream) > 1 else False
    return prof.contact_scale, prof.pressure_scale if varies else None


def measured_profile(touch_major: np.ndarray, pressure: np.ndarray) -> DeviceProfile:
    """A profile measured from samples: median contact size and, where it varies, median pressure.

    One stream's samples (a device not in `DEVICE_PROFILES`), or a loader's pool of a phone
    model's files (`evaluation.datasets.model_touch_scales`).
    """
    major = np.asarray(touch_major, float)
    press = np.asarray(pressure, float)
    contact = float(np.median(major[major > 0])) if np.any(major > 0) else 1.0
    varies = press.size > 1 and float(np.ptp(press)) > 1e-9 and float(np.median(press)) > 0
    return DeviceProfile(max(contact, 1e-6), float(np.median(press)) if varies else None)


def segment(stream: TouchStream, *, min_points: int = 1) -> Segmentation:
    """Cut a stream into single-pointer down..up strokes (see module docstring)."""
    if not isinstance(stream, TouchStream):
        raise EventValidationError("stream", f"expected a TouchStream, got {type(stream).__name__}")
    a = stream.action.astype(np.int64)
    pid = stream.pointer_id.astype(np.int64)
    downs = np.flatnonzero(a == TouchAction.DOWN)
    ups = np.flatnonzero(a == TouchAction.UP)
    multi_rows = np.flatnonzero((a == TouchAction.POINTER_DOWN) | (a == TouchAction.POINTER_UP)
                                | (a == TouchAction.CANCEL))
    scale = float(stream.screen_width)
    contact, pscale = device_profile(stream)
    strokes: list[Stroke] = []
    n_multi = n_unfinished = 0
    prev_up: float | None = None
    for k, d in enumerate(downs):
        j = np.searchsorted(ups, d)
        nxt = downs[k + 1] if k + 1 < downs.size else len(a)
        if j >= ups.size or ups[j] > nxt:
            n_unfinished += 1
            continue
        u = int(ups[j])
        sl = slice(int(d), u + 1)
        lo, hi = np.searchsorted(multi_rows, np.array([d, u]))
        if hi > lo or np.any(pid[sl] != pid[d]):
            n_multi += 1
            prev_up = float(stream.time[u])
            continue
        if u + 1 - d < min_points:
            continue
        pr = stream.pressure[sl] / pscale if pscale else np.ones(u + 1 - d)
        strokes.append(Stroke(
            t=stream.time[sl] - 0.0, x=stream.x[sl] / scale, y=stream.y[sl] / scale,
            pressure=pr, size=stream.touch_major[sl] / contact, minor=stream.touch_minor[sl] / contact,
            has_pressure=pscale is not None, pointer_id=int(pid[d]), prev_up=prev_up,
        ))
        prev_up = float(stream.time[u])
    return Segmentation(strokes, n_multi, n_unfinished)
