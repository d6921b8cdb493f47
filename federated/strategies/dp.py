"""Client-side DP with fixed clipping around any mean-based recipe (DP-FedAvg).

Devices clip their update to `clipping-norm` (``fixedclipping_mod``, applied only when the
train config carries a clipping norm); the server adds Gaussian noise ``z * C / m`` to the
average of the `m` sampled devices (Flower's `DifferentialPrivacyClientSideFixedClipping`).
The epsilon spent is computed by `federated.privacy` (see there for the assumptions).
With ``dp-noise-seed`` >= 0 (benchmarks only) the noise comes from a seeded generator, so a
bench run is reproducible; a known seed lets anyone remove the noise, so never in deployment.
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

    kwargs: dict[str, Any] = {"noise_multiplier": s.noise_multiplier, "clipping_norm": s.clipping_norm,
                              "num_sampled_clients": sampled_per_round(s, num_nodes)}
    if s.dp_noise_seed < 0:
        return DifferentialPrivacyClientSideFixedClipping(strategy, **kwargs)
    return _seeded(DifferentialPrivacyClientSideFixedClipping)(strategy, rng_seed=s.dp_noise_seed, **kwargs)


def _seeded(base: type) -> type:
    """`base` (a Flower fixed-clipping DP strategy) drawing its Gaussian noise from a seeded generator.

    Flower draws from numpy's global generator; a reproducible benchmark needs its own. The
    noise is the same distribution (std ``z * C / m``, `compute_stdv`), only its source differs.
    """
    import numpy as np
    from flwr.app import Array, ArrayRecord
    from flwr.supercore.differential_privacy import compute_stdv

    class SeededNoise(base):  # type: ignore[misc, valid-type]
        def __init__(self, strategy: Any, *, rng_seed: int, **kwargs: Any) -> None:
            super().__init__(strategy, **kwargs)
            self.rng = np.random.default_rng(rng_seed)

        def _add_noise_to_aggregated_arrays(self, aggregated_arrays: ArrayRecord) -> ArrayRecord:
            std = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
            return ArrayRecord({k: Array((v.numpy() + self.rng.normal(0.0, std, v.numpy().shape)).astype(v.numpy().dtype))
                                for k, v in aggregated_arrays.items()})

    SeededNoise.__name__ = SeededNoise.__qualname__ = f"Seeded{base.__name__}"
    return SeededNoise


def sampled_per_round(s: RunSettings, num_nodes: int) -> int:
    """How many devices FedAvg samples per round (as `FedAvg.configure_train` computes it)."""
    return max(int(num_nodes * s.fraction_train), s.min_nodes)


def epsilon_spent(s: RunSettings, num_nodes: int, rounds: int) -> float:
    """Epsilon (at `dp-delta`) after `rounds` rounds with this run's noise and sampling rate."""
    if not s.dp:
        return math.inf
    q = min(sampled_per_round(s, num_nodes) / max(num_nodes, 1), 1.0)
    return epsilon(rounds=rounds, q=q, noise_multiplier=s.noise_multiplier, delta=s.dp_delta)
