"""Gymnasium environment of Bansal & Ouda 2024: accept or reject windows of keystrokes.

An episode walks through the owner's key events in windows of `n_obs` events, hopping
`n_hop` events per step. Each observation is, with probability `corrupt_probability`,
replaced by a window of another person's events (one of `n_corrupting_users`, a random place
in their recording, with timing jitter). The agent answers ACCEPT (0) or REJECT (1); the
reward is 1 when right and 0 when wrong ("paper"), or, with ``reward="cost_sensitive"``,
`reward_correct` when right and minus the cost of the error when wrong (a false accept can
cost more than a false reject, as it does for a bank).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.error import ResetNeeded

from continuous.features import WindowFeaturizer, jitter_window, window_starts
from continuous.hyperparams import EnvConfig
from modalities.events import EventValidationError, KeySequence

ACCEPT = 0
REJECT = 1


def reward_for(cfg: EnvConfig, *, impostor: bool, action: int) -> float:
    """Reward of answering `action` to a window that is (or is not) an impostor's."""
    right = (action == REJECT) == impostor
    if right:
        return cfg.reward_correct
    if cfg.reward == "paper":
        return 0.0
    return -(cfg.cost_false_accept if impostor else cfg.cost_false_reject)


class KeystrokeAuthEnv(gym.Env[np.ndarray, int]):
    """One owner's keystroke stream with corrupting windows from other people.

    `owner` is the part of the owner's recording this environment serves (e.g. the training
    70%); `corrupting` maps subject id -> recording. `featurizer` must be fitted on owner
    data only; if None, one is fitted here on `owner`.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        owner: KeySequence,
        corrupting: Mapping[int, KeySequence],
        config: EnvConfig | None = None,
        *,
        featurizer: WindowFeaturizer | None = None,
        owner_id: int = 0,
    ) -> None:
        super().__init__()
        self.config = cfg = config or EnvConfig()
        if len(owner) < cfg.n_obs + cfg.n_hop:
            raise EventValidationError("owner", f"needs at least n_obs + n_hop = {cfg.n_obs + cfg.n_hop} keys, got {len(owner)}")
        if not corrupting:
            raise EventValidationError("corrupting", "needs at least one corrupting user")
        short = [s for s, q in corrupting.items() if len(q) < cfg.n_obs]
        if short:
            raise EventValidationError("corrupting", f"users {short} have fewer than {cfg.n_obs} keys")
        if owner_id in corrupting:
            raise EventValidationError("corrupting", f"the owner {owner_id} cannot corrupt their own stream")
        self.owner = owner
        self.owner_id = int(owner_id)
        self.corrupting = dict(corrupting)
        self._corrupt_ids = sorted(self.corrupting)
        if featurizer is None:
            featurizer = WindowFeaturizer(cfg.running_features, cfg.summary_features, cfg.n_obs, cfg.n_components)
            featurizer.fit(owner, cfg.pca_stride)
        elif featurizer.encoder_ is None:
            raise EventValidationError("featurizer", "is not fitted: fit it on the owner's training keys first")
        elif featurizer.n_obs != cfg.n_obs:
            # corrupting windows have n_obs keys: the first one drawn failed mid-episode, at random
            raise EventValidationError("featurizer", f"reads windows of {featurizer.n_obs} keys, the config "
                                                     f"n_obs = {cfg.n_obs}")
        self.featurizer = featurizer
        self.starts = window_starts(len(owner), cfg.n_obs, cfg.n_hop)
        self._owner_obs = featurizer.observations(owner, self.starts)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (featurizer.dim,), np.float32)
        self.action_space = gym.spaces.Discrete(2)  # type: ignore[assignment]
        self._t = 0
        self._impostor = False
        self._source = self.owner_id
        self._needs_reset = True  # Gymnasium contract: reset before the first step and after an episode ends

    @property
    def episode_length(self) -> int:
        return int(self.starts.size)

    def corrupt_window(self, rng: np.random.Generator) -> tuple[KeySequence, int]:
        """A jittered window from a random corrupting user: (window, subject id)."""
        cfg = self.config
        sid = self._corrupt_ids[int(rng.integers(len(self._corrupt_ids)))]
        seq = self.corrupting[sid]
        a = int(rng.integers(0, len(seq) - cfg.n_obs + 1))
        return jitter_window(seq[a:a + cfg.n_obs], rng, cfg.jitter_s, cfg.jitter_mode), sid

    def _observe(self) -> np.ndarray:
        if self.np_random.random() < self.config.corrupt_probability:
            window, self._source = self.corrupt_window(self.np_random)
            self._impostor = True
            return self.featurizer.observe(window)
        self._impostor, self._source = False, self.owner_id
        return self._owner_obs[self._t].copy()

    def _info(self) -> dict[str, Any]:
        return {"impostor": self._impostor, "source": self._source, "t": self._t}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        self._needs_reset = False
        obs = self._observe()
        return obs, self._info()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        # no int() first: it would read 0.5 as ACCEPT and "1" as REJECT
        if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)) or action not in (ACCEPT, REJECT):
            raise EventValidationError("action", f"must be {ACCEPT} (accept) or {REJECT} (reject), got {action!r}")
        if self._needs_reset:
            # without this, a step would score a window nobody observed (or one past the end)
            raise ResetNeeded("call reset() before step(): no episode started yet, or the last one ended")
        impostor, source = self._impostor, self._source
        reward = reward_for(self.config, impostor=impostor, action=int(action))
        info = {"impostor": impostor, "source": source, "t": self._t, "correct": (int(action) == REJECT) == impostor}
        self._t += 1
        truncated = self._t >= self.episode_length
        if truncated:
            self._needs_reset = True
            obs = np.zeros(self.featurizer.dim, np.float32)
        else:
            obs = self._observe()
            info["next_impostor"], info["next_source"] = self._impostor, self._source
        return obs, reward, False, truncated, info


def subjects_excluding(subjects: Sequence[int], exclude: int, k: int, rng: np.random.Generator) -> list[int]:
    """`k` subjects drawn without replacement from `subjects` minus `exclude` (all if fewer)."""
    pool = sorted(int(s) for s in subjects if int(s) != int(exclude))
    if not pool:
        raise EventValidationError("subjects", "no other subject to corrupt with")
    return sorted(int(s) for s in rng.choice(pool, size=min(k, len(pool)), replace=False))
