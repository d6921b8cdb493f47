"""FedProx (Li et al. 2020): FedAvg plus a proximal term mu/2 ||w - w_global||^2 on devices.

The strategy sends ``proximal-mu`` in the train config; `federated.task.train` adds the term.
"""

from __future__ import annotations

from typing import Any

from federated.config import RunSettings
from federated.strategies.base import StrategyRecipe


class FedProxRecipe(StrategyRecipe):
    name = "fedprox"

    def build(self, s: RunSettings) -> Any:
        from flwr.serverapp.strategy import FedProx

        return FedProx(**self.common_kwargs(s), proximal_mu=s.proximal_mu)
