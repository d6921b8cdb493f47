"""`cadence bench`: run a registered benchmark, or list them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cadence.commands.errors import error_line
from cadence.console import out_console

app = typer.Typer(help="Benchmarks: accuracy and speed, measured the same way for every part.")

# str, not Path: Path('') is the current folder, and an empty value must be refused, not read as '.'
DataDir = Annotated[str | None, typer.Option("--data-dir", envvar="CADENCE_DATA_DIR", help="Dataset folder (layout of shared/datasets).")]


@app.command("bench", context_settings={"help_option_names": ["-h", "--help"]})
def bench(
    typer_ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Bench to run, or 'list'.")],
    data_dir: DataDir = None,
    train_dir: Annotated[str | None, typer.Option(help="Train population models on every subject here.")] = None,
    eval_dir: Annotated[str | None, typer.Option(help="Evaluate on every subject here.")] = None,
    out: Annotated[str, typer.Option(help="Output folder.")] = "bench-results",
    quick: Annotated[bool, typer.Option("--quick", help="Small subset that finishes in under 2 minutes.")] = False,
    seed: Annotated[int, typer.Option(min=0, max=2**31 - 1,
                                      help="Random seed for splits and training (0 to 2**31-1).")] = 0,
) -> None:
    """Run benchmark NAME (`cadence bench list` shows them) and write OUT/NAME.json, -scores.csv, -det.png.

    `api` is a load test: it writes OUT/api.json only (latency rows, no scores).
    """
    from cadence.commands.paths import ensure_writable_dir, folder_option
    from evaluation.bench import BenchContext, BenchError, discover, run_bench
    from evaluation.datasets import DatasetError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    specs = discover()
    if name == "list":
        table = Table(title="cadence benches")
        table.add_column("name")
        table.add_column("what it measures")
        for spec in specs.values():
            table.add_row(spec.name, spec.help)
        out_console().print(table)
        return
    if name not in specs:  # before any folder is made
        error_line(BenchError(f"unknown bench {name!r}; known: {', '.join(specs) or 'none'}"))
        raise typer.Exit(2)
    from click.core import ParameterSource

    from_env = typer_ctx.get_parameter_source("data_dir") == ParameterSource.ENVIRONMENT
    if train_dir is not None or eval_dir is not None:
        if data_dir is not None and not from_env:
            raise typer.BadParameter("give either --data-dir or --train-dir and --eval-dir, not both",
                                     param_hint="--data-dir")
        data_dir = None  # explicit folders win over CADENCE_DATA_DIR
    folders = {label: folder_option(v, label) for label, v in
               (("--train-dir", train_dir), ("--eval-dir", eval_dir))}
    if from_env and data_dir is not None:
        # not checked here: a bench that reads it names it if it is no folder, one that does not ignores it
        folders["--data-dir"] = Path(data_dir).expanduser() if data_dir.strip() else None
    else:
        folders["--data-dir"] = folder_option(data_dir, "--data-dir")
    if not out.strip():
        raise typer.BadParameter("empty path", param_hint="--out")
    ensure_writable_dir(Path(out), "--out")  # before a run that may take minutes, not after it
    ctx = BenchContext(data_dir=folders["--data-dir"], train_dir=folders["--train-dir"],
                       eval_dir=folders["--eval-dir"], out=Path(out), quick=quick, seed=seed)
    try:
        run_bench(name, ctx)
    except (BenchError, DatasetError, ValueError) as exc:
        error_line(exc)
        raise typer.Exit(2) from exc
