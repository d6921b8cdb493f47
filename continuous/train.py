"""Episode loop and training of the DDQN agent, with the metrics of each episode.

Conventions (everywhere in `continuous/`): FAR = impostor windows accepted / impostor
windows; FRR = owner windows rejected / owner windows (the authors' metric function swaps
the two). EER is computed on the agent's score (softmax margin), higher = more genuine.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from continuous.agent import DDQNAgent
from continuous.env import ACCEPT, KeystrokeAuthEnv
from continuous.hyperparams import TrainConfig
from evaluation.metrics import eer


@dataclass(frozen=True)
class WindowRates:
    """Decision and score metrics of a set of windows."""

    accuracy: float
    far: float
    frr: float
    eer: float
    n_genuine: int
    n_impostor: int

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def window_rates(*, impostor: np.ndarray, accepted: np.ndarray, score: np.ndarray,
                 corrupt_probability: float | None = None) -> WindowRates:
    """FAR/FRR/accuracy of accept decisions and EER of scores (NaN where undefined).

    With `corrupt_probability` given, accuracy is the expected accuracy at that impostor
    share, ``p (1 - FAR) + (1 - p) (1 - FRR)``, the quantity an episode's accuracy
    estimates; otherwise the plain fraction of right decisions.
    """
    imp = np.asarray(impostor, bool)
    acc = np.asarray(accepted, bool)
    s = np.asarray(score, float)
    if not imp.ndim == acc.ndim == s.ndim == 1 or not imp.size == acc.size == s.size:
        raise ValueError(f"impostor, accepted and score must be 1-D arrays of one length, got shapes "
                         f"{imp.shape}, {acc.shape} and {s.shape}")
    ni, ng = int(imp.sum()), int((~imp).sum())
    far = float(np.mean(acc[imp])) if ni else float("nan")
    frr = float(np.mean(~acc[~imp])) if ng else float("nan")
    e = eer(genuine=s[~imp], impostor=s[imp]) if ni and ng else float("nan")
    if corrupt_probability is not None and ni and ng:
        a = corrupt_probability * (1 - far) + (1 - corrupt_probability) * (1 - frr)
    else:
        a = float(np.mean(acc != imp)) if imp.size else float("nan")
    return WindowRates(float(a), far, frr, float(e), ng, ni)


@dataclass
class Episode:
    """What one episode saw and did."""

    impostor: list[bool] = field(default_factory=list)
    source: list[int] = field(default_factory=list)
    accepted: list[bool] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    reward: float = 0.0

    def rates(self) -> WindowRates:
        r = window_rates(impostor=np.array(self.impostor), accepted=np.array(self.accepted), score=np.array(self.score))
        return r


def run_episode(env: KeystrokeAuthEnv, agent: DDQNAgent, *, learn: bool, seed: int | None = None) -> Episode:
    """Play one episode; with `learn`, explore, store transitions and optimise every step."""
    ep = Episode()
    obs, info = env.reset(seed=seed)
    while True:
        action, score = agent.act(obs, explore=learn)
        nxt, reward, terminated, truncated, step_info = env.step(action)
        done = terminated or truncated
        if learn:
            agent.remember(obs, action, reward, nxt, done)
            agent.optimize()
        ep.impostor.append(bool(step_info["impostor"]))
        ep.source.append(int(step_info["source"]))
        ep.accepted.append(action == ACCEPT)
        ep.score.append(float(score))
        ep.reward += reward
        if done:
            return ep
        obs = nxt


@dataclass
class TrainResult:
    """Per-episode training metrics and which episode's model the agent holds at the end."""

    episodes: list[WindowRates]
    chosen_episode: int  # 1-based
    selection: str  # "last" or "best_train_eer"

    def to_dict(self) -> dict[str, Any]:
        return {"chosen_episode": self.chosen_episode, "selection": self.selection,
                "episodes": [e.to_dict() for e in self.episodes]}


def train_agent(env: KeystrokeAuthEnv, agent: DDQNAgent, config: TrainConfig | None = None, *,
                seed: int = 0, select_best: bool = False) -> TrainResult:
    """Train for `n_episodes`, syncing the target net every `target_update_episodes`.

    ``select_best=True`` reproduces the authors' runner: keep the weights of the episode with
    the lowest EER measured on that same training episode (ties: the later one). Otherwise the
    agent keeps its final weights (no selection on any data).
    """
    cfg = config or TrainConfig()
    history: list[WindowRates] = []
    best_eer, best_ep, best_state = math.inf, cfg.n_episodes, None
    for i in range(1, cfg.n_episodes + 1):
        ep = run_episode(env, agent, learn=True, seed=seed * 100_003 + i)
        rates = ep.rates()
        history.append(rates)
        if select_best and math.isfinite(rates.eer) and rates.eer <= best_eer:
            best_eer, best_ep, best_state = rates.eer, i, agent.snapshot()
        if i % cfg.target_update_episodes == 0:
            agent.sync_target()
    if select_best and best_state is not None:
        agent.restore(best_state)
        return TrainResult(history, best_ep, "best_train_eer")
    return TrainResult(history, cfg.n_episodes, "last")
