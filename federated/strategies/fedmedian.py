"""FedMedian (Yin et al. 2018): coordinate-wise median; one poisoned device cannot move it far."""

from __future__ import annotations

from typing import Any

from federated.config import RunSettings
from federated.strategies.base import StrategyRecipe


class FedMedianRecipe(StrategyRecipe):
    name = "fedmedian"
    robust = True

    def min_devices(self, s: RunSettings) -> tuple[int, str]:
        return 3, "fedmedian: the median of 2 updates is their mean (one device moves it anywhere)"

    def build(self, s: RunSettings) -> Any:
        from flwr.serverapp.strategy import FedMedian

        return FedMedian(**self.common_kwargs(s))
