"""The DDQN agent of Bansal & Ouda 2024 (torch): MLP 32-16-2, ReLU, softmax output.

Kept as in the paper: softmax on the Q head (so "Q-values" lie in [0, 1]), Adam, Huber
loss, gradient clamping, a replay memory, epsilon-greedy exploration with exponential decay,
and a target network the trainer syncs every few episodes. One deliberate change, switchable
with ``double: false``: the target uses Double-DQN (the policy net picks the next action,
the target net values it), which is what "DDQN" names; the authors' code took the target
net's own maximum (plain DQN with a target network).

The authentication score is the softmax margin ``q[accept] - q[reject]`` (higher = more
genuine), so EER is computed on the agent's own confidence, not on its 0/1 actions.
"""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from continuous.env import ACCEPT, REJECT
from continuous.hyperparams import AgentConfig

if TYPE_CHECKING:
    from fusion.policy import ModalityEvidence


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block on one intra-op thread, then restore the caller's setting.

    The net is tiny, so thread hand-offs cost more than the maths: on a busy 2-core machine,
    training on 2 threads was 3-10x slower, with identical weights. Scoped so that creating
    or training an agent never changes the thread count of the rest of the process.
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class QNetwork(nn.Module):
    """MLP with ReLU hidden layers and a softmax over the two actions."""

    def __init__(self, n_features: int, hidden: tuple[int, ...] = (32, 16), n_actions: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = n_features
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers += [nn.Linear(d, n_actions), nn.Softmax(dim=-1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ReplayMemory:
    """Fixed-size ring buffer of transitions as numpy arrays (fast uniform sampling)."""

    def __init__(self, capacity: int, n_features: int) -> None:
        self.capacity = capacity
        self.s = np.zeros((capacity, n_features), np.float32)
        self.a = np.zeros(capacity, np.int64)
        self.r = np.zeros(capacity, np.float32)
        self.s2 = np.zeros((capacity, n_features), np.float32)
        self.done = np.zeros(capacity, np.float32)
        self.n = 0
        self._i = 0

    def push(self, s: np.ndarray, a: int, r: float, s2: np.ndarray, done: bool) -> None:
        i = self._i
        self.s[i], self.a[i], self.r[i], self.s2[i], self.done[i] = s, a, r, s2, float(done)
        self._i = (i + 1) % self.capacity
        self.n = min(self.n + 1, self.capacity)

    def sample(self, k: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        idx = rng.choice(self.n, size=k, replace=False)
        return self.s[idx], self.a[idx], self.r[idx], self.s2[idx], self.done[idx]

    def __len__(self) -> int:
        return self.n


class DDQNAgent:
    """Per-user DDQN agent; `act` for the environment loop, `margin` for scoring windows."""

    def __init__(self, n_features: int, config: AgentConfig | None = None, *, seed: int = 0) -> None:
        if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)) or n_features < 1:
            raise ValueError(f"n_features: must be an integer >= 1, got {n_features!r}")
        self.config = cfg = config or AgentConfig()
        self.n_features = n_features = int(n_features)
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.policy = QNetwork(n_features, cfg.hidden)
        self.target = QNetwork(n_features, cfg.hidden)
        self.target.load_state_dict(self.policy.state_dict())
        self.target.eval()
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)
        self.memory = ReplayMemory(cfg.replay_capacity, n_features)
        self.loss_fn = nn.SmoothL1Loss()
        self.steps_done = 0

    @property
    def epsilon(self) -> float:
        c = self.config
        return c.eps_end + (c.eps_start - c.eps_end) * math.exp(-self.steps_done / c.eps_decay)

    def _observations(self, obs: np.ndarray, *, single: bool = False) -> np.ndarray:
        """`obs` as a float32 (n, d) array; a wrong shape is a ValueError, not a torch error.

        With `single`, only one observation (d,) is taken: a batch there would silently be
        read as its first row. NaN or inf is refused too: it gave a NaN margin (read as
        REJECT), NaN evidence, and one such transition in the replay memory made every
        weight NaN for good.
        """
        x = np.asarray(obs, dtype=np.float32)
        d = self.n_features
        ok = x.shape == (d,) if single else (x.ndim in (1, 2) and x.shape[-1] == d)
        if not ok:
            want = f"({d},)" if single else f"({d},) or (n, {d})"
            raise ValueError(f"observation: expected shape {want}, got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("observation: has non-finite values (NaN or inf)")
        return np.atleast_2d(x)

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """(n, 2) softmax Q-values of observations (n, d) or (d,)."""
        x = torch.as_tensor(self._observations(obs))
        with one_torch_thread(), torch.no_grad():
            return self.policy(x).numpy()

    def margin(self, obs: np.ndarray) -> np.ndarray:
        """Authentication score per observation: q[accept] - q[reject], in [-1, 1]."""
        q = self.q_values(obs)
        return (q[:, ACCEPT] - q[:, REJECT]).astype(float)

    def evidence(self, obs: np.ndarray, *, quality: float = 1.0) -> ModalityEvidence:
        """The agent's view of one window (shape (d,)) as fusion evidence for `SessionRiskTracker`.

        One window only: the tracker takes one evidence item per window, so a batch raises
        ValueError instead of being read as its first row. `llr` is log(q[accept] / q[reject])
        of the softmax head: NOT a calibrated likelihood ratio (the agent is trained for
        reward, not calibration), so weight it with care.
        """
        from fusion.policy import ModalityEvidence

        q = np.clip(self.q_values(self._observations(obs, single=True))[0], 1e-6, 1.0)
        m = float(q[ACCEPT] - q[REJECT])
        return ModalityEvidence("keystroke", m, quality=quality, scorer="ddqn-bansal-ouda-2024",
                                llr=float(np.log(q[ACCEPT]) - np.log(q[REJECT])))

    def act(self, obs: np.ndarray, *, explore: bool) -> tuple[int, float]:
        """(action, score): epsilon-greedy when exploring.

        The score of a random action is its 0/1 confidence, as the authors recorded it (it
        enters their per-episode EER). `obs` is one observation (d,).
        """
        obs = self._observations(obs, single=True)[0]
        if explore and self.rng.random() < self.epsilon:
            action = int(self.rng.integers(2))
            self.steps_done += 1
            return action, 1.0 if action == ACCEPT else -1.0
        if explore and self.config.eps_decay_counts == "all_steps":
            self.steps_done += 1
        m = float(self.margin(obs)[0])
        return (ACCEPT if m >= 0 else REJECT), m

    def remember(self, s: np.ndarray, a: int, r: float, s2: np.ndarray, done: bool) -> None:
        """Store one transition; a malformed one is a ValueError before it can reach a batch."""
        s, s2 = self._observations(s, single=True)[0], self._observations(s2, single=True)[0]
        if a not in (ACCEPT, REJECT) or isinstance(a, (bool, np.bool_)):
            raise ValueError(f"action: must be {ACCEPT} or {REJECT}, got {a!r}")
        if isinstance(r, (bool, np.bool_)) or not isinstance(r, (int, float, np.number)) or not math.isfinite(r):
            raise ValueError(f"reward: must be a finite number, got {r!r}")
        self.memory.push(s, a, r, s2, done)

    def optimize(self) -> float | None:
        """One gradient step on a replay batch; None until the memory holds a batch."""
        if len(self.memory) < self.config.batch_size:
            return None
        with one_torch_thread():
            return self._optimize()

    def _optimize(self) -> float:
        c = self.config
        s, a, r, s2, done = (torch.as_tensor(v) for v in self.memory.sample(c.batch_size, self.rng))
        q = self.policy(s).gather(1, a.view(-1, 1)).squeeze(1)
        with torch.no_grad():
            q_next_target = self.target(s2)
            if c.double:
                a_next = self.policy(s2).argmax(dim=1, keepdim=True)
                v_next = q_next_target.gather(1, a_next).squeeze(1)
            else:
                v_next = q_next_target.max(dim=1).values
            y = r + c.gamma * v_next * (1.0 - done)
        loss = self.loss_fn(q, y)
        self.optimizer.zero_grad()
        loss.backward()
        for p in self.policy.parameters():
            if p.grad is not None:
                p.grad.data.clamp_(-c.grad_clip, c.grad_clip)
        self.optimizer.step()
        return float(loss.item())

    def sync_target(self) -> None:
        self.target.load_state_dict(self.policy.state_dict())

    def snapshot(self) -> dict[str, Any]:
        """A copy of the policy weights (for picking an episode's model)."""
        return copy.deepcopy(self.policy.state_dict())

    def restore(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state)

    def save(self, path: str) -> None:
        torch.save({"n_features": self.n_features, "hidden": list(self.config.hidden),
                    "policy": self.policy.state_dict()}, path)

    def load_weights(self, path: str) -> None:
        """Load weights written by `save`; anything else raises ValueError naming the file."""
        try:
            state = torch.load(path, weights_only=True)
        except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as exc:
            raise ValueError(f"{path}: not an agent weights file ({type(exc).__name__})") from exc
        if not isinstance(state, dict) or not {"n_features", "hidden", "policy"} <= set(state):
            raise ValueError(f"{path}: not an agent weights file (needs n_features, hidden and policy)")
        if state["n_features"] != self.n_features or tuple(state["hidden"]) != self.config.hidden:
            raise ValueError(f"{path}: network shape {state['n_features']}/{state['hidden']} does not match this agent")
        if isinstance(state["policy"], Mapping):
            # NaN/inf weights would load "fine" and give NaN margins: act always rejects
            for name, value in state["policy"].items():
                if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
                    raise ValueError(f"{path}: parameter {name} has non-finite values (NaN or inf)")
        try:
            self.policy.load_state_dict(state["policy"])
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: policy weights do not fit this network ({exc})") from exc
        self.sync_target()
