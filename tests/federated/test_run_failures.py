"""A run that cannot go on says why, in time: in the status file, to `wait_for_run`, to the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import strategy_utils
from typer.testing import CliRunner

from federated import deployment as d
from federated.config import RunSettings, status_path
from federated.orchestration import FederatedRunError, failure_reason, run_training
from federated.strategies import QuorumError, build_strategy

W = {"a": np.zeros(3, np.float32)}


class _Grid:
    """Connected nodes as the test says; fails loudly instead of letting Flower wait forever."""

    def __init__(self, nodes: list[int], replies: list[Message] | None = None) -> None:
        self.nodes, self.replies, self.calls = nodes, replies or [], 0

    def get_node_ids(self) -> list[int]:
        self.calls += 1
        if self.calls > 50:
            raise AssertionError("waited forever for nodes")
        return list(self.nodes)

    def send_and_receive(self, messages, timeout):  # type: ignore[no-untyped-def]
        list(messages)
        return self.replies


def _sent(node: int) -> Message:
    return Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)


def _reply(node: int) -> Message:
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in W.items()}),
                          "metrics": MetricRecord({"num-examples": 4, "unit-weight": 1, "train-loss": 1.0})})
    return Message(content, reply_to=_sent(node))


def _failed(node: int) -> Message:
    return Message(Error(code=0, reason="node went offline"), reply_to=_sent(node))


@pytest.fixture(autouse=True)
def _no_flower_sleep(monkeypatch) -> None:
    # were Flower's own wait reached, fail fast (the grid counts calls) instead of sleeping 1 s per look
    monkeypatch.setattr(strategy_utils, "sleep", lambda _s: None)


def test_a_lost_device_fails_the_round_within_round_timeout(task_identity) -> None:
    st = build_strategy(RunSettings.from_config({"min-nodes": 2, "round-timeout": 0.3}), 2)
    grid = _Grid([11])  # the other SuperNode was killed
    with pytest.raises(QuorumError, match=r"round 2: 1 device\(s\) connected, 2 needed \(min-nodes\); waited 0 s"):
        st.configure_train(2, ArrayRecord({k: Array(v) for k, v in W.items()}), ConfigRecord(), grid)


def test_a_round_goes_on_with_the_devices_left_if_min_nodes_allows(task_identity) -> None:
    st = build_strategy(RunSettings.from_config({"min-nodes": 2, "round-timeout": 0.3}), 3)
    msgs = list(st.configure_train(2, ArrayRecord({k: Array(v) for k, v in W.items()}), ConfigRecord(),
                                   _Grid([11, 12])))  # 3 at the start, one gone
    assert sorted(m.metadata.dst_node_id for m in msgs) == [11, 12]
    arrays, _ = st.aggregate_train(2, [_reply(11), _reply(12), _failed(13)])
    assert arrays is not None
    with pytest.raises(QuorumError, match=r"round 2: 1 device\(s\) replied .* 2 needed.*node went offline"):
        st.aggregate_train(2, [_reply(11), _failed(12)])


def test_dp_needs_every_device_its_noise_was_calibrated_for(task_identity) -> None:
    s = RunSettings.from_config({"min-nodes": 2, "dp": True, "round-timeout": 0.2})
    st = build_strategy(s, 3)  # noise z C / 3: an average of 2 would be under-noised
    with pytest.raises(QuorumError, match=r"2 device\(s\) connected, 3 needed"):
        st.configure_train(1, ArrayRecord({k: Array(v) for k, v in W.items()}), ConfigRecord(), _Grid([1, 2]))


def test_a_failed_run_is_written_to_the_status_file(tmp_path: Path, task_identity) -> None:
    status = tmp_path / "status.json"
    s = RunSettings.from_config({"min-nodes": 3, "round-timeout": 0.2, "status-file": str(status)})
    with pytest.raises(FederatedRunError):
        run_training(_Grid([1, 2]), s)  # type: ignore[arg-type]
    st = json.loads(status.read_text())
    assert st["state"] == "failed" and "min-nodes: waited 0 s for 3 SuperNodes, 2 connected" in st["error"]
    assert failure_reason(SystemExit(0)).startswith("stopped before it finished")  # `flwr stop`, not "0"


def test_wait_for_run_stops_on_failed(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    status.write_text(json.dumps({"state": "failed", "error": "round 1: 1 device(s) replied"}))
    with pytest.raises(d.DeploymentError, match=r"run failed: round 1: 1 device\(s\) replied"):
        d.wait_for_run(status, 60, poll=0.01)


def test_wait_for_run_notices_a_run_flower_finished_without_a_word(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    status.write_text(json.dumps({"state": "running", "round": 1}))
    with pytest.raises(d.DeploymentError, match="run ended as finished:stopped: stopped by user"):
        d.wait_for_run(status, 60, flwr_status=lambda: ("finished:stopped", "stopped by user"), check_every=0, poll=0.01)

    def gone() -> tuple[str, str]:
        raise d.DeploymentError("connection refused")

    status.write_text(json.dumps({"state": "running", "round": 1}))  # the stop above was recorded as failed
    with pytest.raises(d.DeploymentError, match="SuperLink stopped answering"):
        d.wait_for_run(status, 60, flwr_status=gone, check_every=0, poll=0.01)
    done = {"state": "done", "round": 1, "version": "v0001"}

    def finished() -> tuple[str, str]:  # done written just before Flower marks the run finished
        status.write_text(json.dumps(done))
        return "finished:completed", ""

    status.write_text(json.dumps({"state": "running", "round": 1}))
    assert d.wait_for_run(status, 60, flwr_status=finished, check_every=0, poll=0.01)["version"] == "v0001"


def _cli_run(tmp_path: Path, monkeypatch, status_doc: dict, *extra: str) -> tuple[int, str]:
    from cadence.cli import app

    def submitted(workdir, config, app_dir=d.APP_DIR):  # type: ignore[no-untyped-def]
        assert RunSettings.from_config(config).as_config() == dict(config)  # every setting is sent
        path = status_path(config["status-file"], "7")  # where the ServerApp of run 7 writes
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(status_doc))
        return {"success": True, "run-id": "7"}

    monkeypatch.setattr(d, "submit_run", submitted)
    monkeypatch.setattr(d, "flwr_run_status", lambda *_a, **_k: ("running", ""))
    # `--activate` checks (and audits into) the database up front: the test's own, not ./cadence.sqlite
    monkeypatch.setenv("CADENCE_DATABASE_URL", f"sqlite:///{tmp_path / 'audit.sqlite'}")
    from cadence.settings import get_settings

    get_settings.cache_clear()  # read once per process: an earlier test's settings would stay
    try:
        r = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["federated", "run", "--workdir", str(tmp_path / "fw"),
                                                           "--registry", str(tmp_path / "reg"), "--timeout", "20",
                                                           *extra])
    finally:
        get_settings.cache_clear()  # not left pointing at this test's database
    return r.exit_code, r.output


def test_cli_run_ends_with_the_reason_when_the_run_failed(tmp_path: Path, monkeypatch) -> None:
    code, out = _cli_run(tmp_path, monkeypatch, {"state": "failed", "error": "min-nodes: waited 5 s for 3 SuperNodes"})
    assert code == 2 and "run failed: min-nodes: waited 5 s for 3 SuperNodes" in out and "Traceback" not in out


def test_cli_activate_goes_through_the_audited_path(tmp_path: Path, monkeypatch) -> None:
    """`--activate` is `cadence models activate` (its checks, its audit entry), not a bare registry call."""
    import cadence.commands.models as models

    calls: list[tuple] = []
    monkeypatch.setattr(models, "activate", lambda *a, **k: calls.append((*a, k)))
    code, out = _cli_run(tmp_path, monkeypatch, {"state": "done", "round": 2, "version": "v0001"}, "--activate")
    assert code == 0 and calls == [("keystroke", "v0001", {"registry": str((tmp_path / "reg").resolve())})]


def test_cli_activate_of_a_version_not_in_the_registry_is_an_error(tmp_path: Path, monkeypatch) -> None:
    """The real `cadence models activate` checks: a version the registry does not hold is refused."""
    code, out = _cli_run(tmp_path, monkeypatch, {"state": "done", "round": 2, "version": "v9999"}, "--activate")
    assert code == 2 and "error" in out and "v9999" in out and "Traceback" not in out


def test_cli_shares_without_secagg_say_to_add_secagg_whatever_their_values(tmp_path: Path, monkeypatch) -> None:
    """--num-shares 7 alone got SecAgg+'s own threshold advice, as if SecAgg+ were on."""
    for extra in (("--num-shares", "7"), ("--num-shares", "5", "--reconstruction-threshold", "3")):
        code, out = _cli_run(tmp_path, monkeypatch, {"state": "finished"}, *extra)
        said = " ".join(out.split())
        assert code == 2 and "SecAgg+ is not applied" in said and "--secagg" in said, out
        assert "rebuild" not in said
