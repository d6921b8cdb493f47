"""FedAvg (McMahan et al. 2017): weighted mean of the devices' models."""

from __future__ import annotations

from typing import Any

from federated.config import RunSettings
from federated.strategies.base import StrategyRecipe


class FedAvgRecipe(StrategyRecipe):
    name = "fedavg"

    def build(self, s: RunSettings) -> Any:
        from flwr.serverapp.strategy import FedAvg

        return FedAvg(**self.common_kwargs(s))
