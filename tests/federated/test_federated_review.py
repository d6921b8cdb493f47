"""Review findings on the federated part: DP sensitivity and releases, device-file errors, operator edge cases."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from typer.testing import CliRunner

from federated import deployment as d
from federated import task
from federated.config import RunSettings, SettingsError
from federated.features import DeviceDataError, FeatureSpec, feature_spec, read_device_file, write_device_file
from federated.scorer import EmbeddingScorer
from federated.strategies import RECIPES, build_strategy, epsilon_spent
from federated.strategies.dp import wrap_dp


@pytest.fixture(autouse=True)
def _task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    old = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = old


class _Grid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def _reply(node: int, weights: dict[str, np.ndarray], loss: float = 1.0) -> Message:
    arrays = ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in weights.items()})
    metrics = MetricRecord({"num-examples": 10, "unit-weight": 1, "train-loss": loss})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), dst_node_id=node, message_type=MessageType.TRAIN)


def _scorer() -> EmbeddingScorer:
    spec = feature_spec("keystroke")
    return EmbeddingScorer.from_weights(task.initial_weights(spec.dim, 64, 0), np.zeros(spec.dim, np.float32),
                                        np.ones(spec.dim, np.float32), modality="keystroke",
                                        feature_version=spec.feature_version)


# ----------------------------------------------------------------------------- 1. DP sensitivity


def _dp_aggregate(s: RunSettings, num_nodes: int, g: np.ndarray, models: list[np.ndarray]) -> np.ndarray:
    st = wrap_dp(RECIPES["fedavg"].build(s), s, num_nodes, robust=False)  # seeded noise: the same draw each time
    list(st.configure_train(1, ArrayRecord({"w": Array(g.astype(np.float32))}), ConfigRecord({}),
                            _Grid(list(range(1, len(models) + 1)))))
    arrays, _ = st.aggregate_train(1, [_reply(i + 1, {"w": w}) for i, w in enumerate(models)])
    assert arrays is not None
    return np.asarray(arrays["w"].numpy(), np.float64)


def test_dp_removing_one_device_moves_the_aggregate_by_at_most_c_over_m0():
    """Fixed-denominator DP-FedAvg: one device more or less shifts the aggregate by <= C / m0 (noise z C / m0)."""
    C, m0 = 1.0, 2
    s = RunSettings.from_config({"dp": True, "clipping-norm": C, "noise-multiplier": 1.0, "min-nodes": m0,
                                 "dp-noise-seed": 0})
    g = np.zeros(4)
    e = np.array([1.0, 0, 0, 0])
    D = [g - C * e, g - C * e, g + C * e]  # clipped updates of norm C; a third device joined
    a = _dp_aggregate(s, m0, g, D)
    b = _dp_aggregate(s, m0, g, D[:2])  # the same minus one device
    assert float(np.linalg.norm(a - b)) <= C / m0 + 1e-6
    # the noise Flower adds is divided by the same m0 the aggregate is
    st = wrap_dp(RECIPES["fedavg"].build(s), s, m0, robust=False)
    assert st.num_sampled_clients == st.strategy.m0 == m0


def test_dp_aggregate_with_m0_replies_is_their_mean():
    # noise this small is refused as DP (epsilon > MAX_EPSILON): set past validation, to check the estimator alone
    s = replace(RunSettings.from_config({"dp": True, "clipping-norm": 1.0, "min-nodes": 2, "dp-noise-seed": 0}),
                noise_multiplier=1e-9)
    g = np.array([1.0, 2.0])
    out = _dp_aggregate(s, 2, g, [g + [0.5, 0.0], g + [0.0, -0.5]])
    assert out == pytest.approx([1.25, 1.75], abs=1e-6)


def test_tiny_noise_multiplier_is_accounted_as_no_privacy():
    try:
        s = RunSettings.from_config({"dp": True, "noise-multiplier": 1e-300})
    except SettingsError:
        return
    assert math.isinf(epsilon_spent(s, 2, 1))


# ----------------------------------------------------------------------------- 2. what a DP run releases


def test_dp_round_releases_no_device_loss():
    w = task.initial_weights(294, 64, 0)
    s = RunSettings.from_config({"dp": True, "noise-multiplier": 2.0, "clipping-norm": 1.0, "min-nodes": 2})
    st = build_strategy(s, 2)
    st.assign({1: "a", 2: "b"})
    list(st.configure_train(1, ArrayRecord({k: Array(v) for k, v in w.items()}), ConfigRecord({}), _Grid([1, 2])))
    arrays, metrics = st.aggregate_train(1, [_reply(1, w, 1.0), _reply(2, w, 100.0)])
    assert arrays is not None
    assert metrics is None or "train-loss" not in metrics


def test_dp_model_card_and_metrics_state_adjacency_sensitivity_and_what_is_outside():
    from federated.orchestration import RunOutcome, dp_accounting, model_card

    s = RunSettings.from_config({"dp": True, "noise-multiplier": 2.0, "clipping-norm": 1.0, "min-nodes": 5})
    o = RunOutcome(modality="keystroke", strategy="fedavg", rounds=3, num_devices=5, dp=True, epsilon=4.0, delta=1e-3,
                   noise_multiplier=2.0, clipping_norm=1.0, bytes_per_client_per_round=1,
                   download_bytes_per_client_per_round=1, wall_seconds=1.0, dp_accounting=dp_accounting(s, 5))
    card = model_card(o)
    assert "add/remove one device" in card and "1.0/5" in card and "OUTSIDE" in card and "feature mean" in card
    summary = o.summary()
    assert summary["dp_accounting"]["fixed_devices_per_round"] == 5
    assert any("feature mean" in x for x in summary["dp_accounting"]["outside_dp_guarantee"])
    json.dumps(summary)  # goes into metrics.json
    assert summary["dp_accounting"]["noise_seed"] is None and "NOT PRIVATE" not in card
    # a seeded run (benchmarks; `--run-config dp-noise-seed=0` is accepted) was published as plain "DP, epsilon ..."
    seeded = RunSettings.from_config({"dp": True, "noise-multiplier": 2.0, "clipping-norm": 1.0, "min-nodes": 5,
                                      "dp-noise-seed": 0})
    o.dp_accounting = dp_accounting(seeded, 5)
    assert o.summary()["dp_accounting"]["noise_seed"] == 0
    assert "NOT PRIVATE: the DP noise was drawn from the fixed seed 0" in model_card(o)


# ----------------------------------------------------------------------------- 3-5. device files


def test_error_reply_does_not_carry_the_local_data_path():
    from federated.client_app import make_app

    secret = "/home/alice-smith/private/cadence/device-alice.npz"
    msg = Message(RecordDict({"config": ConfigRecord({"modality": "keystroke"})}), dst_node_id=1,
                  message_type=MessageType.QUERY)
    ctx = Context(run_id=1, node_id=1, node_config={"data": secret}, state=RecordDict(), run_config={})
    try:
        reply = make_app()(msg, ctx)
        reason = reply.error.reason if reply.has_error() else ""
    except Exception as exc:  # the SuperNode's error reply carries str(exc)
        reason = str(exc)
    assert "alice-smith" not in reason


def test_partition_error_names_no_local_folder(tmp_path):
    with pytest.raises(DeviceDataError) as info:
        task.device_file({"partition-id": 3}, str(tmp_path / "secret-folder"))
    assert "secret-folder" not in str(info.value)


def test_device_file_of_another_feature_version_is_refused(tmp_path):
    spec = feature_spec("keystroke")
    stale = FeatureSpec("keystroke", "keystroke-free-0-old", spec.dim, spec.window)
    p = write_device_file(tmp_path / "device-1.npz", np.random.default_rng(0).normal(size=(8, spec.dim)), stale, 1)
    with pytest.raises(DeviceDataError, match="version"):
        read_device_file(p, "keystroke")
    with pytest.raises(DeviceDataError, match="version"):
        read_device_file(p)  # `cadence federated supernode` checks it before starting


def _broken_files(tmp_path: Path) -> dict[str, Path]:
    spec = feature_spec("keystroke")
    good = write_device_file(tmp_path / "device-1.npz", np.ones((8, spec.dim)), spec, 1)
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(good.read_bytes()[:1000])
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    return {"trunc": trunc, "empty": empty}


@pytest.mark.parametrize("kind", ["trunc", "empty"])
def test_read_device_file_refuses_a_broken_file(tmp_path, kind):
    with pytest.raises(DeviceDataError):
        read_device_file(_broken_files(tmp_path)[kind])


@pytest.mark.parametrize("kind", ["trunc", "empty"])
def test_supernode_cli_refuses_a_broken_file_with_an_error_line(tmp_path, kind):
    f = _broken_files(tmp_path)[kind]
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "fh"), "FLWR_DISABLE_UPDATE_CHECK": "1"}
    res = subprocess.run([sys.executable, "-c", "from cadence.cli import main; main()", "federated", "supernode",
                          "--workdir", str(tmp_path / "fw"), "--data", str(f), "--port", "9499"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2, res.stderr[-800:]
    assert "error:" in res.stderr and "Traceback" not in res.stderr
    # one line for the operator: the device log's copy of the failure is not printed besides it
    assert res.stderr.strip().count("\n") == 0 and str(f) in res.stderr, res.stderr


# ----------------------------------------------------------------------------- 6. operator edge cases


def test_superlink_gone_is_recorded_in_the_status_file(tmp_path):
    status = tmp_path / "status-7.json"
    status.write_text(json.dumps({"run_id": "7", "state": "running", "round": 1, "num_rounds": 6}))

    def unreachable():
        raise d.DeploymentError("Connection to the SuperLink is unavailable")

    with pytest.raises(d.DeploymentError, match="stopped answering"):
        d.wait_for_run(status, timeout=30, flwr_status=unreachable, check_every=0.0, poll=0.01, run_id="7")
    assert d.read_status(status)["state"] == "failed"


def test_publish_into_a_damaged_registry_is_a_registry_error(tmp_path):
    from modalities.registry import ModelRegistry, RegistryError

    (tmp_path / "reg").mkdir()
    (tmp_path / "reg" / "keystroke").write_text("x")
    with pytest.raises(RegistryError):
        ModelRegistry(tmp_path / "reg").publish("keystroke", _scorer(), metrics={}, card="card", source="test")


def _cli_run(tmp_path: Path, monkeypatch, *extra: str):
    from cadence.cli import app

    submitted: list[object] = []
    monkeypatch.setattr(d, "submit_run", lambda *a, **k: submitted.append(a) or {"success": True, "run-id": "7"})
    r = CliRunner().invoke(app, ["federated", "run", "--workdir", str(tmp_path / "fw"), "--registry",
                                 str(tmp_path / "reg"), "--timeout", "5", *extra])
    return r, submitted


def test_run_checks_the_registry_modality_folder_before_training(tmp_path, monkeypatch):
    (tmp_path / "reg").mkdir()
    (tmp_path / "reg" / "keystroke").write_text("x")
    r, submitted = _cli_run(tmp_path, monkeypatch)
    assert r.exit_code == 2 and not submitted and "keystroke" in r.output


def test_run_activate_checks_the_audit_database_before_training(tmp_path, monkeypatch):
    from cadence.settings import get_settings

    bad = tmp_path / "audit-is-a-folder"
    bad.mkdir()
    monkeypatch.setenv("CADENCE_DATABASE_URL", f"sqlite:///{bad}")
    get_settings.cache_clear()
    try:
        r, submitted = _cli_run(tmp_path, monkeypatch, "--activate")
    finally:
        monkeypatch.delenv("CADENCE_DATABASE_URL")
        get_settings.cache_clear()
    assert r.exit_code == 2 and not submitted, r.output


def test_superlink_ipv6_host_writes_a_bracketed_address(tmp_path, monkeypatch):
    import httpx

    from cadence.cli import app

    monkeypatch.setattr(d, "run_foreground", lambda cmd, workdir: 0)
    res = CliRunner().invoke(app, ["federated", "superlink", "--workdir", str(tmp_path / "fw"), "--host", "::1",
                                   "--port", "9321"])
    assert res.exit_code == 0, res.output
    address = d.read_connection(tmp_path / "fw")
    assert address == "[::1]:9321"
    httpx.URL(f"http://{address}")


def test_superlink_refuses_a_corrupt_state_database(tmp_path, monkeypatch):
    from cadence.cli import app

    wd = tmp_path / "fw"
    wd.mkdir()
    (wd / d.SUPERLINK_DB).write_bytes(b"this is not sqlite" * 100)
    started: list[object] = []
    monkeypatch.setattr(d, "run_foreground", lambda cmd, workdir: started.append(cmd) or 0)
    res = CliRunner().invoke(app, ["federated", "superlink", "--workdir", str(wd), "--port", "9322"])
    assert res.exit_code == 2 and not started and d.SUPERLINK_DB in res.output


def test_superlink_state_check_accepts_a_good_or_missing_database(tmp_path):
    d.check_superlink_db(tmp_path / "missing.db")
    good = tmp_path / "good.db"
    sqlite3.connect(good).execute("create table t (x)").connection.commit()
    d.check_superlink_db(good)


def test_activate_with_an_active_pointer_folder_gives_an_error_line(tmp_path):
    from modalities.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "reg")
    v = reg.publish("keystroke", _scorer(), metrics={}, card="test card", source="test")
    (tmp_path / "reg" / "keystroke" / "ACTIVE").mkdir()
    env = {**os.environ, "CADENCE_DATABASE_URL": f"sqlite:///{tmp_path / 'audit.db'}"}
    res = subprocess.run([sys.executable, "-c", "from cadence.cli import main; main()", "models", "activate",
                          "keystroke", v, "--registry", str(tmp_path / "reg")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2, res.stderr[-800:]
    assert "error:" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("content", ["null", "3", "[1, 2]"])
def test_status_of_a_status_file_that_is_no_object(tmp_path, content):
    from cadence.cli import app

    wd = tmp_path / "fw"
    wd.mkdir()
    (wd / "latest-run.json").write_text('{"run_id": "5"}')
    (wd / "status-5.json").write_text(content)
    res = CliRunner().invoke(app, ["federated", "status", "--workdir", str(wd)])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code in (0, 2)
    assert d.read_status(wd / "status-5.json")["state"] == "unknown"


# ----------------------------------------------------------------------------- 7. bench subject split


def test_federated_bench_data_dir_split_is_one_person_level_split(tmp_path, data_dir, monkeypatch):
    import federated.evaluate as fe
    import federated.features as ff
    import federated.simulation as fs
    from evaluation.bench import BenchContext
    from evaluation.benches import federated as fb
    from evaluation.protocols import ScoreTable

    monkeypatch.setattr(ff, "subject_windows", lambda m, d, subs, **k: {int(s): np.zeros((3, 2)) for s in subs})
    monkeypatch.setattr(ff, "eval_splits", lambda m, d, subs: {int(s): None for s in subs})
    monkeypatch.setattr(ff, "write_device_files", lambda *a, **k: [])
    monkeypatch.setattr(task, "train_central", lambda *a, **k: ({}, SimpleNamespace(mean=0, std=1)))
    monkeypatch.setattr("federated.scorer.EmbeddingScorer.from_weights", classmethod(lambda cls, *a, **k: object()))
    outcome = SimpleNamespace(scorer=object(), summary=lambda: {"train_loss": [0.0]})
    monkeypatch.setattr(fs, "simulate_many", lambda runs, *a, **k: [outcome for _ in runs])
    monkeypatch.setattr(fe, "score_splits", lambda *a, **k: ScoreTable())
    out = fb.bench_federated(BenchContext(data_dir=data_dir, out=tmp_path))
    assert out.train_subjects and out.eval_subjects
    assert not set(out.train_subjects) & set(out.eval_subjects)
    # --quick (keystroke only) keeps the subjects it had
    ctx = BenchContext(data_dir=data_dir, out=tmp_path, quick=True)
    quick = fb._person_folds(ctx, fb.QUICK)["keystroke"]
    ref = ctx.folds("keystroke", max_subjects=fb.QUICK.max_subjects)[0]
    assert (quick.train_subjects, quick.eval_subjects) == (ref.train_subjects, ref.eval_subjects)
