"""Federated participation: run a Flower SuperNode for this device's own data (desktop only).

When the person allows federated training, the desktop app writes its own feature windows
(computed from its own raw events, never anyone else's) as a device file in the federated
package's format (`federated.features.write_device_file`) and starts the documented operator
entry point `cadence federated supernode --superlink HOST:PORT --data FILE` (docs/federated.md),
so the federated ClientApp trains on this person's data only. On Android this
does not run: Flower needs grpcio, which python-for-android cannot build; the Android app still
collects, extracts features and talks to the API.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mobile_client.platform_info import can_run_flower
from modalities.events import FeatureWindow

log = logging.getLogger(__name__)


def export_windows(folder: Path, windows: Sequence[FeatureWindow], modality: str) -> Path:
    """Write this device's own windows of `modality` as a federated device file (features only)."""
    import numpy as np

    from federated.features import feature_spec, write_device_file

    rows = [w.values for w in windows if w.modality == modality]
    if not rows:
        raise ValueError(f"windows: no {modality} windows on this device yet")
    folder.mkdir(parents=True, exist_ok=True)
    return write_device_file(folder / f"device-{modality}.npz", np.vstack(rows), feature_spec(modality))


def supernode_command(superlink: str, data_file: Path, workdir: Path, port: int) -> list[str]:
    """The documented operator command (docs/federated.md) for this device's SuperNode.

    `cadence` is looked up as the operator commands look up Flower's (next to this Python,
    then PATH); a `RuntimeError` saying so when it is nowhere.
    """
    from federated.deployment import find_bin

    exe = find_bin("cadence")
    return [exe, "federated", "supernode", "--workdir", str(workdir), "--superlink", superlink,
            "--data", str(data_file), "--port", str(port)]


@dataclass
class SuperNode:
    """A running `cadence federated supernode` (and its `flower-supernode`) started by the app."""

    process: subprocess.Popen[bytes]
    data_dir: Path

    def stop(self) -> None:
        """Stop the SuperNode and every process it started, and wait for them.

        Terminating only the wrapper left flower-supernode training after the person turned
        federated training off.
        """
        from federated.deployment import stop

        stop(self.process)

    @property
    def running(self) -> bool:
        return self.process.poll() is None


def start_supernode(superlink: str, data_dir: Path, windows: Sequence[FeatureWindow], modality: str,
                    port: int) -> SuperNode:
    """Export this device's windows and start a SuperNode for them (desktop only)."""
    if not can_run_flower():
        raise RuntimeError("federated training needs Flower (grpcio): not available on this build")
    data_file = export_windows(data_dir, windows, modality)
    env = dict(os.environ, FLWR_DISABLE_UPDATE_CHECK="1")
    cmd = supernode_command(superlink, data_file, data_dir / "flower", port)
    log.info("starting %s", " ".join(cmd))
    # own process group, so `SuperNode.stop` can end it and everything it started
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return SuperNode(proc, data_dir)


def status_text(allowed: bool, node: SuperNode | None) -> str:
    if not allowed:
        return "Off: your phone does not take part in training"
    if not can_run_flower():
        return "On: training is not available on this phone yet (needs Flower, desktop builds only)"
    if node is not None and node.running:
        return "On: taking part in training now (only model updates leave this device)"
    return "On: will take part when your bank runs a training round"
