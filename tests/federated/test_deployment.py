"""End to end on Flower's deployment engine: a real SuperLink, two SuperNodes, two rounds, over TLS; then SecAgg+."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from federated import deployment as d
from federated.config import RunSettings
from federated.features import feature_spec, subject_windows, write_device_files
from tests.processes import alive, cmdline, still_alive


@pytest.mark.slow
def test_superlink_two_supernodes_two_rounds_publish_a_model(data_dir, tmp_path) -> None:
    """The operator flow over TLS: the workspace's CA, its SuperLink certificate, `flwr` verifying both.

    A third SuperNode trusting another CA cannot connect (the SuperLink's certificate fails
    verification): the connections are encrypted and authenticated, not just encrypted.
    """
    from modalities.registry import ModelRegistry

    windows = subject_windows("keystroke", data_dir, [1, 2, 3], max_windows=12)  # tiny: the test is the plumbing
    files = write_device_files(tmp_path / "devices", windows, feature_spec("keystroke"))
    files, third = files[:2], files[2]  # the third device joins for the SecAgg+ run (3 devices at least)
    port = d.free_port()
    procs = []
    spawned: list[int] = []
    try:
        tls = d.ensure_tls(tmp_path, "127.0.0.1")
        link = d.spawn(d.superlink_cmd("127.0.0.1", port, tmp_path / d.SUPERLINK_DB, tls=tls), tmp_path, "superlink")
        procs.append(link)
        d.wait_for_port("127.0.0.1", port, 90, link)
        for i, f in enumerate(files):
            procs.append(d.spawn(d.supernode_cmd(f"127.0.0.1:{port}", f, d.free_port(), root_certificates=tls.ca),
                                 tmp_path, f"supernode-{i}"))
        stranger_ca = d.ensure_tls(tmp_path / "elsewhere", "127.0.0.1").ca  # another workspace's CA
        stranger = d.spawn(d.supernode_cmd(f"127.0.0.1:{port}", files[0], d.free_port(),
                                           root_certificates=stranger_ca), tmp_path, "supernode-stranger")
        procs.append(stranger)
        d.write_connection(tmp_path, f"127.0.0.1:{port}")  # TLS: root-certificates = the workspace's CA
        # every setting, as `cadence federated run` sends them: an undeclared key is refused by the SuperLink;
        # the ServerApp fills its run id into status-{run-id}.json: the id `flwr run` answered
        settings = RunSettings.from_config({"modality": "keystroke", "num-server-rounds": 2,
                                            "status-file": str(d.status_template(tmp_path)),
                                            "registry": str(tmp_path / "registry")})
        info = d.submit_run(tmp_path, settings.as_config())
        assert info.get("success") is True
        status = d.run_status_file(tmp_path, info["run-id"])
        final = d.wait_for_run(status, 400, flwr_status=lambda: d.flwr_run_status(tmp_path, info["run-id"]),
                               run_id=info["run-id"])
        assert final["run_id"] == str(info["run-id"])
        # the same devices and a third, now under SecAgg+ (`cadence federated run --secagg`: the app
        # federated/app-secagg), all three taking part in SecAgg+ runs only, as the desktop app's;
        # one round: each of its four protocol stages starts a ClientApp process on every SuperNode;
        # with DP: the devices clip before masking, the server adds the noise to the unmasked sum
        procs.append(d.spawn(d.supernode_cmd(f"127.0.0.1:{port}", third, d.free_port(), root_certificates=tls.ca,
                                             secagg_only=True), tmp_path, "supernode-2"))
        sa_info = d.submit_run(tmp_path, {**settings.as_config(), "num-server-rounds": 1, "dp": True, "min-nodes": 3},
                               app_dir=d.SECAGG_APP_DIR)
        sa_final = d.wait_for_run(d.run_status_file(tmp_path, sa_info["run-id"]), 400, run_id=sa_info["run-id"],
                                  flwr_status=lambda: d.flwr_run_status(tmp_path, sa_info["run-id"]))
        # a run that cannot start: tests/federated/test_run_failures.py
        for p in procs:
            spawned += [p.pid, *d.descendants(p.pid)]
    finally:
        for p in procs:
            d.stop(p)
    assert final["state"] == "done" and final["round"] == 2 and final["num_devices"] == 2
    assert "CERTIFICATE_VERIFY_FAILED" in (tmp_path / "logs" / "supernode-stranger.log").read_text()
    assert "--insecure" not in " ".join(link.args)  # type: ignore[arg-type]
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
    # SecAgg+: the round unmasked and aggregated, the model published with the protocol recorded
    assert sa_final["state"] == "done" and sa_final["round"] == 1 and sa_final["num_devices"] == 3, sa_final
    sa = reg.get("keystroke", sa_final["version"])
    assert sa.metrics["secure_aggregation"]["num_shares"] == 3 and sa.source == "federated:fedavg+dp+secagg"
    assert sa.metrics["dp"] is True and 0 < sa.metrics["epsilon"] < 50
    assert sa.metrics["secure_aggregation"]["devices_per_round"] == [3]
    assert sa.metrics["train_loss"] == []  # the devices sent nothing in the clear but their feature sums
    assert "SecAgg+" in (sa.path / "MODEL_CARD.md").read_text()
    # the secagg-only SuperNode ran it through its pinned flwr-clientapp, which accepted the SecAgg+ app
    pinned = (third.parent / "pinned-apps.log").read_text()
    assert f"accepted run {sa_info['run-id']}" in pinned and "refused" not in pinned, pinned
    assert reg.get("keystroke", version).metrics["secure_aggregation"] is None
    assert all(p.poll() is not None for p in procs)
    assert not alive(spawned)


def test_the_app_declares_every_run_setting_with_its_default() -> None:
    """The SuperLink refuses undeclared keys ("Invalid run configuration"); `run` sends all of them."""
    declared = d.app_config()
    assert set(declared) == set(RunSettings().as_config())
    assert RunSettings.from_config(declared) == RunSettings()
    with pytest.raises(d.DeploymentError, match="bogus-key not declared in .*pyproject.toml"):
        d.submit_run("work", {**RunSettings().as_config(), "bogus-key": 1})


def test_flwr_reason_is_passed_through_with_the_right_hint() -> None:
    invalid = ('{"success": false, "error-message": "Using SuperLink: cadence (127.0.0.1:19300)\\n'
               'Invalid run configuration. [code: 15]"}')
    with pytest.raises(d.DeploymentError) as err:
        d._submitted(invalid, "work")
    assert "Invalid run configuration" in str(err.value) and "[tool.flwr.app.config]" in str(err.value)
    assert "Is a SuperLink running" not in str(err.value)


def test_an_unavailable_superlink_hint_names_a_tls_mismatch(tmp_path: Path) -> None:
    """A TLS `flwr` and a SuperLink still running with --insecure (or the other way round) only say "unavailable"."""
    unavailable = '{"success": false, "error-message": "Connection to the SuperLink is unavailable. [code: 14]"}'
    for insecure, this_side in ((False, "connects with TLS"), (True, "insecure = true")):
        d.write_connection(tmp_path, "127.0.0.1:9300", insecure=insecure)
        with pytest.raises(d.DeploymentError) as err:
            d._submitted(unavailable, tmp_path)
        msg = str(err.value)
        assert "Is a SuperLink running for this workdir?" in msg and "--insecure" in msg and this_side in msg, msg


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


def test_stopping_the_superlink_command_stops_every_flower_process(tmp_path: Path) -> None:
    """`kill PID` of `cadence federated superlink` must not leave flower-superlink/superexec under PID 1."""
    port = d.free_port()
    cadence = str(Path(sys.executable).parent / "cadence")
    env = {**os.environ, "FLWR_DISABLE_UPDATE_CHECK": "1"}
    wrapper = subprocess.Popen([cadence, "federated", "superlink", "--workdir", str(tmp_path), "--port", str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids: list[int] = []
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:  # flower-superlink, then its flower-superexec
            kids = d.descendants(wrapper.pid)
            names = " ".join(cmdline(k) for k in kids)
            if "flower-superlink" in names and "superexec" in names:
                break
            time.sleep(0.5)
        assert kids, "the SuperLink did not start"
        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.wait(30) == 128 + signal.SIGTERM
        assert not alive(kids), f"left running: {alive(kids)}"
    finally:
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if wrapper.poll() is None:
            wrapper.kill()


class _Unhandled(Exception):
    """A signal reached the test's own handler: `run_foreground` was not handling it."""


@pytest.fixture
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises `_Unhandled` outside `run_foreground` (instead of ending pytest)."""
    def unhandled(signum: int, frame: object) -> None:
        raise _Unhandled(signum)

    old = signal.signal(signal.SIGTERM, unhandled)
    yield
    signal.signal(signal.SIGTERM, old)


def test_a_signal_while_the_command_starts_stops_it(tmp_path: Path, monkeypatch, sigterm_raises: None) -> None:
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def popen(*args: Any, **kw: Any) -> subprocess.Popen[bytes]:
        started.append(real_popen(*args, **kw))
        signal.raise_signal(signal.SIGTERM)  # `kill` right after the fork, before `Popen` returned
        return started[-1]

    monkeypatch.setattr(d.subprocess, "Popen", popen)
    try:
        code = d.run_foreground([sys.executable, "-c", "import time; time.sleep(120)"], tmp_path)
        assert code == 128 + signal.SIGTERM
        assert started[0].poll() is not None, "the command outlived the signal"
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_signal_during_the_clean_up_is_ignored(tmp_path: Path, monkeypatch, sigterm_raises: None) -> None:
    """The command exited by itself; a SIGTERM while `stop` clears its group neither raises nor skips it."""
    pid_file = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys; "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); sys.exit(3)")
    real_stop = d.stop

    def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        signal.raise_signal(signal.SIGTERM)
        real_stop(proc, timeout)

    monkeypatch.setattr(d, "stop", stop)
    try:
        assert d.run_foreground([sys.executable, "-c", script], tmp_path) == 3
        grandchild = [int(pid_file.read_text())]
        assert not still_alive(grandchild), "what the command left in its group was not stopped"
    finally:
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def test_a_superlink_still_starting_is_waited_for_and_a_refusal_is_not(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    """`superlink &` then `run` at once (docs/federated.md) failed on "Connection ... unavailable"."""
    import subprocess

    unavailable = ('{"success": false, "error-message": "Connection to the SuperLink is unavailable. '
                   'Please check your network connection and \'address\' in the federation configuration."}')
    answers = [unavailable, unavailable, '{"success": true, "run-id": "7"}']
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout=answers[len(calls) - 1], stderr="")

    monkeypatch.setattr(d.subprocess, "run", fake_run)
    monkeypatch.setattr(d.time, "sleep", lambda s: None)
    monkeypatch.setattr(d, "find_bin", lambda name: name)
    assert d.submit_run(tmp_path, RunSettings().as_config())["run-id"] == "7" and len(calls) == 3
    # a refusal for another reason is not retried; nor is an unavailable SuperLink past the wait
    answers[:] = ['{"success": false, "error-message": "Invalid run configuration. [code: 15]"}']
    calls.clear()
    with pytest.raises(d.DeploymentError, match="Invalid run configuration"):
        d.submit_run(tmp_path, RunSettings().as_config())
    assert len(calls) == 1
    answers[:] = [unavailable] * 5
    calls.clear()
    with pytest.raises(d.DeploymentError, match="unavailable.*Is a SuperLink running"):
        d.submit_run(tmp_path, RunSettings().as_config(), wait_s=0.0)
    assert len(calls) == 1
