"""On-device feature extraction: raw events -> `FeatureWindow`s, with the modalities' own code.

One code path with the server and benches: every vector comes from
`modalities.<m>.window_features`. This module only decides how the phone cuts its evidence
into windows (the contract's labels: keystroke "50 keys", touch "1 swipe", gait "10 s") and
judges whether an enrolment sample is good enough.
"""

from __future__ import annotations

import importlib
import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType

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


def modality_module(modality: str) -> ModuleType:
    """`modalities.<m>` when it exports `window_features`, else its `features` module."""
    mod = importlib.import_module(f"modalities.{modality}")
    if hasattr(mod, "window_features"):
        return mod
    return importlib.import_module(f"modalities.{modality}.features")


def feature_version(modality: str) -> str:
    return str(modality_module(modality).FEATURE_VERSION)


def keystroke_windows(events: Sequence[KeyEvent], n_keys: int = KEYS_PER_WINDOW, hop: int = KEY_HOP) -> list[FeatureWindow]:
    """Overlapping windows of `n_keys` presses (press order); fewer keys -> one shorter window."""
    if len(events) < 2:
        return []
    seq = KeySequence.from_events(sorted(events, key=lambda e: e.press))
    wf = modality_module("keystroke").window_features
    n = len(seq)
    if n <= n_keys:
        return [wf(seq)]
    starts = list(range(0, n - n_keys + 1, hop))
    return [wf(seq[s:s + n_keys]) for s in starts]


def split_strokes(events: Sequence[TouchEvent]) -> list[list[TouchEvent]]:
    """Single-finger strokes DOWN ... UP (a second finger voids the stroke, on purpose)."""
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
    """One window per stroke (taps with fewer than `min_points` samples are skipped)."""
    return list(_stroke_windows(split_strokes(events), min_points))


def _stroke_windows(strokes: Iterable[list[TouchEvent]], min_points: int) -> Iterator[FeatureWindow]:
    """Each stroke's window, in the order given (lazily: a caller may stop early)."""
    wf = modality_module("touch").window_features
    for stroke in strokes:
        if len(stroke) < min_points:
            continue
        try:
            yield wf(TouchStream.from_events(stroke, device="cadence-app"))
        except EventValidationError as exc:
            log.debug("stroke skipped: %s", exc)


def gait_windows(samples: Sequence[AccelSample], window_s: float = GAIT_WINDOW_S, hop_s: float = GAIT_HOP_S) -> list[FeatureWindow]:
    """Windows of `window_s` seconds every `hop_s` over a walk."""
    if len(samples) < 2:
        return []
    series = AccelSeries.from_samples(sorted(samples, key=lambda s: s.time), device="cadence-app")
    wf = modality_module("gait").window_features
    t = series.t
    out: list[FeatureWindow] = []
    start = float(t[0])
    while start + window_s <= float(t[-1]) + 1e-9:
        sel = (t >= start) & (t < start + window_s)
        if sel.sum() >= 2:
            try:
                out.append(wf(AccelSeries(t[sel], series.xyz[sel], series.device)))
            except EventValidationError as exc:
                log.debug("gait window skipped: %s", exc)
        start += hop_s
    return out


def windows_for(modality: str, events: Sequence[object]) -> list[FeatureWindow]:
    """Dispatch on modality name."""
    if modality == "keystroke":
        return keystroke_windows(events)  # type: ignore[arg-type]
    if modality == "touch":
        return touch_windows(events)  # type: ignore[arg-type]
    if modality == "gait":
        return gait_windows(events)  # type: ignore[arg-type]
    raise EventValidationError("modality", f"unknown modality {modality!r}")


@dataclass(frozen=True)
class QualityReport:
    """How good one modality's enrolment sample is, in words a person understands."""

    modality: str
    n_windows: int
    usable: int
    mean_quality: float
    ok: bool
    message: str


#: usable windows each modality needs for a template
MIN_ENROL_WINDOWS = {"keystroke": 3, "touch": 5, "gait": 3}


def quality_report(modality: str, windows: Sequence[FeatureWindow]) -> QualityReport:
    """Pass/fail of an enrolment sample with a plain-language reason."""
    good = usable(windows)
    need = MIN_ENROL_WINDOWS[modality]
    q = float(np.mean([w.quality for w in windows])) if windows else 0.0
    ok = len(good) >= need
    if ok:
        msg = "Good sample"
    elif not windows:
        msg = "Nothing recorded yet"
    else:
        msg = {"keystroke": "Please type a little more", "touch": "Please swipe a few more times",
               "gait": "Please walk a little longer, at your normal pace"}[modality]
    return QualityReport(modality, len(windows), len(good), q, ok, msg)


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
    features of the older strokes would be computed only to be dropped.
    """
    n = decision_swipes() if n is None else n
    newest_first = (w for w in _stroke_windows(reversed(split_strokes(events)), min_points) if _sendable_swipe(w))
    out = list(itertools.islice(newest_first, n))
    return out[::-1] if len(out) >= n else []
