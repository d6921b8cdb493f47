from pathlib import Path

import pytest

from continuous.hyperparams import PAPER_CONFIG, ConfigError, RLConfig, load_config


def test_paper_defaults_are_the_papers_hyper_parameters() -> None:
    cfg = load_config()
    assert PAPER_CONFIG.is_file()
    assert (cfg.env.n_obs, cfg.env.n_hop, cfg.env.n_components) == (100, 50, 10)
    assert (cfg.env.corrupt_probability, cfg.env.n_corrupting_users, cfg.env.jitter_s) == (0.5, 10, 0.025)
    assert cfg.agent.hidden == (32, 16) and cfg.agent.lr == 0.001
    assert (cfg.agent.eps_start, cfg.agent.eps_end, cfg.agent.eps_decay) == (0.1, 0.01, 200)
    assert (cfg.train.n_episodes, cfg.train.target_update_episodes, cfg.train.train_split) == (30, 2, 0.7)
    assert cfg.env.reward == "paper"
    # the file and the dataclass defaults agree, so code without the file runs the same
    assert cfg == RLConfig()


def test_overrides_and_replace() -> None:
    cfg = load_config(overrides={"env": {"n_obs": 50, "reward": "cost_sensitive"}})
    assert cfg.env.n_obs == 50 and cfg.env.n_hop == 50 and cfg.env.reward == "cost_sensitive"
    assert cfg.replace(train={"n_episodes": 3}).train.n_episodes == 3


@pytest.mark.parametrize(("overrides", "field"), [
    ({"env": {"corrupt_probability": 1.5}}, "env.corrupt_probability"),
    ({"env": {"running_features": ["hold", "pressure"]}}, "env.running_features"),
    ({"env": {"reward": "money"}}, "env.reward"),
    ({"agent": {"eps_start": 0.001}}, "agent.eps_start"),
    ({"agent": {"lr": 0}}, "agent.lr"),
    ({"train": {"train_split": 1.0}}, "train.train_split"),
    ({"train": {"episodes": 3}}, "train.episodes"),
    ({"model": {}}, "model"),
])
def test_bad_values_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=overrides)
    assert err.value.field == field


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
