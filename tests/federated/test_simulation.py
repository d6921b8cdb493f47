"""Flower simulation engine runs (Ray): the bench's --quick path and the SecAgg+ option."""

import json

import numpy as np
import pytest

from federated import task
from federated.config import RunSettings
from federated.features import feature_spec, subject_windows, write_device_files


@pytest.mark.slow
def test_bench_quick_writes_central_fedavg_and_dp_rows(data_dir, tmp_path) -> None:
    from evaluation.bench import BenchContext, run_bench

    run_bench("federated", BenchContext(data_dir=data_dir, out=tmp_path, quick=True, progress=False), print_table=False)
    doc = json.loads((tmp_path / "federated.json").read_text())
    rows = {r["method"]: r for r in doc["results"]}
    assert set(rows) == {"keystroke-central", "keystroke-fedavg", "keystroke-fedavg-dp"}
    assert all(r["window"] == "50 keys" for r in rows.values())
    assert not set(doc["train_subjects"]) & set(doc["eval_subjects"])
    fed, dp = rows["keystroke-fedavg"], rows["keystroke-fedavg-dp"]
    assert fed["rounds"] == 3 and 0 < fed["bytes_per_client_per_round"] <= 200_000 and fed["wall_seconds"] > 0
    assert fed["epsilon"] is None and 0 < dp["epsilon"] <= 8.0 and dp["delta"] == 1e-3
    assert fed["eer"] < 0.45  # learned something on people it never saw


@pytest.mark.slow
def test_secagg_plus_gives_the_mean_of_the_device_updates(data_dir, tmp_path) -> None:
    from federated.simulation import simulate_secagg

    windows = subject_windows("keystroke", data_dir, [1, 2, 3], max_windows=16)
    spec = feature_spec("keystroke")
    write_device_files(tmp_path, windows, spec)
    s = RunSettings.from_config({"modality": "keystroke", "num-server-rounds": 1, "min-nodes": 3,
                                 "num-shares": 3, "reconstruction-threshold": 2})
    scorer = simulate_secagg(s, tmp_path, num_cpus=1)
    # the same round computed in the clear: each device trains from the initial model
    subs = sorted(windows, key=lambda sid: f"device-{sid}.npz")
    norm = task.Normaliser.fit(np.vstack([windows[x] for x in subs]))
    init = task.initial_weights(spec.dim, s.hidden, s.seed)
    updates = []
    for slot, sid in enumerate(subs):
        net = task.make_net(spec.dim, hidden=s.hidden)
        task.set_weights(net, init)
        X = norm(windows[sid])
        tc = task.TrainConfig(epochs=1, lr=s.lr, batch_size=s.batch_size, seed=s.seed * 100003 + 1 * 1009 + slot)
        task.train(net, X, np.full(len(X), slot), task.prototypes(s.num_slots), tc)
        updates.append(task.get_weights(net))
    for k in init:
        clear = sum(u[k] for u in updates) / len(updates)  # every device counts once, as in the plain app
        assert np.allclose(scorer.get_state()[k], clear, atol=1e-5), k
        assert not np.allclose(clear, init[k], atol=1e-3)


@pytest.mark.slow
def test_secagg_plus_leaves_out_a_device_that_dropped_at_set_up(data_dir, tmp_path) -> None:
    """4 devices, one drops out before sharing keys: the round goes on with the other 3 (min-nodes 3).

    Flower's own workflow asked for the dropped device's key shares, found none and halted
    the round whatever the threshold; it exchanged no masks with anyone, so it is left out.
    """
    from flwr.simulation import run_simulation

    from federated import secagg
    from federated.simulation import _backend, shutdown_ray

    windows = subject_windows("keystroke", data_dir, [1, 2, 3, 4], max_windows=12)
    spec = feature_spec("keystroke")
    write_device_files(tmp_path, windows, spec)
    s = RunSettings.from_config({"modality": "keystroke", "num-server-rounds": 1, "min-nodes": 3,
                                 "num-shares": 3, "reconstruction-threshold": 2})
    cfg = {**s.as_config(), "feature-dir": str(tmp_path.resolve())}

    def drop_at_set_up(msg, context, call_next):  # type: ignore[no-untyped-def]
        stage = msg.content.config_records.get("secaggplus_configs", {}).get("stage")
        if int(context.node_config["partition-id"]) == 3 and stage == "setup":
            raise ConnectionError("gone")
        return call_next(msg, context)

    client = secagg.make_client_app(cfg, outer_mods=[drop_at_set_up])
    results: list = []
    try:
        run_simulation(server_app=secagg.make_server_app(cfg, on_result=results.append), client_app=client,
                       num_supernodes=4, backend_config=_backend(1))
    finally:
        shutdown_ray()
    assert results, "the round halted"
    outcome = results[0]
    assert outcome.num_devices == 4 and outcome.rounds == 1
    subs = sorted(windows, key=lambda sid: f"device-{sid}.npz")
    norm = task.Normaliser.fit(np.vstack([windows[x] for x in subs]))  # all 4 answered the scaling round
    init = task.initial_weights(spec.dim, s.hidden, s.seed)
    updates = []
    for slot, sid in enumerate(subs[:3]):
        net = task.make_net(spec.dim, hidden=s.hidden)
        task.set_weights(net, init)
        tc = task.TrainConfig(epochs=1, lr=s.lr, batch_size=s.batch_size, seed=s.seed * 100003 + 1 * 1009 + slot)
        task.train(net, norm(windows[sid]), np.full(len(windows[sid]), slot), task.prototypes(s.num_slots), tc)
        updates.append(task.get_weights(net))
    for k in init:
        assert np.allclose(outcome.scorer.get_state()[k], sum(u[k] for u in updates) / 3, atol=1e-5), k


@pytest.mark.slow
def test_secagg_plus_never_unmasks_a_sum_of_fewer_than_min_nodes_and_says_where_it_stopped(data_dir, tmp_path) -> None:
    """3 devices, min-nodes 3, one drops after its keys are shared: the round halts before unmasking, by name."""
    from flwr.simulation import run_simulation

    from federated import secagg
    from federated.simulation import _backend, shutdown_ray

    windows = subject_windows("keystroke", data_dir, [1, 2, 3], max_windows=12)
    write_device_files(tmp_path, windows, feature_spec("keystroke"))
    status = tmp_path / "status.json"
    cfg = {**RunSettings.from_config({"num-server-rounds": 1, "min-nodes": 3}).as_config(),
           "feature-dir": str(tmp_path.resolve()), "status-file": str(status)}

    def drop_before_masking(msg, context, call_next):  # type: ignore[no-untyped-def]
        stage = msg.content.config_records.get("secaggplus_configs", {}).get("stage")
        if int(context.node_config["partition-id"]) == 2 and stage == "collect_masked_vectors":
            raise ConnectionError("gone")
        return call_next(msg, context)

    from federated.orchestration import FederatedRunError

    results: list = []
    try:
        with pytest.raises(FederatedRunError, match="halted at its unmasking stage"):
            run_simulation(server_app=secagg.make_server_app(cfg, on_result=results.append),
                           client_app=secagg.make_client_app(cfg, outer_mods=[drop_before_masking]),
                           num_supernodes=3, backend_config=_backend(1))
    finally:
        shutdown_ray()
    assert results == []  # nothing published
    doc = json.loads(status.read_text())
    assert doc["state"] == "failed", doc
    assert doc["error"].startswith("round 1: SecAgg+ halted at its unmasking stage with 2 of the round's 3 devices "
                                   "still answering (the run has 3 devices; min-nodes 3"), doc["error"]
