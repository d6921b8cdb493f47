"""`cadence federated ...`: operate federated training on Flower's deployment engine.

cadence federated prepare   --modality keystroke --data-dir D --out devices/   (device files)
cadence federated superlink --workdir W --port 9300 [--host 0.0.0.0 --tls-name 192.168.1.10]  (foreground, TLS)
cadence federated supernode --superlink 127.0.0.1:9300 --data devices/device-1.npz --port 9401 \
                            --root-certificates W/tls/ca.crt                    (TLS: the SuperLink's CA)
cadence federated run       --workdir W --modality keystroke --rounds 5 --registry R [--activate]
cadence federated status    --workdir W [--run-id N]                       (last run's progress)
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
from pathlib import Path
from typing import Annotated, Any

import typer

from cadence.commands.errors import fail, warning_line
from cadence.commands.paths import folder_option, path_option, refuse_non_folder
from cadence.console import out_console

app = typer.Typer()
fed = typer.Typer(help="Federated training (Flower): SuperLink, SuperNodes, rounds, progress.", no_args_is_help=True)
app.add_typer(fed, name="federated")

# str, not Path: typer reads '' as Path('.'), the current folder (`_workdir` refuses it by name)
Workdir = Annotated[str, typer.Option("--workdir", help="Operator workspace: FLWR_HOME, logs and run status live here.")]
console = out_console()


@fed.command("prepare")
def prepare(
    modality: Annotated[str, typer.Option(help="keystroke, touch or gait.")],
    data_opt: Annotated[str, typer.Option("--data-dir", envvar="CADENCE_DATA_DIR", help="Dataset folder.")],
    out_opt: Annotated[str, typer.Option("--out", help="Folder for one device-<subject>.npz per subject.")],
    subjects: Annotated[str | None, typer.Option(help="Comma-separated subject ids (default: all).")] = None,
) -> None:
    """Compute each subject's feature windows into its own device file (what a phone holds)."""
    from cadence.commands.paths import ensure_writable_dir
    from federated.features import DeviceDataError, feature_spec, subject_windows, write_device_files

    # '' is refused by name: as a Path it was the current folder (scanned, or filled with device files)
    data_dir = folder_option(data_opt, "--data-dir")
    out = path_option(out_opt, "--out")
    assert data_dir is not None and out is not None  # required options
    try:
        subs = [int(s) for s in subjects.split(",")] if subjects is not None else None  # "" is no id, not "all"
    except ValueError:
        raise typer.BadParameter(f"{subjects!r}: expected comma-separated subject ids like 1,2,5",
                                 param_hint="--subjects") from None
    from evaluation.datasets import DatasetError

    created = not out.exists()
    ensure_writable_dir(out, "--out")
    if others := _other_modality_files(out, modality):  # one folder is one run's devices: it was mixed silently
        fail(f"--out {out} holds device files of another modality ({others}): give {modality} a folder of its own")
    try:
        spec = feature_spec(modality)
        windows = subject_windows(modality, data_dir, subs)
        if not windows:
            _remove_if_empty(out, created)
            fail(f"no {modality} subject{' among ' + subjects if subjects else ''} has enough data in {data_dir}")
        files = write_device_files(out, windows, spec)
    except (DeviceDataError, DatasetError, ValueError) as exc:  # DatasetError: no dataset files there
        _remove_if_empty(out, created)
        fail(str(exc))
    console.print(f"wrote {len(files)} device files to {out}")
    left_out = sorted(set(subs or []) - set(windows))
    if left_out:
        console.print(f"[yellow]left out (no {modality} data, or fewer than 4 windows):[/yellow] {', '.join(map(str, left_out))}")


def _other_modality_files(folder: Path, modality: str) -> str:
    """'device-1.npz: keystroke, ...' for the device files in `folder` of a modality other than `modality`."""
    import numpy as np

    found = []
    for f in sorted(folder.glob("device-*.npz")):
        try:
            with np.load(f, allow_pickle=False) as z:
                held = str(z["modality"])
        except (OSError, KeyError, ValueError):  # not one of ours: `run` names it when it reads it
            continue
        if held != modality:
            found.append(f"{f.name}: {held}")
    return ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")


def _remove_if_empty(folder: Path, created: bool) -> None:
    """Leave no empty folder behind a failed `prepare` (only one it created itself)."""
    if created:
        try:
            folder.rmdir()  # only if empty
        except OSError:
            pass


#: `--insecure`: what it costs, said wherever it is used
INSECURE_HELP = ("Development only: no TLS, so whatever SuperNodes and flwr send crosses the network readable "
                 "by anyone on it.")


def _warn_insecure(what: str) -> None:
    """`--insecure` is never silent."""
    warning_line(f"--insecure: {what} without TLS; model updates and device summaries cross the network readable "
             "(development only)")


def _warn_unencrypted(workdir: Path) -> None:
    """A workdir whose config.toml says ``insecure = true`` (``--insecure``, or from before TLS) is never silent either."""
    from federated.deployment import insecure_connection

    config = insecure_connection(workdir)
    if config is not None:
        warning_line(f"{config} says insecure = true: the connection to the SuperLink is not encrypted; to move to "
                 f"TLS restart `cadence federated superlink --workdir {workdir}` without --insecure and give each "
                 f"SuperNode its tls/ca.crt (docs/federated.md)")


@fed.command("superlink")
def superlink(workdir_opt: Workdir = "federated-work",
              host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 or :: for every interface: "
                                                     "then give --tls-name).")] = "127.0.0.1",
              port: Annotated[int, typer.Option(min=1, max=65535, help="SuperLink port.")] = 9300,
              tls_name: Annotated[list[str] | None, typer.Option(
                  help="An address or host name remote SuperNodes dial, for the SuperLink's certificate "
                       "(repeat for each: --tls-name 192.168.1.10 --tls-name fl.bank.example).")] = None,
              insecure: Annotated[bool, typer.Option("--insecure", help=INSECURE_HELP)] = False,
              expose_control_api: Annotated[bool, typer.Option(
                  "--expose-control-api",
                  help="Allow a --host other than loopback although Flower's Control API (starting runs) is then "
                       "reachable there without authentication: only on a network where every host is trusted. "
                       "Otherwise keep loopback and let SuperNodes in through a gateway that forwards only "
                       "/v1/fleet/ (docs/federated.md).")] = False) -> None:
    """Start a SuperLink (TLS with WORKDIR/tls/, loopback by default, no runtime installs) in the foreground.

    The first start makes a CA and a certificate for HOST, each --tls-name and loopback in
    WORKDIR/tls/ (owner-only); later starts reuse them (a new certificate from the same CA
    when the names change). SuperNodes need WORKDIR/tls/ca.crt
    (`cadence federated supernode --root-certificates`).
    """
    from federated import deployment as d

    names = tls_name or []
    try:  # a name that does not resolve got the lecture on exposing the Control API instead
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        fail(f"--host {host}: cannot listen there ({exc.strerror or exc}): give an address of this machine "
             "(127.0.0.1 by default)")
    if not d.is_loopback(host) and not expose_control_api:
        fail(f"--host {host}: {d.CONTROL_API_EXPOSED}, so anyone who reaches it could run code here. Keep the "
             "SuperLink on loopback and let SuperNodes in through a gateway that forwards only /v1/fleet/ "
             "(docs/federated.md, \"SuperNode elsewhere\"), or pass --expose-control-api on a network where every "
             "host is trusted")
    if insecure and names:
        fail("--insecure and --tls-name: choose one (--insecure turns TLS off, --tls-name is for its certificate)")
    workdir = _workdir(workdir_opt)
    database = Path(workdir).resolve() / d.SUPERLINK_DB
    try:  # everything that can refuse the start, before the workdir is made
        for n in names:
            d.check_tls_name(n)
        d.check_port_free(host, port, "SuperLink")
        d.check_superlink_db(database)
    except d.DeploymentError as exc:
        fail(str(exc))
    _check_workdir(workdir)
    lock = _superlink_lock(Path(workdir), d.host_port(host, port))
    try:
        _serve_superlink(d, workdir, host, port, names, insecure, database)
    finally:
        os.close(lock)


def _superlink_lock(workdir: Path, address: str) -> int:
    """Hold WORKDIR/superlink.lock while this SuperLink runs; exit 2 naming the one that holds it.

    A second SuperLink on one workdir shared its state file and rewrote its FLWR_HOME's
    connection to its own port, so `cadence federated run` dialled whichever started last.
    """
    import fcntl

    fd = os.open(workdir / "superlink.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        held = os.read(fd, 200).decode("utf-8", "replace").strip()
        os.close(fd)
        fail(f"--workdir {workdir}: a SuperLink already runs for it ({held or 'another process'}); stop it first, "
             "or give this one a --workdir of its own")
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}, {address}".encode())
    return fd


def _serve_superlink(d: Any, workdir: Path, host: str, port: int, names: list[str], insecure: bool,
                     database: Path) -> None:
    """The rest of `superlink`, under its workdir's lock."""
    try:
        tls = None if insecure else d.ensure_tls(workdir, host, names)
        cmd = d.superlink_cmd(host, port, database, tls=tls)
        d.write_connection(workdir, d.host_port(host, port), insecure=insecure)  # [::1]:PORT for an IPv6 host
    except d.DeploymentError as exc:
        fail(str(exc))
    if not d.is_loopback(host):
        warning_line(f"--host {host} with --expose-control-api: {d.CONTROL_API_EXPOSED}")
    if tls is None:
        _warn_insecure("the SuperLink serves")
    else:
        if (due := d.ca_rotation_due(tls)) is not None:
            warning_line(due)
        if d.is_wildcard(host) and not names:
            warning_line(f"--host {host}: the SuperLink's certificate names only {', '.join(d.LOOPBACK_NAMES)}, so no "
                         f"SuperNode on another machine can verify it; give --tls-name with each address or host "
                         f"name they dial (e.g. --tls-name 192.168.1.10)")
    # state in a file: SuperNodes stay registered across a SuperLink restart (in memory they got 401s and died)
    console.print(f"SuperLink on {d.host_port(host, port)} ({'no TLS' if tls is None else f'TLS, CA {tls.ca}'}); "
                  f"FLWR_HOME={Path(workdir).resolve() / 'flwr-home'}; state {database}",
                  markup=False)  # "[::1]:9300" is an address, not markup
    # stopping this command (Ctrl-C, kill PID) stops flower-superlink and its flower-superexec too
    raise typer.Exit(d.run_foreground(cmd, workdir))


@fed.command("supernode")
def supernode(
    data_opt: Annotated[str, typer.Option("--data", help="This device's feature file (from `prepare` or the app).")],
    superlink: Annotated[str, typer.Option(help="SuperLink address host:port.")] = "127.0.0.1:9300",
    port: Annotated[int, typer.Option(min=1, max=65535, help="This SuperNode's own API port (one per SuperNode).")] = 9401,
    workdir_opt: Workdir = "federated-work",
    root_certificates_opt: Annotated[str | None, typer.Option(
        "--root-certificates",
        help="The SuperLink's CA certificate (its WORKDIR/tls/ca.crt), to verify it by (default: "
             "WORKDIR/tls/ca.crt when there is one).")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help=INSECURE_HELP)] = False,
    secagg_only: Annotated[bool, typer.Option("--secagg-only", help="Take part in SecAgg+ runs only (`run "
                                                                    "--secagg`): this device runs Cadence's SecAgg+ "
                                                                    "app only and refuses any other run or app "
                                                                    "(WORKDIR/pinned-apps.log; docs/federated.md)."
                                                               )] = False,
) -> None:
    """Start a SuperNode serving one device's data, in the foreground, over TLS."""
    from federated import deployment as d
    from federated.features import DeviceDataError, device_file_error, read_device_file

    data = _device_file(data_opt)
    workdir = _workdir(workdir_opt)
    root_certificates = path_option(root_certificates_opt, "--root-certificates")
    try:
        read_device_file(data, log_path=False)  # the error line below names the path
    except DeviceDataError as exc:  # this operator's own terminal: the path may be named here
        fail(device_file_error(data, exc))
    try:
        d.check_port_free("127.0.0.1", port, "SuperNode")
        ca = _supernode_ca(workdir, root_certificates, insecure)
        _check_workdir(workdir)  # only now: a refused SuperNode leaves no workdir behind
        cmd = d.supernode_cmd(superlink, data, port, root_certificates=ca, secagg_only=secagg_only,
                              pinned_bin=Path(workdir) / "pinned-bin")
    except d.DeploymentError as exc:
        fail(str(exc))
    if ca is None:
        _warn_insecure("this SuperNode connects")
    _warn_tls_mismatch(superlink, tls=ca is not None)
    # stopping this command stops flower-supernode and any ClientApp it started: no training after stop
    raise typer.Exit(d.run_foreground(cmd, workdir))


def _workdir(value: str) -> Path:
    """--workdir as a path; '' (which would be the current folder) or an existing file refused by name."""
    path = path_option(value, "--workdir")
    assert path is not None  # it has a default
    refuse_non_folder(path, "--workdir")
    return path


def _device_file(value: str) -> Path:
    """--data as a path that is no folder, named now, before anything starts.

    (Left to the device file's reader, a folder read as "the device file was not found".)
    """
    path = path_option(value, "--data")
    assert path is not None  # a required option
    if path.is_dir():
        raise typer.BadParameter(f"{path} is a folder, not a device file (give one device-<subject>.npz that "
                                 f"`cadence federated prepare` wrote)", param_hint="--data")
    return path


def _warn_tls_mismatch(superlink: str, *, tls: bool) -> None:
    """Flower retries a TLS/insecure mismatch without naming it: say it once, before it starts."""
    from federated.deployment import speaks_tls

    theirs = speaks_tls(superlink)
    if theirs is None or theirs == tls:  # not up yet (it may be starting), or both agree
        return
    if theirs:
        warning_line(f"the SuperLink at {superlink} speaks TLS and this SuperNode was started with --insecure: it "
                     f"cannot connect; give --root-certificates (the SuperLink's WORKDIR/tls/ca.crt) instead")
    else:
        warning_line(f"the SuperLink at {superlink} does not speak TLS (started with --insecure?): this SuperNode "
                     f"cannot connect to it over TLS; start that SuperLink without --insecure")


def _supernode_ca(workdir: Path, root_certificates: Path | None, insecure: bool) -> Path | None:
    """The CA the SuperNode verifies its SuperLink by; None only for an explicit `--insecure`.

    Refused (one `error:` line) before anything starts: both, a CA file that is not there or
    is no usable CA certificate (flower-supernode would die on it), or neither
    (flower-supernode would fall back to the system CAs and fail on every retry).
    """
    from federated.deployment import ca_path, ca_problem

    if insecure:
        if root_certificates is not None:
            fail("--insecure and --root-certificates: choose one (--insecure turns TLS off)")
        return None
    if root_certificates is not None and not root_certificates.is_file():
        fail(f"--root-certificates: {root_certificates} is not a file (copy the SuperLink's WORKDIR/tls/ca.crt here)")
    ca = root_certificates if root_certificates is not None else ca_path(workdir)
    if ca.is_file():
        problem = ca_problem(ca)
        if problem is not None:
            fail(f"{'--root-certificates' if root_certificates is not None else 'the workdir CA'}: {ca} {problem}")
        return ca
    fail(f"no CA to verify the SuperLink by: give --root-certificates (the SuperLink's WORKDIR/tls/ca.crt; "
         f"none at {ca}), or --insecure for a development SuperLink without TLS")


@fed.command("run")
def run(
    modality: Annotated[str, typer.Option(help="keystroke, touch or gait.")] = "keystroke",
    rounds: Annotated[int, typer.Option(help="Number of federated rounds.")] = 5,
    workdir_opt: Workdir = "federated-work",
    registry: Annotated[str | None, typer.Option(help="Model registry root (default: CADENCE_MODEL_REGISTRY).")] = None,
    strategy: Annotated[str, typer.Option(help="fedavg, fedprox, fedmedian, trimmed-mean or krum.")] = "fedavg",
    min_nodes: Annotated[int | None, typer.Option(help="Wait for this many SuperNodes (robust strategies need more: the "
                                                "error says how many). SuperNodes joining after the scaling round "
                                                "wait for the next run. Default 2; 3 with --secagg.")] = None,
    dp: Annotated[bool, typer.Option("--dp", help="Client-side DP with fixed clipping.")] = False,
    secagg: Annotated[bool, typer.Option("--secagg", help="Secure aggregation (SecAgg+): the server sees only the sum "
                                                          "of the devices' masked updates, never one device's "
                                                          "(fedavg only; with --dp the devices clip before "
                                                          "masking and the server adds the noise to the sum).")] = False,
    num_shares: Annotated[int, typer.Option(help="SecAgg+: shares each device's secrets are split into (>= 3).")] = 3,
    reconstruction_threshold: Annotated[int, typer.Option(help="SecAgg+: shares needed to unmask a sum (>= 2, below "
                                                               "--num-shares, at most --min-nodes).")] = 2,
    noise_multiplier: Annotated[float, typer.Option(help="DP noise multiplier; one whose epsilon over the rounds "
                                                        "exceeds MAX_EPSILON (docs/federated.md) is refused.")] = 1.0,
    clipping_norm: float = 1.0,
    server_momentum: Annotated[float, typer.Option(help="FedAvgM server momentum (0 = plain).")] = 0.0,
    activate: Annotated[bool, typer.Option("--activate", help="Activate the new version in the registry.")] = False,
    round_timeout: Annotated[float, typer.Option(help="Seconds a round waits for devices (to connect, to reply) "
                                                      "before the run fails.")] = 600.0,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run; past it the run is stopped.")] = 3600.0,
) -> None:
    """Submit N rounds for a modality to the SuperLink of WORKDIR, follow progress, publish the model.

    Ctrl-C, SIGTERM or --timeout stop the Flower run too (`flwr stop`), so no model is
    published that nobody was told about.
    """
    from cadence.commands.paths import ensure_writable_dir
    from cadence.settings import get_settings
    from federated import deployment as d
    from federated.config import RunSettings, SettingsError

    if not (math.isfinite(timeout) and timeout > 0):
        raise typer.BadParameter(f"must be > 0 seconds, got {timeout}", param_hint="--timeout")
    reg = (path_option(registry, "--registry") or get_settings().model_registry).resolve()
    wd = _workdir(workdir_opt).resolve()
    # everything is checked before any file is touched: a refused run leaves the last run's status alone
    try:
        if not secagg:  # first: checked together with the other keys, shares got SecAgg+'s own advice
            RunSettings(num_shares=num_shares, reconstruction_threshold=reconstruction_threshold).refuse_secagg()
        s = RunSettings.from_config({"modality": modality, "num-server-rounds": rounds, "strategy": strategy,
                                     "min-nodes": min_nodes if min_nodes is not None else 3 if secagg else 2, "dp": dp, "noise-multiplier": noise_multiplier,
                                     "clipping-norm": clipping_norm, "server-momentum": server_momentum,
                                     "registry": str(reg), "status-file": str(d.status_template(wd)),
                                     "round-timeout": round_timeout, "num-shares": num_shares,
                                     "reconstruction-threshold": reconstruction_threshold})
        if not dp and (noise_multiplier, clipping_norm) != (1.0, 1.0):  # they would be ignored, silently
            raise SettingsError("--noise-multiplier, --clipping-norm: they apply with --dp only (add --dp, or leave "
                                "them out)")
        if secagg:
            s.check_secagg_run()
        else:  # shares asked for without --secagg: the updates would travel in the clear
            s.refuse_secagg()
    except (SettingsError, ValueError) as exc:
        fail(str(exc))
    ensure_writable_dir(reg, "--registry")  # before training, not after every round trained
    from modalities.registry import ModelRegistry, RegistryError

    try:  # ROOT/<modality> (and its ACTIVE) usable too: a damaged one was found only after training
        ModelRegistry(reg).check_publishable(s.modality)
    except RegistryError as exc:
        fail(str(exc))
    if activate:  # the audit log the activation is recorded in, also before training (exit 2 if unusable)
        from cadence.commands.models import _audit_log

        with _audit_log():
            pass
    _check_workdir(wd)
    _warn_unencrypted(wd)
    address = d.read_connection(wd)
    if address:
        console.print(f"waiting for the SuperLink at {address} (up to {d.SUPERLINK_WAIT_S:g} s)", markup=False)
    with d.signals_deferred() as signals:
        try:
            info = d.submit_run(wd, s.as_config(), app_dir=d.SECAGG_APP_DIR if secagg else d.APP_DIR)
        except d.DeploymentError as exc:
            fail(str(exc))
        run_id = str(info["run-id"])
        status_file = d.run_status_file(wd, run_id)
        d.write_latest(wd, run_id)
        console.print(f"submitted run {run_id} (status: {status_file})", markup=False)
        try:
            signals.arm()  # a signal during the submission is acted on here
            final = d.wait_for_run(status_file, timeout, lambda st: console.print(  # no markup: "[waiting]" is text
                f"[{st.get('state')}] round {st.get('round')}/{st.get('num_rounds')} ({st.get('elapsed_s', 0)} s)",
                markup=False),
                flwr_status=lambda: d.flwr_run_status(wd, run_id), run_id=run_id)
            signals.armed = False  # the run is over: nothing left to stop
        except d.Interrupted as exc:
            signals.ignore()
            name = signal.Signals(exc.signum).name
            _stop_flower_run(d, wd, run_id, status_file, f"interrupted ({name})")
            raise typer.Exit(128 + exc.signum) from None
        except d.RunTimeout as exc:
            signals.ignore()
            _stop_flower_run(d, wd, run_id, status_file, f"not done after {timeout:g} s (--timeout; last status: "
                                                         f"{exc.last.get('state')}, round {exc.last.get('round')})")
            raise typer.Exit(2) from None
        except d.DeploymentError as exc:
            fail(str(exc))
    version = final.get("version")
    console.print(f"published {modality} {version} to {reg}{' (trained with SecAgg+)' if secagg else ''}")
    if activate and version:
        from cadence.commands.models import activate as activate_model

        activate_model(modality, version, registry=str(reg))  # `cadence models activate`: errors, audit entry


def _check_workdir(workdir: Path) -> None:
    """WORKDIR (and its FLWR_HOME) as writable folders, made if needed; else a usage error naming --workdir."""
    from cadence.commands.paths import ensure_writable_dir

    ensure_writable_dir(Path(workdir), "--workdir")
    ensure_writable_dir(Path(workdir) / "flwr-home", "--workdir")


def _stop_flower_run(d: Any, workdir: Path, run_id: str, status_file: Path, why: str) -> None:
    """`flwr stop` the run this command gave up on, and say so; else how to stop it by hand."""
    from cadence.commands.errors import error_line

    try:
        d.stop_run(workdir, run_id)
    except d.DeploymentError as exc:
        error_line(f"run {run_id} {why}: could not stop it ({exc}); it is still going and may publish a model. "
                   f"Stop it with: {d.stop_command(workdir, run_id)}")
        return
    d.record_end(status_file, f"stopped by `cadence federated run`: {why}")
    error_line(f"run {run_id} {why}: stopped it (flwr stop {run_id}); unless it had just finished, it publishes "
               f"nothing (`cadence federated status --run-id {run_id}` tells)")


@fed.command("status")
def status(workdir_opt: Workdir = "federated-work",
           run_id: Annotated[str | None, typer.Option(help="This run (default: the last one submitted "
                                                           "from WORKDIR).")] = None) -> None:
    """Progress of the last run submitted from WORKDIR, or of --run-id (JSON).

    Exit 1 when that run has no status file (none submitted from WORKDIR, another --run-id, or
    its ServerApp has not written one yet); 2 when WORKDIR is not a folder or the file is damaged.
    """
    from cadence.commands.errors import error_line
    from federated.deployment import StatusFileError, latest_run_id, latest_status_file, load_status

    workdir = folder_option(workdir_opt, "--workdir")  # a typo is not a run with an "unknown" state
    assert workdir is not None  # it has a default
    if run_id is not None and not run_id.strip().isdigit():  # Flower's run ids are numbers; also no path in it
        raise typer.BadParameter(f"{run_id!r}: expected a Flower run id (a number)", param_hint="--run-id")
    _warn_unencrypted(workdir)
    if run_id is not None:
        run_id = run_id.strip()
    latest = latest_run_id(workdir) if run_id is None else None
    path = latest_status_file(workdir, run_id)
    try:
        doc = load_status(path)
    except StatusFileError as exc:
        if not exc.missing:
            fail(exc)
        if run_id is not None:
            error_line(f"no status of run {run_id} in {workdir} ({path.name} is not there): not a run "
                       f"submitted from this workdir, or its ServerApp has not started yet")
        elif latest is not None:
            error_line(f"run {latest}, the last submitted from {workdir}, has written no status yet ({path} is not "
                       f"there; its ServerApp writes it once it starts)")
        else:
            error_line(f"no run submitted from {workdir} (no {path.name} there; `cadence federated run --workdir "
                       f"{workdir}` submits one)")
        raise typer.Exit(1) from None
    console.print_json(json.dumps(doc, default=str))


__all__ = ["app"]
