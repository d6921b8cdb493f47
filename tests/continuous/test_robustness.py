"""Refusals of the continuous package: stored session states, RL configuration, weights files."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from continuous.agent import DDQNAgent
from continuous.env import KeystrokeAuthEnv
from continuous.hyperparams import AgentConfig, ConfigError, EnvConfig, TrainConfig
from continuous.session import SessionRiskTracker
from fusion.policy import ModalityEvidence
from modalities.events import EventValidationError, KeySequence


def _stepped_up() -> dict[str, Any]:
    t = SessionRiskTracker()
    t.update([ModalityEvidence("keystroke", 0.0, llr=-1.0)])
    assert t.state.status == "step_up"
    return t.to_dict()


def _set(path: str, value: Any):  # type: ignore[no-untyped-def]
    def change(d: dict[str, Any]) -> None:
        *head, last = path.split(".")
        for k in head:
            d = d[k]
        d[last] = value
    return change


@pytest.mark.parametrize(("change", "field"), [
    (_set("version", 2), "version"), (_set("llrs", [True]), "llrs"), (_set("llrs", [math.inf]), "llrs"),
    (_set("state.window_llr", None), "window_llr"), (_set("state.window_llr", math.nan), "window_llr"),
    (_set("state.window_llr", math.inf), "window_llr"), (_set("state.risk", None), "risk"),
    (_set("state.n_windows", 1.5), "n_windows"), (_set("state.n_windows", "7"), "n_windows"),
    (_set("state.n_windows", 0), "n_windows"),  # fewer windows than stored LLRs
    (_set("state.status", "ok"), "status"),  # step_up risk stored as ok
    (_set("state.risk", 0.1), "risk"),  # a risk the stored windows do not give
    (_set("state", None), "status"),
])
def test_from_dict_refuses_inconsistent_or_foreign_states(change, field: str) -> None:  # type: ignore[no-untyped-def]
    d = copy.deepcopy(_stepped_up())
    SessionRiskTracker.from_dict(d)  # the untouched state is fine
    change(d)
    with pytest.raises(ValueError, match=field):
        SessionRiskTracker.from_dict(d)


def test_a_state_with_evidence_free_windows_round_trips() -> None:
    t = SessionRiskTracker.from_dict(_stepped_up())
    t.update([])
    u = SessionRiskTracker.from_dict(t.to_dict())
    assert u.state == t.state and u.state.n_windows == 2 and u.state.status == "step_up"


@pytest.mark.parametrize(("cls", "kwargs", "field"), [
    (AgentConfig, {"replay_capacity": 10000.0}, "replay_capacity"), (AgentConfig, {"batch_size": True}, "batch_size"),
    (AgentConfig, {"lr": math.inf}, "lr"), (AgentConfig, {"gamma": math.nan}, "gamma"),
    (AgentConfig, {"eps_decay": math.inf}, "eps_decay"), (AgentConfig, {"hidden": (32.5, 16)}, "hidden"),
    (AgentConfig, {"hidden": ("32",)}, "hidden"), (AgentConfig, {"double": "no"}, "double"),
    (EnvConfig, {"reward_correct": math.nan}, "reward_correct"), (EnvConfig, {"cost_false_accept": math.inf}, "cost"),
    (EnvConfig, {"n_obs": 100.0}, "n_obs"), (EnvConfig, {"n_hop": True}, "n_hop"),
    (EnvConfig, {"corrupt_probability": "0.5"}, "corrupt_probability"),
    (TrainConfig, {"n_episodes": True}, "n_episodes"), (TrainConfig, {"train_split": math.nan}, "train_split"),
])
def test_rl_config_values_are_strict(cls: type, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        cls(**kwargs)


def test_env_step_takes_only_the_two_actions(owner: KeySequence, others: dict[int, KeySequence]) -> None:
    env = KeystrokeAuthEnv(owner, others, EnvConfig(n_obs=20, n_hop=10, n_components=3))
    env.reset(seed=0)
    for bad in (0.5, 1.0, "1", True, None, 2, -1):
        with pytest.raises(EventValidationError, match="action"):
            env.step(bad)  # type: ignore[arg-type]
    env.step(np.int64(1))  # type: ignore[arg-type]  # gymnasium samples numpy integers
    env.step(0)


def test_load_weights_refuses_foreign_files(tmp_path: Path) -> None:
    ag = DDQNAgent(5, AgentConfig(batch_size=4, replay_capacity=8))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"garbage")
    incomplete = tmp_path / "incomplete.pt"
    torch.save({"foo": 1}, incomplete)
    bad_weights = tmp_path / "bad_weights.pt"
    torch.save({"n_features": 5, "hidden": [32, 16], "policy": {"x": torch.zeros(1)}}, bad_weights)
    for path, why in ((garbage, "not an agent weights file"), (incomplete, "not an agent weights file"),
                      (tmp_path / "missing.pt", "not an agent weights file"), (bad_weights, "do not fit")):
        with pytest.raises(ValueError, match=why):
            ag.load_weights(str(path))
    good = tmp_path / "good.pt"
    ag.save(str(good))
    DDQNAgent(5, AgentConfig(batch_size=4, replay_capacity=8)).load_weights(str(good))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_load_weights_refuses_non_finite_weights(tmp_path: Path, bad: float) -> None:
    # NaN weights gave NaN margins: act always rejected and the evidence LLR was NaN
    ag = DDQNAgent(5, AgentConfig(batch_size=4, replay_capacity=8))
    state = {k: v.clone() for k, v in ag.policy.state_dict().items()}
    state["layers.2.bias"][3] = bad
    path = tmp_path / "nan.pt"
    torch.save({"n_features": 5, "hidden": [32, 16], "policy": state}, path)
    other = DDQNAgent(5, AgentConfig(batch_size=4, replay_capacity=8), seed=1)
    before = other.snapshot()
    with pytest.raises(ValueError, match=r"layers\.2\.bias.*non-finite"):
        other.load_weights(str(path))
    assert all(torch.equal(before[k], v) for k, v in other.snapshot().items())  # left as it was
    assert np.isfinite(other.margin(np.zeros(5, np.float32))).all()
