"""Aggregation strategies, one recipe per file, chosen by the ``strategy`` run-config key.

`build_strategy` returns the full stack the ServerApp runs: recipe -> optional DP wrapper ->
optional server momentum (post-processing, outside DP) -> round quorum (enough devices per
round or a clear error within round-timeout, `quorum.py`) -> slot assignment (which gives
each device its prototype, see `federated.task`).
"""

from __future__ import annotations

from typing import Any

from federated.config import RunSettings
from federated.strategies.base import StrategyRecipe
from federated.strategies.dp import DPError, epsilon_spent, sampled_per_round, wrap_dp
from federated.strategies.fedavg import FedAvgRecipe
from federated.strategies.fedmedian import FedMedianRecipe
from federated.strategies.fedprox import FedProxRecipe
from federated.strategies.krum import KrumRecipe
from federated.strategies.momentum import ServerMomentum
from federated.strategies.quorum import Quorum, QuorumError
from federated.strategies.slots import SlotAssigner
from federated.strategies.trimmed_mean import TrimmedMeanRecipe

RECIPES: dict[str, StrategyRecipe] = {r.name: r for r in (FedAvgRecipe(), FedProxRecipe(), FedMedianRecipe(),
                                                          TrimmedMeanRecipe(), KrumRecipe())}


def build_strategy(s: RunSettings, num_nodes: int) -> SlotAssigner:
    """The strategy stack for a run with `num_nodes` connected devices."""
    recipe = RECIPES[s.strategy]
    strategy: Any = recipe.build(s)
    if s.dp:
        strategy = wrap_dp(strategy, s, num_nodes, robust=recipe.robust)
    if s.server_momentum > 0 or s.server_lr != 1.0:
        strategy = ServerMomentum(strategy, s.server_momentum, s.server_lr)
    # DP noise is calibrated to this many devices per round: fewer would be under-noised
    required = sampled_per_round(s, num_nodes) if s.dp else s.min_nodes
    return SlotAssigner(Quorum(strategy, required, s.round_timeout), s.num_slots)


__all__ = ["RECIPES", "DPError", "Quorum", "QuorumError", "ServerMomentum", "SlotAssigner", "StrategyRecipe", "build_strategy", "epsilon_spent"]
