"""`Delegating`: a Flower strategy that wraps another and passes on what it does not change.

Cadence stacks small strategies around FedAvg (quorum, slots, server momentum, DP); each
overrides only the calls it changes, and attributes of the inner strategy (a DP strategy's
noise multiplier, say) stay reachable through the wrapper.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


class Delegating(Strategy):
    """Every call goes to `self.strategy` unless a subclass overrides it."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()

    def __getattr__(self, name: str) -> Any:  # e.g. noise_multiplier of a DP strategy inside
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)


class KeepsGlobal(Delegating):
    """Delegating, remembering the global model each training round starts from (`current`).

    Updates are read against it: server momentum's step, DP-FedAvg's fixed-denominator sum.
    """

    def __init__(self, strategy: Strategy) -> None:
        super().__init__(strategy)
        self.current: dict[str, np.ndarray] | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current = {k: np.asarray(v.numpy(), np.float32) for k, v in arrays.items()}
        return self.strategy.configure_train(server_round, arrays, config, grid)
