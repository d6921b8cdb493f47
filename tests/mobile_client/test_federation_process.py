"""The app's SuperNode: stopping it stops every process it started; a missing `cadence` is a clear error."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from tests.processes import alive, cmdline

pytest.importorskip("flwr")


def test_stop_leaves_no_flower_process_training(tmp_path: Path, monkeypatch) -> None:
    from evaluation.synthetic import SyntheticPerson
    from federated import deployment as d
    from mobile_client import features
    from mobile_client.federation import start_supernode

    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
    monkeypatch.setenv("CADENCE_SUPERLINK_CA", str(d.ensure_tls(tmp_path / "operator", "127.0.0.1").ca))
    windows = features.keystroke_windows(SyntheticPerson(1).keystrokes(200, 0).to_events())
    # no SuperLink at that address: flower-supernode keeps retrying, as it would between rounds
    node = start_supernode(f"127.0.0.1:{d.free_port()}", tmp_path, windows, "keystroke", d.free_port())
    kids: list[int] = []
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60 and node.running:
            kids = d.descendants(node.process.pid)
            if any("flower-supernode" in cmdline(k) for k in kids):
                break
            time.sleep(0.5)
        assert node.running and kids, "the SuperNode did not start"
        node.stop()
        assert not node.running
        assert not alive(kids), f"left running after stop(): {alive(kids)}"
    finally:
        for k in alive(kids):
            os.kill(k, 9)
        if node.running:
            node.process.kill()


def test_a_missing_cadence_binary_is_a_clear_runtime_error(tmp_path: Path, monkeypatch) -> None:
    from mobile_client.federation import supernode_command

    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="cadence: not found"):
        supernode_command("127.0.0.1:9300", tmp_path / "d.npz", tmp_path / "fw", 9401, ca=tmp_path / "ca.crt")
