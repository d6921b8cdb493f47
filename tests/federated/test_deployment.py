"""End to end on Flower's deployment engine: a real SuperLink, two SuperNodes, two rounds."""

import pytest

from federated import deployment as d
from federated.features import feature_spec, subject_windows, write_device_files


@pytest.mark.slow
def test_superlink_two_supernodes_two_rounds_publish_a_model(data_dir, tmp_path) -> None:
    import psutil

    from modalities.registry import ModelRegistry

    windows = subject_windows("keystroke", data_dir, [1, 2], max_windows=12)  # tiny: the test is the plumbing
    files = write_device_files(tmp_path / "devices", windows, feature_spec("keystroke"))
    port = d.free_port()
    procs = []
    spawned: list[int] = []
    try:
        link = d.spawn(d.superlink_cmd("127.0.0.1", port), tmp_path, "superlink")
        procs.append(link)
        d.wait_for_port("127.0.0.1", port, 90, link)
        for i, f in enumerate(files):
            procs.append(d.spawn(d.supernode_cmd(f"127.0.0.1:{port}", f, d.free_port()), tmp_path, f"supernode-{i}"))
        d.write_connection(tmp_path, f"127.0.0.1:{port}")
        status = tmp_path / "status.json"
        info = d.submit_run(tmp_path, {"modality": "keystroke", "num-server-rounds": 2, "status-file": str(status),
                                       "registry": str(tmp_path / "registry")})
        assert info.get("success") is True
        final = d.wait_for_run(status, 400)
        for p in procs:
            spawned += [p.pid, *d.descendants(p.pid)]
    finally:
        for p in procs:
            d.stop(p)
    assert final["state"] == "done" and final["round"] == 2 and final["num_devices"] == 2
    assert len(final["summary"]["train_loss"]) == 2
    reg = ModelRegistry(tmp_path / "registry")
    version = final["version"]
    reg.activate("keystroke", version)
    scorer = reg.load("keystroke")
    X = windows[1]
    assert scorer.compare(scorer.enroll(X[:6]), X[6:12]).shape == (6,)
    # until it is calibrated the server leaves its evidence out; `models calibrate` fits its calibrator
    from server.training import calibrate_published

    rep = calibrate_published(data_dir, tmp_path / "registry", "keystroke", max_subjects=6)
    assert rep.version == version and rep.scorer == "federated-embedding" and rep.subjects >= 3
    from fusion.engine import FusionEngine

    engine = FusionEngine.load(rep.calibration_file)
    assert engine.applies("keystroke", f"registry:{version}") and engine.fitted_for("keystroke") == version
    assert all(p.poll() is not None for p in procs)
    assert not [pid for pid in spawned if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def test_a_refused_submission_raises_instead_of_waiting() -> None:
    """A refused `flwr run` is an error, not a run to wait for.

    `flwr run` exits 0 with ``success: false`` when no SuperLink is configured; taken as a
    submitted run, the CLI would wait for it until its timeout.
    """
    refused = ('{"success": false, "error-message": "\\nFlower configuration not found. SuperLink connection '
               '\'cadence\' not found in the Flower configuration file"}')
    with pytest.raises(d.DeploymentError, match="refused the run: Flower configuration not found.*cadence federated superlink"):
        d._submitted(refused, "work")
    with pytest.raises(d.DeploymentError, match="no JSON answer"):
        d._submitted("Traceback ...", "work")
    assert d._submitted('log line\n{"success": true, "run-id": "42"}', "work")["run-id"] == "42"
