import numpy as np
import pytest

from federated import task
from federated.config import RunSettings, SettingsError, run_config_string
from federated.features import DeviceDataError, read_device_file
from federated.scorer import EmbeddingScorer
from federated.strategies import DPError, build_strategy


def test_run_config_is_typed_and_validated() -> None:
    s = RunSettings.from_config({"modality": "gait", "num-server-rounds": "7", "dp": "true"})
    assert (s.modality, s.num_server_rounds, s.dp) == ("gait", 7, True)
    with pytest.raises(SettingsError, match="num-server-rounds"):
        RunSettings.from_config({"num-server-rounds": 0})
    with pytest.raises(SettingsError, match="strategy"):
        RunSettings.from_config({"strategy": "fedmagic"})
    with pytest.raises(DeviceDataError, match="modality"):
        RunSettings.from_config({"modality": "voice"})
    assert run_config_string({"a": 1, "b": "x", "c": True}) == 'a=1 b="x" c=true'


def test_dp_refuses_robust_aggregation() -> None:
    with pytest.raises(SettingsError, match="strategy"):  # up front, before any device connects
        RunSettings.from_config({"strategy": "fedmedian", "dp": True})
    s = RunSettings(strategy="fedmedian", dp=True)  # unvalidated: the strategy stack refuses it too
    with pytest.raises(DPError, match="strategy"):
        build_strategy(s, 10)


def test_device_file_checks(tmp_path) -> None:
    with pytest.raises(DeviceDataError, match="data"):
        read_device_file(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a file")
    with pytest.raises(DeviceDataError, match="data"):
        read_device_file(bad)


def test_prototypes_are_spread_and_reproducible() -> None:
    P = task.prototypes(128)
    assert np.allclose(np.linalg.norm(P, axis=1), 1, atol=1e-5)
    G = P @ P.T
    np.fill_diagonal(G, -1)
    assert G.max() < 0.6
    assert np.array_equal(task.prototypes(16), task.prototypes.__wrapped__(16))


def test_scorer_round_trips_through_the_registry(tmp_path) -> None:
    from modalities.registry import ModelRegistry

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 12))
    w = task.initial_weights(12, 16, 0)
    norm = task.Normaliser.fit(X)
    sc = EmbeddingScorer.from_weights(w, norm.mean, norm.std, modality="keystroke", feature_version="fv")
    reg = ModelRegistry(tmp_path)
    v = reg.publish("keystroke", sc, metrics={"eer": 0.1}, card="# card\n", source="test")
    back = reg.load("keystroke", v)
    t = sc.enroll(X[:10])
    assert np.allclose(back.compare(back.enroll(X[:10]), X[10:]), sc.compare(t, X[10:]), atol=1e-6)
    assert sc.compare(t, X[:10]).mean() > sc.compare(t, -X[10:]).mean()
    with pytest.raises(Exception, match="12 features"):
        sc.compare(t, X[:, :5])


def test_registry_loads_a_federated_model_without_importing_federated(tmp_path) -> None:
    """A fresh process (the server) loads the version knowing only `modalities.registry`."""
    import subprocess
    import sys

    from modalities.registry import ModelRegistry

    w = task.initial_weights(6, 8, 0)
    sc = EmbeddingScorer.from_weights(w, np.zeros(6), np.ones(6), modality="gait", feature_version="fv")
    reg = ModelRegistry(tmp_path)
    reg.activate("gait", reg.publish("gait", sc, metrics={}, card="# card\n", source="test"))
    code = ("import sys; from modalities.registry import ModelRegistry; "
            "assert 'federated.scorer' not in sys.modules; "
            f"s = ModelRegistry({str(tmp_path)!r}).load('gait'); print(type(s).__name__, s.dim)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["EmbeddingScorer", "6"]


def test_the_federated_scorer_follows_the_estimator_contract() -> None:
    """`clone` failed (get_params took no `deep`), and set_params accepted any name."""
    import pytest
    from sklearn.base import clone

    from federated.scorer import EmbeddingScorer

    e = EmbeddingScorer("gait", "gait-v2")
    c = clone(e)
    assert c is not e and c.get_params(deep=True) == {"modality": "gait", "feature_version": "gait-v2"}
    assert e.set_params(modality="touch").for_modality == "touch"
    with pytest.raises(ValueError, match="Invalid parameter 'bogus'"):
        e.set_params(bogus=1)
