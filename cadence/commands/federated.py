"""`cadence federated ...`: operate federated training on Flower's deployment engine.

cadence federated prepare   --modality keystroke --data-dir D --out devices/   (device files)
cadence federated superlink --workdir W --port 9300                            (foreground)
cadence federated supernode --superlink 127.0.0.1:9300 --data devices/device-1.npz --port 9401
cadence federated run       --workdir W --modality keystroke --rounds 5 --registry R [--activate]
cadence federated status    --workdir W
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cadence.commands.errors import fail
from cadence.console import out_console

app = typer.Typer()
fed = typer.Typer(help="Federated training (Flower): SuperLink, SuperNodes, rounds, progress.", no_args_is_help=True)
app.add_typer(fed, name="federated")

Workdir = Annotated[Path, typer.Option(help="Operator workspace: FLWR_HOME, logs and run status live here.")]
console = out_console()


@fed.command("prepare")
def prepare(
    modality: Annotated[str, typer.Option(help="keystroke, touch or gait.")],
    data_dir: Annotated[Path, typer.Option(envvar="CADENCE_DATA_DIR", help="Dataset folder.")],
    out: Annotated[Path, typer.Option(help="Folder for one device-<subject>.npz per subject.")],
    subjects: Annotated[str | None, typer.Option(help="Comma-separated subject ids (default: all).")] = None,
) -> None:
    """Compute each subject's feature windows into its own device file (what a phone holds)."""
    from cadence.commands.paths import ensure_writable_dir
    from federated.features import DeviceDataError, feature_spec, subject_windows, write_device_files

    if not data_dir.is_dir():
        raise typer.BadParameter(f"{data_dir} is not a folder", param_hint="--data-dir")
    try:
        subs = [int(s) for s in subjects.split(",")] if subjects else None
    except ValueError:
        raise typer.BadParameter(f"{subjects!r}: expected comma-separated subject ids like 1,2,5",
                                 param_hint="--subjects") from None
    ensure_writable_dir(out, "--out")
    try:
        spec = feature_spec(modality)
        windows = subject_windows(modality, data_dir, subs)
        if not windows:
            fail(f"no {modality} subject{' among ' + subjects if subjects else ''} has enough data in {data_dir}")
        files = write_device_files(out, windows, spec)
    except (DeviceDataError, ValueError) as exc:
        fail(str(exc))
    console.print(f"wrote {len(files)} device files to {out}")
    left_out = sorted(set(subs or []) - set(windows))
    if left_out:
        console.print(f"[yellow]left out (no {modality} data, or fewer than 4 windows):[/yellow] {', '.join(map(str, left_out))}")


@fed.command("superlink")
def superlink(workdir: Workdir = Path("federated-work"), host: str = "127.0.0.1",
              port: Annotated[int, typer.Option(min=1, max=65535, help="SuperLink port.")] = 9300) -> None:
    """Start a SuperLink (insecure, loopback by default, no runtime installs) in the foreground."""
    from federated import deployment as d

    try:
        cmd = d.superlink_cmd(host, port)
    except d.DeploymentError as exc:
        fail(str(exc))
    d.write_connection(workdir, f"{host}:{port}")
    console.print(f"SuperLink on {host}:{port}; FLWR_HOME={Path(workdir).resolve() / 'flwr-home'}")
    # stopping this command (Ctrl-C, kill PID) stops flower-superlink and its flower-superexec too
    raise typer.Exit(d.run_foreground(cmd, workdir))


@fed.command("supernode")
def supernode(
    data: Annotated[Path, typer.Option(help="This device's feature file (from `prepare` or the app).")],
    superlink: Annotated[str, typer.Option(help="SuperLink address host:port.")] = "127.0.0.1:9300",
    port: Annotated[int, typer.Option(min=1, max=65535, help="This SuperNode's own API port (one per SuperNode).")] = 9401,
    workdir: Workdir = Path("federated-work"),
) -> None:
    """Start a SuperNode serving one device's data, in the foreground."""
    from federated import deployment as d
    from federated.features import DeviceDataError, read_device_file

    try:
        read_device_file(data)
        cmd = d.supernode_cmd(superlink, data, port)
    except (DeviceDataError, d.DeploymentError) as exc:
        fail(str(exc))
    # stopping this command stops flower-supernode and any ClientApp it started: no training after stop
    raise typer.Exit(d.run_foreground(cmd, workdir))


@fed.command("run")
def run(
    modality: Annotated[str, typer.Option(help="keystroke, touch or gait.")] = "keystroke",
    rounds: Annotated[int, typer.Option(help="Number of federated rounds.")] = 5,
    workdir: Workdir = Path("federated-work"),
    registry: Annotated[Path | None, typer.Option(help="Model registry root (default: CADENCE_MODEL_REGISTRY).")] = None,
    strategy: Annotated[str, typer.Option(help="fedavg, fedprox, fedmedian, trimmed-mean or krum.")] = "fedavg",
    min_nodes: Annotated[int, typer.Option(help="Wait for this many SuperNodes.")] = 2,
    dp: Annotated[bool, typer.Option("--dp", help="Client-side DP with fixed clipping.")] = False,
    noise_multiplier: float = 1.0,
    clipping_norm: float = 1.0,
    server_momentum: Annotated[float, typer.Option(help="FedAvgM server momentum (0 = plain).")] = 0.0,
    activate: Annotated[bool, typer.Option("--activate", help="Activate the new version in the registry.")] = False,
    round_timeout: Annotated[float, typer.Option(help="Seconds a round waits for devices (to connect, to reply) "
                                                      "before the run fails.")] = 600.0,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run.")] = 3600.0,
) -> None:
    """Submit N rounds for a modality to the SuperLink of WORKDIR, follow progress, publish the model."""
    from cadence.settings import get_settings
    from federated import deployment as d
    from federated.config import RunSettings, SettingsError

    reg = (registry or get_settings().model_registry).resolve()
    status = Path(workdir).resolve() / "status.json"
    if status.exists():
        status.unlink()
    try:
        s = RunSettings.from_config({"modality": modality, "num-server-rounds": rounds, "strategy": strategy,
                                     "min-nodes": min_nodes, "dp": dp, "noise-multiplier": noise_multiplier,
                                     "clipping-norm": clipping_norm, "server-momentum": server_momentum,
                                     "registry": str(reg), "status-file": str(status),
                                     "round-timeout": round_timeout})
        info = d.submit_run(workdir, s.as_config())
        run_id = info["run-id"]
        console.print(f"submitted run {run_id}")
        final = d.wait_for_run(status, timeout, lambda st: console.print(  # no markup: "[waiting]" is text
            f"[{st.get('state')}] round {st.get('round')}/{st.get('num_rounds')} ({st.get('elapsed_s', 0)} s)",
            markup=False),
            flwr_status=lambda: d.flwr_run_status(workdir, run_id))
    except (SettingsError, d.DeploymentError, ValueError) as exc:
        fail(str(exc))
    version = final.get("version")
    console.print(f"published {modality} {version} to {reg}")
    if activate and version:
        from cadence.commands.models import activate as activate_model

        activate_model(modality, version, registry=reg)  # `cadence models activate`: errors, audit entry


@fed.command("status")
def status(workdir: Workdir = Path("federated-work")) -> None:
    """Progress of the last run started from WORKDIR (JSON)."""
    from federated.deployment import read_status

    console.print_json(json.dumps(read_status(Path(workdir).resolve() / "status.json"), default=str))


__all__ = ["app"]
