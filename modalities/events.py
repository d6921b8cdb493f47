"""Event and feature types shared by the device, the benchmarks and the server.

Two forms of each signal exist on purpose:

* single-event dataclasses (`KeyEvent`, `TouchEvent`, `AccelSample`) are what a collector
  emits one at a time and what a person reads in a test;
* columnar sequences (`KeySequence`, `TouchStream`, `AccelSeries`) hold whole recordings as
  numpy arrays, because feature extraction over a dataset must be vectorised.

Every constructor validates its input and raises `EventValidationError` naming the field, so
bad data is refused at the edge rather than silently turned into NaN features downstream.
This module imports numpy only: it runs on the phone, in federated clients and in benches.

Every time is in SECONDS (any origin: only differences are used). Platforms give other units:
Android `MotionEvent.getEventTime()` / `KeyEvent` times and JavaScript event times are
milliseconds, `SensorEvent.timestamp` nanoseconds; the caller divides. Times in milliseconds
would give feature vectors that look valid and describe nothing, so `KeySequence` and
`TouchStream` refuse timing that no person's typing or touch screen produces in seconds
(`check_key_seconds`, `check_touch_seconds`); gait's resampling refuses such sampling rates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

MODALITIES: tuple[str, ...] = ("keystroke", "touch", "gait")


class EventValidationError(ValueError):
    """Raised when an event, sequence or feature window is malformed.

    `field` names the offending field so API layers can turn it into a 4xx with a reason.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _finite(field: str, value: float) -> float:
    if isinstance(value, (str, bytes)):  # "1.5" from a form or CSV is a caller bug, not a number
        raise EventValidationError(field, f"must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise EventValidationError(field, f"must be a number, got {value!r}") from exc
    if not math.isfinite(v):
        raise EventValidationError(field, f"must be finite, got {v}")
    return v


def _finite_array(field: str, values: object, *, ndim: int = 1) -> np.ndarray:
    try:
        src = np.asarray(values)
        # strings ("1.5" from a form or CSV) are a caller bug, as in `_finite`, not numbers to parse
        if src.dtype.kind in "SU" or (src.dtype.kind == "O" and any(isinstance(v, (str, bytes)) for v in src.flat)):
            raise EventValidationError(field, "must be numbers, not strings")
        arr = np.asarray(src, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, EventValidationError):
            raise
        raise EventValidationError(field, "must be numeric") from exc
    if arr.ndim != ndim:
        raise EventValidationError(field, f"must be {ndim}-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr.reshape(arr.shape[0], -1)).any(axis=1))[0])
        raise EventValidationError(field, f"must be finite (first bad index {bad})")
    return arr


def _positive_number(field: str, value: object) -> float:
    """A finite number > 0; strings are refused (a "1080" from a form or CSV is a caller bug)."""
    if isinstance(value, (str, bytes, bool)):
        raise EventValidationError(field, f"must be a number, got {value!r}")
    v = _finite(field, value)  # type: ignore[arg-type]
    if v <= 0:
        raise EventValidationError(field, f"must be > 0, got {v}")
    return v


def _int_code(field: str, value: object, lo: int, hi: int) -> int:
    """An integer in [lo, hi]; integral floats (1.0) pass, 1.9 is refused rather than truncated."""
    if isinstance(value, (str, bytes, bool)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise EventValidationError(field, f"must be an integer, got {value!r}")
    if not (math.isfinite(value) and float(value).is_integer()):
        raise EventValidationError(field, f"must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise EventValidationError(field, f"must be in [{lo}, {hi}], got {int(value)}")
    return int(value)


def _int_array(field: str, values: object, lo: int, hi: int, dtype: type[np.integer]) -> np.ndarray:
    """1-D integer codes in [lo, hi] as `dtype`, checked before the cast so nothing wraps or truncates."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise EventValidationError(field, f"must be 1-dimensional, got shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise EventValidationError(field, f"must be integers, got dtype {arr.dtype}")
    bad = ~np.isfinite(arr) | (arr != np.round(arr)) if arr.dtype.kind == "f" else np.zeros(arr.shape, bool)
    if bad.any():
        raise EventValidationError(field, f"must be integers (first bad index {int(np.flatnonzero(bad)[0])})")
    out = (arr < lo) | (arr > hi)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise EventValidationError(field, f"must be in [{lo}, {hi}], got {arr[i]} at index {i}")
    return arr.astype(dtype)


def _non_decreasing(field: str, t: np.ndarray) -> None:
    if t.size > 1:
        d = np.diff(t)
        if np.any(d < 0):
            i = int(np.flatnonzero(d < 0)[0]) + 1
            raise EventValidationError(field, f"times must be sorted (index {i} goes back in time)")


# --------------------------------------------------------------------------- time units

#: fewest key presses whose timing is judged for its unit: a few presses can time anything (BB-MAS
#: desktop typing has 2-key stretches with both keys held over 12 s, and 3-key ones whose middle
#: hold is 41 s), ten cannot (the largest median hold of any 10 presses in it is 0.83 s)
MIN_KEYS_FOR_UNIT_CHECK = 10
#: median key hold (s) that no typing reaches: BB-MAS desktop typing's largest over any 10 or more
#: consecutive presses is 0.83 s, CMU's per password typing 0.19 s; in milliseconds a hold reads
#: 47 or more (the smallest such median seen is 47 ms)
MAX_MEDIAN_HOLD_S = 5.0
#: median down-down time (s) between presses that no typing reaches: BB-MAS's largest over any 10 or
#: more consecutive presses is 2.8 s, CMU's per typing 1.4 s. It catches what the hold cannot: text
#: committed without key events (holds of 0) stamped in milliseconds
MAX_MEDIAN_KEY_INTERVAL_S = 20.0
#: median gap (s) between the samples of a finger on the screen that no touch screen gives: they
#: report at 60-240 Hz while touched (4-17 ms); over the 18,047 BB-MAS strokes a stroke's median gap
#: is at most 0.05 s, and in milliseconds it reads 1 or more (4 or more at a real screen's rate)
MAX_MEDIAN_TOUCH_INTERVAL_S = 0.5
#: fewest such gaps judged by `MAX_MEDIAN_TOUCH_INTERVAL_S`: a finger held still may report nothing
#: between its DOWN and UP (a 3 s long press is then one gap of 3 s), so fewer gaps are judged by
#: `MAX_SPARSE_TOUCH_INTERVAL_S`
MIN_TOUCH_GAPS_FOR_MEDIAN = 5
#: median gap (s) of a stroke with fewer gaps that no finger gives: a still press reported by its DOWN
#: and UP alone would have to last this long; in milliseconds a 50 ms tap reads 50 and a 60 Hz
#: screen's samples 16
MAX_SPARSE_TOUCH_INTERVAL_S = 10.0


def _refuse_milliseconds(field: str, what: str, value: float, limit: float) -> None:
    """Refuse timing above `limit` seconds: the times are milliseconds (or another unit) read as seconds."""
    if value > limit:
        raise EventValidationError(
            field, f"{what} is {value:.4g} s: no person's input is that slow (limit {limit:g} s), so the times look "
                   "like milliseconds (as Android MotionEvent/KeyEvent and JavaScript give them); Cadence takes "
                   "seconds: divide them by 1000")


def check_key_seconds(press: np.ndarray, release: np.ndarray) -> None:
    """Refuse key times that cannot be seconds (see `MAX_MEDIAN_HOLD_S`); fewer than 10 presses are not judged."""
    if press.shape[0] < MIN_KEYS_FOR_UNIT_CHECK:
        return
    _refuse_milliseconds("release", f"the median key hold over {press.shape[0]} presses",
                         float(np.median(release - press)), MAX_MEDIAN_HOLD_S)
    _refuse_milliseconds("press", f"the median time from press to press over {press.shape[0]} presses",
                         float(np.median(np.diff(press))), MAX_MEDIAN_KEY_INTERVAL_S)


def touch_contact_gaps(time: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Gaps (> 0) between consecutive samples while a finger is down: after any row but UP or CANCEL."""
    d = np.diff(time)
    held = ~np.isin(action[:-1], (TouchAction.UP, TouchAction.CANCEL))
    return d[held & (d > 0)]


def check_touch_seconds(time: np.ndarray, action: np.ndarray) -> None:
    """Refuse touch times that cannot be seconds (see `MAX_MEDIAN_TOUCH_INTERVAL_S`); no gap, nothing judged."""
    gaps = touch_contact_gaps(time, action)
    if gaps.size:
        limit = MAX_MEDIAN_TOUCH_INTERVAL_S if gaps.size >= MIN_TOUCH_GAPS_FOR_MEDIAN else MAX_SPARSE_TOUCH_INTERVAL_S
        _refuse_milliseconds("time", f"the median gap between the samples of a finger on the screen "
                                     f"({gaps.size} gaps)", float(np.median(gaps)), limit)


# --------------------------------------------------------------------------- keystrokes


@dataclass(frozen=True, slots=True)
class KeyEvent:
    """One key press: key name and press/release times in seconds."""

    key: str
    press: float
    release: float

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise EventValidationError("key", "must be a non-empty string")
        p = _finite("press", self.press)
        r = _finite("release", self.release)
        if r < p:
            raise EventValidationError("release", f"negative hold duration ({r - p:.4f} s)")
        object.__setattr__(self, "press", p)
        object.__setattr__(self, "release", r)


@dataclass(frozen=True)
class KeySequence:
    """A recording of key presses in press order (columnar); times in seconds.

    Timing no typing has in seconds (`check_key_seconds`: milliseconds, most likely) is refused.
    """

    keys: np.ndarray  # object array of str
    press: np.ndarray
    release: np.ndarray

    def __post_init__(self) -> None:
        keys = np.asarray(self.keys, dtype=object)
        if keys.ndim != 1:  # e.g. one string "ab" instead of ["a", "b"]
            raise EventValidationError("keys", f"must be a 1-D sequence of key names, got shape {keys.shape}")
        for i, k in enumerate(keys):  # the same rule as KeyEvent.key
            if not isinstance(k, str) or not k:
                raise EventValidationError("keys", f"must be non-empty strings, got {k!r} at index {i}")
        press = _finite_array("press", self.press)
        release = _finite_array("release", self.release)
        if not (keys.shape[0] == press.shape[0] == release.shape[0]):
            raise EventValidationError("keys", "keys, press and release must have equal length")
        if press.size == 0:
            raise EventValidationError("keys", "sequence is empty")
        if np.any(release < press):
            i = int(np.flatnonzero(release < press)[0])
            raise EventValidationError("release", f"negative hold duration at index {i}")
        _non_decreasing("press", press)
        check_key_seconds(press, release)
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "press", press)
        object.__setattr__(self, "release", release)

    def __len__(self) -> int:
        return int(self.press.shape[0])

    def __getitem__(self, item: slice) -> KeySequence:
        return KeySequence(self.keys[item], self.press[item], self.release[item])

    @classmethod
    def from_events(cls, events: Sequence[KeyEvent]) -> KeySequence:
        if len(events) == 0:
            raise EventValidationError("events", "sequence is empty")
        return cls(
            np.array([e.key for e in events], dtype=object),
            np.array([e.press for e in events]),
            np.array([e.release for e in events]),
        )

    def to_events(self) -> list[KeyEvent]:
        return [KeyEvent(str(k), float(p), float(r)) for k, p, r in zip(self.keys, self.press, self.release)]


# --------------------------------------------------------------------------- touch


class TouchAction(IntEnum):
    """Android MotionEvent action codes (after ``ACTION_MASK``; BB-MAS records all but CANCEL)."""

    DOWN = 0
    UP = 1
    MOVE = 2
    CANCEL = 3
    POINTER_DOWN = 5  # a second finger goes down
    POINTER_UP = 6


TOUCH_ACTION_CODES = tuple(int(a) for a in TouchAction)
ANDROID_ACTION_MASK = 0xFF
#: pointer ids are stored as int16; Android's are small (one per finger on the screen)
MAX_POINTER_ID = int(np.iinfo(np.int16).max)


def _touch_action(value: object) -> TouchAction:
    """A TouchAction from a code; raw Android codes (261) must be masked by the caller first."""
    code = _int_code("action", value, -(2**31), 2**31 - 1)
    if code not in TOUCH_ACTION_CODES:
        raise EventValidationError("action", f"unknown action {code}; expected one of {TOUCH_ACTION_CODES} "
                                             f"(mask raw Android codes with ANDROID_ACTION_MASK)")
    return TouchAction(code)


@dataclass(frozen=True, slots=True)
class TouchEvent:
    """One touch sample: `time` in seconds, position in screen pixels, pressure and size in platform units.

    Android's `MotionEvent.getEventTime()` is milliseconds: divide it by 1000.
    """

    time: float
    x: float
    y: float
    pressure: float
    touch_major: float
    touch_minor: float
    action: TouchAction
    pointer_id: int = 0
    screen_width: float = 1080.0
    screen_height: float = 1920.0

    def __post_init__(self) -> None:
        for name in ("time", "x", "y", "pressure", "touch_major", "touch_minor"):
            object.__setattr__(self, name, _finite(name, getattr(self, name)))
        if self.pressure < 0:
            raise EventValidationError("pressure", "must be >= 0")
        if self.touch_major < 0 or self.touch_minor < 0:
            raise EventValidationError("touch_major", "contact size must be >= 0")
        object.__setattr__(self, "action", _touch_action(self.action))
        object.__setattr__(self, "pointer_id", _int_code("pointer_id", self.pointer_id, 0, MAX_POINTER_ID))
        for name in ("screen_width", "screen_height"):
            object.__setattr__(self, name, _positive_number(name, getattr(self, name)))


@dataclass(frozen=True)
class TouchStream:
    """Touch samples of one device in time order (columnar); `time` in seconds.

    Timing no touch screen has in seconds (`check_touch_seconds`: milliseconds, most likely) is refused.
    """

    time: np.ndarray
    x: np.ndarray
    y: np.ndarray
    pressure: np.ndarray
    touch_major: np.ndarray
    touch_minor: np.ndarray
    action: np.ndarray  # int8 TouchAction codes
    pointer_id: np.ndarray
    screen_width: float = 1080.0
    screen_height: float = 1920.0
    device: str = "unknown"
    #: the phone model's typical contact size and pressure, where the caller measured them over
    #: many people (a dataset of a model `modalities.touch.strokes.DEVICE_PROFILES` lacks); None:
    #: the table's, else the stream's own medians
    contact_scale: float | None = None
    pressure_scale: float | None = None

    def __post_init__(self) -> None:
        n = None
        for name in ("time", "x", "y", "pressure", "touch_major", "touch_minor"):
            arr = _finite_array(name, getattr(self, name))
            object.__setattr__(self, name, arr)
            if n is None:
                n = arr.shape[0]
            elif arr.shape[0] != n:
                raise EventValidationError(name, "all columns must have equal length")
        if not n:
            raise EventValidationError("time", "stream is empty")
        # the same rules as TouchEvent, so a stream never holds what single events refuse
        for name in ("pressure", "touch_major", "touch_minor"):
            neg = getattr(self, name) < 0
            if neg.any():
                raise EventValidationError(name, f"must be >= 0 (first bad index {int(np.flatnonzero(neg)[0])})")
        action = _int_array("action", self.action, -(2**31), 2**31 - 1, np.int64)
        pid = _int_array("pointer_id", self.pointer_id, 0, MAX_POINTER_ID, np.int16)
        for name, col in (("action", action), ("pointer_id", pid)):
            if col.shape[0] != n:
                raise EventValidationError(name, "all columns must have equal length")
        if not np.isin(action, TOUCH_ACTION_CODES).all():
            bad = action[~np.isin(action, TOUCH_ACTION_CODES)][0]
            raise EventValidationError("action", f"codes must be TouchAction values {TOUCH_ACTION_CODES}, got {bad} "
                                                 f"(mask raw Android codes with ANDROID_ACTION_MASK)")
        _non_decreasing("time", self.time)
        check_touch_seconds(self.time, action)
        object.__setattr__(self, "action", action.astype(np.int8))
        object.__setattr__(self, "pointer_id", pid)
        for name in ("screen_width", "screen_height"):
            object.__setattr__(self, name, _positive_number(name, getattr(self, name)))
        for name in ("contact_scale", "pressure_scale"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _positive_number(name, getattr(self, name)))

    def __len__(self) -> int:
        return int(self.time.shape[0])

    @classmethod
    def from_events(cls, events: Sequence[TouchEvent], device: str = "unknown") -> TouchStream:
        if len(events) == 0:
            raise EventValidationError("events", "stream is empty")
        cols = {n: np.array([getattr(e, n) for e in events]) for n in (
            "time", "x", "y", "pressure", "touch_major", "touch_minor", "pointer_id")}
        return cls(time=cols["time"], x=cols["x"], y=cols["y"], pressure=cols["pressure"],
                   touch_major=cols["touch_major"], touch_minor=cols["touch_minor"], pointer_id=cols["pointer_id"],
                   action=np.array([int(e.action) for e in events]),
                   screen_width=events[0].screen_width, screen_height=events[0].screen_height, device=device)

    def to_events(self) -> list[TouchEvent]:
        return [
            TouchEvent(float(self.time[i]), float(self.x[i]), float(self.y[i]), float(self.pressure[i]),
                       float(self.touch_major[i]), float(self.touch_minor[i]), TouchAction(int(self.action[i])),
                       int(self.pointer_id[i]), self.screen_width, self.screen_height)
            for i in range(len(self))
        ]


# --------------------------------------------------------------------------- accelerometer


@dataclass(frozen=True, slots=True)
class AccelSample:
    """One accelerometer reading: time in seconds, acceleration in m/s^2 (gravity included).

    Android's `SensorEvent.timestamp` is nanoseconds: multiply it by 1e-9.
    """

    time: float
    x: float
    y: float
    z: float

    def __post_init__(self) -> None:
        for name in ("time", "x", "y", "z"):
            object.__setattr__(self, name, _finite(name, getattr(self, name)))


@dataclass(frozen=True)
class AccelSeries:
    """A contiguous accelerometer recording: `t` (n,) seconds, `xyz` (n, 3)."""

    t: np.ndarray
    xyz: np.ndarray
    device: str = "unknown"

    def __post_init__(self) -> None:
        t = _finite_array("time", self.t)
        xyz = _finite_array("xyz", self.xyz, ndim=2)
        if xyz.shape[1] != 3 or xyz.shape[0] != t.shape[0]:
            raise EventValidationError("xyz", f"must have shape (n, 3) matching time, got {xyz.shape}")
        if t.size == 0:
            raise EventValidationError("time", "series is empty")
        _non_decreasing("time", t)
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "xyz", xyz)

    def __len__(self) -> int:
        return int(self.t.shape[0])

    @property
    def duration(self) -> float:
        return float(self.t[-1] - self.t[0])

    @classmethod
    def from_samples(cls, samples: Sequence[AccelSample], device: str = "unknown") -> AccelSeries:
        if len(samples) == 0:
            raise EventValidationError("samples", "series is empty")
        return cls(np.array([s.time for s in samples]), np.array([[s.x, s.y, s.z] for s in samples]), device)

    def to_samples(self) -> list[AccelSample]:
        return [AccelSample(float(t), *map(float, v)) for t, v in zip(self.t, self.xyz)]


# --------------------------------------------------------------------------- features


@dataclass(frozen=True)
class FeatureWindow:
    """Features of one window of events: what leaves the device (never raw events).

    `quality` in [0, 1] says how much evidence the window carries (for example the fraction of
    expected digraphs seen); fusion and the enrolment gate use it.
    """

    modality: str
    feature_version: str
    start: float
    end: float
    n_events: int
    quality: float
    values: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise EventValidationError("modality", f"unknown modality {self.modality!r}; expected one of {MODALITIES}")
        if not isinstance(self.feature_version, str) or not self.feature_version:
            raise EventValidationError("feature_version", "must be a non-empty string")
        start = _finite("start", self.start)
        end = _finite("end", self.end)
        if end < start:
            raise EventValidationError("end", f"window ends before it starts ({end} < {start})")
        n_events = _int_code("n_events", self.n_events, -(2**63), 2**63 - 1)
        if n_events <= 0:
            raise EventValidationError("n_events", "window is empty")
        q = _finite("quality", self.quality)
        if not 0.0 <= q <= 1.0:
            raise EventValidationError("quality", f"must be in [0, 1], got {q}")
        values = _finite_array("values", self.values)
        if values.size == 0:
            raise EventValidationError("values", "feature vector is empty")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "n_events", n_events)
        object.__setattr__(self, "quality", q)
        object.__setattr__(self, "values", values)

    def to_dict(self) -> dict[str, object]:
        return {
            "modality": self.modality,
            "feature_version": self.feature_version,
            "start": self.start,
            "end": self.end,
            "n_events": self.n_events,
            "quality": self.quality,
            "values": self.values.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> FeatureWindow:
        """A window from its `to_dict` form (e.g. JSON from a device); anything malformed names its field."""
        if not isinstance(d, dict):
            raise EventValidationError("window", f"must be an object of fields, got {type(d).__name__}")
        try:
            return cls(
                modality=d["modality"],  # type: ignore[arg-type]
                feature_version=d["feature_version"],  # type: ignore[arg-type]
                start=d["start"],  # type: ignore[arg-type]
                end=d["end"],  # type: ignore[arg-type]
                n_events=d["n_events"],  # type: ignore[arg-type]
                quality=d["quality"],  # type: ignore[arg-type]
                values=d["values"],  # type: ignore[arg-type]  # validated (numeric, finite, 1-D) in __post_init__
            )
        except KeyError as exc:
            raise EventValidationError(str(exc.args[0]), "is required") from exc


def stack_values(windows: Iterable[FeatureWindow]) -> np.ndarray:
    """Stack the feature vectors of windows of one modality and version into (n, d)."""
    ws = list(windows)
    if not ws:
        raise EventValidationError("windows", "no windows given")
    versions = {(w.modality, w.feature_version, w.values.shape[0]) for w in ws}
    if len(versions) != 1:
        raise EventValidationError("feature_version", f"windows mix modalities/versions/dimensions: {sorted(versions)}")
    return np.vstack([w.values for w in ws])
