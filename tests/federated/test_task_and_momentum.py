"""The numpy model's gradients and the server-momentum wrapper, checked by hand."""

import numpy as np
from flwr.app import Array, ArrayRecord

from federated import task
from federated.strategies import ServerMomentum


def _loss(net: task.EmbeddingNet, X: np.ndarray, y: np.ndarray, P: np.ndarray) -> float:
    U, _ = net.forward(X)
    return task._softmax_ce(task.SCALE * U @ P.T, y)[0]


def test_backward_matches_finite_differences() -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(7, 10)), rng.integers(0, 5, 7)
    P = task.prototypes(8).astype(np.float64)
    net = task.make_net(10, hidden=6)
    U, cache = net.forward(X)
    _, dlogits = task._softmax_ce(task.SCALE * U @ P.T, y)
    grads = net.backward(task.SCALE * dlogits @ P, cache)
    for k, w in net.params.items():
        for flat in (0, w.size // 2, w.size - 1):
            i = np.unravel_index(flat, w.shape)
            old = w[i]
            w[i] = old + 1e-6
            up = _loss(net, X, y, P)
            w[i] = old - 1e-6
            down = _loss(net, X, y, P)
            w[i] = old
            assert abs((up - down) / 2e-6 - grads[k][i]) < 1e-5 * max(1.0, abs(grads[k][i])), (k, i)


def test_training_pulls_windows_to_their_own_prototype() -> None:
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(loc=m, size=(30, 8)) for m in (-1.0, 1.0)])
    y = np.repeat([3, 5], 30)
    net = task.make_net(8, hidden=16)
    P = task.prototypes(16)
    before = task.test(net, X[y == 3], 3, P)["loss"]
    task.train(net, X, y, P, task.TrainConfig(epochs=20, lr=0.1, seed=0))
    assert task.test(net, X[y == 3], 3, P)["loss"] < before
    assert task.test(net, X[y == 5], 5, P)["accuracy"] > 0.9


class _Fixed:
    """Inner strategy stub whose aggregate is whatever the test queues."""

    def __init__(self, outs: list[np.ndarray]) -> None:
        self.outs = outs

    def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        return []

    def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
        return ArrayRecord({"w": Array(self.outs.pop(0).astype(np.float32))}), None


def test_server_momentum_is_heavy_ball_on_the_aggregate() -> None:
    st = ServerMomentum(_Fixed([np.array([1.0, 0.0]), np.array([1.0, 1.0])]), momentum=0.5)  # type: ignore[arg-type]
    w0 = np.zeros(2)
    st.configure_train(1, ArrayRecord({"w": Array(w0.astype(np.float32))}), None, None)  # type: ignore[arg-type]
    w1 = st.aggregate_train(1, [])[0]["w"].numpy()
    assert np.allclose(w1, [1.0, 0.0])  # first step: plain FedAvg
    st.configure_train(2, ArrayRecord({"w": Array(w1)}), None, None)  # type: ignore[arg-type]
    w2 = st.aggregate_train(2, [])[0]["w"].numpy()
    # step (0, 1) plus half of the previous step (1, 0)
    assert np.allclose(w2, [1.5, 1.0])
