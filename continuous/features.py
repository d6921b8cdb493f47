"""Observation features of Bansal & Ouda's environment, computed from key events (numpy only).

An observation is one window of `n_obs` key presses:

* running features, one row per event (key category code, hold, up-down flight, down-down
  latency), flattened and PCA-encoded to `n_components` numbers;
* summary features of the window: duration (first to last press), space and enter counts.

Differences from the authors' code, on purpose: features come from press/release times (the
processed BB-MAS columns are mislabelled, see `evaluation.datasets.load_bbmas_keystrokes`);
their ``time_diff`` column (gap to the previous keyboard *or mouse* event) has no mouse events
here, so it equals the down-down latency and is not repeated; and the enter count looks for
``enter``, the name the data uses (their code looked for ``return`` and always counted 0).
Features are window-local (the first event's latencies are 0), so an observation is a pure
function of its window's events, as on the device.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modalities.events import EventValidationError, KeySequence

#: frequent keys get their own code (as in the authors' key categories), the rest share one
_OWN = ("a", "t", "h", "s", "i", "n", "r", "e", "l", "space", "enter", "backspace")
KEY_CATEGORIES: tuple[str, ...] = _OWN + ("letter", "digit", "punctuation", "other")
_ALIASES = {"return": "enter"}


def key_category(key: str) -> int:
    """Category code of a key name (index into `KEY_CATEGORIES`)."""
    k = _ALIASES.get(key.lower(), key.lower())
    if k in _OWN:
        return _OWN.index(k)
    if len(k) == 1 and k in string.ascii_lowercase:
        return KEY_CATEGORIES.index("letter")
    if len(k) == 1 and k in string.digits:
        return KEY_CATEGORIES.index("digit")
    if len(k) == 1 and k in string.punctuation:
        return KEY_CATEGORIES.index("punctuation")
    return KEY_CATEGORIES.index("other")


def running_features(seq: KeySequence, names: Sequence[str]) -> np.ndarray:
    """(n, len(names)) per-event features of a whole recording (seconds; codes as floats)."""
    press, release = seq.press, seq.release
    cols: dict[str, np.ndarray] = {}
    for name in names:
        if name == "key_category":
            cols[name] = np.fromiter((key_category(str(k)) for k in seq.keys), float, len(seq))
        elif name == "hold":
            cols[name] = release - press
        elif name == "flight":
            cols[name] = np.r_[0.0, press[1:] - release[:-1]]
        elif name == "dd":
            cols[name] = np.r_[0.0, np.diff(press)]
        else:
            raise EventValidationError("running_features", f"unknown feature {name!r}")
    return np.column_stack([cols[n] for n in names])


def _window_local(rf: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Zero the first row's latencies so a window does not see the key before it."""
    rf = rf.copy()
    for j, name in enumerate(names):
        if name in ("flight", "dd"):
            rf[..., 0, j] = 0.0
    return rf


def summary_features(keys: np.ndarray, press: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Summary features of one window (keys and press times of its events)."""
    out = []
    lower = np.char.lower(keys.astype(str))
    for name in names:
        if name == "duration":
            out.append(float(press[-1] - press[0]))
        elif name == "space_count":
            out.append(float(np.sum(lower == "space")))
        elif name == "enter_count":
            out.append(float(np.sum((lower == "enter") | (lower == "return"))))
        else:
            raise EventValidationError("summary_features", f"unknown feature {name!r}")
    return np.asarray(out, float)


def window_starts(n_events: int, n_obs: int, n_hop: int) -> np.ndarray:
    """Start indices of the windows an episode walks through (hop `n_hop`)."""
    if n_events < n_obs:
        return np.zeros(0, int)
    return np.arange(0, n_events - n_obs + 1, n_hop)


def jitter_window(seq: KeySequence, rng: np.random.Generator, jitter_s: float, mode: str) -> KeySequence:
    """Timing jitter for a corrupting window (holds are kept).

    ``interval_offset`` adds one offset drawn from U(-jitter, +jitter) to every inter-press
    interval (the authors add one such offset to their ``time_diff`` column); ``per_event``
    moves each press by its own U(-jitter, +jitter), keeping presses in order.
    """
    if jitter_s <= 0:
        return seq
    hold = seq.release - seq.press
    if mode == "interval_offset":
        d = np.maximum(np.diff(seq.press) + rng.uniform(-jitter_s, jitter_s), 0.0)
        press = seq.press[0] + np.r_[0.0, np.cumsum(d)]
    elif mode == "per_event":
        press = np.maximum.accumulate(seq.press + rng.uniform(-jitter_s, jitter_s, len(seq)))
    else:
        raise EventValidationError("jitter_mode", f"unknown mode {mode!r}")
    return KeySequence(seq.keys, press, press + hold)


@dataclass(frozen=True)
class PCAEncoder:
    """PCA of flattened running-feature windows (numpy eigh; fitted per user, as in the paper)."""

    mean: np.ndarray
    components: np.ndarray  # (k, d)

    @classmethod
    def fit(cls, X: np.ndarray, n_components: int) -> PCAEncoder:
        if X.ndim != 2 or X.shape[0] < 2:
            raise EventValidationError("windows", f"need at least 2 windows to fit the PCA, got {X.shape}")
        mean = X.mean(axis=0)
        Xc = X - mean
        # eigenvectors of the (d, d) scatter matrix: much cheaper than an SVD of the
        # (n_windows, d) matrix when the PCA is fitted on every stride-1 window
        w, v = np.linalg.eigh(Xc.T @ Xc)
        order = np.argsort(w)[::-1]
        k = min(n_components, X.shape[0] - 1, X.shape[1])
        comps = v[:, order[:k]].T
        # deterministic sign: largest |loading| positive
        signs = np.sign(comps[np.arange(k), np.argmax(np.abs(comps), axis=1)])
        comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
        if k < n_components:  # fewer windows than components: pad with zero directions
            comps = np.vstack([comps, np.zeros((n_components - k, comps.shape[1]))])
        return cls(mean, comps)

    def transform(self, X: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(X) - self.mean) @ self.components.T


class WindowFeaturizer:
    """Turns windows of one owner's (or a corrupting user's) key events into observations.

    Fitted on the owner's training events only: the PCA never sees test or corrupting data.
    """

    def __init__(self, running: Sequence[str], summary: Sequence[str], n_obs: int, n_components: int) -> None:
        self.running = tuple(running)
        self.summary = tuple(summary)
        self.n_obs = n_obs
        self.n_components = n_components
        self.encoder_: PCAEncoder | None = None

    @property
    def dim(self) -> int:
        return self.n_components + len(self.summary)

    def _flat_windows(self, seq: KeySequence, starts: np.ndarray) -> np.ndarray:
        rf = running_features(seq, self.running)
        idx = starts[:, None] + np.arange(self.n_obs)[None, :]
        return _window_local(rf[idx], self.running).reshape(len(starts), -1)

    def fit(self, seq: KeySequence, stride: int = 1) -> WindowFeaturizer:
        starts = window_starts(len(seq), self.n_obs, stride)
        if starts.size < 2:
            raise EventValidationError("keys", f"need at least {self.n_obs + stride} keys to fit, got {len(seq)}")
        self.encoder_ = PCAEncoder.fit(self._flat_windows(seq, starts), self.n_components)
        return self

    def observations(self, seq: KeySequence, starts: np.ndarray) -> np.ndarray:
        """(len(starts), dim) observations of the windows of `seq` starting at `starts`."""
        if self.encoder_ is None:
            raise RuntimeError("WindowFeaturizer is not fitted")
        starts = np.asarray(starts, int)
        if starts.size == 0:
            return np.zeros((0, self.dim))
        if starts.min() < 0 or starts.max() + self.n_obs > len(seq):
            raise EventValidationError("starts", f"windows of {self.n_obs} keys must lie inside {len(seq)} keys")
        enc = self.encoder_.transform(self._flat_windows(seq, starts))
        summ = np.vstack([summary_features(seq.keys[s:s + self.n_obs], seq.press[s:s + self.n_obs], self.summary)
                          for s in starts]) if self.summary else np.zeros((len(starts), 0))
        return np.hstack([enc, summ]).astype(np.float32)

    def observe(self, window: KeySequence) -> np.ndarray:
        """Observation of exactly one window (`n_obs` events)."""
        if len(window) != self.n_obs:
            raise EventValidationError("keys", f"a window has {self.n_obs} events, got {len(window)}")
        return self.observations(window, np.array([0]))[0]


def window_stats(window: KeySequence) -> np.ndarray:
    """Timing statistics of one window, for the scaled-Manhattan fallback scorer.

    Mean/median/sd of hold, flight and down-down latency (window-local), plus the rates of
    backspace and space and the mean time per key: a small, scale-stable template.
    """
    hold = window.release - window.press
    dd = np.diff(window.press)
    flight = window.press[1:] - window.release[:-1]
    lower = np.char.lower(window.keys.astype(str))
    feats = []
    for x in (hold, flight, dd):
        feats += [float(np.mean(x)), float(np.median(x)), float(np.std(x))]
    feats += [float(np.mean(lower == "backspace")), float(np.mean(lower == "space")),
              float((window.press[-1] - window.press[0]) / max(len(window) - 1, 1))]
    return np.asarray(feats)
