"""Synthetic walkers for gait tests: periodic body acceleration rotated into a phone frame."""

from __future__ import annotations

import numpy as np

from modalities.events import AccelSeries

G = 9.80665


def rotation(rng: np.random.Generator) -> np.ndarray:
    """A random 3-D rotation matrix (the phone's pose in the pocket)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def person(seed: int) -> dict[str, np.ndarray | float]:
    """One walker's signature: stride period and per-axis harmonic amplitudes and phases."""
    rng = np.random.default_rng(seed)
    return {"period": float(rng.uniform(0.95, 1.25)), "amp": rng.uniform(0.2, 2.5, size=(3, 6)),
            "phase": rng.uniform(0, 2 * np.pi, size=(3, 6))}


def walk(p: dict, seconds: float, rate: float, *, t0: float = 0.0, pose: np.ndarray | None = None,
         noise: float = 0.3, seed: int = 0, units_g: bool = False, jitter: float = 0.0,
         stand_s: float = 0.0) -> AccelSeries:
    """`seconds` of walking (after `stand_s` of standing still) sampled at `rate` Hz."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = t0 + np.arange(n) / rate + (rng.uniform(-jitter, jitter, n) if jitter else 0.0)
    t = np.sort(t)
    tt = t - t0
    body = np.zeros((n, 3))
    f = 1.0 / p["period"] * (1 + 0.01 * np.sin(2 * np.pi * tt / 17.0))  # slow pace drift
    ph = 2 * np.pi * np.cumsum(np.r_[0, np.diff(tt)] * f)
    for ax in range(3):
        for k in range(6):
            body[:, ax] += p["amp"][ax, k] * np.cos((k + 1) * ph + p["phase"][ax, k])
    body[tt < stand_s] = 0.0
    x = body + np.array([0.0, 0.0, G])  # body frame: lateral, forward, vertical
    R = pose if pose is not None else np.eye(3)
    xyz = x @ R.T + noise * rng.normal(size=(n, 3))
    if units_g:
        xyz = xyz / G
    return AccelSeries(t, xyz, "Synth")
