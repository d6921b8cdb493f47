"""Client-side DP with fixed clipping around any mean-based recipe (DP-FedAvg).

Devices clip their update to `clipping-norm` (``fixedclipping_mod``, applied only when the
train config carries a clipping norm); the server adds Gaussian noise ``z * C / m`` to the
average of the `m` sampled devices (Flower's `DifferentialPrivacyClientSideFixedClipping`).
The epsilon spent is computed by `federated.privacy` (see there for the assumptions).
"""

from __future__ import annotations

import math
from typing import Any

from federated.config import RunSettings
from federated.privacy import epsilon


class DPError(ValueError):
    """DP asked for with a strategy whose aggregate has no bounded sensitivity."""


def wrap_dp(strategy: Any, s: RunSettings, num_nodes: int, *, robust: bool) -> Any:
    """Wrap `strategy` with client-side fixed-clipping DP for `num_nodes` available devices."""
    if robust:
        raise DPError(f"strategy: DP noise is calibrated to a mean; use fedavg or fedprox, not {s.strategy}")
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

    return DifferentialPrivacyClientSideFixedClipping(strategy, noise_multiplier=s.noise_multiplier,
                                                      clipping_norm=s.clipping_norm,
                                                      num_sampled_clients=sampled_per_round(s, num_nodes))


def sampled_per_round(s: RunSettings, num_nodes: int) -> int:
    """How many devices FedAvg samples per round (as `FedAvg.configure_train` computes it)."""
    return max(int(num_nodes * s.fraction_train), s.min_nodes)


def epsilon_spent(s: RunSettings, num_nodes: int, rounds: int) -> float:
    """Epsilon (at `dp-delta`) after `rounds` rounds with this run's noise and sampling rate."""
    if not s.dp:
        return math.inf
    q = min(sampled_per_round(s, num_nodes) / max(num_nodes, 1), 1.0)
    return epsilon(rounds=rounds, q=q, noise_multiplier=s.noise_multiplier, delta=s.dp_delta)
