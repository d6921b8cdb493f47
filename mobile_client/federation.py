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

The SuperNode takes part in SecAgg+ runs only (``--secagg-only``; `cadence federated run
--secagg`): a training server running Cadence's published software gets the sum of the
round's masked updates, never this device's own, and Cadence's plain app refuses this device
and any other app a run ships (`federated.pinned_app`): what the consent text says, which
also says it relies on the server following the SecAgg+ protocol (docs/federated.md).

The SuperNode connects with TLS, verifying the SuperLink against the operator's CA certificate
named in ``CADENCE_SUPERLINK_CA`` (the SuperLink's ``WORKDIR/tls/ca.crt``, docs/federated.md).
Without it, or with a file that is no usable CA certificate (not PEM, not a CA, expired), the
app does not take part (`tls_problem`, shown on the Privacy screen), unless
``CADENCE_SUPERLINK_INSECURE=1`` asks for an unencrypted connection (development only).
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
#: the operator's CA certificate the SuperNode verifies the SuperLink by (next to CADENCE_SUPERLINK)
CA_ENV = "CADENCE_SUPERLINK_CA"
#: "1": connect without TLS (a development SuperLink started with `--insecure`); never for real people
INSECURE_ENV = "CADENCE_SUPERLINK_INSECURE"


class FederationTLSError(ValueError):
    """No CA to verify the SuperLink by, and no development opt-out: the app does not take part."""


def tls_problem() -> str | None:
    """Why the app cannot connect to the SuperLink securely (for the log and the Privacy screen); None if it can."""
    if os.environ.get(INSECURE_ENV) == "1":
        return None
    ca = os.environ.get(CA_ENV, "").strip()
    if not ca:
        return f"{CA_ENV} is not set: no certificate to check the training server by"
    if not Path(ca).is_file():
        return f"{CA_ENV}={ca} is not a file: no certificate to check the training server by"
    unusable = _ca_file_problem()
    if unusable is not None:
        return f"{CA_ENV}={ca} {unusable}: no usable certificate to check the training server by"
    return None


def _ca_file_problem() -> str | None:
    """Why the file `CA_ENV` names is no usable CA certificate (`federated.deployment.ca_problem`); None if it is or none is named.

    Only `is_file()` was checked: the SuperNode then died on a file that is no certificate (its
    output goes nowhere) and the Privacy screen promised a start that never came.
    """
    ca = os.environ.get(CA_ENV, "").strip()
    if not ca or not Path(ca).is_file():
        return None
    from federated.deployment import ca_problem

    return ca_problem(ca)


def superlink_ca() -> Path | None:
    """The CA to verify the SuperLink by; None only with the development opt-out.

    Raises `FederationTLSError` (a `ValueError`: the app logs it and tries at the next start).
    """
    problem = tls_problem()
    if problem is not None:
        raise FederationTLSError(f"not connecting without TLS: {problem} (or {INSECURE_ENV}=1 for development)")
    if os.environ.get(INSECURE_ENV) == "1":
        log.warning("%s=1: the SuperNode connects WITHOUT TLS (development only)", INSECURE_ENV)
        return None
    return Path(os.environ[CA_ENV].strip())


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

    from federated.features import MIN_SUMMARY_WINDOWS, feature_spec, write_device_file

    spec = feature_spec(modality)
    ours = [w for w in windows if w.modality == modality]
    # windows of an older feature version (kept from before an app update) are other numbers:
    # the file is labelled with the current version, so they stay out
    rows = [w.values for w in ours if w.feature_version == spec.feature_version]
    if not rows:
        raise ValueError(f"windows: no {modality} windows of feature version {spec.feature_version} on this device yet"
                         + (f" ({len(ours)} of another version)" if ours else ""))
    if len(rows) < MIN_SUMMARY_WINDOWS:  # its SuperNode would refuse the scaling round anyway
        raise ValueError(f"windows: {len(rows)} {modality} window(s) on this device, fewer than the "
                         f"{MIN_SUMMARY_WINDOWS} it takes part with (their unmasked feature sums would give them back)")
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


def supernode_command(superlink: str, data_file: Path, workdir: Path, port: int, *, ca: Path | None = None,
                      insecure: bool = False) -> list[str]:
    """The documented operator command (docs/federated.md) for this device's SuperNode.

    TLS verified against `ca` (without one the command's own default: `workdir`'s CA, else it
    refuses to start); `insecure` (the development opt-out) is `--insecure`, by name only.
    `cadence` is looked up as the operator commands look up Flower's (next to this Python,
    then PATH); a `RuntimeError` saying so when it is nowhere.
    """
    from federated.deployment import find_bin

    exe = find_bin("cadence")
    security = ["--insecure"] if insecure else ["--root-certificates", str(ca)] if ca is not None else []
    # SecAgg+ runs only: the consent text promises that the server never reads this device's update alone
    return [exe, "federated", "supernode", "--workdir", str(workdir), "--superlink", superlink,
            "--data", str(data_file), "--port", str(port), "--secagg-only", *security]


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
    from federated.deployment import find_bin

    find_bin("cadence")  # the app's own install first: a missing program is said before a missing setting
    ca = superlink_ca()  # before anything is exported: without TLS nothing leaves this device
    data_file = export_windows(data_dir, windows, modality)
    try:
        env = dict(os.environ, FLWR_DISABLE_UPDATE_CHECK="1")
        cmd = supernode_command(superlink, data_file, data_dir / "flower", port, ca=ca, insecure=ca is None)
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
        return "On: taking part in training now (masked model updates and a summary of your measurements leave this device, never recordings)"
    if node is not None:
        return "On: training stopped on this computer; it starts again the next time you open Cadence"
    if stopped:
        return stopped
    if os.environ.get("CADENCE_SUPERLINK") and tls_problem() is not None:
        unusable = _ca_file_problem()
        if unusable is not None:
            return (f"On, but not taking part: the certificate this computer has to check your bank's training "
                    f"server by {unusable}, so it will not connect (it never trains over an unencrypted connection)")
        return ("On, but not taking part: this computer has no certificate to check your bank's training server "
                "by, so it will not connect (it never trains over an unencrypted connection)")
    return "On: will take part when your bank runs a training round"
