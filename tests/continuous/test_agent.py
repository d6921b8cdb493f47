import re

import numpy as np
import pytest
import torch

from continuous.agent import DDQNAgent, QNetwork
from continuous.env import ACCEPT, KeystrokeAuthEnv
from continuous.evaluate import owner_windows
from continuous.hyperparams import AgentConfig, EnvConfig, TrainConfig, load_config
from continuous.train import train_agent, window_rates
from tests.continuous.conftest import make_sequence


def test_network_is_32_16_2_with_softmax() -> None:
    net = QNetwork(13)
    shapes = [tuple(p.shape) for p in net.parameters()]
    assert shapes == [(32, 13), (32,), (16, 32), (16,), (2, 16), (2,)]
    q = net(torch.randn(5, 13))
    torch.testing.assert_close(q.sum(dim=1), torch.ones(5))


def test_epsilon_schedule_starts_at_eps_start_and_decays() -> None:
    agent = DDQNAgent(13, AgentConfig(eps_decay_counts="all_steps"), seed=0)
    assert abs(agent.epsilon - 0.1) < 1e-12
    obs = np.zeros(13, np.float32)
    for _ in range(1000):
        agent.act(obs, explore=True)
    assert agent.epsilon < 0.011


def test_agent_learns_to_tell_a_fast_typist_from_slow_ones(owner, others) -> None:
    cfg = load_config(overrides={"agent": {"batch_size": 32}})
    env = KeystrokeAuthEnv(owner[:450], others, cfg.env, owner_id=1)
    agent = DDQNAgent(env.featurizer.dim, cfg.agent, seed=0)
    result = train_agent(env, agent, TrainConfig(n_episodes=30), seed=0)
    assert result.selection == "last" and len(result.episodes) == 30
    # unseen later keys of the owner vs an unseen slow typist
    later = owner_windows(owner[450:], 100, 50)
    stranger = owner_windows(make_sequence(400, dd=0.5, hold=0.2, seed=99), 100, 50)
    obs = np.vstack([env.featurizer.observe(w) for w in later + stranger])
    m = agent.margin(obs)
    imp = np.r_[np.zeros(len(later), bool), np.ones(len(stranger), bool)]
    rates = window_rates(impostor=imp, accepted=m >= 0, score=m)
    assert rates.eer < 0.2, rates


def test_select_best_reproduces_the_authors_runner(owner, others) -> None:
    cfg = load_config(overrides={"agent": {"batch_size": 16}})
    env = KeystrokeAuthEnv(owner[:400], others, EnvConfig(), owner_id=1)
    agent = DDQNAgent(env.featurizer.dim, cfg.agent, seed=1)
    res = train_agent(env, agent, TrainConfig(n_episodes=6), seed=1, select_best=True)
    eers = [e.eer for e in res.episodes]
    assert res.selection == "best_train_eer"
    assert eers[res.chosen_episode - 1] == min(e for e in eers if np.isfinite(e))


def test_evidence_and_save_load(tmp_path, owner, others) -> None:
    env = KeystrokeAuthEnv(owner, others, EnvConfig(), owner_id=1)
    agent = DDQNAgent(env.featurizer.dim, seed=0)
    obs = env.reset(seed=0)[0]
    ev = agent.evidence(obs)
    q = agent.q_values(obs)[0]
    assert ev.modality == "keystroke" and abs(ev.score - (q[ACCEPT] - q[1 - ACCEPT])) < 1e-6
    agent.save(str(tmp_path / "a.pt"))
    other = DDQNAgent(env.featurizer.dim, seed=5)
    other.load_weights(str(tmp_path / "a.pt"))
    np.testing.assert_allclose(other.margin(obs), agent.margin(obs))


def test_window_rates_use_the_right_far_and_frr() -> None:
    imp = np.array([True, True, True, True, False, False])
    acc = np.array([True, False, False, False, False, True])  # 1/4 impostors accepted, 1/2 owner rejected
    r = window_rates(impostor=imp, accepted=acc, score=acc.astype(float), corrupt_probability=0.5)
    assert (r.far, r.frr) == (0.25, 0.5)
    assert abs(r.accuracy - (0.5 * 0.75 + 0.5 * 0.5)) < 1e-12


def test_evidence_takes_one_window_not_a_batch(owner, others) -> None:
    # the session tracker takes one evidence item per window: a batch must not be read as row 0
    env = KeystrokeAuthEnv(owner, others, EnvConfig(), owner_id=1)
    agent = DDQNAgent(env.featurizer.dim, seed=0)
    obs = env.featurizer.observations(owner, env.starts[:5])
    for batch in (obs, obs[:1]):
        with pytest.raises(ValueError, match=r"expected shape \(13,\), got \(\d, 13\)"):
            agent.evidence(batch)
        with pytest.raises(ValueError, match="expected shape"):
            agent.act(batch, explore=False)
    assert agent.evidence(obs[2]).score == pytest.approx(agent.margin(obs)[2])


@pytest.mark.parametrize("shape", [(5,), (3, 5), (13, 1), (2, 3, 13), ()])
def test_an_observation_of_the_wrong_size_is_a_value_error(shape: tuple[int, ...]) -> None:
    agent = DDQNAgent(13, seed=0)
    bad = np.zeros(shape, np.float32)
    calls = (agent.q_values, agent.margin, agent.evidence, lambda o: agent.act(o, explore=False))
    for call in calls:
        with pytest.raises(ValueError, match=rf"expected shape \(13,\).*got {re.escape(str(shape))}"):
            call(bad)


def test_an_agent_leaves_the_process_thread_count_alone(owner, others) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = load_config(overrides={"agent": {"batch_size": 16}})
        env = KeystrokeAuthEnv(owner[:400], others, cfg.env, owner_id=1)
        weights = []
        for threads in (2, 1):
            torch.set_num_threads(threads)
            agent = DDQNAgent(env.featurizer.dim, cfg.agent, seed=3)
            assert torch.get_num_threads() == threads
            train_agent(env, agent, TrainConfig(n_episodes=3), seed=3)
            agent.margin(env.featurizer.observations(owner, env.starts[:4]))
            assert torch.get_num_threads() == threads
            weights.append(agent.snapshot())
        # training runs on one thread whatever the caller set: same seed, same weights
        for k in weights[0]:
            assert torch.equal(weights[0][k], weights[1][k]), k
    finally:
        torch.set_num_threads(before)
