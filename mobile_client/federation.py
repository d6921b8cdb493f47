"""Federated participation: run a Flower SuperNode for this device's own data (desktop only).

When the person allows federated training, the desktop app writes its own feature windows
(computed from its own raw events, never anyone else's) as a device file in the federated
package's format (`federated.features.write_device_file`) and starts the documented operator
entry point `cadence federated supernode --superlink HOST:PORT --data FILE` (docs/federated.md),
so the federated ClientApp trains on this person's data only. On Android this
does not run: Flower needs grpcio, which python-for-android cannot build; the Android app still
collects, extracts features and talks to the API.

The device file holds the person's feature windows unencrypted (the SuperNode reads it), so it
is written owner-only (0600, in a 0700 folder) and lives only while the SuperNode runs:
`SuperNode.stop` deletes it, and the app deletes the whole `federated/` folder when federated
training is withdrawn and on "Delete my data" (`controllers/privacy.py`). Windows are cut one
recording (app run) at a time (`recording_windows`): event times of different boots are on
different clocks and must not be put in one time line.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mobile_client.platform_info import can_run_flower
from modalities.events import FeatureWindow

if TYPE_CHECKING:
    from mobile_client.raw_store import RawEventStore

log = logging.getLogger(__name__)

#: the modality the app trains on (the one `CadenceApp.start_federation` exports)
TRAINED_MODALITY = "keystroke"
#: the app's folder for federated training, under its data folder
FOLDER = "federated"


def recording_windows(store: RawEventStore, modality: str) -> list[FeatureWindow]:
    """Feature windows of every stored `modality` recording, each cut on its own (never across two).

    Only windows the app would send (`features.MIN_WINDOW_QUALITY`): a short recording's thin
    window is not a sample of how this person types.
    """
    from mobile_client import features

    floor = features.MIN_WINDOW_QUALITY.get(modality, 0.0)
    return [w for events in store.read_recordings(modality) for w in features.windows_for(modality, events)
            if w.quality >= floor]


def export_windows(folder: Path, windows: Sequence[FeatureWindow], modality: str) -> Path:
    """Write this device's own windows of `modality` as a federated device file (features only).

    Owner-only (0600) from the start: written to a private temporary file, then renamed.
    """
    import numpy as np

    from federated.features import feature_spec, write_device_file

    spec = feature_spec(modality)
    ours = [w for w in windows if w.modality == modality]
    # windows of an older feature version (kept from before an app update) are other numbers:
    # the file is labelled with the current version, so they stay out
    rows = [w.values for w in ours if w.feature_version == spec.feature_version]
    if not rows:
        raise ValueError(f"windows: no {modality} windows of feature version {spec.feature_version} on this device yet"
                         + (f" ({len(ours)} of another version)" if ours else ""))
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    path = folder / f"device-{modality}.npz"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".device-{modality}.", suffix=".npz")  # mode 0600
    os.close(fd)
    try:
        write_device_file(tmp, np.vstack(rows), spec)  # truncates the file: its mode stays
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    #: the exported windows it trains on: deleted when it stops
    data_file: Path | None = None

    def stop(self) -> None:
        """Stop the SuperNode and every process it started, wait for them, and delete its data file.

        Terminating only the wrapper left flower-supernode training after the person turned
        federated training off.
        """
        from federated.deployment import stop

        try:
            stop(self.process)
        finally:
            if self.data_file is not None:
                self.data_file.unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        return self.process.poll() is None


def start_supernode(superlink: str, data_dir: Path, windows: Sequence[FeatureWindow], modality: str,
                    port: int) -> SuperNode:
    """Export this device's windows and start a SuperNode for them (desktop only)."""
    if not can_run_flower():
        raise RuntimeError("federated training needs Flower (grpcio): not available on this build")
    data_file = export_windows(data_dir, windows, modality)
    try:
        env = dict(os.environ, FLWR_DISABLE_UPDATE_CHECK="1")
        cmd = supernode_command(superlink, data_file, data_dir / "flower", port)
        log.info("starting %s", " ".join(cmd))
        # own process group, so `SuperNode.stop` can end it and everything it started
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    except BaseException:  # nothing trains on it: the exported windows do not stay behind
        data_file.unlink(missing_ok=True)
        raise
    return SuperNode(proc, data_dir, data_file)


def status_text(allowed: bool, node: SuperNode | None, stopped: str | None = None) -> str:
    """The federated-training line of the Privacy screen.

    `stopped`: why the app stopped training during this run (a consent withdrawn), if it did.
    """
    if not allowed:
        return "Off: your phone does not take part in training"
    if not can_run_flower():
        return "On: training is not available on this phone yet (needs Flower, desktop builds only)"
    if node is not None and node.running:
        return "On: taking part in training now (only model updates leave this device)"
    if node is not None:
        return "On: training stopped on this computer; it starts again the next time you open Cadence"
    if stopped:
        return stopped
    return "On: will take part when your bank runs a training round"
