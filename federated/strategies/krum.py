"""Krum (Blanchard et al. 2017): keep the update closest to its n - f - 2 nearest neighbours."""

from __future__ import annotations

from typing import Any

from federated.config import RunSettings
from federated.strategies.base import StrategyRecipe


class KrumRecipe(StrategyRecipe):
    name = "krum"
    robust = True

    def build(self, s: RunSettings) -> Any:
        from flwr.serverapp.strategy import Krum

        return Krum(**self.common_kwargs(s), num_malicious_nodes=s.krum_byzantine)
