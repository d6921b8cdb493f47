"""Trimmed mean (Yin et al. 2018): drop the `trim-beta` largest and smallest values per coordinate."""

from __future__ import annotations

import math
from typing import Any

from federated.config import RunSettings, SettingsError
from federated.strategies.base import StrategyRecipe


class TrimmedMeanRecipe(StrategyRecipe):
    name = "trimmed-mean"
    robust = True

    def min_devices(self, s: RunSettings) -> tuple[int, str]:
        """The fewest n for which int(trim-beta * n), the updates cut from each end, is at least 1."""
        if s.trim_beta <= 0:
            raise SettingsError(f"trim-beta: trimmed-mean needs trim-beta > 0, got {s.trim_beta} (trims nothing: a mean)")
        n = math.ceil(1 / s.trim_beta)
        while int(s.trim_beta * n) < 1:  # float rounding: ceil(1 / 0.1) may still give 0.1 * n < 1
            n += 1
        return n, (f"trimmed-mean: trim-beta {s.trim_beta:g} cuts int({s.trim_beta:g} x n) = 0 updates per end "
                   f"below {n} devices (a plain mean)")

    def build(self, s: RunSettings) -> Any:
        from flwr.serverapp.strategy import FedTrimmedAvg

        return FedTrimmedAvg(**self.common_kwargs(s), beta=s.trim_beta)
