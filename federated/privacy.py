"""Privacy accounting for DP-FedAvg: Renyi DP of the (subsampled) Gaussian mechanism.

Client-level DP with fixed clipping (McMahan et al. 2018, "Learning differentially private
recurrent language models"): each device clips its model update to L2 norm `C`
(``fixedclipping_mod``); the server adds the sum of the clipped updates divided by a FIXED
number of devices ``m0`` (the per-round sample size settled before training, not the number
of replies: `federated.strategies.dp.FixedDenominator`) to the global model and adds Gaussian
noise of standard deviation ``z * C / m0`` (`DifferentialPrivacyClientSideFixedClipping`).
Adjacency is add/remove one device (all of one person's data): that changes the aggregate by
at most ``C / m0``, so one round is a Gaussian mechanism with noise multiplier `z`. (A mean
over the replies received would have sensitivity ``2 C / m``, i.e. multiplier ``z / 2``.)
Only the model updates are covered; see docs/federated.md for what is released outside.

RDP of one round at integer order a (Mironov, Talwar & Zhang 2019, Poisson sampling rate q)::

    rdp(a) = log( sum_k C(a,k) (1-q)^(a-k) q^k exp((k^2 - k) / (2 z^2)) ) / (a - 1)

which is ``a / (2 z^2)`` at q = 1. Rounds compose by adding RDP; the (eps, delta)
conversion uses the tighter bound of Balle et al. 2020 (Canonne, Kamath & Steinke 2020)::

    eps = min_a  rdp(a) + log((a-1)/a) - (log(delta) + log(a)) / (a - 1)

numpy/scipy only (Flower's own accountant needs Google's dp-accounting, not installed).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln, logsumexp

ORDERS: tuple[int, ...] = tuple(range(2, 257))


def rdp_sampled_gaussian(q: float, noise_multiplier: float, orders: tuple[int, ...] = ORDERS) -> np.ndarray:
    """RDP of one round at each integer order (q = sampling rate, z = noise multiplier)."""
    if not 0 < q <= 1:
        raise ValueError(f"q: sampling rate must be in (0, 1], got {q}")
    if noise_multiplier <= 0:
        raise ValueError(f"noise_multiplier: must be > 0, got {noise_multiplier}")
    try:
        z2 = noise_multiplier**2
    except OverflowError:  # noise so large (z > ~1e154) that one round spends nothing
        return np.zeros(len(orders))
    if not z2 > 0 or not math.isfinite(1.0 / z2):  # noise so small its square underflows: no privacy
        return np.full(len(orders), math.inf)
    out = np.empty(len(orders))
    for i, a in enumerate(orders):
        if q == 1.0:
            out[i] = a / (2 * z2)
            continue
        k = np.arange(a + 1)
        log_binom = gammaln(a + 1) - gammaln(k + 1) - gammaln(a - k + 1)
        terms = log_binom + (a - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * z2)
        out[i] = logsumexp(terms) / (a - 1)
    return out


def epsilon(*, rounds: int, q: float, noise_multiplier: float, delta: float,
            orders: tuple[int, ...] = ORDERS) -> float:
    """(eps, delta)-DP epsilon after `rounds` rounds; +inf without noise.

    >>> round(epsilon(rounds=1, q=1.0, noise_multiplier=1e6, delta=1e-5), 3)
    0.0
    """
    if rounds < 0:
        raise ValueError(f"rounds: must be >= 0, got {rounds}")
    if not 0 < delta < 1:
        raise ValueError(f"delta: must be in (0, 1), got {delta}")
    if rounds == 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    a = np.asarray(orders, float)
    with np.errstate(over="ignore", invalid="ignore"):
        rdp = rounds * rdp_sampled_gaussian(q, noise_multiplier, orders)
        eps = rdp + np.log((a - 1) / a) - (math.log(delta) + np.log(a)) / (a - 1)
    eps = np.where(np.isnan(eps), math.inf, eps)
    return float(max(np.min(eps), 0.0))


def noise_for_epsilon(target_epsilon: float, *, rounds: int, q: float, delta: float,
                      lo: float = 0.05, hi: float = 100.0) -> float:
    """Smallest noise multiplier (to 1e-3) whose epsilon after `rounds` is <= `target_epsilon`."""
    if target_epsilon <= 0:
        raise ValueError(f"target_epsilon: must be > 0, got {target_epsilon}")
    if epsilon(rounds=rounds, q=q, noise_multiplier=hi, delta=delta) > target_epsilon:
        raise ValueError(f"target_epsilon: {target_epsilon} is not reachable with noise <= {hi}")
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        if epsilon(rounds=rounds, q=q, noise_multiplier=mid, delta=delta) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi
