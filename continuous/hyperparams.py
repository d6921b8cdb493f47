"""Hyper-parameters of the continuous-authentication environment, DDQN agent and training.

Defaults live in ``continuous/config/ddqn_paper.yaml`` (Bansal & Ouda 2024 and their public
``config.json``); the dataclass defaults mirror them so code can run without the file. Every
value is checked when loaded and a bad one raises `ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAPER_CONFIG = Path(__file__).with_name("config") / "ddqn_paper.yaml"

RUNNING_FEATURES = ("key_category", "hold", "flight", "dd")
SUMMARY_FEATURES = ("duration", "space_count", "enter_count")
REWARDS = ("paper", "cost_sensitive")
JITTER_MODES = ("interval_offset", "per_event")
DECAY_COUNTS = ("explore_steps", "all_steps")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _check(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise ConfigError(name, message)


def _is_int(v: Any) -> bool:
    """A real integer: not a bool, not 1e4 (a float capacity later fails deep inside numpy)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _finite(v: Any, name: str) -> None:
    """Refuse bools, strings and NaN/inf up front: they pass range checks or fail far away."""
    _check(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), name,
           f"must be a finite number, got {v!r}")


@dataclass(frozen=True)
class EnvConfig:
    """Observation, corruption and reward of `KeystrokeAuthEnv`."""

    n_obs: int = 100
    n_hop: int = 50
    corrupt_probability: float = 0.5
    n_corrupting_users: int = 10
    jitter_s: float = 0.025
    jitter_mode: str = "interval_offset"
    n_components: int = 10
    pca_stride: int = 1
    running_features: tuple[str, ...] = RUNNING_FEATURES
    summary_features: tuple[str, ...] = SUMMARY_FEATURES
    reward: str = "paper"
    reward_correct: float = 1.0
    cost_false_accept: float = 5.0
    cost_false_reject: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "running_features", tuple(self.running_features))
        object.__setattr__(self, "summary_features", tuple(self.summary_features))
        for name in ("corrupt_probability", "jitter_s", "reward_correct", "cost_false_accept", "cost_false_reject"):
            _finite(getattr(self, name), f"env.{name}")
        for name in ("n_obs", "n_hop", "n_corrupting_users", "n_components", "pca_stride"):
            _check(_is_int(getattr(self, name)), f"env.{name}", f"must be an integer, got {getattr(self, name)!r}")
        _check(isinstance(self.n_obs, int) and self.n_obs >= 2, "env.n_obs", "must be an integer >= 2")
        _check(isinstance(self.n_hop, int) and 1 <= self.n_hop, "env.n_hop", "must be an integer >= 1")
        _check(0.0 <= self.corrupt_probability <= 1.0, "env.corrupt_probability", "must be in [0, 1]")
        _check(isinstance(self.n_corrupting_users, int) and self.n_corrupting_users >= 1,
               "env.n_corrupting_users", "must be an integer >= 1")
        _check(math.isfinite(self.jitter_s) and self.jitter_s >= 0, "env.jitter_s", "must be >= 0 seconds")
        _check(self.jitter_mode in JITTER_MODES, "env.jitter_mode", f"must be one of {JITTER_MODES}")
        _check(isinstance(self.n_components, int) and self.n_components >= 1, "env.n_components", "must be >= 1")
        _check(isinstance(self.pca_stride, int) and self.pca_stride >= 1, "env.pca_stride", "must be >= 1")
        bad = [f for f in self.running_features if f not in RUNNING_FEATURES]
        _check(bool(self.running_features) and not bad, "env.running_features",
               f"must be a non-empty subset of {RUNNING_FEATURES}, got unknown {bad}")
        bad = [f for f in self.summary_features if f not in SUMMARY_FEATURES]
        _check(not bad, "env.summary_features", f"must be a subset of {SUMMARY_FEATURES}, got unknown {bad}")
        _check(self.reward in REWARDS, "env.reward", f"must be one of {REWARDS}")
        _check(self.cost_false_accept >= 0 and self.cost_false_reject >= 0, "env.cost_false_accept",
               "costs must be >= 0")
        # a right answer must pay more than either wrong one, or training learns to be wrong (or nothing)
        wrong = 0.0 if self.reward == "paper" else -min(self.cost_false_accept, self.cost_false_reject)
        _check(self.reward_correct > wrong, "env.reward_correct",
               f"must be above what a wrong answer earns under the {self.reward!r} reward ({wrong:g}), "
               f"got {self.reward_correct:g}")


@dataclass(frozen=True)
class AgentConfig:
    """DDQN network and optimiser (MLP 32-16-2, ReLU, softmax output, Adam)."""

    hidden: tuple[int, ...] = (32, 16)
    lr: float = 1e-3
    gamma: float = 0.2
    batch_size: int = 128
    replay_capacity: int = 10_000
    eps_start: float = 0.1
    eps_end: float = 0.01
    eps_decay: float = 200.0
    eps_decay_counts: str = "explore_steps"
    grad_clip: float = 10.0
    double: bool = True

    def __post_init__(self) -> None:
        _check(isinstance(self.hidden, (list, tuple)) and all(_is_int(h) and h >= 1 for h in self.hidden),
               "agent.hidden", f"must be a list of integer layer sizes >= 1, got {self.hidden!r}")
        object.__setattr__(self, "hidden", tuple(self.hidden))
        for name in ("lr", "gamma", "eps_start", "eps_end", "eps_decay", "grad_clip"):
            _finite(getattr(self, name), f"agent.{name}")
        for name in ("batch_size", "replay_capacity"):
            _check(_is_int(getattr(self, name)), f"agent.{name}", f"must be an integer, got {getattr(self, name)!r}")
        _check(isinstance(self.double, bool), "agent.double", f"must be true or false, got {self.double!r}")
        _check(self.lr > 0, "agent.lr", "must be > 0")
        _check(0.0 <= self.gamma < 1.0, "agent.gamma", "must be in [0, 1)")
        _check(isinstance(self.batch_size, int) and self.batch_size >= 1, "agent.batch_size", "must be >= 1")
        _check(self.replay_capacity >= self.batch_size, "agent.replay_capacity", "must be >= batch_size")
        _check(0.0 <= self.eps_end <= self.eps_start <= 1.0, "agent.eps_start",
               "need 0 <= eps_end <= eps_start <= 1")
        _check(self.eps_decay > 0, "agent.eps_decay", "must be > 0")
        _check(self.eps_decay_counts in DECAY_COUNTS, "agent.eps_decay_counts", f"must be one of {DECAY_COUNTS}")
        _check(self.grad_clip > 0, "agent.grad_clip", "must be > 0")


@dataclass(frozen=True)
class TrainConfig:
    """Episodes, target-network period and the chronological train fraction."""

    n_episodes: int = 30
    target_update_episodes: int = 2
    train_split: float = 0.7

    def __post_init__(self) -> None:
        _finite(self.train_split, "train.train_split")
        _check(_is_int(self.n_episodes) and self.n_episodes >= 1, "train.n_episodes", "must be an integer >= 1")
        _check(_is_int(self.target_update_episodes) and self.target_update_episodes >= 1,
               "train.target_update_episodes", "must be >= 1")
        _check(0.0 < self.train_split < 1.0, "train.train_split", "must be in (0, 1)")


@dataclass(frozen=True)
class RLConfig:
    """Everything a run needs; `to_dict` goes into bench JSON so a result says what ran."""

    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **sections: Mapping[str, Any]) -> RLConfig:
        """Copy with some fields of some sections changed: ``cfg.replace(train={"n_episodes": 5})``."""
        return _from_mapping(_merge(self.to_dict(), sections))


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _section(cls: type, name: str, values: Any) -> Any:
    if values is None:
        return cls()
    if not isinstance(values, Mapping):
        raise ConfigError(name, "must be a mapping")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}", f"unknown key (known: {sorted(known)})")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(name, str(exc)) from exc


def _from_mapping(doc: Mapping[str, Any]) -> RLConfig:
    unknown = sorted(set(doc) - {"env", "agent", "train"})
    if unknown:
        raise ConfigError(unknown[0], "unknown section (known: env, agent, train)")
    return RLConfig(_section(EnvConfig, "env", doc.get("env")), _section(AgentConfig, "agent", doc.get("agent")),
                    _section(TrainConfig, "train", doc.get("train")))


def load_config(path: str | os.PathLike[str] | None = None, overrides: Mapping[str, Any] | None = None) -> RLConfig:
    """Read a YAML config (default: the paper's) and apply nested `overrides`."""
    import yaml

    p = Path(path) if path is not None else PAPER_CONFIG
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError("path", f"config file not found: {p}") from exc
    except (OSError, UnicodeDecodeError) as exc:  # a folder, no permission, not text: not a traceback
        raise ConfigError("path", f"cannot read config file {p}: {getattr(exc, 'strerror', None) or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError("path", f"{p} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(doc, Mapping):
        raise ConfigError("path", f"{p} must hold a mapping with sections env, agent, train")
    return _from_mapping(_merge(dict(doc), overrides or {}))
