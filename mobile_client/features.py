"""On-device feature extraction: raw events -> `FeatureWindow`s, with the modalities' own code.

One code path with the server and benches: every vector comes from the modality packages, and
the same events give the same numbers as the batch paths the server's models and calibrations are
built on: keystroke `modalities.keystroke.window_features` per window; touch the strokes of
`modalities.touch.stroke_windows` over the whole stream held (stream-level normalisation and
inter-stroke times, see `touch_windows`); gait `modalities.gait.windows_for_subject`'s windows of
whole resampled segments (see `gait_windows`). This module only decides which events the phone
cuts into windows (the contract's labels: keystroke "100 keys", touch "1 swipe", gait "10 s") and
judges whether an enrolment sample is good enough.

Two kinds of input give no windows at all, because the server's models (built on BB-MAS, where
both are real) would read them as matching anyone: keystroke windows in which most keys have no
real hold (text a soft keyboard committed without key events, `KeyPairer.text_commit`), and
strokes without a contact size (Kivy/SDL2 touches carry no contact shape). Both are said once in
the log (`_say_once`), and set-up reports the modality as unavailable on this phone
(`unmeasurable`, `QualityReport.unavailable`). Events timed in milliseconds (Android's event
times taken as they are) give no windows either, in every modality; the log says once that the
times look like milliseconds, for whoever wrote the collector.
"""

from __future__ import annotations

import importlib
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from modalities.events import (
    AccelSample,
    AccelSeries,
    EventValidationError,
    FeatureWindow,
    KeyEvent,
    KeySequence,
    TouchAction,
    TouchEvent,
    TouchStream,
)

if TYPE_CHECKING:
    from modalities.touch.strokes import Stroke

log = logging.getLogger(__name__)

#: keys per window: the size the server's keystroke scorers and calibration are built on
#: (`modalities.keystroke.DEFAULT_WINDOW_KEYS`, bench label "100 keys"). Keystroke quality is
#: n-gram coverage (mean over the vocabulary of min(count, 3) / 3), so it grows with the
#: window: 50 keys of ordinary typing reach only about 0.18-0.2, 100 keys about 0.3.
KEYS_PER_WINDOW = 100
KEY_HOP = 25
GAIT_WINDOW_S = 10.0
GAIT_HOP_S = 5.0
#: the server's fusion leaves out a modality whose windows' mean quality is below this
#: (`fusion.policy.Policy.min_quality`; not imported: the Android build ships no `fusion`)
SERVER_MIN_QUALITY = 0.2
#: a window below this quality is not sent, and does not count as a good set-up sample: the
#: server's floor, or higher where the modality needs it
MIN_WINDOW_QUALITY = {"keystroke": SERVER_MIN_QUALITY, "touch": max(0.3, SERVER_MIN_QUALITY),
                      "gait": max(0.3, SERVER_MIN_QUALITY)}


#: a key held less than this has no real key down/up timing: text a soft keyboard committed without
#: key events (`KeyPairer.text_commit` gives it zero hold). Real presses last tens of ms (BB-MAS
#: phone and desktop typing: none under 5 ms)
MIN_REAL_HOLD_S = 1e-3
#: a keystroke window in which more than this share of the keys has no real hold is not sent
MAX_COMMITTED_SHARE = 0.5

#: what a set-up task says when this phone's input of the modality cannot be used at all
UNAVAILABLE_TEXT = {
    "keystroke": "This keyboard does not report key presses, so typing rhythm cannot be checked with it",
    "touch": "This phone does not report the size of a touch, so swiping cannot be checked on it yet",
}

#: log lines already written this run (`_say_once`)
_said: set[str] = set()


def _say_once(key: str, message: str) -> None:
    """`message` as a warning, the first time `key` is given in this run."""
    if key not in _said:
        _said.add(key)
        log.warning(message)


def modality_module(modality: str) -> ModuleType:
    """`modalities.<m>` when it exports `window_features`, else its `features` module."""
    mod = importlib.import_module(f"modalities.{modality}")
    if hasattr(mod, "window_features"):
        return mod
    return importlib.import_module(f"modalities.{modality}.features")


def feature_version(modality: str) -> str:
    return str(modality_module(modality).FEATURE_VERSION)


def keystroke_windows(events: Sequence[KeyEvent], n_keys: int = KEYS_PER_WINDOW, hop: int = KEY_HOP) -> list[FeatureWindow]:
    """Overlapping windows of `n_keys` presses (press order); fewer keys -> one shorter window.

    A window of mostly committed text (more than `MAX_COMMITTED_SHARE` of its keys held less than
    `MIN_REAL_HOLD_S`) is left out: its hold and latency features are zeros, not typing rhythm
    (`KeyPairer.text_commit`). Windows of hardware key events are the batch's, unchanged. Events the
    features refuse (times that are not seconds, `modalities.events.check_key_seconds`) give no
    window, as refused touch and gait events do: a bad sample, never a crash of set-up or a payment.
    """
    if len(events) < 2:
        return []
    try:
        seq = KeySequence.from_events(sorted(events, key=lambda e: e.press))
    except EventValidationError as exc:
        _say_once("keystroke-refused", f"key events give no typing windows: {exc}")
        return []
    n = len(seq)
    spans = [(0, n)] if n <= n_keys else [(s, s + n_keys) for s in range(0, n - n_keys + 1, hop)]
    holds = np.asarray(seq.release - seq.press, dtype=float)
    kept = [(a, b) for a, b in spans if not _mostly_committed(holds[a:b])]
    if len(kept) < len(spans):
        _say_once("keystroke", "typing without key presses and releases (text a soft keyboard committed, or "
                               "pasted) is not sent: typing rhythm needs real key down/up times, so this "
                               "keyboard gives no typing evidence")
    return [w for w in (_key_window(seq, a, b) for a, b in kept) if w is not None]


def _key_window(seq: KeySequence, a: int, b: int) -> FeatureWindow | None:
    """`modalities.keystroke.window_features` of presses a..b of `seq`, None if refused (logged)."""
    try:
        return modality_module("keystroke").window_features(seq[a:b])  # type: ignore[no-any-return]
    except EventValidationError as exc:
        log.debug("keystroke window skipped: %s", exc)
        return None


def committed_text(events: Sequence[KeyEvent]) -> bool:
    """Most of `events` have no real hold: text committed by a soft keyboard, not key presses."""
    if not events:
        return False
    return _mostly_committed(np.array([float(e.release) - float(e.press) for e in events]))


def _mostly_committed(holds: np.ndarray) -> bool:
    """More than `MAX_COMMITTED_SHARE` of these key holds are shorter than `MIN_REAL_HOLD_S` (committed text)."""
    return bool((holds < MIN_REAL_HOLD_S).mean() > MAX_COMMITTED_SHARE)


#: the device name the app labels its touch streams and accelerometer series with. Not in
#: `modalities.touch.strokes.DEVICE_PROFILES`, so size and pressure are normalised by the
#: stream's own medians (`modalities.touch.strokes.device_profile`)
APP_DEVICE = "cadence-app"
#: the batch loader's segmentation of a walk (`evaluation.datasets.load_bbmas_gait` with
#: `modalities.gait.features.split_segments`): a recording is cut at
#: clock gaps longer than GAIT_MAX_GAP_S seconds and parts shorter than GAIT_MIN_SEGMENT_S are dropped
GAIT_MAX_GAP_S = 1.0
GAIT_MIN_SEGMENT_S = 5.0


def split_strokes(events: Sequence[TouchEvent]) -> list[list[TouchEvent]]:
    """Single-finger strokes DOWN ... UP (a second finger voids the stroke, on purpose).

    Counts strokes for the enrolment's progress and the tour. Features do not come from these
    lists but from `modalities.touch.segment` over the whole stream (`touch_windows`), which
    voids the same strokes (POINTER_DOWN/POINTER_UP/CANCEL rows between a DOWN and its UP) and
    also one during which another pointer id reports.
    """
    strokes: list[list[TouchEvent]] = []
    cur: list[TouchEvent] | None = None
    for ev in events:
        if ev.action == TouchAction.DOWN:
            cur = [ev]
        elif cur is None:
            continue
        elif ev.action in (TouchAction.POINTER_DOWN, TouchAction.POINTER_UP, TouchAction.CANCEL):
            cur = None
        else:
            cur.append(ev)
            if ev.action == TouchAction.UP:
                strokes.append(cur)
                cur = None
    return strokes


def touch_windows(events: Sequence[TouchEvent], min_points: int = 3) -> list[FeatureWindow]:
    """One window per stroke (strokes with fewer than `min_points` samples are skipped).

    The numbers are exactly `modalities.touch.stroke_windows(TouchStream.from_events(events,
    device=APP_DEVICE))`: what the server's calibration, `cadence models train/calibrate`, the
    benches and the demo compute. Strokes are cut from the WHOLE stream of `events`, so the
    stream-level normalisation (contact size and pressure divided by the stream's medians) and
    each stroke's time since the previous stroke's UP (`log_inter_stroke`) are the batch's; a
    stroke voided by a second finger still counts as the previous stroke, as in the batch.

    A stroke without a contact size (`has_contact_size`) gives no window: the rest of the stream's
    strokes keep the batch's numbers.
    """
    return [w for w in (_stroke_window(s) for s in _strokes(events) if len(s) >= min_points) if w is not None]


def has_contact_size(stroke: Stroke) -> bool:
    """Every sample of `stroke` reports a contact size (touch major axis above 0).

    Kivy/SDL2 touches carry no contact shape (`collectors.touch.UNKNOWN_SIZE`): their size
    features would be zeros, which the server's touch models (standardised on BB-MAS, where
    sizes are real) score as the strongest match for anyone.
    """
    return bool(np.all(stroke.size > 0))


def touch_without_size(events: Sequence[TouchEvent]) -> bool:
    """`events` hold touches and none of them reports a contact size."""
    return bool(events) and not any(float(e.touch_major) > 0 for e in events)


def _strokes(events: Sequence[TouchEvent]) -> list[Stroke]:
    """`modalities.touch.segment(...).strokes` of `events` as one stream (see `touch_windows`).

    Events whose clock steps back (a stream the batch would refuse) are cut there into runs,
    each segmented as its own stream, rather than losing every stroke; so are events of another
    screen size (a rotation), whose positions are read against their own screen. A run the event
    type refuses (times in milliseconds) gives none, said once in the log. Strokes without a contact
    size are left out (`has_contact_size`, said once in the log), after the segmentation, so the
    others are those of the whole stream.
    """
    from modalities.touch.strokes import segment

    out: list[Stroke] = []
    for run in _time_ordered_runs(events):
        try:
            out += segment(TouchStream.from_events(run, device=APP_DEVICE)).strokes
        except EventValidationError as exc:  # e.g. times in milliseconds: said as the keystroke path says it
            _say_once("touch-refused", f"touch events give no strokes: {exc}")
    sized = [s for s in out if has_contact_size(s)]
    if len(sized) < len(out):
        _say_once("touch", "touches without a contact size (this platform reports none) are not sent: the touch "
                           "models need it, so these touches give no touch evidence")
    return sized


def _time_ordered_runs(events: Sequence[TouchEvent]) -> list[Sequence[TouchEvent]]:
    """`events` cut wherever the time decreases or the screen's size changes (usually one run: all).

    A stream's positions are read against its first event's screen (`TouchStream.from_events`):
    after a rotation or a window resize, every stroke would be scaled by the old size.
    """
    if not events:
        return []
    t = np.array([float(e.time) for e in events])
    screen = np.array([(float(e.screen_width), float(e.screen_height)) for e in events])
    cuts = np.flatnonzero((np.diff(t) < 0) | np.any(np.diff(screen, axis=0) != 0, axis=1)) + 1
    if cuts.size == 0:
        return [events]
    bounds = [0, *cuts.tolist(), len(events)]
    return [events[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _stroke_window(stroke: Stroke) -> FeatureWindow | None:
    """`modalities.touch.features.stroke_window` (what `stroke_windows` maps), None if refused."""
    from modalities.touch.features import stroke_window

    try:
        return stroke_window(stroke)
    except EventValidationError as exc:
        log.debug("stroke skipped: %s", exc)
        return None


def gait_windows(samples: Sequence[AccelSample], window_s: float = GAIT_WINDOW_S, hop_s: float = GAIT_HOP_S) -> list[FeatureWindow]:
    """Windows of `window_s` seconds every `hop_s` over the walking in `samples`.

    The numbers are exactly those of the batch path that the gait models are trained and
    calibrated on and the benches report (`modalities.gait.train_scorer`, `cadence models
    train/calibrate` via `evaluation.pair_scores.gait_split` -> `modalities.gait.data.load_windows`):
    the loader's segmentation (cut at clock gaps over `GAIT_MAX_GAP_S`, parts under
    `GAIT_MIN_SEGMENT_S` dropped), then `modalities.gait.windows_for_subject(segments, window_s,
    hop_s=hop_s)` with its default ``detect_walking=True``: each segment is resampled and
    low-passed as a WHOLE, walking stretches of at least `window_s` are found on it, and windows
    are cut from those, never resampled on their own. So the phone sends windows of walking only,
    as the population models and their calibration saw; a recording without `window_s` of
    continuous walking gives none.

    Per window: `start` is the window's first sample on the internal grid (`SubjectWindows.start`),
    `end` the last sample held before ``start + window_s``, `n_events` the samples held in between,
    `quality` the fraction judged walking on the window's own grid (`walking_mask`, as
    `window_features` reports it). A segment the batch would refuse (sampling rate, units, absurd
    readings) is skipped, the others still give windows; a lone sample far from the rest (a clock
    jump) is a segment too short to use, so it costs nothing. Samples mostly further apart than
    `GAIT_MAX_GAP_S` (times in milliseconds) give none, and the log says once why (`_say_if_samples_apart`).
    """
    from modalities.gait.features import split_segments, walking_windows

    if not (window_s > 0 and hop_s > 0):
        raise ValueError(f"window_s and hop_s must be positive, got {window_s} and {hop_s}")
    if len(samples) < 2:
        return []
    t = np.array([float(s.time) for s in samples])
    order = np.argsort(t, kind="stable")
    t = t[order]
    xyz = np.array([[s.x, s.y, s.z] for s in samples], dtype=float)[order]
    _say_if_samples_apart(t)
    out: list[FeatureWindow] = []
    for seg in split_segments(t, GAIT_MAX_GAP_S, GAIT_MIN_SEGMENT_S):
        try:
            out.extend(walking_windows(AccelSeries(t[seg], xyz[seg], APP_DEVICE), window_s, hop_s=hop_s))
        except EventValidationError as exc:
            log.debug("gait samples %.3f-%.3f skipped: %s", t[seg.start], t[seg.stop - 1], exc)
    return out


def _say_if_samples_apart(t: np.ndarray) -> None:
    """Say once why samples mostly over `GAIT_MAX_GAP_S` apart give no window: the gait package's rate check.

    The segmentation cuts at every such gap, so no part is long enough and no check is reached:
    times in milliseconds (as Android's event times) would give no window and no word. The rate
    check says what they look like ("the times look like milliseconds"). Real walks (gaps of
    10-50 ms, a clock jump now and then) are not judged here, and their windows do not change.
    """
    from modalities.gait.signal import check_rate

    gaps = np.diff(t)
    if not gaps.size or float(np.median(gaps)) <= GAIT_MAX_GAP_S:
        return
    try:
        check_rate(t)
    except EventValidationError as exc:
        _say_once("gait-refused", f"motion samples give no walking windows: {exc}")


def windows_for(modality: str, events: Sequence[object]) -> list[FeatureWindow]:
    """Dispatch on modality name."""
    if modality == "keystroke":
        return keystroke_windows(events)  # type: ignore[arg-type]
    if modality == "touch":
        return touch_windows(events)  # type: ignore[arg-type]
    if modality == "gait":
        return gait_windows(events)  # type: ignore[arg-type]
    raise EventValidationError("modality", f"unknown modality {modality!r}")


def unmeasurable(modality: str, events: Sequence[object]) -> bool:
    """Whether this phone's input of `modality` in `events` can give no windows at all (not: too little of it).

    Keystroke: most keys are committed text (`committed_text`); touch: no touch has a contact
    size (`touch_without_size`). Gait: never (a walk too short or not walking is "too little").
    """
    if modality == "keystroke":
        return committed_text(events)  # type: ignore[arg-type]
    if modality == "touch":
        return touch_without_size(events)  # type: ignore[arg-type]
    return False


@dataclass(frozen=True)
class QualityReport:
    """How good one modality's enrolment sample is, in words a person understands."""

    modality: str
    n_windows: int
    usable: int
    mean_quality: float
    ok: bool
    message: str
    #: this phone's input of the modality cannot be used (`unmeasurable`): more of it will not help
    unavailable: bool = False


#: usable windows each modality needs for a template
MIN_ENROL_WINDOWS = {"keystroke": 3, "touch": 5, "gait": 3}


def gait_walk_seconds(n_windows: int) -> float:
    """Seconds of continuous walking that `gait_windows` cuts into `n_windows` windows (`GAIT_HOP_S` apart).

    What a walk must hold for the gait quality gate (`MIN_ENROL_WINDOWS`): turns and pauses give none.
    """
    if n_windows < 1:
        raise ValueError(f"n_windows: must be >= 1, got {n_windows}")
    return GAIT_WINDOW_S + (n_windows - 1) * GAIT_HOP_S


def quality_report(modality: str, windows: Sequence[FeatureWindow], unavailable: bool = False) -> QualityReport:
    """Pass/fail of an enrolment sample with a plain-language reason.

    `unavailable`: the sample's input cannot be used on this phone (`unmeasurable`); a sample that
    did not pass then says so (`UNAVAILABLE_TEXT`) rather than asking for more.
    """
    good = usable(windows)
    need = MIN_ENROL_WINDOWS[modality]
    q = float(np.mean([w.quality for w in windows])) if windows else 0.0
    ok = len(good) >= need
    unavailable = unavailable and not ok and modality in UNAVAILABLE_TEXT
    if ok:
        msg = "Good sample"
    elif unavailable:
        msg = UNAVAILABLE_TEXT[modality]
    elif not windows and modality != "gait":  # gait: no window also when no 10 s stretch was walking
        msg = "Nothing recorded yet"
    else:
        msg = {"keystroke": "Please type a little more", "touch": "Please swipe a few more times",
               "gait": "Please walk a little longer, at your normal pace"}[modality]
    return QualityReport(modality, len(windows), len(good), q, ok, msg, unavailable)


def usable(windows: Sequence[FeatureWindow]) -> list[FeatureWindow]:
    """Windows carrying enough evidence to send."""
    return [w for w in windows if w.quality >= MIN_WINDOW_QUALITY[w.modality]]


def decision_swipes() -> int:
    """Swipes one payment's touch evidence needs: the server leaves out fewer (`too_few_for_decision`)."""
    return int(getattr(modality_module("touch"), "DECISION_WINDOWS", 1))


def last_swipes(windows: Sequence[FeatureWindow], n: int | None = None) -> list[FeatureWindow]:
    """The last `n` (default `decision_swipes`) usable swipes of `windows`; none when there are fewer.

    Taps are not sent: the server's touch models read swipes only. Fewer swipes than a decision
    reads are kept on the phone for a later payment rather than spent on one that cannot count them.
    """
    n = decision_swipes() if n is None else n
    swipes = [w for w in windows if _sendable_swipe(w)]
    return swipes[-n:] if len(swipes) >= n else []


def _sendable_swipe(w: FeatureWindow) -> bool:
    """A touch window of sendable quality that the server's models read (a swipe, not a tap)."""
    return w.modality == "touch" and w.quality >= MIN_WINDOW_QUALITY["touch"] and bool(
        modality_module("touch").scored(w.values))


def recent_swipes(events: Sequence[TouchEvent], n: int | None = None, min_points: int = 3) -> list[FeatureWindow]:
    """`last_swipes` of `touch_windows(events)`, computing features from the newest stroke back.

    A payment looks at 5 minutes of touches (hundreds of strokes) to send the last 5 swipes:
    features of the older strokes would be computed only to be dropped. The strokes (and the
    stream-level normalisation and inter-stroke times) are those of the whole of `events`, so
    each window is the one `touch_windows(events)` gives for that stroke.
    """
    n = decision_swipes() if n is None else n
    strokes = [s for s in _strokes(events) if len(s) >= min_points]
    newest_first = (w for w in map(_stroke_window, reversed(strokes)) if w is not None and _sendable_swipe(w))
    out = list(itertools.islice(newest_first, n))
    return out[::-1] if len(out) >= n else []
