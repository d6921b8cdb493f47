"""The operator flow's edges (docs/federated.md, "Operator flow"): fast tests, no Flower process started.

Two runs from one workdir, bad numbers, a run given up on (Ctrl-C, SIGTERM, --timeout), an
unusable registry, a SuperLink restart, an empty dataset folder, a port in use, `flwr stop`
recorded, a refused run leaving the last status alone, the same data on two SuperNodes.
"""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict

from federated import deployment as d
from federated.config import RunSettings, SettingsError
from federated.features import feature_spec
from federated.orchestration import FederatedRunError, RunOutcome, population_scaling, publish
from federated.scorer import EmbeddingScorer
from tests.federated.conftest import _as_server_app, _cli, _run_args, _write, flower_commands

# ---------------------------------------------------------------- 1. two runs, one workdir


def test_two_runs_in_one_workdir_each_report_their_own_model(tmp_path: Path, fake_flower: dict[str, Any]) -> None:
    """Run 8 is followed while run 7 (started from the same workdir) publishes v0001: run 8 reports its v0002.

    Before: one fixed status.json, so run 8 printed run 7's version and never its own.
    """
    seven: dict[str, Path] = {}

    def write(run_id: str, path: Path, config: dict[str, Any]) -> None:
        _write(path, {"run_id": run_id, "state": "running", "round": 1, "num_rounds": 3})
        seven["path"] = other = _as_server_app(config, "7")

        def later() -> None:
            time.sleep(0.3)  # run 7, submitted from the same workdir earlier, publishes while run 8 trains
            _write(other, {"run_id": "7", "state": "done", "round": 2, "num_rounds": 2, "version": "v0001"})
            time.sleep(2.5)
            _write(path, {"run_id": run_id, "state": "done", "round": 3, "num_rounds": 3, "version": "v0002"})

        threading.Thread(target=later, daemon=True).start()

    fake_flower["next_id"] = ["8"]
    fake_flower["write"] = write
    code, out = _cli(*_run_args(tmp_path, "--timeout", "20"))
    assert code == 0, out
    assert "published keystroke v0002" in out and "v0001" not in out
    assert seven["path"].exists(), "the other run's status was deleted"
    # `status` shows the last run submitted here, `--run-id` any other
    code, out = _cli("federated", "status", "--workdir", str(tmp_path / "fw"))
    assert code == 0 and json.loads(out)["version"] == "v0002"
    code, out = _cli("federated", "status", "--workdir", str(tmp_path / "fw"), "--run-id", "7")
    assert code == 0 and json.loads(out)["version"] == "v0001"


def test_wait_for_run_ignores_another_runs_status(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    status.write_text(json.dumps({"run_id": "7", "state": "done", "round": 2, "version": "v0001"}))
    with pytest.raises(d.DeploymentError, match="not done after"):
        d.wait_for_run(status, 0.3, poll=0.01, run_id="8")
    status.write_text(json.dumps({"run_id": "8", "state": "done", "round": 2, "version": "v0002"}))
    assert d.wait_for_run(status, 5, poll=0.01, run_id="8")["version"] == "v0002"


def test_the_server_app_writes_its_status_under_its_run_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from federated import server_app

    seen: list[tuple[str, Any]] = []

    def training(grid: Any, s: RunSettings, run_id: Any = None) -> RunOutcome:
        seen.append((s.status_file, run_id))
        return None  # type: ignore[return-value]

    monkeypatch.setattr(server_app, "run_training", training)
    template = str(d.status_template(tmp_path))
    ctx = Context(run_id=4242, node_id=0, node_config={}, state=RecordDict(), run_config={"status-file": template})
    server_app.make_app()(None, ctx)  # type: ignore[arg-type]
    assert seen == [(str(tmp_path.resolve() / "status-4242.json"), 4242)]
    # a bad value is reported in the run's own file too
    ctx = Context(run_id=4243, node_id=0, node_config={}, state=RecordDict(),
                  run_config={"status-file": template, "lr": float("nan")})
    with pytest.raises(SettingsError):
        server_app.make_app()(None, ctx)  # type: ignore[arg-type]
    doc = json.loads((tmp_path / "status-4243.json").read_text())
    assert doc["state"] == "failed" and "lr" in doc["error"] and doc["run_id"] == "4243"


# ---------------------------------------------------------------- 2, 3. numbers that must not pass


@pytest.mark.parametrize("key", ["noise-multiplier", "clipping-norm", "lr", "server-lr", "round-timeout",
                                 "server-momentum", "fraction-train", "dp-delta", "trim-beta", "proximal-mu"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_settings_are_refused_by_name(key: str, value: float) -> None:
    with pytest.raises(SettingsError, match=key):
        RunSettings.from_config({key: value, "dp": True})
    with pytest.raises(SettingsError, match=key):
        RunSettings.from_config({key: str(value)})  # as `--run-config` strings arrive


def test_dp_without_noise_or_with_a_robust_strategy_is_refused_up_front() -> None:
    for z in (0.0, -1.0):
        with pytest.raises(SettingsError, match="noise-multiplier"):
            RunSettings.from_config({"dp": True, "noise-multiplier": z})
    assert RunSettings.from_config({"dp": False, "noise-multiplier": 0.0}).noise_multiplier == 0.0
    for strategy in ("krum", "fedmedian", "trimmed-mean"):
        with pytest.raises(SettingsError, match=f"strategy: .*not {strategy}"):
            RunSettings.from_config({"dp": True, "strategy": strategy})
    assert RunSettings.from_config({"dp": True, "strategy": "fedprox"}).dp


@pytest.mark.parametrize("extra", [("--dp", "--noise-multiplier", "nan"), ("--dp", "--noise-multiplier", "0"),
                                   ("--dp", "--noise-multiplier", "inf"), ("--dp", "--strategy", "krum"),
                                   ("--clipping-norm", "nan"), ("--round-timeout", "nan"),
                                   ("--dp", "--noise-multiplier", "0.000001"),  # epsilon ~1e12, labelled DP
                                   ("--strategy", "krum", "--min-nodes", "3"),  # needs 2f + 3 = 5
                                   ("--strategy", "trimmed-mean", "--min-nodes", "3")])  # trims int(0.2 x 3) = 0
def test_cli_refuses_them_before_submitting(tmp_path: Path, fake_flower: dict[str, Any], extra: tuple[str, ...]) -> None:
    code, out = _cli(*_run_args(tmp_path, "--timeout", "5", *extra))
    assert code == 2 and "error" in out and "Traceback" not in out
    assert fake_flower["submitted"] == []


def _outcome(weights: dict[str, np.ndarray]) -> RunOutcome:
    scorer = EmbeddingScorer.from_weights(weights, np.zeros(4, np.float32), np.ones(4, np.float32),
                                          modality="keystroke", feature_version="x")
    return RunOutcome(modality="keystroke", strategy="fedavg", rounds=2, num_devices=2, dp=True, epsilon=3.0,
                      delta=1e-3, noise_multiplier=1.0, clipping_norm=1.0, bytes_per_client_per_round=1,
                      download_bytes_per_client_per_round=1, wall_seconds=1.0, scorer=scorer)


def test_a_model_with_non_finite_weights_is_not_published(tmp_path: Path) -> None:
    good = {"fc1.weight": np.ones((3, 4), np.float32), "fc1.bias": np.zeros(3, np.float32),
            "fc2.weight": np.ones((2, 3), np.float32), "fc2.bias": np.zeros(2, np.float32)}
    s = RunSettings.from_config({"registry": str(tmp_path / "reg")})
    for bad in (math.nan, math.inf):
        w = {**good, "fc2.weight": np.full((2, 3), bad, np.float32)}
        with pytest.raises(FederatedRunError, match="non-finite .*fc2.weight.*nothing was published"):
            publish(_outcome(w), s)
    assert not any((tmp_path / "reg").rglob("*.npz")), "a non-finite model reached the registry"
    assert publish(_outcome(good), s)


# ---------------------------------------------------------------- 4. a run given up on is stopped


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_timeout_must_be_positive(tmp_path: Path, fake_flower: dict[str, Any], value: str) -> None:
    code, out = _cli(*_run_args(tmp_path, "--timeout", value))
    assert code == 2 and "--timeout" in out and fake_flower["submitted"] == []


def test_timeout_stops_the_flower_run_and_says_so(tmp_path: Path, fake_flower: dict[str, Any]) -> None:
    fake_flower["write"] = lambda rid, path, cfg: _write(path, {"run_id": rid, "state": "running", "round": 1})
    code, out = _cli(*_run_args(tmp_path, "--timeout", "0.5"))
    assert code == 2 and fake_flower["stopped"] == ["7"]
    assert "run 7" in out and "stopped it" in out and "not done after 0.5 s" in out
    doc = json.loads((tmp_path / "fw" / "status-7.json").read_text())
    assert doc["state"] == "failed" and "stopped" in doc["error"]


def test_a_stop_that_fails_names_the_run_and_the_command(tmp_path: Path, fake_flower: dict[str, Any]) -> None:
    fake_flower["write"] = lambda rid, path, cfg: _write(path, {"run_id": rid, "state": "running", "round": 1})
    fake_flower["stop_error"] = "flwr stop gave no answer"
    code, out = _cli(*_run_args(tmp_path, "--timeout", "0.5"))
    flat = " ".join(out.split())
    assert code == 2 and "run 7" in flat and "still going" in flat
    assert f"FLWR_HOME={(tmp_path / 'fw').resolve() / 'flwr-home'} flwr stop 7 cadence" in flat


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_following_stops_the_flower_run(tmp_path: Path, fake_flower: dict[str, Any],
                                                      monkeypatch: pytest.MonkeyPatch, sig: signal.Signals) -> None:
    real_wait = d.wait_for_run

    def wait(*a: Any, **k: Any) -> dict[str, Any]:
        signal.raise_signal(sig)  # Ctrl-C / kill while the rounds run
        return real_wait(*a, **k)

    monkeypatch.setattr(d, "wait_for_run", wait)
    fake_flower["write"] = lambda rid, path, cfg: _write(path, {"run_id": rid, "state": "running", "round": 1})
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    code, out = _cli(*_run_args(tmp_path, "--timeout", "30"))
    assert code == 128 + sig and fake_flower["stopped"] == ["7"]
    assert f"interrupted ({sig.name})" in out and "stopped it" in out
    assert {s: signal.getsignal(s) for s in before} == before, "signal handlers left replaced"


def test_stop_run_is_flwr_stop_with_the_workdirs_flower_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], dict[str, str]]] = []
    answer = ['{"success": true, "run-id": "7"}']

    def fake_run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append((cmd, kw["env"]))
        return subprocess.CompletedProcess(cmd, 0, stdout=answer[0], stderr="")

    monkeypatch.setattr(d.subprocess, "run", fake_run)
    monkeypatch.setattr(d, "find_bin", lambda name: name)
    d.stop_run(tmp_path, "7")
    cmd, env = calls[0]
    assert cmd == ["flwr", "stop", "7", "cadence", "--format", "json"]
    assert env["FLWR_HOME"] == str(tmp_path.resolve() / "flwr-home") and env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    answer[0] = '{"success": false, "error-message": "Stopping run ID 7...\\n[code: 16] Run ID not found."}'
    with pytest.raises(d.DeploymentError, match="Run ID not found"):
        d.stop_run(tmp_path, "7")


# ---------------------------------------------------------------- 5. registry checked up front


def test_an_unusable_registry_is_refused_before_the_run(tmp_path: Path, fake_flower: dict[str, Any]) -> None:
    blocker = tmp_path / "reg"
    blocker.write_text("a file, not a folder")
    code, out = _cli(*_run_args(tmp_path, "--timeout", "5"))
    assert code == 2 and "--registry" in out and "Traceback" not in out
    assert fake_flower["submitted"] == []


# ---------------------------------------------------------------- 6. SuperLink state survives a restart


def test_the_superlink_keeps_its_state_in_the_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cmds = flower_commands(monkeypatch)
    code, out = _cli("federated", "superlink", "--workdir", str(tmp_path / "fw"), "--port", str(d.free_port()))
    assert code == 0, out
    assert cmds[0][cmds[0].index("--database") + 1] == str((tmp_path / "fw").resolve() / "superlink.db")


# ---------------------------------------------------------------- 7. prepare on a folder without data


def test_prepare_without_dataset_files_is_a_clear_error_and_leaves_no_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out_dir = tmp_path / "devices"
    code, out = _cli("federated", "prepare", "--modality", "keystroke", "--data-dir", str(empty),
                     "--out", str(out_dir), "--subjects", "1,2")
    assert code == 2 and "error:" in out and "Traceback" not in out
    assert not out_dir.exists(), "an empty out folder was left behind"


# ---------------------------------------------------------------- 8. a port in use


def test_a_port_in_use_is_a_clear_error_before_flower_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = flower_commands(monkeypatch)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        code, out = _cli("federated", "superlink", "--workdir", str(tmp_path / "fw"), "--port", port)
        assert code == 2 and f"port {port}" in out and "--port" in out and "Traceback" not in out
        assert not (tmp_path / "fw").exists()  # refused before its workdir (and CA) was made
        code, out = _cli("federated", "supernode", "--workdir", str(tmp_path / "fw"), "--data", str(tmp_path / "x.npz"),
                         "--port", port)
        assert code == 2 and f"port {port}" in out and "Traceback" not in out
    assert started == []


# ---------------------------------------------------------------- 9. `flwr stop` recorded


def test_a_run_flower_finished_without_a_word_is_recorded_as_failed(tmp_path: Path) -> None:
    status = tmp_path / "status-7.json"
    status.write_text(json.dumps({"run_id": "7", "state": "running", "round": 1}))
    with pytest.raises(d.DeploymentError, match="finished:stopped"):
        d.wait_for_run(status, 60, flwr_status=lambda: ("finished:stopped", "stopped by user"), check_every=0,
                       poll=0.01)
    doc = json.loads(status.read_text())
    assert doc["state"] == "failed" and "finished:stopped" in doc["error"] and doc["round"] == 1


# ---------------------------------------------------------------- 10. a refused run touches nothing


def test_a_refused_run_leaves_the_last_runs_status(tmp_path: Path, fake_flower: dict[str, Any]) -> None:
    wd = tmp_path / "fw"
    _write(wd / "status.json", {"state": "done", "version": "v0001"})
    code, out = _cli(*_run_args(tmp_path, "--strategy", "bogus", "--timeout", "5"))
    assert code == 2 and "strategy" in out
    assert json.loads((wd / "status.json").read_text())["version"] == "v0001"
    code, out = _cli("federated", "status", "--workdir", str(wd))
    assert json.loads(out)["version"] == "v0001"  # no run-id pointer yet: the old file is the last run


# ---------------------------------------------------------------- smaller


def test_run_says_which_superlink_it_waits_for_first(tmp_path: Path, fake_flower: dict[str, Any]) -> None:
    d.write_connection(tmp_path / "fw", "127.0.0.1:9300")
    fake_flower["write"] = lambda rid, path, cfg: _write(path, {"run_id": rid, "state": "done", "round": 1,
                                                                "version": "v0001"})
    code, out = _cli(*_run_args(tmp_path, "--timeout", "5"))
    assert code == 0 and out.splitlines()[0].startswith("waiting for the SuperLink at 127.0.0.1:9300")


def _scaling_reply(node: int, X: np.ndarray, key: str) -> Message:
    sent = Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY)
    content = RecordDict({"sums": ArrayRecord({"sum": Array(X.sum(0)), "sumsq": Array((X ** 2).sum(0))}),
                          "metrics": MetricRecord({"num-examples": len(X)}), "device": ConfigRecord({"key": key})})
    return Message(content, reply_to=sent)


class _Grid:
    def __init__(self, replies: Callable[[], list[Message]]) -> None:
        self.replies = replies

    def send_and_receive(self, messages: Any, timeout: float) -> list[Message]:
        list(messages)
        return self.replies()


def test_the_same_data_on_two_supernodes_is_refused(task_identity: None) -> None:
    rng = np.random.default_rng(0)
    dim = feature_spec("keystroke").dim  # sums of another size are left out before this check
    a, b = rng.normal(size=(6, dim)).astype(np.float32), rng.normal(size=(6, dim)).astype(np.float32)
    s = RunSettings()
    same = _Grid(lambda: [_scaling_reply(1, a, "data-x"), _scaling_reply(2, a, "data-x")])
    with pytest.raises(FederatedRunError, match="SuperNodes 1 and 2 hold the same data"):
        population_scaling(same, [1, 2], s, {})  # type: ignore[arg-type]
    # same key (the same path on two phones), different data: allowed
    keys: dict[int, str] = {}
    fine = _Grid(lambda: [_scaling_reply(1, a, "data-x"), _scaling_reply(2, b, "data-x")])
    population_scaling(fine, [1, 2], s, keys)  # type: ignore[arg-type]
    assert keys == {1: "data-x", 2: "data-x"}
