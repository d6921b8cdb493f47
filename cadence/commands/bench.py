"""`cadence bench`: run a registered benchmark, or list them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Benchmarks: accuracy and speed, measured the same way for every part.")

DataDir = Annotated[Path | None, typer.Option("--data-dir", envvar="CADENCE_DATA_DIR", help="Dataset folder (layout of shared/datasets).")]


@app.command("bench", context_settings={"help_option_names": ["-h", "--help"]})
def bench(
    name: Annotated[str, typer.Argument(help="Bench to run, or 'list'.")],
    data_dir: DataDir = None,
    train_dir: Annotated[Path | None, typer.Option(help="Train population models on every subject here.")] = None,
    eval_dir: Annotated[Path | None, typer.Option(help="Evaluate on every subject here.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("bench-results"),
    quick: Annotated[bool, typer.Option("--quick", help="Small subset that finishes in under 2 minutes.")] = False,
    seed: Annotated[int, typer.Option(min=0, help="Random seed for splits and training.")] = 0,
) -> None:
    """Run benchmark NAME (`cadence bench list` shows them) and write OUT/NAME.json, -scores.csv, -det.png."""
    from cadence.commands.paths import ensure_writable_dir
    from evaluation.bench import BenchContext, BenchError, discover, run_bench
    from evaluation.datasets import DatasetError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if name == "list":
        table = Table(title="cadence benches")
        table.add_column("name")
        table.add_column("what it measures")
        for spec in discover().values():
            table.add_row(spec.name, spec.help)
        Console().print(table)
        return
    for label, p in (("--data-dir", data_dir), ("--train-dir", train_dir), ("--eval-dir", eval_dir)):
        if p is not None and not p.is_dir():
            raise typer.BadParameter(f"{p} is not a folder", param_hint=label)
    ensure_writable_dir(out, "--out")  # before a run that may take minutes, not after it
    ctx = BenchContext(data_dir=data_dir, train_dir=train_dir, eval_dir=eval_dir, out=out, quick=quick, seed=seed)
    try:
        run_bench(name, ctx)
    except (BenchError, DatasetError, ValueError) as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
