"""Round quorum: a round goes on with the devices still connected, or fails within round-timeout.

Flower's `sample_nodes` waits forever for `min_available_nodes`, so a SuperNode that died
mid-run stalled the run silently ("Waiting for nodes to connect"). This wrapper waits at most
`timeout` seconds for `required` connected devices before each round, hands the inner strategy
a snapshot of them (so Flower's own wait cannot block), and refuses to aggregate fewer than
`required` good replies. `required` is `min-nodes`; under DP it is the sample size the noise
is calibrated to (a smaller average would need more noise than was added); for a robust rule,
at least the number it needs not to degenerate into a mean. `reason` says which, in the error.

A reply whose update holds NaN or inf, or whose weight (``num-examples``, ``unit-weight``) is
not a positive finite number, counts as a failed reply (`unusable`): one such device turned
every mean, the median too, into NaN from that round on, and the run failed only at publishing,
blaming the learning rate. Leaving it out is removing one device (DP's adjacency).

`devices`, when given, are the run's devices, fixed at its scaling round (the feature scaling,
the device count and DP's denominator were settled on them): only they are sampled. A device
that connects later is logged once and takes part from the next run on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from federated.records import device_errors
from federated.strategies.delegating import Delegating

log = logging.getLogger(__name__)


class QuorumError(RuntimeError):
    """Too few devices connected, or too few replied, for a round to count."""


#: the weight metrics mean-based rules read (`StrategyRecipe.common_kwargs`)
WEIGHT_KEYS = ("num-examples", "unit-weight")


def unusable(reply: Message) -> str | None:
    """Why a reply that carries content cannot be aggregated (non-finite update or weight); None if it can."""
    for rec in reply.content.array_records.values():
        for key, arr in rec.items():
            if not np.isfinite(arr.numpy()).all():
                return f"non-finite values (NaN or inf) in its update ({key})"
    for metrics in reply.content.metric_records.values():
        for key in WEIGHT_KEYS:
            v = metrics.get(key)
            if v is not None and (isinstance(v, (bool, list)) or not (math.isfinite(v) and v > 0)):
                return f"{key} {v!r}, not a positive number"
    return None


class _Snapshot:
    """The grid with its node list fixed for one round's sampling."""

    def __init__(self, grid: Grid, nodes: list[int]) -> None:
        self._grid, self._nodes = grid, nodes

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class Quorum(Delegating):
    """Delegating strategy: at least `required` devices per round, waiting at most `timeout` s for them."""

    def __init__(self, strategy: Strategy, required: int, timeout: float, *, reason: str = "min-nodes",
                 devices: Collection[int] | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(strategy)
        self.required, self.timeout, self.reason = required, timeout, reason
        self.devices = None if devices is None else frozenset(devices)
        self._late: set[int] = set()  # late joiners already logged
        self._clock, self._sleep = clock, sleep

    def members(self, server_round: int, grid: Grid) -> list[int]:
        """The run's devices that are connected now; late joiners are logged (once each) and left out."""
        nodes = sorted(grid.get_node_ids())
        if self.devices is None:
            return nodes
        late = [n for n in nodes if n not in self.devices and n not in self._late]
        if late:
            log.warning("round %s: %d device(s) connected after the scaling round; they take part from the next "
                        "run on (this run's devices, feature scaling and DP denominator were fixed then)",
                        server_round, len(late))
            self._late.update(late)
        return [n for n in nodes if n in self.devices]

    def connected(self, server_round: int, grid: Grid) -> list[int]:
        """The run's connected devices once there are `required` of them; `QuorumError` after `timeout` s."""
        t0 = self._clock()
        warned = False
        while len(nodes := self.members(server_round, grid)) < self.required:
            waited = self._clock() - t0
            if waited >= self.timeout:
                raise QuorumError(f"round {server_round}: {len(nodes)} device(s) connected, {self.required} needed "
                                  f"({self.reason}); waited {waited:.0f} s (round-timeout). Did a SuperNode stop?")
            if not warned:
                log.warning("round %s: %d of %d devices connected; waiting up to %.0f s", server_round, len(nodes),
                            self.required, self.timeout)
                warned = True
            self._sleep(min(1.0, self.timeout))
        return nodes

    def check_replies(self, server_round: int, replies: list[Message], left_out: Collection[str] = ()) -> None:
        """Raise unless at least `required` replies carry content (timeouts, errors and `left_out` ones do not)."""
        good = sum(not r.has_error() for r in replies)
        if good < self.required:
            errors = device_errors(replies)
            unused = f"; left out: {len(left_out)} device(s) sent {'; '.join(sorted(set(left_out)))}" if left_out else ""
            raise QuorumError(f"round {server_round}: {good} device(s) replied within round-timeout "
                              f"({self.timeout:.0f} s), {self.required} needed ({self.reason})"
                              f"{'; errors: ' + errors if errors else ''}{unused}")

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        snapshot: Any = _Snapshot(grid, self.connected(server_round, grid))
        return self.strategy.configure_train(server_round, arrays, config, snapshot)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept, left_out = [], []
        for r in replies:
            why = None if r.has_error() else unusable(r)
            if why is None:
                kept.append(r)
            else:  # the node id only: which device, never anything of its data
                log.warning("round %s: device %s sent %s; its update is left out", server_round,
                            r.metadata.src_node_id, why)
                left_out.append(why)
        self.check_replies(server_round, kept, left_out)
        return self.strategy.aggregate_train(server_round, kept)
