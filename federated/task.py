"""The federated model and its work: embedding network, fixed prototypes, train, test, export.

Why this design (see docs/federated.md): a phone holds only its owner's windows, so a
contrastive or softmax loss has no negatives on the device. We train a *cosine-softmax
classifier with a fixed, public classifier matrix*: `K` spread-out unit prototypes generated
from a seed (never learned, never sent). The SuperLink gives each device a slot (a prototype
index); the device pulls its windows' embeddings towards its own prototype and away from
every other prototype. Because the prototypes are public and fixed, every device computes
the *full* softmax locally, and the federated objective is exactly the sum of the per-device
terms of the central objective (the same model trained centrally uses the same loss with one
slot per training subject). Nothing about other people is needed on the device, and the
server never sees a template: only model weights (optionally clipped, noised and securely
aggregated).

The exported scorer (`federated.scorer.EmbeddingScorer`) is numpy-only: enrol = mean
embedding, compare = cosine similarity, as in the Scorer contract.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

EMBED_DIM = 32
HIDDEN = 64
NUM_SLOTS = 128
SCALE = 16.0


def round_seed(seed: int, server_round: int, slot: int) -> int:
    """The seed of one device's local training in one round: the run's seed, the round and the device's slot.

    Both apps (Message API and SecAgg+) give a device the same batches for the same run, round and slot.
    """
    return seed * 100003 + server_round * 1009 + slot

@dataclass(frozen=True)
class TrainConfig:
    """Local training hyper-parameters (the same for central and federated training)."""

    epochs: int = 1
    lr: float = 0.05
    batch_size: int = 16
    proximal_mu: float = 0.0
    seed: int = 0
    momentum: float = 0.0


@lru_cache(maxsize=8)
def prototypes(k: int = NUM_SLOTS, dim: int = EMBED_DIM, seed: int = 0, steps: int = 300) -> np.ndarray:
    """`k` spread-out unit vectors in `dim` dimensions, the same on every device for a seed.

    Random Gaussian directions pushed apart by gradient steps on a soft maximum of their
    pairwise cosines (Tammes-like), so prototypes of different people are far apart.
    """
    rng = np.random.default_rng(seed)
    P = rng.standard_normal((k, dim))
    P /= np.linalg.norm(P, axis=1, keepdims=True)
    t = 8.0
    for _ in range(steps):
        G = P @ P.T
        np.fill_diagonal(G, -np.inf)
        W = np.exp(t * (G - G.max()))
        grad = W @ P
        P = P - 0.05 * grad / np.abs(grad).max()
        P /= np.linalg.norm(P, axis=1, keepdims=True)
    P = P.astype(np.float32)
    P.setflags(write=False)
    return P


# ----------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class Normaliser:
    """Per-feature standardisation learned from the population (sums from devices)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_sums(cls, n: float, s: np.ndarray, ss: np.ndarray) -> Normaliser:
        if n <= 1:
            raise ValueError("num-examples: need more than one window to standardise features")
        mean = s / n
        var = np.maximum(ss / n - mean**2, 0.0)
        return cls(mean.astype(np.float32), np.maximum(np.sqrt(var), 1e-3).astype(np.float32))

    @classmethod
    def fit(cls, X: np.ndarray) -> Normaliser:
        X = np.asarray(X, np.float64)
        return cls.from_sums(float(X.shape[0]), X.sum(0), (X**2).sum(0))

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return ((np.asarray(X, np.float32) - self.mean) / self.std).astype(np.float32)


def feature_sums(X: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(n, sum, sum of squares) of one device's windows: all the server learns for scaling."""
    X = np.asarray(X, np.float64)
    return int(X.shape[0]), X.sum(0), (X**2).sum(0)


# ----------------------------------------------------------------------------- model


class EmbeddingNet:
    """Two-layer MLP whose output is L2-normalised (the embedding), in numpy.

    numpy, not torch: the model is tiny, and every Flower process (SuperNode ClientApps,
    Ray actors, the ServerApp) would otherwise import torch just to start (seconds each on a
    shared 2-core machine). Initialisation follows torch's `nn.Linear` default
    (uniform in +-1/sqrt(fan_in)); parameter names match a torch state dict.
    """

    def __init__(self, in_dim: int, hidden: int = HIDDEN, embed_dim: int = EMBED_DIM, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        a, b = 1 / np.sqrt(in_dim), 1 / np.sqrt(hidden)
        self.params: OrderedDict[str, np.ndarray] = OrderedDict([
            ("fc1.weight", rng.uniform(-a, a, (hidden, in_dim))), ("fc1.bias", rng.uniform(-a, a, hidden)),
            ("fc2.weight", rng.uniform(-b, b, (embed_dim, hidden))), ("fc2.bias", rng.uniform(-b, b, embed_dim)),
        ])

    def forward(self, X: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        p = self.params
        pre = X @ p["fc1.weight"].T + p["fc1.bias"]
        H = np.maximum(pre, 0.0)
        E = H @ p["fc2.weight"].T + p["fc2.bias"]
        n = np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
        U = E / n
        return U, {"X": X, "pre": pre, "H": H, "n": n, "U": U}

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return self.forward(np.asarray(X, np.float64))[0]

    def backward(self, dU: np.ndarray, c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Gradients of the parameters given d(loss)/d(embedding)."""
        U = c["U"]
        dE = (dU - U * np.sum(dU * U, axis=1, keepdims=True)) / c["n"]
        dH = dE @ self.params["fc2.weight"]
        dH[c["pre"] <= 0] = 0.0
        return {"fc1.weight": dH.T @ c["X"], "fc1.bias": dH.sum(0), "fc2.weight": dE.T @ c["H"], "fc2.bias": dE.sum(0)}


def make_net(in_dim: int, hidden: int = HIDDEN, embed_dim: int = EMBED_DIM, seed: int = 0) -> EmbeddingNet:
    """A fresh embedding network (seeded)."""
    return EmbeddingNet(in_dim, hidden, embed_dim, seed)


def get_weights(net: EmbeddingNet) -> OrderedDict[str, np.ndarray]:
    return OrderedDict((k, v.astype(np.float32)) for k, v in net.params.items())


def set_weights(net: EmbeddingNet, weights: dict[str, np.ndarray]) -> None:
    missing = [k for k in net.params if k not in weights]
    if missing:
        raise ValueError(f"weights: missing {missing}")
    for k, v in net.params.items():
        w = np.asarray(weights[k], np.float64)
        if w.shape != v.shape:
            raise ValueError(f"weights: {k} has shape {w.shape}, the model needs {v.shape}")
        net.params[k] = w.copy()


def weights_nbytes(weights: dict[str, np.ndarray]) -> int:
    """Bytes of one model update on the wire (float32 payload, without framing)."""
    return int(sum(np.asarray(v, np.float32).nbytes for v in weights.values()))


def _softmax_ce(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and its gradient w.r.t. the logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    rows = np.arange(len(y))
    g = np.exp(logp)
    g[rows, y] -= 1.0
    return float(-logp[rows, y].mean()), g / len(y)


def train(net: EmbeddingNet, X: np.ndarray, slots: np.ndarray, protos: np.ndarray, cfg: TrainConfig,
          global_weights: dict[str, np.ndarray] | None = None) -> float:
    """Local SGD on the fixed-prototype cosine-softmax loss; returns the mean loss.

    `X` is already standardised; `slots[i]` is the prototype of window i (one value on a
    device). With `proximal_mu > 0` the FedProx term mu/2 ||w - w_global||^2 is added.
    """
    rng = np.random.default_rng(cfg.seed)
    X = np.asarray(X, np.float64)
    y = np.asarray(slots, np.int64)
    P = np.asarray(protos, np.float64)
    anchors = None
    if cfg.proximal_mu > 0 and global_weights is not None:
        anchors = {k: np.asarray(global_weights[k], np.float64) for k in net.params}
    velocity = {k: np.zeros_like(v) for k, v in net.params.items()}
    total, count = 0.0, 0
    for _ in range(cfg.epochs):
        perm = rng.permutation(X.shape[0])
        for a in range(0, X.shape[0], cfg.batch_size):
            idx = perm[a:a + cfg.batch_size]
            U, cache = net.forward(X[idx])
            loss, dlogits = _softmax_ce(SCALE * U @ P.T, y[idx])
            grads = net.backward(SCALE * dlogits @ P, cache)
            if anchors is not None:
                loss += cfg.proximal_mu / 2 * sum(float(((net.params[k] - w0) ** 2).sum()) for k, w0 in anchors.items())
                for k, w0 in anchors.items():
                    grads[k] = grads[k] + cfg.proximal_mu * (net.params[k] - w0)
            for k, g in grads.items():
                velocity[k] = cfg.momentum * velocity[k] + g
                net.params[k] = net.params[k] - cfg.lr * velocity[k]
            total += loss * len(idx)
            count += len(idx)
    return total / max(count, 1)


def test(net: EmbeddingNet, X: np.ndarray, slot: int, protos: np.ndarray) -> dict[str, float]:
    """On-device check: loss and how often the own prototype is the nearest one."""
    U = net(X)
    logits = SCALE * U @ np.asarray(protos, np.float64).T
    y = np.full(U.shape[0], int(slot))
    loss, _ = _softmax_ce(logits, y)
    return {"loss": loss, "accuracy": float((logits.argmax(1) == y).mean())}


def train_central(windows: dict[int, np.ndarray], *, epochs: int, cfg: TrainConfig, num_slots: int = NUM_SLOTS,
                  hidden: int = HIDDEN, order: Sequence[int] | None = None) -> tuple[dict[str, np.ndarray], Normaliser]:
    """The same model and loss trained on pooled windows (one slot per training subject).

    `order[i]` is the subject on slot i (default: sorted ids). Given the federated run's slot
    order (`federated.features.device_order`) and seed, central and federated training start
    from the same weights with every person on the same prototype: a paired comparison.
    """
    subs = list(order) if order is not None else sorted(windows)
    if sorted(subs) != sorted(windows):
        raise ValueError("order: must list every training subject once")
    if len(subs) > num_slots:
        raise ValueError(f"num-slots: {len(subs)} training subjects need at least as many slots, got {num_slots}")
    X = np.vstack([windows[s] for s in subs])
    y = np.concatenate([np.full(len(windows[s]), i) for i, s in enumerate(subs)])
    norm = Normaliser.fit(X)
    net = make_net(X.shape[1], hidden=hidden, seed=cfg.seed)
    protos = prototypes(num_slots)
    for e in range(epochs):
        train(net, norm(X), y, protos, TrainConfig(1, cfg.lr, cfg.batch_size, 0.0, cfg.seed + e, cfg.momentum))
    return get_weights(net), norm


# ----------------------------------------------------------------------------- device data


def device_file(node_config: dict, feature_dir: str = "") -> str:
    """The feature file of this device.

    Node config ``data`` (a SuperNode started with ``--node-config 'data="..."'``), else the simulation's partition in `feature_dir`.
    """
    from federated.features import DeviceDataError

    if "data" in node_config and str(node_config["data"]):
        return str(node_config["data"])
    if "partition-id" in node_config and feature_dir:
        files = sorted(Path(feature_dir).glob("device-*.npz"))
        pid = int(node_config["partition-id"])
        if not 0 <= pid < len(files):
            # no local path in the message: it becomes the ClientApp's error reply to the server
            raise DeviceDataError(f"partition-id: {pid} but {len(files)} device files in the feature folder")
        return str(files[pid])
    raise DeviceDataError("data: this SuperNode has no device data (start it with --node-config 'data=\"FILE.npz\"')")


def device_key(node_config: dict) -> str:
    """A stable, opaque key of this device, by which the server orders devices to hand out slots.

    Node config ``device-key`` if the operator set one; else the simulation's partition id
    (zero-padded, so devices sort as their files do); else a keyed hash (HMAC-SHA-256) under a
    random secret the device keeps next to its data file (`device_secret_path`). Data paths are
    guessable (``device-7.npz``, the app's folder), so a hash of the path alone reversed to its
    person; without the device's secret this key says nothing about the path, nor does it
    link two devices. The same device gets the same key every run while its secret stays, so
    slot assignment, and with it the whole run, does not depend on the random node ids.
    "" (slots by node id) when there is no data file or the secret cannot be kept.
    """
    if str(node_config.get("device-key", "")):
        return "key-" + hashlib.sha256(str(node_config["device-key"]).encode()).hexdigest()[:32]
    if "partition-id" in node_config:
        return f"partition-{int(node_config['partition-id']):09d}"
    data = Path(str(node_config.get("data", "")))
    if not str(node_config.get("data", "")) or not data.is_file():
        return ""
    secret = _device_secret(data)
    return "" if secret is None else "data-" + hmac.new(secret, b"cadence-device-key", hashlib.sha256).hexdigest()[:32]


def device_secret_path(data: str | os.PathLike[str]) -> Path:
    """Where a device keeps the random secret of its key: next to its data file (``<file>.secret``)."""
    p = Path(data)
    return p.with_name(p.name + ".secret")


def _device_secret(data: Path) -> bytes | None:
    """The device's secret, made on first use (32 random bytes, owner-only); None if it cannot be kept."""
    path = device_secret_path(data)
    try:
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".secret-new")  # mode 0600
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32))
                os.link(tmp, path)  # all or nothing, and never over a secret another process just made
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        secret = bytes.fromhex(path.read_text().strip())
        if len(secret) < 16:
            raise ValueError(f"{len(secret)} bytes, damaged")
    except (OSError, ValueError) as exc:  # the device's own log: its path may be named here
        log.warning("device key: cannot keep a secret at %s (%s); slots follow node ids (set node config "
                    "device-key)", path, exc)
        return None
    return secret


def load_device_windows(node_config: dict, modality: str, feature_dir: str = "") -> np.ndarray:
    """Own feature windows (n, d) of this device, checked against the run's modality."""
    from federated.features import read_device_file

    return read_device_file(device_file(node_config, feature_dir), modality)


def to_numpy(arrays) -> OrderedDict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Flower ArrayRecord -> ordered name -> float32 array."""
    return OrderedDict((k, np.asarray(v.numpy(), np.float32)) for k, v in arrays.items())


def initial_weights(in_dim: int, hidden: int, seed: int) -> OrderedDict[str, np.ndarray]:
    return get_weights(make_net(in_dim, hidden=hidden, seed=seed))
