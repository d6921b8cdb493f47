"""Aggregation strategies, one recipe per file, chosen by the ``strategy`` run-config key.

`build_strategy` returns the full stack the ServerApp runs: recipe -> optional DP wrapper ->
optional server momentum (post-processing, outside DP) -> round quorum (enough of the run's
devices per round, as min-nodes, DP's m0 or a robust rule's minimum require, or a clear error
within round-timeout, `quorum.py`) -> slot assignment (which gives
each device its prototype, see `federated.task`).
"""

from __future__ import annotations

from collections.abc import Collection
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


def build_strategy(s: RunSettings, num_nodes: int, devices: Collection[int] | None = None) -> SlotAssigner:
    """The strategy stack for a run with `num_nodes` devices (`devices`: their node ids, the only ones sampled).

    Under DP, a noise multiplier whose epsilon over the run exceeds `MAX_EPSILON` for this many
    devices is refused here (`SettingsError`), before any round.
    """
    recipe = RECIPES[s.strategy]
    strategy: Any = recipe.build(s)
    if s.dp:
        s.check_epsilon(epsilon_spent(s, num_nodes, s.num_server_rounds))
        strategy = wrap_dp(strategy, s, num_nodes, robust=recipe.robust)
    if s.server_momentum > 0 or s.server_lr != 1.0:
        strategy = ServerMomentum(strategy, s.server_momentum, s.server_lr)
    required, reason = _quorum(s, recipe, num_nodes)
    return SlotAssigner(Quorum(strategy, required, s.round_timeout, reason=reason, devices=devices), s.num_slots)


def _quorum(s: RunSettings, recipe: StrategyRecipe, num_nodes: int) -> tuple[int, str]:
    """Good replies a round needs, and why (the reason the round's error names)."""
    if s.dp:  # the noise is calibrated to this many devices per round: fewer would be under-noised
        m0 = sampled_per_round(s, num_nodes)
        return m0, f"dp: the noise is calibrated to m0 = {m0} devices per round"
    need, why = recipe.min_devices(s)
    return (need, why) if need > s.min_nodes else (s.min_nodes, "min-nodes")


__all__ = ["RECIPES", "DPError", "Quorum", "QuorumError", "ServerMomentum", "SlotAssigner", "StrategyRecipe", "build_strategy", "epsilon_spent"]
