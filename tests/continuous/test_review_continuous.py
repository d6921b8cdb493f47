"""Review of `continuous/`: bad input is a ValueError naming the parameter, never NaN rows or a crash."""

from __future__ import annotations

import numpy as np
import pytest

from continuous.evaluate import held_out_protocol, paper_protocol
from continuous.hyperparams import load_config
from modalities.events import KeySequence
from tests.continuous.conftest import make_sequence

CFG = load_config(overrides={"train": {"n_episodes": 1}, "env": {"n_corrupting_users": 2}})


@pytest.fixture(scope="module")
def seqs() -> dict[int, KeySequence]:
    out = {1: make_sequence(800, dd=0.15, hold=0.08, seed=1), 2: make_sequence(300, seed=2),
           3: make_sequence(60, seed=3)}
    out.update({10 + i: make_sequence(400, dd=0.3 + 0.1 * i, seed=20 + i) for i in range(4)})
    return out


@pytest.mark.parametrize(("owner", "users_a", "users_b", "field"), [
    (1, [10, 11], [], "users_b"),  # was ZeroDivisionError
    (1, [10, 11], [3], "users_b"),  # 60 keys < one window: was numpy's "high <= 0"
    (1, [10, 99], [12], "users_a"),  # unknown subject: was a bare KeyError
    (99, [10, 11], [12], "owner"),
    (2, [10, 11], [12], "owner"),  # 300 keys: the last 30% (90) holds no test window; FRR/EER were NaN
])
def test_held_out_protocol_refuses_what_it_cannot_measure(seqs, owner: int, users_a: list[int],
                                                         users_b: list[int], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        held_out_protocol(owner, seqs, users_a, users_b, CFG)


def test_paper_protocol_names_a_missing_owner_or_short_pool_subject(seqs) -> None:
    with pytest.raises(ValueError, match=r"^owner: subject 99"):
        paper_protocol(99, seqs, [10, 11], CFG)
    with pytest.raises(ValueError, match=r"^pool: subjects \[3\]"):
        paper_protocol(1, seqs, [1, 3, 10, 11], CFG)


def test_held_out_protocol_still_measures_a_long_enough_owner(seqs) -> None:
    res = held_out_protocol(1, seqs, [10, 11], [12, 13], CFG)
    for sw in res.scored:
        r = sw.rates()
        assert r.n_genuine > 0 and r.n_impostor > 0 and np.isfinite(r.eer)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_the_agent_refuses_non_finite_observations(bad: float) -> None:
    """A NaN observation read as REJECT with a NaN score, and one in the replay memory made every weight NaN."""
    from continuous.agent import DDQNAgent
    from continuous.hyperparams import AgentConfig

    agent = DDQNAgent(4, AgentConfig(batch_size=2, replay_capacity=4), seed=0)
    obs = np.array([0.1, bad, 0.3, 0.4], np.float32)
    ok = np.zeros(4, np.float32)
    for call in (agent.margin, agent.q_values, agent.evidence, lambda o: agent.act(o, explore=False)):
        with pytest.raises(ValueError, match="observation: has non-finite"):
            call(obs)
    with pytest.raises(ValueError, match="observation: has non-finite"):
        agent.margin(np.vstack([ok, obs]))  # one bad row in a batch
    for s, s2 in ((obs, ok), (ok, obs)):
        with pytest.raises(ValueError, match="observation"):
            agent.remember(s, 0, 1.0, s2, False)
    with pytest.raises(ValueError, match="reward"):
        agent.remember(ok, 0, bad, ok, False)
    with pytest.raises(ValueError, match="action"):
        agent.remember(ok, 2, 1.0, ok, False)
    agent.remember(ok, 0, 1.0, ok, False)
    agent.remember(ok + 1, 1, 0.0, ok, True)
    assert agent.optimize() is not None
    assert np.isfinite(agent.margin(ok)).all()  # the memory held only finite transitions


def test_the_env_refuses_a_featurizer_it_cannot_use() -> None:
    """An unfitted featurizer was a RuntimeError; one of another window length failed mid-episode, at random."""
    from continuous.env import ACCEPT, KeystrokeAuthEnv
    from continuous.features import WindowFeaturizer
    from continuous.hyperparams import EnvConfig
    from modalities.events import EventValidationError

    owner = make_sequence(400, seed=1)
    others = {100: make_sequence(300, seed=2)}
    cfg = EnvConfig(n_obs=40, n_hop=20, n_components=3, corrupt_probability=1.0)
    short = WindowFeaturizer(cfg.running_features, cfg.summary_features, 20, 3).fit(owner)
    with pytest.raises(EventValidationError, match=r"^featurizer: reads windows of 20 keys.*n_obs = 40"):
        KeystrokeAuthEnv(owner, others, cfg, featurizer=short, owner_id=1)
    unfitted = WindowFeaturizer(cfg.running_features, cfg.summary_features, 40, 3)
    with pytest.raises(EventValidationError, match=r"^featurizer: is not fitted"):
        KeystrokeAuthEnv(owner, others, cfg, featurizer=unfitted, owner_id=1)
    fitted = unfitted.fit(owner)
    env = KeystrokeAuthEnv(owner, others, cfg, featurizer=fitted, owner_id=1)
    env.reset(seed=0)
    assert env.step(ACCEPT)[4]["impostor"]


def test_an_unreadable_config_file_is_a_config_error(tmp_path) -> None:
    """Malformed YAML, a folder or a binary file were yaml/OS/Unicode tracebacks, not `ConfigError`."""
    from continuous.hyperparams import ConfigError

    broken = tmp_path / "broken.yaml"
    broken.write_text("env: [unclosed\n")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00env")
    for path, why in ((broken, "not valid YAML"), (tmp_path, "cannot read"), (binary, "cannot read")):
        with pytest.raises(ConfigError, match=why) as err:
            load_config(path)
        assert err.value.field == "path"


@pytest.mark.parametrize(("reward", "correct"), [("paper", 0.0), ("paper", -1.0), ("cost_sensitive", -1.0),
                                                 ("cost_sensitive", -2.0)])
def test_a_reward_that_pays_a_wrong_answer_as_much_as_a_right_one_is_refused(reward: str, correct: float) -> None:
    """Under 'paper' a wrong answer earns 0; -1 for a right one trained the agent to be wrong, 0 taught nothing."""
    from continuous.agent import ACCEPT, REJECT
    from continuous.env import reward_for
    from continuous.hyperparams import ConfigError, EnvConfig

    with pytest.raises(ConfigError, match="reward_correct") as err:
        EnvConfig(reward=reward, reward_correct=correct, cost_false_accept=5.0, cost_false_reject=1.0)
    assert err.value.field == "env.reward_correct"
    ok = EnvConfig(reward=reward, reward_correct=0.5)  # still above what either wrong answer earns
    assert reward_for(ok, impostor=True, action=REJECT) > reward_for(ok, impostor=True, action=ACCEPT)
    assert reward_for(ok, impostor=False, action=ACCEPT) > reward_for(ok, impostor=False, action=REJECT)


def test_window_rates_of_arrays_of_different_lengths_is_a_value_error() -> None:
    """It was an IndexError from the boolean mask, naming none of the three arrays."""
    from continuous.train import window_rates

    with pytest.raises(ValueError, match=r"impostor, accepted and score .* \(3,\), \(2,\) and \(2,\)"):
        window_rates(impostor=np.array([1, 0, 1], bool), accepted=np.array([1, 0], bool), score=np.array([1.0, 2.0]))
    r = window_rates(impostor=np.array([1, 0], bool), accepted=np.array([0, 1], bool), score=np.array([0.0, 1.0]))
    assert (r.far, r.frr) == (0.0, 0.0)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_an_agent_without_a_positive_whole_number_of_features_is_refused(n: object) -> None:
    """`DDQNAgent(0)` built a network with no inputs, `DDQNAgent(-1)` failed inside torch."""
    from continuous.agent import DDQNAgent

    with pytest.raises(ValueError, match=r"^n_features: must be an integer >= 1"):
        DDQNAgent(n)  # type: ignore[arg-type]
    assert DDQNAgent(np.int64(3)).n_features == 3  # type: ignore[arg-type]
