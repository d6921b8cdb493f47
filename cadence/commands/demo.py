"""`cadence demo`: the whole path end to end on loopback, with a table of decisions."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cadence.console import out_console

app = typer.Typer()


@app.command("demo")
def demo(
    data_dir: Annotated[str | None, typer.Option("--data-dir", envvar="CADENCE_DATA_DIR",
                                                    help="Replay real BB-MAS subjects from this folder (else SYNTHETIC).")] = None,
    # numpy seeds are unsigned 32-bit: a negative one failed seconds later without naming the option
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed of the synthetic people.")] = 0,
    json_opt: Annotated[str | None, typer.Option("--json", help="Also write the decisions as JSON here.")] = None,
) -> None:
    """Start the API on a free loopback port, enrol a user, run owner and impostor transactions, stop."""
    from cadence.commands.errors import error_line, fail
    from cadence.commands.paths import ensure_writable_file, folder_option, path_option
    from compliance.keys import KeyConfigError
    from evaluation.datasets import DatasetError
    from server.demo import run_demo
    from server.loadgen import sigterm_unwinds

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    folder = folder_option(data_dir, "--data-dir")
    from cadence.settings import get_settings

    registry = get_settings().model_registry  # as `serve` refuses it: the demo quietly served the defaults
    if registry is not None and registry.exists() and not registry.is_dir():
        fail(f"model registry {registry} is not a folder (CADENCE_MODEL_REGISTRY)")
    json_out = path_option(json_opt, "--json")  # '' would mean the current folder
    if json_out is not None:
        ensure_writable_file(json_out, "--json")  # before the demo, not after it
    console = out_console()
    t0 = time.perf_counter()
    try:
        # SIGTERM (`timeout`, systemd, docker stop) unwinds like Ctrl-C: the server stops and the
        # temporary folder (its database of enrolled templates, the calibration) is removed; exit 143
        with sigterm_unwinds():
            label, rows = run_demo(folder, seed=seed)
    except (DatasetError, ValueError, KeyConfigError) as exc:  # the data folder; a broken model registry or
        # calibration file; an audit key the server needs (`run_demo`)
        fail(exc)
    except RuntimeError as exc:  # ApiCallError: a call its own server refused; or the server did not start
        error_line(f"the demo's server: {exc}")
        raise typer.Exit(1) from exc
    console.print(f"[bold]Data:[/bold] {escape(label)}")  # the label holds the folder: no markup read from it
    table = Table(title=f"cadence demo: decisions ({time.perf_counter() - t0:.1f} s)")
    for col in ("user", "probe person", "amount", "decision", "risk", "reasons"):
        table.add_column(col, justify="right" if col in ("amount", "risk") else "left",
                         overflow="fold", no_wrap=col in ("amount", "decision", "risk"))
    colour = {"approve": "green", "step_up": "yellow", "deny": "red"}
    for r in rows:
        table.add_row(escape(r.user), escape(r.probe), r.amount, f"[{colour[r.decision]}]{r.decision}[/]",
                      f"{r.risk:.3f}", r.reasons)
    console.print(table)
    for who in (True, False):
        sel = [r for r in rows if r.genuine is who]
        n_ok = sum(r.decision == "approve" for r in sel)
        console.print(f"{'genuine' if who else 'impostor'}: {n_ok}/{len(sel)} approved")
    n_adapted = [r.adapted for r in rows if r.adapted]
    console.print(f"templates adapted: {sum(n_adapted)} windows of {len(n_adapted)} approved transactions re-enrolled")
    if json_out is not None:
        json_out.write_text(json.dumps({"data": label, "rows": [asdict(r) for r in rows]}, indent=2))
