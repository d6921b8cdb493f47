"""The two evaluation protocols of the `rl` bench, per user, as plain functions.

* `paper_protocol`: what the authors' code does. The agent trains on ALL of the owner's keys
  with 10 random corrupting users, the weights of the training episode with the lowest EER
  on that same episode are kept, and the "test" is one more episode over the SAME keys with
  10 freshly drawn corrupting users (who may overlap the training ones).
* `held_out_protocol`: the honest measurement. The owner's keys are split in time: the agent
  (and its PCA) learn from the earliest `train_split` with corrupting users A; the test
  windows are the owner's last keys and windows of corrupting users B that no model saw; no
  choice is made on test data (the final weights are used). The random-forest baseline and
  our keystroke scorer are trained and thresholded on the same training windows and scored
  on exactly the same test windows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from continuous.agent import DDQNAgent
from continuous.env import KeystrokeAuthEnv
from continuous.features import WindowFeaturizer, jitter_window, window_starts, window_stats
from continuous.hyperparams import RLConfig
from continuous.train import TrainResult, WindowRates, run_episode, train_agent, window_rates
from modalities.base import Scorer
from modalities.events import KeySequence

log = logging.getLogger(__name__)


@dataclass
class ScoredWindows:
    """Scores of one method on one user's windows, with the truth and the decisions."""

    method: str
    owner: int
    source: np.ndarray  # true owner of each window
    score: np.ndarray  # higher = more genuine
    accepted: np.ndarray  # the method's own accept decision
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def impostor(self) -> np.ndarray:
        return self.source != self.owner

    def rates(self, corrupt_probability: float | None = None) -> WindowRates:
        return window_rates(impostor=self.impostor, accepted=self.accepted, score=self.score,
                            corrupt_probability=corrupt_probability)


@dataclass
class WindowSet:
    """Fixed windows of one user's protocol: events, observations and true sources."""

    windows: list[KeySequence]
    obs: np.ndarray
    source: np.ndarray


def owner_windows(seq: KeySequence, n_obs: int, n_hop: int) -> list[KeySequence]:
    return [seq[s:s + n_obs] for s in window_starts(len(seq), n_obs, n_hop)]


def impostor_windows(corrupting: Mapping[int, KeySequence], n: int, cfg: RLConfig,
                     rng: np.random.Generator) -> tuple[list[KeySequence], np.ndarray]:
    """`n` jittered windows spread round-robin over the corrupting users (random places)."""
    ids = sorted(corrupting)
    out, src = [], []
    for j in range(n):
        sid = ids[j % len(ids)]
        seq = corrupting[sid]
        a = int(rng.integers(0, len(seq) - cfg.env.n_obs + 1))
        out.append(jitter_window(seq[a:a + cfg.env.n_obs], rng, cfg.env.jitter_s, cfg.env.jitter_mode))
        src.append(sid)
    return out, np.asarray(src, int)


def build_window_set(owner: int, genuine: list[KeySequence], impostors: list[KeySequence], impostor_src: np.ndarray,
                     featurizer: WindowFeaturizer) -> WindowSet:
    wins = genuine + impostors
    obs = np.vstack([featurizer.observe(w) for w in wins]) if wins else np.zeros((0, featurizer.dim))
    return WindowSet(wins, obs, np.r_[np.full(len(genuine), owner, int), impostor_src].astype(int))


def _split(seq: KeySequence, fraction: float) -> tuple[KeySequence, KeySequence]:
    cut = int(round(len(seq) * fraction))
    return seq[:cut], seq[cut:]


def _check_subjects(seqs: Mapping[int, KeySequence], owner: int, groups: Mapping[str, Sequence[int]],
                    n_obs: int) -> None:
    """ValueError naming the parameter when a subject is missing or a corrupting group cannot give a window.

    Without it an empty group divided by zero, a short recording failed deep in numpy
    ("high <= 0") and an unknown id was a bare KeyError.
    """
    if owner not in seqs:
        raise ValueError(f"owner: subject {owner} is not in seqs")
    for name, ids in groups.items():
        if not ids:
            raise ValueError(f"{name}: needs at least one corrupting user")
        missing = [s for s in ids if s not in seqs]
        if missing:
            raise ValueError(f"{name}: subjects {missing} are not in seqs")
        short = [s for s in ids if len(seqs[s]) < n_obs]
        if short:
            raise ValueError(f"{name}: subjects {short} have fewer than {n_obs} keys (one window)")


# --------------------------------------------------------------------------- keystroke scorer


@dataclass
class KeystrokeScorer:
    """Our keystroke modality's scorer on windows of events (or the documented fallback)."""

    name: str
    featurize: Callable[[KeySequence], np.ndarray]
    scorer: Scorer
    note: str = ""

    def features(self, windows: Sequence[KeySequence]) -> np.ndarray:
        return np.vstack([self.featurize(w) for w in windows])


def keystroke_scorer(data_dir: Any, population: Sequence[int]) -> KeystrokeScorer:
    """Our keystroke modality's best scorer, with documented fallbacks.

    `modalities.keystroke.train_scorer` on `population` when that module is usable, else its
    `default_scorer()`, else scaled Manhattan on `window_stats` (the bench JSON says which).
    """
    from modalities.base import ScaledManhattan

    try:
        import modalities.keystroke as ks

        def feat(w: KeySequence) -> np.ndarray:
            return ks.window_features(w).values

        probe = feat(KeySequence(np.array(["a", "b", "c"], dtype=object), np.array([0.0, 0.1, 0.2]),
                                 np.array([0.05, 0.15, 0.25])))
        assert probe.ndim == 1
    except Exception as exc:  # module absent or not yet usable: documented fallback
        log.warning("modalities.keystroke unavailable (%s): using scaled Manhattan on window_stats", exc)
        return KeystrokeScorer("manhattan-scaled(window_stats)", window_stats, ScaledManhattan(),
                               note=f"fallback: modalities.keystroke unavailable ({type(exc).__name__})")
    try:
        scorer = ks.train_scorer(data_dir, list(population))
        return KeystrokeScorer(f"modalities.keystroke.train_scorer:{scorer.name}", feat, scorer,
                               note=f"population-trained on {len(population)} subjects disjoint from owners and B users")
    except Exception as exc:
        log.warning("keystroke train_scorer failed (%s): using default_scorer()", exc)
        scorer = ks.default_scorer()
        return KeystrokeScorer(f"modalities.keystroke.default_scorer:{scorer.name}", feat, scorer,
                               note=f"train_scorer failed ({type(exc).__name__}); default_scorer used")


def eer_threshold(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Threshold (accept score >= t) where FAR and FRR of these training scores are closest."""
    cand = np.unique(np.r_[genuine, impostor])
    far = (impostor[None, :] >= cand[:, None]).mean(axis=1)
    frr = (genuine[None, :] < cand[:, None]).mean(axis=1)
    return float(cand[int(np.argmin(np.abs(far - frr)))])


def crossfit_threshold(scorer: Scorer, genuine: np.ndarray, impostor: np.ndarray, n_blocks: int = 2) -> float:
    """Decision threshold from training windows only, cross-fitted.

    Contiguous blocks of the owner's windows are scored against a template of the other
    blocks: a threshold from windows scored against their own template rejects nearly every
    later window of the owner.
    """
    idx = np.arange(len(genuine))
    g, i = [], []
    for block in np.array_split(idx, n_blocks):
        rest = np.setdiff1d(idx, block)
        if block.size == 0 or rest.size < 2:
            continue
        t = scorer.enroll(genuine[rest])
        g.append(scorer.compare(t, genuine[block]))
        i.append(scorer.compare(t, impostor))
    if not g:
        t = scorer.enroll(genuine)
        return eer_threshold(scorer.compare(t, genuine), scorer.compare(t, impostor))
    return eer_threshold(np.concatenate(g), np.concatenate(i))


# --------------------------------------------------------------------------- protocols


@dataclass
class UserResult:
    owner: int
    scored: list[ScoredWindows]
    train: TrainResult | None = None
    info: dict[str, Any] = field(default_factory=dict)


def paper_protocol(owner: int, seqs: Mapping[int, KeySequence], pool: Sequence[int], cfg: RLConfig, *,
                   seed: int = 0) -> UserResult:
    """The authors' protocol for one owner (see module docstring); method "ddqn-paper-protocol"."""
    rng = np.random.default_rng([seed, owner, 1])
    from continuous.env import subjects_excluding

    k = cfg.env.n_corrupting_users
    _check_subjects(seqs, owner, {"pool": [s for s in pool if s != owner]}, cfg.env.n_obs)
    train_ids = subjects_excluding(pool, owner, k, rng)
    test_ids = subjects_excluding(pool, owner, k, rng)
    seq = seqs[owner]
    env = KeystrokeAuthEnv(seq, {s: seqs[s] for s in train_ids}, cfg.env, owner_id=owner)
    agent = DDQNAgent(env.featurizer.dim, cfg.agent, seed=seed * 7919 + owner)
    tr = train_agent(env, agent, cfg.train, seed=seed * 7919 + owner, select_best=True)
    test_env = KeystrokeAuthEnv(seq, {s: seqs[s] for s in test_ids}, cfg.env, featurizer=env.featurizer, owner_id=owner)
    ep = run_episode(test_env, agent, learn=False, seed=int(rng.integers(2**31)))
    scored = ScoredWindows("ddqn-paper-protocol", owner, np.asarray(ep.source, int), np.asarray(ep.score),
                           np.asarray(ep.accepted, bool))
    best = tr.episodes[tr.chosen_episode - 1]
    return UserResult(owner, [scored], tr, {"train_corrupting": train_ids, "test_corrupting": test_ids,
                                             "train_best_episode": best.to_dict()})


def held_out_protocol(owner: int, seqs: Mapping[int, KeySequence], users_a: Sequence[int], users_b: Sequence[int],
                      cfg: RLConfig, *, keystroke: KeystrokeScorer | None = None, seed: int = 0,
                      rf_trees: int = 100) -> UserResult:
    """Held-out protocol for one owner: rows ddqn-held-out, rf-held-out, keystroke-held-out."""
    from sklearn.ensemble import RandomForestClassifier

    a_set, b_set = set(users_a), set(users_b)
    if owner in a_set | b_set or a_set & b_set:
        raise ValueError(f"owner {owner}: corrupting users A and B must be disjoint and exclude the owner")
    rng = np.random.default_rng([seed, owner, 2])
    e = cfg.env
    _check_subjects(seqs, owner, {"users_a": users_a, "users_b": users_b}, e.n_obs)
    train_seq, test_seq = _split(seqs[owner], cfg.train.train_split)
    if len(test_seq) < e.n_obs:  # no genuine test window: FRR and EER would be silently NaN
        raise ValueError(f"owner: subject {owner}'s last {1 - cfg.train.train_split:.0%} of keys ({len(test_seq)}) "
                         f"holds no test window of {e.n_obs} keys; it has {len(seqs[owner])} keys in all")
    corrupt_a = {s: seqs[s] for s in users_a}
    corrupt_b = {s: seqs[s] for s in users_b}
    env = KeystrokeAuthEnv(train_seq, corrupt_a, e, owner_id=owner)
    feat = env.featurizer
    agent = DDQNAgent(feat.dim, cfg.agent, seed=seed * 7919 + owner)
    tr = train_agent(env, agent, cfg.train, seed=seed * 7919 + owner, select_best=False)

    # fixed test windows: owner's later keys + B users' windows, never seen in training
    gen_test = owner_windows(test_seq, e.n_obs, e.n_hop)
    n_imp = max(len(gen_test), 2 * len(users_b))
    imp_test, imp_src = impostor_windows(corrupt_b, n_imp, cfg, rng)
    test = build_window_set(owner, gen_test, imp_test, imp_src, feat)
    # training windows for the baselines: the agent's own owner windows + A users' windows
    gen_train = owner_windows(train_seq, e.n_obs, e.n_hop)
    imp_train, imp_train_src = impostor_windows(corrupt_a, max(len(gen_train), 2 * len(users_a)), cfg, rng)
    train = build_window_set(owner, gen_train, imp_train, imp_train_src, feat)

    out: list[ScoredWindows] = []
    m = agent.margin(test.obs) if len(test.obs) else np.zeros(0)
    out.append(ScoredWindows("ddqn-held-out", owner, test.source, m, m >= 0))

    rf = RandomForestClassifier(n_estimators=rf_trees, random_state=seed, n_jobs=1)
    rf.fit(train.obs, (train.source == owner).astype(int))
    p = rf.predict_proba(test.obs)[:, list(rf.classes_).index(1)]
    out.append(ScoredWindows("rf-held-out", owner, test.source, p, p >= 0.5))

    if keystroke is not None:
        Xg = keystroke.features(gen_train)
        thr = crossfit_threshold(keystroke.scorer, Xg, keystroke.features(imp_train))
        s = keystroke.scorer.compare(keystroke.scorer.enroll(Xg), keystroke.features(test.windows))
        out.append(ScoredWindows("keystroke-held-out", owner, test.source, np.asarray(s, float), s >= thr))
    info = {"users_a": list(users_a), "users_b": list(users_b), "n_train_keys": len(train_seq),
            "n_test_keys": len(test_seq), "train_last_episode": tr.episodes[-1].to_dict()}
    return UserResult(owner, out, tr, info)


def summarize_users(results: Sequence[UserResult], method: str, corrupt_probability: float) -> dict[str, Any]:
    """Per-user and averaged accuracy/FAR/FRR/EER of one method (accuracy at the corruption share)."""
    per = []
    for r in results:
        for sw in r.scored:
            if sw.method == method:
                rates = sw.rates(corrupt_probability).to_dict()
                per.append({"user": r.owner, **rates})

    def mean(key: str) -> float | None:
        v = [p[key] for p in per if p[key] is not None]
        return float(np.mean(v)) if v else None

    return {"per_user": per, "mean": {k: mean(k) for k in ("accuracy", "far", "frr", "eer")},
            "n_users": len(per)}


def finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None
