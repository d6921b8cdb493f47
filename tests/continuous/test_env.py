import numpy as np
import pytest

from continuous.env import ACCEPT, REJECT, KeystrokeAuthEnv, reward_for
from continuous.hyperparams import EnvConfig, load_config
from modalities.events import EventValidationError, KeySequence


def _episode(env: KeystrokeAuthEnv, seed: int, policy=lambda obs: ACCEPT) -> list[dict]:
    obs, info = env.reset(seed=seed)
    steps = []
    while True:
        obs, r, term, trunc, info = env.step(policy(obs))
        steps.append({"reward": r, **info})
        assert not term
        if trunc:
            return steps


def test_gymnasium_api_and_episode_length(owner: KeySequence, others: dict[int, KeySequence]) -> None:
    env = KeystrokeAuthEnv(owner, others, EnvConfig(), owner_id=1)
    obs, info = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape == (13,) and env.action_space.n == 2
    assert set(info) >= {"impostor", "source"}
    steps = _episode(env, seed=0)
    assert len(steps) == env.episode_length == (700 - 100) // 50 + 1


@pytest.mark.filterwarnings("ignore:.*Box observation space:UserWarning")
def test_gymnasium_env_checker(owner: KeySequence, others: dict[int, KeySequence]) -> None:
    from gymnasium.utils.env_checker import check_env

    check_env(KeystrokeAuthEnv(owner, others, EnvConfig(), owner_id=1), skip_render_check=True)


def test_corruption_probability_and_sources(owner: KeySequence, others: dict[int, KeySequence]) -> None:
    never = _episode(KeystrokeAuthEnv(owner, others, EnvConfig(corrupt_probability=0.0), owner_id=1), 0)
    assert not any(s["impostor"] for s in never) and {s["source"] for s in never} == {1}
    always = _episode(KeystrokeAuthEnv(owner, others, EnvConfig(corrupt_probability=1.0), owner_id=1), 0)
    assert all(s["impostor"] for s in always) and {s["source"] for s in always} <= set(others)
    env = KeystrokeAuthEnv(owner, others, EnvConfig(), owner_id=1)
    share = np.mean([s["impostor"] for seed in range(20) for s in _episode(env, seed)])
    assert 0.4 < share < 0.6


def test_seeded_episodes_repeat(owner: KeySequence, others: dict[int, KeySequence]) -> None:
    env = KeystrokeAuthEnv(owner, others, EnvConfig(), owner_id=1)
    a, b = env.reset(seed=5)[0], env.reset(seed=5)[0]
    np.testing.assert_array_equal(a, b)
    assert [s["source"] for s in _episode(env, 5)] == [s["source"] for s in _episode(env, 5)]


def test_paper_reward_is_one_when_right(owner: KeySequence, others: dict[int, KeySequence]) -> None:
    env = KeystrokeAuthEnv(owner, others, EnvConfig(), owner_id=1)
    for s in _episode(env, 3):  # always accept: right exactly on owner windows
        assert s["reward"] == (0.0 if s["impostor"] else 1.0)
    for s in _episode(env, 3, policy=lambda obs: REJECT):
        assert s["reward"] == (1.0 if s["impostor"] else 0.0)


def test_cost_sensitive_reward() -> None:
    cfg = load_config(overrides={"env": {"reward": "cost_sensitive", "cost_false_accept": 10.0, "cost_false_reject": 2.0}}).env
    assert reward_for(cfg, impostor=True, action=ACCEPT) == -10.0
    assert reward_for(cfg, impostor=False, action=REJECT) == -2.0
    assert reward_for(cfg, impostor=True, action=REJECT) == reward_for(cfg, impostor=False, action=ACCEPT) == 1.0


def test_bad_inputs_are_refused(owner: KeySequence, others: dict[int, KeySequence]) -> None:
    with pytest.raises(EventValidationError, match="owner"):
        KeystrokeAuthEnv(owner[:120], others, EnvConfig())
    with pytest.raises(EventValidationError, match="corrupting"):
        KeystrokeAuthEnv(owner, {}, EnvConfig())
    with pytest.raises(EventValidationError, match="corrupting"):
        KeystrokeAuthEnv(owner, {1: owner}, EnvConfig(), owner_id=1)
    env = KeystrokeAuthEnv(owner, others, EnvConfig(), owner_id=1)
    env.reset(seed=0)
    with pytest.raises(EventValidationError, match="action"):
        env.step(2)


def test_env_on_real_bbmas_keys(data_dir) -> None:
    from evaluation.datasets import available_subjects, load_bbmas_keystrokes

    subs = available_subjects(data_dir, "keystroke")[:4]
    seqs = load_bbmas_keystrokes(data_dir, subs)
    env = KeystrokeAuthEnv(seqs[subs[0]], {s: seqs[s] for s in subs[1:]}, EnvConfig(), owner_id=subs[0])
    steps = _episode(env, 0)
    assert len(steps) == env.episode_length >= 10
    obs = env.reset(seed=1)[0]
    assert np.all(np.isfinite(obs)) and obs.shape == (13,)
    assert {s["source"] for s in steps} <= set(subs)


def test_step_needs_a_reset_first_and_after_the_episode_ends(owner: KeySequence, others: dict[int, KeySequence]) -> None:
    from gymnasium.error import ResetNeeded

    env = KeystrokeAuthEnv(owner, others, EnvConfig(), owner_id=1)
    with pytest.raises(ResetNeeded, match="reset"):
        env.step(ACCEPT)  # no window observed yet: nothing to score
    steps = _episode(env, seed=0)
    assert len(steps) == env.episode_length
    with pytest.raises(ResetNeeded, match="reset"):
        env.step(ACCEPT)  # past the end of the truncated episode
    env.reset(seed=1)
    assert env.step(REJECT)[4]["t"] == 0
