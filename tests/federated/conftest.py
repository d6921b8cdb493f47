"""Fixtures of the federated tests."""

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from federated import deployment as d


@pytest.fixture
def task_identity():
    """Messages can only be built inside a run: give this process one, as run_simulation does."""
    from flwr.supercore.task_identity import TaskIdentity

    old = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = old


def flower_commands(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The Flower commands `cadence federated superlink` / `supernode` would run, recorded (nothing starts)."""
    import numpy as np

    from federated import deployment as d

    cmds: list[list[str]] = []
    monkeypatch.setattr(d, "find_bin", lambda name: name)

    def foreground(cmd: list[str], workdir: object) -> int:
        cmds.append(cmd)
        return 0

    monkeypatch.setattr(d, "run_foreground", foreground)
    monkeypatch.setattr("federated.features.read_device_file", lambda *a, **k: np.zeros((4, 2), np.float32))
    return cmds


RUNNER = CliRunner(env={"COLUMNS": "400"})


def _cli(*args: str) -> tuple[int, str]:
    from cadence.cli import app

    r = RUNNER.invoke(app, list(args))
    return r.exit_code, r.output


def _as_server_app(config: dict[str, Any], run_id: str) -> Path:
    """Where the ServerApp of run `run_id` writes its status (as `flwr run` would start it)."""
    from federated import config as cfg

    template = str(config["status-file"])
    placeholder = getattr(cfg, "RUN_ID_PLACEHOLDER", None)
    return Path(template.replace(placeholder, run_id)) if placeholder else Path(template)


@pytest.fixture
def fake_flower(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """`submit_run` / `flwr ls` / `flwr stop` faked; the test says what each run's ServerApp writes."""
    state: dict[str, Any] = {"next_id": ["7"], "write": None, "submitted": [], "stopped": [],
                             "stop_error": None, "flwr": ("running", "")}

    def submitted(workdir: Any, config: dict[str, Any], app_dir: Path = d.APP_DIR) -> dict[str, Any]:
        run_id = state["next_id"].pop(0)
        state["submitted"].append(dict(config))
        state.setdefault("apps", []).append(Path(app_dir))
        if state["write"] is not None:
            state["write"](run_id, _as_server_app(config, run_id), config)
        return {"success": True, "run-id": run_id}

    def stop(workdir: Any, run_id: Any, timeout: float = 60.0) -> None:
        state["stopped"].append(str(run_id))
        if state["stop_error"]:
            raise d.DeploymentError(state["stop_error"])

    monkeypatch.setattr(d, "submit_run", submitted)
    monkeypatch.setattr(d, "flwr_run_status", lambda *_a, **_k: state["flwr"])
    monkeypatch.setattr(d, "stop_run", stop, raising=False)
    return state


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def _run_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["federated", "run", "--workdir", str(tmp_path / "fw"), "--registry", str(tmp_path / "reg"), *extra]
