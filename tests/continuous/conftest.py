"""Factories for synthetic keystroke streams with the shapes of BB-MAS (times in seconds)."""

from __future__ import annotations

import numpy as np
import pytest

from modalities.events import KeySequence

KEYS = np.array(list("the quick brown fox jumps over lazy dog") + ["enter", "backspace"], dtype=object)
KEYS[KEYS == " "] = "space"


def make_sequence(n: int, *, dd: float = 0.2, hold: float = 0.1, seed: int = 0, start: float = 0.0) -> KeySequence:
    """`n` key presses whose down-down latency and hold scatter around `dd` and `hold`."""
    rng = np.random.default_rng(seed)
    keys = rng.choice(KEYS, size=n)
    gaps = np.abs(rng.normal(dd, dd * 0.2, n))
    gaps[0] = 0.0
    press = start + np.cumsum(gaps)
    holds = np.abs(rng.normal(hold, hold * 0.2, n))
    return KeySequence(keys, press, press + holds)


@pytest.fixture
def owner() -> KeySequence:
    return make_sequence(700, dd=0.15, hold=0.08, seed=1)


@pytest.fixture
def others() -> dict[int, KeySequence]:
    return {100 + i: make_sequence(400, dd=0.45 + 0.05 * i, hold=0.2, seed=10 + i) for i in range(3)}
