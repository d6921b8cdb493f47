"""Keystroke timing features, pure numpy (runs on the phone, in federated clients and benches).

Two forms:

* **fixed text** (`fixed_text_vector`): for a known string typed the same way every time (a
  password), the CMU layout ``H.k1, DD.k1.k2, UD.k1.k2, H.k2, ...`` in typing order.
* **free text** (`window_features`): for a window of N keys of any text, per-key hold times,
  per-digraph down-down / up-down / up-up latencies and per-trigraph latencies over a fixed
  vocabulary of frequent English keys and n-grams, plus window-level statistics (latency
  quantiles, typing speed, backspace, pause and roll-over rates). Each n-gram's count in the
  window is part of the vector (its evidence), and `FeatureWindow.quality` summarises them.

Robustness, because real typing is messy:

* keys held longer than `MAX_HOLD` (stuck key, auto-repeat) and latencies longer than
  `MAX_GAP` (the typist paused, looked away, left) are ignored, not averaged in;
* an n-gram mean is shrunk towards the window's own median of that latency type with a
  pseudo-count of 1, so a single odd occurrence cannot dominate and a missing n-gram gets
  the window's typical value instead of a hole;
* clocks can be coarse (BB-MAS times come in ~15.6 ms ticks): `CLOCK_TICK` is the floor
  scorers put under every spread they estimate from these features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modalities.events import EventValidationError, FeatureWindow, KeySequence

FEATURE_VERSION = "keystroke-free-1"

#: keys longer than this (s) are stuck or auto-repeating: their hold is ignored
MAX_HOLD = 1.0
#: latencies longer than this (s) are pauses, not typing rhythm: ignored (counted as pauses)
MAX_GAP = 1.5
#: coarsest clock step we expect (Windows' 15.625 ms timer): floor for spread estimates
CLOCK_TICK = 0.015625

#: per-key hold vocabulary (normalised names, see `normalise_key`)
KEYS: tuple[str, ...] = (
    "space", "e", "t", "a", "o", "i", "n", "s", "h", "r", "d", "l", "u", "c", "m", "w", "f",
    "g", "y", "p", "b", "v", "k", "backspace", ".", ",", "enter", "shift",
)
_S = "space"
#: frequent English digraphs (including word boundaries) and the backspace burst
DIGRAPHS: tuple[tuple[str, str], ...] = (
    (_S, "t"), ("e", _S), ("s", _S), ("t", "h"), (_S, "i"), (_S, "s"), ("r", "e"), ("o", _S),
    (_S, "a"), ("i", "s"), ("s", "e"), ("t", _S), ("e", "s"), ("t", "e"), ("a", "r"), ("h", "e"),
    ("t", "o"), ("e", "n"), ("a", "t"), ("h", "i"), ("a", _S), ("e", "r"), (_S, "w"), ("n", _S),
    ("h", "a"), ("i", "n"), ("s", "t"), ("n", "t"), (_S, "d"), ("d", _S), ("o", "n"), ("a", "n"),
    ("n", "d"), ("o", "u"), ("e", "d"), ("o", "r"), ("i", "t"), ("n", "g"), (_S, "o"), (_S, "m"),
    ("y", _S), (_S, "c"), (_S, "h"), (_S, "b"), (_S, "f"), ("r", _S), ("l", "e"), ("t", "i"),
    ("v", "e"), ("backspace", "backspace"),
)
#: frequent English trigraphs: latency from the first press to the third press
TRIGRAPHS: tuple[tuple[str, str, str], ...] = (
    (_S, "t", "h"), ("t", "h", "e"), ("h", "e", _S), ("a", "n", "d"), ("i", "n", "g"),
    ("e", _S, "t"), ("r", "e", _S), ("i", "s", _S), ("a", "r", "e"), ("t", "o", _S),
)
GLOBAL_FEATURES: tuple[str, ...] = (
    "hold.p25", "hold.p50", "hold.p75", "hold.iqr",
    "dd.p10", "dd.p25", "dd.p50", "dd.p75", "dd.p90", "dd.iqr",
    "ud.p10", "ud.p50", "ud.p90", "uu.p50",
    "speed.keys_per_s", "rate.backspace", "rate.pause", "rate.rollover",
)

_NK, _ND, _NT, _NG = len(KEYS), len(DIGRAPHS), len(TRIGRAPHS), len(GLOBAL_FEATURES)
#: timing features (seconds, or rates for the last globals), then per-n-gram counts
N_TIMING = _NK + 3 * _ND + _NT + _NG
N_COUNTS = _NK + _ND + _NT
FEATURE_DIM = N_TIMING + N_COUNTS
TIMING = slice(0, N_TIMING)
COUNTS = slice(N_TIMING, FEATURE_DIM)

FEATURE_NAMES: tuple[str, ...] = (
    tuple(f"H.{k}" for k in KEYS)
    + tuple(f"{kind}.{a}.{b}" for kind in ("DD", "UD", "UU") for a, b in DIGRAPHS)
    + tuple(f"T.{a}.{b}.{c}" for a, b, c in TRIGRAPHS)
    + GLOBAL_FEATURES
    + tuple(f"n.H.{k}" for k in KEYS)
    + tuple(f"n.DG.{a}.{b}" for a, b in DIGRAPHS)
    + tuple(f"n.T.{a}.{b}.{c}" for a, b, c in TRIGRAPHS)
)
assert len(FEATURE_NAMES) == FEATURE_DIM

#: values used when a window has no valid latency of a type at all (typical adult typist)
_FALLBACK = {"hold": 0.10, "dd": 0.25, "ud": 0.15, "uu": 0.25}

_KEY_INDEX = {k: i for i, k in enumerate(KEYS)}
_ALIASES = {
    " ": "space", "spacebar": "space", "return": "enter", "\n": "enter", "\r": "enter",
    "period": ".", "comma": ",", "lshift": "shift", "rshift": "shift", "left shift": "shift",
    "right shift": "shift", "shift_l": "shift", "shift_r": "shift", "back": "backspace",
    "bksp": "backspace",
}
_DG_LOOKUP = np.full(_NK * _NK, -1, dtype=np.int64)
for _j, (_a, _b) in enumerate(DIGRAPHS):
    _DG_LOOKUP[_KEY_INDEX[_a] * _NK + _KEY_INDEX[_b]] = _j
_TG_LOOKUP = {(_KEY_INDEX[a] * _NK + _KEY_INDEX[b]) * _NK + _KEY_INDEX[c]: j for j, (a, b, c) in enumerate(TRIGRAPHS)}


def normalise_key(key: str) -> str:
    """One name per physical key across loggers (``'T'``/``'t'``, ``'lshift'``/``'shift'``)."""
    k = str(key)
    low = k.lower()
    if low in _ALIASES:
        return _ALIASES[low]
    return _ALIASES.get(k, low)


def key_ids(keys: np.ndarray) -> np.ndarray:
    """Vocabulary index of each key (-1 when outside `KEYS`)."""
    return np.fromiter((_KEY_INDEX.get(normalise_key(k), -1) for k in keys), dtype=np.int64, count=len(keys))


# --------------------------------------------------------------------------- latencies


@dataclass(frozen=True)
class Latencies:
    """Per-event latencies of a sequence; digraph latencies belong to the second key.

    `dd_ok[i]` says the pair (i-1, i) is typing rhythm (0 <= DD <= MAX_GAP); index 0 has no
    predecessor and is never ok.
    """

    hold: np.ndarray
    dd: np.ndarray
    ud: np.ndarray
    uu: np.ndarray
    hold_ok: np.ndarray
    dd_ok: np.ndarray


def latencies(seq: KeySequence) -> Latencies:
    """Hold, down-down, up-down and up-up latencies of every key press (seconds)."""
    p, r = seq.press, seq.release
    hold = r - p
    dd = np.r_[np.nan, np.diff(p)]
    ud = np.r_[np.nan, p[1:] - r[:-1]]
    uu = np.r_[np.nan, np.diff(r)]
    hold_ok = (hold >= 0) & (hold <= MAX_HOLD)
    prev_hold_ok = np.r_[False, hold_ok[:-1]]
    with np.errstate(invalid="ignore"):
        dd_ok = (dd >= 0) & (dd <= MAX_GAP) & prev_hold_ok & hold_ok
    dd_ok[0] = False
    return Latencies(hold, dd, ud, uu, hold_ok, dd_ok)


def _median(x: np.ndarray, fallback: float) -> float:
    return float(np.median(x)) if x.size else fallback


def _quantiles(x: np.ndarray, qs: tuple[float, ...], fallback: float) -> list[float]:
    if x.size == 0:
        return [fallback] * len(qs)
    return [float(v) for v in np.quantile(x, qs)]


def _shrunk_means(idx: np.ndarray, values: np.ndarray, n: int, prior: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin mean with one pseudo-observation at `prior`, and the per-bin counts."""
    counts = np.bincount(idx, minlength=n).astype(float)
    sums = np.bincount(idx, weights=values, minlength=n)
    return (sums + prior) / (counts + 1.0), counts


# --------------------------------------------------------------------------- free text


def _window_vector(kid: np.ndarray, lat: Latencies) -> np.ndarray:
    """The FEATURE_DIM vector of one window from key ids and latencies (vectorised)."""
    hold_v = lat.hold[lat.hold_ok]
    dd_ok = lat.dd_ok
    dd_v, ud_v, uu_v = lat.dd[dd_ok], lat.ud[dd_ok], lat.uu[dd_ok]
    m_hold = _median(hold_v, _FALLBACK["hold"])
    m_dd, m_ud, m_uu = _median(dd_v, _FALLBACK["dd"]), _median(ud_v, _FALLBACK["ud"]), _median(uu_v, _FALLBACK["uu"])

    # per-key holds
    sel = (kid >= 0) & lat.hold_ok
    h_mean, h_n = _shrunk_means(kid[sel], lat.hold[sel], _NK, m_hold)

    # digraphs: pair (i-1, i) both in the vocabulary and a rhythm latency
    prev = np.r_[-1, kid[:-1]]
    code = np.where((prev >= 0) & (kid >= 0), prev * _NK + kid, 0)
    dg = np.where((prev >= 0) & (kid >= 0), _DG_LOOKUP[code], -1)
    dsel = (dg >= 0) & dd_ok
    d_idx = dg[dsel]
    dd_mean, d_n = _shrunk_means(d_idx, lat.dd[dsel], _ND, m_dd)
    ud_mean, _ = _shrunk_means(d_idx, lat.ud[dsel], _ND, m_ud)
    uu_mean, _ = _shrunk_means(d_idx, lat.uu[dsel], _ND, m_uu)

    # trigraphs: (i-2, i-1, i) with both inner latencies rhythmic
    t_idx_l: list[int] = []
    t_val_l: list[float] = []
    if kid.size >= 3:
        ok3 = (kid[:-2] >= 0) & (kid[1:-1] >= 0) & (kid[2:] >= 0) & dd_ok[1:-1] & dd_ok[2:]
        for i in np.flatnonzero(ok3):
            j = _TG_LOOKUP.get(int((kid[i] * _NK + kid[i + 1]) * _NK + kid[i + 2]))
            if j is not None:
                t_idx_l.append(j)
                t_val_l.append(float(lat.dd[i + 1] + lat.dd[i + 2]))
    t_mean, t_n = _shrunk_means(np.asarray(t_idx_l, dtype=np.int64), np.asarray(t_val_l, dtype=float), _NT, 2 * m_dd)

    n = kid.size
    n_pairs = max(n - 1, 1)
    hq = _quantiles(hold_v, (0.25, 0.5, 0.75), m_hold)
    dq = _quantiles(dd_v, (0.10, 0.25, 0.5, 0.75, 0.90), m_dd)
    uq = _quantiles(ud_v, (0.10, 0.5, 0.90), m_ud)
    # keys committed at once (a soft keyboard's word) have zero latencies: speed is capped at one
    # key per clock tick instead of dividing by zero
    speed = float(dd_v.size / dd_v.sum()) if dd_v.size and dd_v.sum() > 0 else 1.0 / max(m_dd, CLOCK_TICK)
    backspace = float(np.mean(kid == _KEY_INDEX["backspace"]))
    with np.errstate(invalid="ignore"):
        pause = float(np.sum(lat.dd[1:] > MAX_GAP) / n_pairs)
    rollover = float(np.mean(ud_v < 0)) if ud_v.size else 0.0
    glob = np.array(hq + [hq[2] - hq[0]] + dq + [dq[3] - dq[1]] + uq + [m_uu, speed, backspace, pause, rollover])
    return np.concatenate([h_mean, dd_mean, ud_mean, uu_mean, t_mean, glob, h_n, d_n, t_n])


def _quality(values: np.ndarray) -> float:
    """Evidence in a window: mean over vocabulary n-grams of min(count, 3) / 3."""
    return float(np.mean(np.minimum(values[COUNTS], 3.0) / 3.0))


def window_features(seq: KeySequence) -> FeatureWindow:
    """Free-text features of ONE window of key presses (what a device sends)."""
    if not isinstance(seq, KeySequence):
        raise EventValidationError("keys", f"expected a KeySequence, got {type(seq).__name__}")
    if len(seq) < 2:
        raise EventValidationError("keys", f"a window needs at least 2 key presses, got {len(seq)}")
    values = _window_vector(key_ids(seq.keys), latencies(seq))
    return FeatureWindow("keystroke", FEATURE_VERSION, float(seq.press[0]), float(max(seq.release.max(), seq.press[-1])),
                         len(seq), _quality(values), values)


def window_slices(n: int, n_keys: int, hop: int | None = None) -> list[slice]:
    """Windows of `n_keys` presses every `hop` presses (default half a window); both whole numbers."""
    for name, value in (("n_keys", n_keys), ("hop", hop)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise EventValidationError(name, f"must be a whole number of key presses, got {value!r}")
    if n_keys < 2:
        raise EventValidationError("n_keys", f"must be >= 2, got {n_keys}")
    hop = hop or max(n_keys // 2, 1)
    if hop < 1:
        raise EventValidationError("hop", f"must be >= 1, got {hop}")
    return [slice(a, a + int(n_keys)) for a in range(0, n - int(n_keys) + 1, int(hop))]


def windows_for_subject(seq: KeySequence, n_keys: int, hop: int | None = None) -> list[FeatureWindow]:
    """Cut one recording into windows of `n_keys` presses (hop half a window) and featurise each.

    Latencies are computed once over the whole recording, so a window's first digraph uses
    the key just before it, exactly as a device streaming windows would see it.
    """
    kid = key_ids(seq.keys)
    lat = latencies(seq)
    out = []
    for s in window_slices(len(seq), n_keys, hop):
        sub = Latencies(lat.hold[s], lat.dd[s], lat.ud[s], lat.uu[s], lat.hold_ok[s], lat.dd_ok[s].copy())
        sub.dd_ok[0] = False  # the window's first pair reaches outside it
        values = _window_vector(kid[s], sub)
        out.append(FeatureWindow("keystroke", FEATURE_VERSION, float(seq.press[s][0]),
                                 float(max(seq.release[s].max(), seq.press[s][-1])), s.stop - s.start,
                                 _quality(values), values))
    return out


def window_matrix(seq: KeySequence, n_keys: int, hop: int | None = None) -> np.ndarray:
    """`windows_for_subject` as an (n_windows, FEATURE_DIM) array (empty if too short)."""
    ws = windows_for_subject(seq, n_keys, hop)
    return np.vstack([w.values for w in ws]) if ws else np.empty((0, FEATURE_DIM))


# --------------------------------------------------------------------------- fixed text


def fixed_text_names(keys: list[str] | tuple[str, ...]) -> list[str]:
    """CMU-style column names for a fixed text typed as `keys`."""
    names = []
    for i, k in enumerate(keys):
        names.append(f"H.{k}")
        if i + 1 < len(keys):
            names += [f"DD.{k}.{keys[i + 1]}", f"UD.{k}.{keys[i + 1]}"]
    return names


def fixed_text_vector(seq: KeySequence, expected: list[str] | tuple[str, ...] | None = None) -> np.ndarray:
    """CMU layout ``H.k1, DD.k1.k2, UD.k1.k2, H.k2, ..., H.kn`` of one typing of a fixed text.

    `expected`, if given, is the key sequence the text must match (a mistyped password gives
    a vector that compares the wrong keys, so it is refused with an error naming the index).
    """
    if expected is not None:
        got = [normalise_key(k) for k in seq.keys]
        want = [normalise_key(k) for k in expected]
        if got != want:
            bad = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            raise EventValidationError("keys", f"typed keys differ from the expected text at index {bad}")
    p, r = seq.press, seq.release
    n = len(seq)
    out = np.empty(3 * n - 2)
    out[0::3] = r - p
    out[1::3] = np.diff(p)
    out[2::3] = p[1:] - r[:-1]
    return out


def sequence_from_fixed_vector(values: np.ndarray, keys: list[str] | tuple[str, ...], start: float = 0.0) -> KeySequence:
    """Inverse of `fixed_text_vector`: rebuild press/release times (tests, CMU replay)."""
    v = np.asarray(values, dtype=float)
    n = len(keys)
    if v.shape != (3 * n - 2,):
        raise EventValidationError("values", f"expected {3 * n - 2} values for {n} keys, got shape {v.shape}")
    hold = v[0::3]
    press = start + np.r_[0.0, np.cumsum(v[1::3])]
    return KeySequence(np.array(list(keys), dtype=object), press, press + hold)


def cost_per_window_us(seq: KeySequence, n_keys: int = 100, repeat: int = 200) -> float:
    """Mean CPU time (microseconds) of `window_features` on `n_keys`-key windows of `seq`.

    CPU time rather than wall time, so a figure taken on a shared machine is not inflated by
    other jobs.
    """
    import time

    sls = window_slices(len(seq), n_keys)
    if not sls:
        raise EventValidationError("keys", f"sequence shorter than one window of {n_keys} keys")
    subs = [seq[s] for s in sls]
    t0 = time.process_time()
    for i in range(repeat):
        window_features(subs[i % len(subs)])
    return (time.process_time() - t0) / repeat * 1e6


__all__ = [
    "CLOCK_TICK", "COUNTS", "DIGRAPHS", "FEATURE_DIM", "FEATURE_NAMES", "FEATURE_VERSION", "KEYS",
    "MAX_GAP", "MAX_HOLD", "N_TIMING", "TIMING", "TRIGRAPHS", "Latencies", "cost_per_window_us",
    "fixed_text_names", "fixed_text_vector", "key_ids", "latencies", "normalise_key",
    "sequence_from_fixed_vector", "window_features", "window_matrix", "window_slices",
    "windows_for_subject",
]

