"""Server momentum (FedAvgM, Hsu et al. 2019) around any strategy, DP included.

With one person per device, each FedAvg round is close to one large-batch gradient step,
so plain FedAvg under-trains in the rounds we can afford; a heavy-ball server update
``m = beta m + (w_agg - w); w = w + eta m`` takes it further per round. It wraps the
*outside* of the DP strategy: it only sees the already clipped and noised aggregate, so it
is post-processing and spends no privacy (Flower's FedAvgM would sit inside the DP wrapper,
and its momentum would carry un-noised averages into later rounds).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from federated.strategies.delegating import KeepsGlobal


class ServerMomentum(KeepsGlobal):
    """Delegating strategy: heavy-ball update of the global model from the inner aggregate."""

    def __init__(self, strategy: Strategy, momentum: float, lr: float = 1.0) -> None:
        if not 0 <= momentum < 1:
            raise ValueError(f"server-momentum: must be in [0, 1), got {momentum}")
        if lr <= 0:
            raise ValueError(f"server-lr: must be > 0, got {lr}")
        super().__init__(strategy)
        self.momentum, self.lr = momentum, lr
        self.velocity: dict[str, np.ndarray] = {}

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays is None or self.current is None:
            return arrays, metrics
        out = {}
        for k, v in arrays.items():
            w = self.current[k]
            step = np.asarray(v.numpy(), np.float32) - w
            self.velocity[k] = self.momentum * self.velocity.get(k, np.zeros_like(w)) + step
            out[k] = Array((w + self.lr * self.velocity[k]).astype(np.float32))
        return ArrayRecord(out), metrics
