"""Krum (Blanchard et al. 2017): keep the update closest to its n - f - 2 nearest neighbours."""

from __future__ import annotations

from typing import Any

from federated.config import RunSettings
from federated.strategies.base import StrategyRecipe


class KrumRecipe(StrategyRecipe):
    name = "krum"
    robust = True

    def min_devices(self, s: RunSettings) -> tuple[int, str]:
        f = s.krum_byzantine
        return 2 * f + 3, (f"krum: krum-byzantine {f} needs n >= 2f + 3 = {2 * f + 3} updates per round "
                           f"(Blanchard et al. 2017); with fewer, {f} attacker(s) can choose the model")

    def build(self, s: RunSettings) -> Any:
        from flwr.serverapp.strategy import Krum

        return Krum(**self.common_kwargs(s), num_malicious_nodes=s.krum_byzantine)
