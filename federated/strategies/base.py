"""The abstract base of Cadence's strategy recipes: one recipe per file, built from settings.

A recipe turns `RunSettings` into a Flower Message-API strategy (`flwr.serverapp.strategy`).
Recipes configure Flower's own, tested aggregation code; what Cadence adds is the choice of
weights (`weighting`; equal weights under DP), and the wrappers in `slots.py` and `dp.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from federated.config import RunSettings


class StrategyRecipe(ABC):
    """Builds one aggregation strategy from the run settings."""

    name: ClassVar[str]
    #: robust rules ignore sample counts; mean-based ones weight by them (unless DP)
    robust: ClassVar[bool] = False

    def common_kwargs(self, s: RunSettings) -> dict[str, Any]:
        """Sampling and weighting arguments shared by every Flower FedAvg-derived strategy."""
        return {
            "fraction_train": s.fraction_train,
            "fraction_evaluate": 0.0,
            "min_train_nodes": s.min_nodes,
            "min_evaluate_nodes": 0,
            # never waited on: `Quorum` (quorum.py) hands Flower a snapshot with enough nodes, or fails
            "min_available_nodes": s.min_nodes,
            # DP needs every device to weigh the same (sensitivity C/m); otherwise `weighting`
            "weighted_by_key": "unit-weight" if s.dp or s.weighting == "unit" else "num-examples",
        }

    def min_devices(self, s: RunSettings) -> tuple[int, str]:
        """Fewest updates per round for which this rule is what its name says, and why (1: any number).

        A robust rule given fewer degenerates (a trimmed mean that trims nothing is a mean) while
        the model card still names it: `Quorum` refuses such a round, `RunSettings` such a min-nodes.
        """
        return 1, ""

    @abstractmethod
    def build(self, s: RunSettings) -> Any:
        """Return a `flwr.serverapp.strategy.Strategy`."""
