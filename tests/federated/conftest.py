"""Fixtures of the federated tests."""

import pytest


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
