"""Trimmed mean (Yin et al. 2018): drop the `trim-beta` largest and smallest values per coordinate."""

from __future__ import annotations

from typing import Any

from federated.config import RunSettings
from federated.strategies.base import StrategyRecipe


class TrimmedMeanRecipe(StrategyRecipe):
    name = "trimmed-mean"
    robust = True

    def build(self, s: RunSettings) -> Any:
        from flwr.serverapp.strategy import FedTrimmedAvg

        return FedTrimmedAvg(**self.common_kwargs(s), beta=s.trim_beta)
