"""Client-side DP with fixed clipping around any mean-based recipe (DP-FedAvg).

Devices clip their update to `clipping-norm` (``fixedclipping_mod``, applied only when the
train config carries a clipping norm). The server uses the *fixed-denominator* estimator of
DP-FedAvg (McMahan et al. 2018): the new model is ``g + (sum of the clipped updates) / m0``,
where ``m0`` is the per-round sample size fixed before training (`sampled_per_round` of the
devices settled in the scaling round), not the number of replies that came back
(`FixedDenominator`). Adding or removing one device therefore moves the aggregate by at most
``C / m0``, and the Gaussian noise of std ``z * C / m0`` that Flower's
`DifferentialPrivacyClientSideFixedClipping` adds (it divides by its configured
``num_sampled_clients``, which is ``m0``) makes each round a Gaussian mechanism with noise
multiplier ``z``. (Flower's FedAvg divides by the replies received: with it, one device could
move the average by up to ``2 C / m``, i.e. the real noise multiplier was only ``z / 2``.)
Under DP the per-round training loss of the devices is not aggregated or released.
The epsilon spent is computed by `federated.privacy` (see there for the assumptions).
With ``dp-noise-seed`` >= 0 (benchmarks only) the noise comes from a seeded generator, so a
bench run is reproducible; a known seed lets anyone remove the noise, so never in deployment.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from federated.config import RunSettings
from federated.privacy import epsilon
from federated.records import RecordError, array_record
from federated.strategies.delegating import KeepsGlobal

log = logging.getLogger(__name__)


class DPError(ValueError):
    """DP asked for with a strategy whose aggregate has no bounded sensitivity."""


def wrap_dp(strategy: Any, s: RunSettings, num_nodes: int, *, robust: bool) -> Any:
    """Wrap `strategy` with client-side fixed-clipping DP for `num_nodes` available devices."""
    if robust:
        raise DPError(f"strategy: DP noise is calibrated to a mean; use fedavg or fedprox, not {s.strategy}")
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

    m0 = sampled_per_round(s, num_nodes)
    # noise std z * C / m0 (Flower's `compute_stdv` divides by num_sampled_clients) on an
    # aggregate whose denominator is the same fixed m0: sensitivity C / m0, multiplier z
    inner = FixedDenominator(strategy, m0)
    kwargs: dict[str, Any] = {"noise_multiplier": s.noise_multiplier, "clipping_norm": s.clipping_norm,
                              "num_sampled_clients": m0}
    if s.dp_noise_seed < 0:
        return DifferentialPrivacyClientSideFixedClipping(inner, **kwargs)
    return _seeded(DifferentialPrivacyClientSideFixedClipping)(inner, rng_seed=s.dp_noise_seed, **kwargs)


class FixedDenominator(KeepsGlobal):
    """DP-FedAvg's fixed-denominator estimator: ``g + sum_i (w_i - g) / m0`` over the replies.

    `g` is the global model sent this round, ``w_i - g`` a device's (client-side clipped)
    update and `m0` the per-round sample size fixed before training. Unlike a mean over the
    replies received, one device more or less changes the result by at most ``C / m0``
    (add/remove-one-device adjacency), whatever the number of replies. With ``m0`` replies it
    equals the plain average. Device metrics (the training loss) are not aggregated: nothing
    computed from the devices' data leaves the round except the noised model.
    """

    def __init__(self, strategy: Strategy, m0: int) -> None:
        if m0 < 1:
            raise ValueError(f"m0: the fixed number of devices per round must be >= 1, got {m0}")
        super().__init__(strategy)
        self.m0 = m0

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        good = [r for r in replies if not r.has_error()]
        if not good or self.current is None:
            return None, None
        g = self.current
        total = {k: np.zeros(v.shape, np.float64) for k, v in g.items()}
        used = 0
        for r in good:
            try:
                rec = array_record(r.content, "arrays")
                ws = {k: np.asarray(rec[k].numpy(), np.float64) for k in g}
            except (RecordError, KeyError) as exc:
                log.warning("round %s: a device's reply has no usable model (%s); left out", server_round, exc)
                continue
            if any(ws[k].shape != w0.shape for k, w0 in g.items()):
                log.warning("round %s: a device's model has the wrong shapes; left out", server_round)
                continue
            for k, w0 in g.items():  # leaving a reply out is removing one device: still <= C / m0
                total[k] += ws[k] - w0
            used += 1
        if used == 0:
            return None, None
        out = {k: Array((g[k].astype(np.float64) + total[k] / self.m0).astype(np.float32)) for k in g}
        return ArrayRecord(out), MetricRecord({})


def _seeded(base: type) -> type:
    """`base` (a Flower fixed-clipping DP strategy) drawing its Gaussian noise from a seeded generator.

    Flower draws from numpy's global generator; a reproducible benchmark needs its own. The
    noise is the same distribution (std ``z * C / m``, `compute_stdv`), only its source differs.
    """
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
