"""SYNTHETIC behaviour generator: made-up people who type, swipe and walk.

Nothing here comes from real recordings. It exists so that `cadence demo`, the mobile app's
replay source and tests can exercise the whole path (events -> features -> scores ->
decision) on a fresh clone without the datasets. Every person has stable personal
parameters drawn from `seed`; each call draws fresh session noise from `rng`, so two calls
for one person differ the way two sessions of one real person do, and two people differ
more. Accuracy measured on this data says nothing about real accuracy: use the BB-MAS
benches for that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modalities.events import AccelSeries, KeySequence, TouchAction, TouchStream

#: printed by every tool that shows results computed from this module
SYNTHETIC_LABEL = "SYNTHETIC"

G = 9.80665
_LETTERS = list("etaoinshrdlcumwfgypbvkjxqz") + ["space", "shift", "backspace", "period", "comma"]
_FREQ = np.array([12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.4, 2.2, 2.0, 2.0,
                  1.9, 1.5, 1.0, 0.8, 0.15, 0.15, 0.1, 0.07, 18.0, 1.5, 1.0, 1.0, 0.8])
_FREQ = _FREQ / _FREQ.sum()


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


@dataclass(frozen=True)
class _TypingStyle:
    hold_mean: float
    hold_sd: float
    dd_mean: float
    dd_sd: float
    key_hold: np.ndarray  # per-key offsets (s)
    key_dd: np.ndarray


@dataclass(frozen=True)
class _SwipeStyle:
    angle: float  # preferred direction (rad), 0 = right, pi/2 = down on screen
    angle_sd: float
    length: float  # fraction of screen height
    duration: float  # s
    pressure: float
    major: float
    start_x: float  # fraction of width
    start_y: float  # fraction of height
    curvature: float


@dataclass(frozen=True)
class _GaitStyle:
    step_hz: float
    amps: np.ndarray  # (3 axes, 4 harmonics of the stride frequency)
    phases: np.ndarray  # same shape
    gravity: np.ndarray  # unit vector: phone orientation in the pocket
    noise: float


class SyntheticPerson:
    """A made-up person with stable typing, swiping and walking habits (SYNTHETIC data).

    ``SyntheticPerson(seed)`` always describes the same person; pass an `rng` (or an int) to
    the generating methods for session-to-session variation.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        r = np.random.default_rng([7_919, self.seed])
        n = len(_LETTERS)
        self.typing = _TypingStyle(
            hold_mean=float(r.uniform(0.07, 0.15)),
            hold_sd=float(r.uniform(0.012, 0.03)),
            dd_mean=float(r.uniform(0.14, 0.36)),
            dd_sd=float(r.uniform(0.04, 0.09)),
            key_hold=r.normal(0.0, 0.02, n),
            key_dd=r.normal(0.0, 0.05, n),
        )
        self.swipe = _SwipeStyle(
            angle=float(r.choice([-np.pi / 2, np.pi / 2]) + r.normal(0, 0.25)),
            angle_sd=float(r.uniform(0.05, 0.2)),
            length=float(r.uniform(0.2, 0.5)),
            duration=float(r.uniform(0.12, 0.35)),
            pressure=float(r.uniform(0.3, 0.9)),
            major=float(r.uniform(8.0, 20.0)),
            start_x=float(r.uniform(0.3, 0.7)),
            start_y=float(r.uniform(0.35, 0.65)),
            curvature=float(r.normal(0.0, 0.08)),
        )
        g = r.normal(0, 1, 3) + np.array([0.0, -2.5, 0.0])  # mostly upright in a pocket
        self.gait = _GaitStyle(
            step_hz=float(r.uniform(1.6, 2.1)),
            amps=np.abs(r.normal(0, 1, (3, 4))) * np.array([[1.2], [2.5], [1.2]]) * np.array([0.6, 1.0, 0.5, 0.3]),
            phases=r.uniform(0, 2 * np.pi, (3, 4)),
            gravity=g / np.linalg.norm(g),
            noise=float(r.uniform(0.2, 0.5)),
        )

    def __repr__(self) -> str:
        return f"SyntheticPerson(seed={self.seed})"

    # ------------------------------------------------------------------------ keystrokes
    def keystrokes(self, n_keys: int, rng: np.random.Generator | int | None = None) -> KeySequence:
        """`n_keys` key presses of free typing, times in seconds from 0."""
        if n_keys <= 0:
            raise ValueError("n_keys must be positive")
        r = _rng(rng)
        s = self.typing
        idx = r.choice(len(_LETTERS), size=n_keys, p=_FREQ)
        drift = r.normal(1.0, 0.05)  # this session's overall speed
        hold = np.clip(s.hold_mean + s.key_hold[idx] + r.normal(0, s.hold_sd, n_keys), 0.025, None)
        dd = np.clip((s.dd_mean + s.key_dd[idx]) * drift + r.gamma(2.0, s.dd_sd / 2.0, n_keys) - s.dd_sd, 0.03, None)
        pauses = r.random(n_keys) < 0.03  # occasional thinking pauses
        dd = dd + pauses * r.uniform(0.5, 2.0, n_keys)
        press = np.cumsum(dd) - dd[0]
        keys = np.array([_LETTERS[i] for i in idx], dtype=object)
        return KeySequence(keys, press, press + hold)

    # ------------------------------------------------------------------------ touch
    def touch(self, n_strokes: int, rng: np.random.Generator | int | None = None, device: str = "synthetic") -> TouchStream:
        """`n_strokes` swipes (DOWN, MOVE..., UP) sampled at 60 Hz on a 1080x1920 screen."""
        if n_strokes <= 0:
            raise ValueError("n_strokes must be positive")
        r = _rng(rng)
        s = self.swipe
        w, h = 1080.0, 1920.0
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("time", "x", "y", "pressure", "major", "minor", "action")}
        t0 = 0.0
        for _ in range(n_strokes):
            dur = max(0.05, s.duration * r.lognormal(0, 0.15))
            n = max(3, int(dur * 60) + 1)
            u = np.linspace(0.0, 1.0, n)
            ease = 0.5 - 0.5 * np.cos(np.pi * u)  # accelerate then decelerate
            ang = s.angle + r.normal(0, s.angle_sd)
            length = s.length * h * r.lognormal(0, 0.12)
            x0 = np.clip(s.start_x + r.normal(0, 0.05), 0.05, 0.95) * w
            y0 = np.clip(s.start_y + r.normal(0, 0.05), 0.05, 0.95) * h
            bend = s.curvature * length * np.sin(np.pi * u)
            x = x0 + np.cos(ang) * length * ease - np.sin(ang) * bend
            y = y0 + np.sin(ang) * length * ease + np.cos(ang) * bend
            p = np.clip(s.pressure * (1 + 0.2 * np.sin(np.pi * u)) + r.normal(0, 0.03, n), 0.01, None)
            major = np.clip(s.major + r.normal(0, 1.0, n), 1.0, None)
            action = np.full(n, int(TouchAction.MOVE))
            action[0], action[-1] = int(TouchAction.DOWN), int(TouchAction.UP)
            cols["time"].append(t0 + u * dur)
            cols["x"].append(np.clip(x, 0, w - 1))
            cols["y"].append(np.clip(y, 0, h - 1))
            cols["pressure"].append(p)
            cols["major"].append(major)
            cols["minor"].append(major * 0.8)
            cols["action"].append(action)
            t0 += dur + r.uniform(0.4, 1.6)
        cat = {k: np.concatenate(v) for k, v in cols.items()}
        return TouchStream(time=cat["time"], x=cat["x"], y=cat["y"], pressure=cat["pressure"],
                           touch_major=cat["major"], touch_minor=cat["minor"], action=cat["action"],
                           pointer_id=np.zeros(cat["time"].size, dtype=np.int16),
                           screen_width=w, screen_height=h, device=device)

    # ------------------------------------------------------------------------ gait
    def walk(self, seconds: float, rate_hz: float = 100.0, rng: np.random.Generator | int | None = None) -> AccelSeries:
        """`seconds` of walking with the phone in a pocket: accelerometer in m/s^2, gravity included."""
        if seconds <= 0 or rate_hz <= 0:
            raise ValueError("seconds and rate_hz must be positive")
        r = _rng(rng)
        g = self.gait
        n = int(round(seconds * rate_hz))
        t = np.arange(n) / rate_hz
        stride_hz = g.step_hz * r.normal(1.0, 0.02) / 2.0
        # slow tempo wobble so steps are not perfectly periodic
        phase = 2 * np.pi * stride_hz * t + 0.3 * np.sin(2 * np.pi * 0.1 * t + r.uniform(0, 2 * np.pi))
        k = np.arange(1, 5)[None, None, :]
        amps = g.amps * r.normal(1.0, 0.05, g.amps.shape)
        # step-rate harmonics carry most energy; stride-rate ones tell left from right foot
        motion = np.sum(amps[None] * np.sin(2 * k * phase[:, None, None] + g.phases[None]), axis=2)
        motion += np.sum(0.3 * g.amps[None] * np.sin(k * phase[:, None, None] + g.phases[None, ::-1]), axis=2)
        tilt = g.gravity + r.normal(0, 0.05, 3)
        grav = G * tilt / np.linalg.norm(tilt)
        xyz = grav[None, :] + motion + r.normal(0, g.noise, (n, 3))
        return AccelSeries(t, xyz, device="synthetic")
