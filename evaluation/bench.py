"""The `cadence bench NAME` framework: one harness that every part of Cadence is judged by.

A bench is a function ``(BenchContext) -> BenchOutput`` registered with `@register`. It only
produces scores (a `ScoreTable`) and its protocol description; this module computes every
metric the same way, writes ``OUT/NAME.json`` (schema below), ``OUT/NAME-scores.csv`` and
``OUT/NAME-det.png``, and prints a table.

JSON schema (fixed; benches may add top-level keys and extra per-row keys)::

    {"benchmark": str, "version": str, "protocol": {...}, "train_subjects": [ids],
     "eval_subjects": [ids],
     "results": [{"method": str, "window": str, "eer": float, "eer_mean_per_subject": float,
                  "fnmr_at_fmr_1pct": float | null, "fnmr_at_fmr_0_1pct": float | null,
                  "n_genuine": int, "n_impostor": int}],
     "seconds": float}

An FNMR at an FMR is null where the row has fewer than 1/FMR impostor trials: that operating
point cannot be measured, and the FNMR at an empirical FMR of 0 would read optimistically.

Bench modules live in `evaluation/benches/` and are discovered by name; keep their top-level
imports light (numpy at most) so `cadence bench list` stays fast.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import pkgutil
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from evaluation.datasets import DATA_LOGGER
from evaluation.metrics import plot_det, summarize
from evaluation.protocols import Fold, ScoreTable, resolve_folds

BENCH_SCHEMA_VERSION = "1"


@dataclass(frozen=True)
class BenchContext:
    """Options common to every bench (see `cadence bench --help`)."""

    data_dir: Path | None = None
    train_dir: Path | None = None
    eval_dir: Path | None = None
    out: Path = Path("bench-results")
    quick: bool = False
    seed: int = 0
    progress: bool = True
    #: caveats found while running (folds' warnings, skipped subjects): printed and written
    #: to the JSON's ``protocol.warnings``
    notes: list[str] = field(default_factory=list, compare=False, hash=False)

    def folds(self, kind: str, *, k: int = 2, max_subjects: int | None = None) -> list[Fold]:
        """Subject-disjoint folds for `kind` under this context's folders (their warnings join `notes`)."""
        folds = resolve_folds(kind, data_dir=self.data_dir, train_dir=self.train_dir, eval_dir=self.eval_dir,
                              k=k, seed=self.seed, max_subjects=max_subjects if self.quick else None)
        for fold in folds:
            self.note(*fold.warnings)
        return folds

    def note(self, *messages: str) -> None:
        """Add caveats to `notes`, each once."""
        self.notes.extend(m for m in dict.fromkeys(messages) if m not in self.notes)

    def note_skipped(self, skipped: dict[str, set[int]], scored: set[int], why: str) -> list[int]:
        """Name the evaluation subjects a window length could not use (`skipped`: window -> ids).

        Those no window used are "skipped" (returned, sorted); the others "left out" of the
        windows that lacked them. `why` says what they had too few of ("keys", ...).
        """
        never = sorted(set().union(*skipped.values()) - scored)
        if never:
            self.note(f"evaluation subjects skipped (too few {why} to enrol and test): {never}")
        for label, ids in skipped.items():
            if ids - set(never):
                self.note(f"evaluation subjects left out of the {label!r} window only (too few {why} for it): "
                          f"{sorted(ids - set(never))}")
        return never

    def require_data_dir(self) -> Path:
        """The one folder of a bench that splits its data itself: --data-dir, or --train-dir and --eval-dir if the same."""
        if self.data_dir is not None:
            return Path(self.data_dir)
        if self.train_dir is not None and self.eval_dir is not None:
            if Path(self.train_dir).resolve() == Path(self.eval_dir).resolve():
                return Path(self.train_dir)
            raise BenchError("this bench runs on one folder and splits it itself: give --data-dir, "
                             "not --train-dir and --eval-dir")
        if self.train_dir is not None or self.eval_dir is not None:
            raise BenchError("--train-dir and --eval-dir go together; this bench needs --data-dir")
        raise BenchError("this bench needs --data-dir (or CADENCE_DATA_DIR)")


class BenchError(RuntimeError):
    """A bench cannot run with the options given (message says why)."""


@dataclass
class BenchOutput:
    """What a bench returns; `scores` may be None for benches that measure something else."""

    protocol: dict[str, Any]
    train_subjects: list[int]
    eval_subjects: list[int]
    scores: ScoreTable | None = None
    #: which EER goes into the row's `eer`: pooled over all trials or mean of per-subject EERs
    primary: Literal["pooled", "mean_per_subject"] = "pooled"
    #: extra per-row fields keyed by (method, window)
    row_extra: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    #: rows computed by the bench itself (appended after score-derived rows)
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: extra top-level JSON fields
    extra: dict[str, Any] = field(default_factory=dict)
    #: DET curves to draw; default: every (method, window) of `scores`
    det_groups: list[tuple[str, str]] | None = None
    #: top-level fields printed under the table (what the bench's target reads)
    headline: tuple[str, ...] = ()


@dataclass(frozen=True)
class BenchSpec:
    name: str
    help: str
    func: Callable[[BenchContext], BenchOutput]
    version: str


_REGISTRY: dict[str, BenchSpec] = {}


def register(name: str, help: str, version: str = "1") -> Callable[[Callable[[BenchContext], BenchOutput]], Callable[[BenchContext], BenchOutput]]:
    """Decorator registering a bench function under `name`."""

    def deco(fn: Callable[[BenchContext], BenchOutput]) -> Callable[[BenchContext], BenchOutput]:
        _REGISTRY[name] = BenchSpec(name, help, fn, version)
        return fn

    return deco


def discover() -> dict[str, BenchSpec]:
    """Import every module of `evaluation.benches` so their benches register."""
    import evaluation.benches as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{mod.name}")
    return dict(sorted(_REGISTRY.items()))


def _finite_or_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def rows_from_scores(output: BenchOutput) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if output.scores is None:
        return rows
    for method, window in output.scores.groups():
        sel = output.scores.select(method, window)
        if sel["genuine"].size == 0 or sel["impostor"].size == 0:
            continue
        s = summarize(**sel)
        pooled, mean = s.eer, s.eer_mean_per_subject
        row: dict[str, Any] = {
            "method": method,
            "window": window,
            "eer": _finite_or_none(mean if output.primary == "mean_per_subject" else pooled),
            "eer_mean_per_subject": _finite_or_none(mean),
            "fnmr_at_fmr_1pct": s.fnmr_at_fmr_1pct,
            "fnmr_at_fmr_0_1pct": s.fnmr_at_fmr_0_1pct,
            "n_genuine": s.n_genuine,
            "n_impostor": s.n_impostor,
            "eer_pooled": pooled,
            "eer_sd_per_subject": _finite_or_none(s.eer_sd_per_subject),
            "fnmr_at_fmr_0_01pct": s.fnmr_at_fmr_0_01pct,
            "auc": s.auc,
        }
        row.update(output.row_extra.get((method, window), {}))
        rows.append(row)
    return rows


def check_writable(path: Path) -> None:
    """A `BenchError` unless the file `path` can be written (`cadence.files.write_problem`)."""
    from cadence.files import write_problem

    problem = write_problem(path)
    if problem is not None:
        raise BenchError(problem)


def output_files(name: str, out: Path) -> tuple[Path, Path, Path]:
    """The JSON, scores CSV and DET plot `run_bench` writes for bench `name`."""
    return out / f"{name}.json", out / f"{name}-scores.csv", out / f"{name}-det.png"


class _Notes(logging.Handler):
    """Copies the data loaders' caveats (rows dropped or repaired) into a bench's notes."""

    def __init__(self, ctx: BenchContext) -> None:
        super().__init__(logging.WARNING)
        self.ctx = ctx

    def emit(self, record: logging.LogRecord) -> None:
        self.ctx.note(record.getMessage())


def machine_description() -> str:
    return f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def run_bench(name: str, ctx: BenchContext, *, print_table: bool = True) -> dict[str, Any]:
    """Run bench `name`, write its three files into ``ctx.out`` and return the JSON document."""
    specs = discover()
    if name not in specs:
        raise BenchError(f"unknown bench {name!r}; known: {', '.join(specs) or 'none'}")
    spec = specs[name]
    try:
        ctx.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot write to {ctx.out}: {exc.strerror or exc}") from None
    json_path, csv_path, det_path = output_files(name, ctx.out)
    for path in (json_path, csv_path, det_path):  # before a run that may take minutes, not after it
        check_writable(path)
    handler = _Notes(ctx)
    data_log = logging.getLogger(DATA_LOGGER)
    data_log.addHandler(handler)
    t0 = time.perf_counter()
    try:
        output = spec.func(ctx)
    finally:
        data_log.removeHandler(handler)
    seconds = time.perf_counter() - t0
    results = rows_from_scores(output) + list(output.rows)
    if not results:  # an empty table would read as a run that measured something
        what = "no template had both genuine and impostor trials" if output.scores is not None else "no row"
        raise BenchError(f"bench {name}: no result ({what}); "
                         f"evaluation subjects {output.eval_subjects or 'none'}: need at least 2 with enough data")
    protocol = dict(output.protocol)
    if ctx.notes:
        protocol["warnings"] = list(ctx.notes)
    doc: dict[str, Any] = {
        "benchmark": name,
        "version": spec.version,
        "protocol": protocol,
        "train_subjects": [int(s) for s in output.train_subjects],
        "eval_subjects": [int(s) for s in output.eval_subjects],
        "results": results,
        "seconds": round(seconds, 3),
    }
    doc.update(output.extra)
    doc.setdefault("run", {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "quick": ctx.quick,
        "seed": ctx.seed,
    })
    doc = _finite(doc)
    text = json.dumps(doc, indent=2, default=_json_default, allow_nan=False)
    if print_table:  # first: a file that cannot be written below must not cost the results
        print_results(doc, output.headline)
    for note in ctx.notes:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True).print(f"[yellow]warning:[/yellow] {escape(note)}", soft_wrap=True)
    path = json_path
    try:
        json_path.write_text(text)
        if output.scores is not None and len(output.scores):
            path = csv_path
            output.scores.to_csv(csv_path)
            groups = output.det_groups or output.scores.groups()
            curves = []
            for m, w in groups:
                sel = output.scores.select(m, w)
                if sel["genuine"].size and sel["impostor"].size:
                    curves.append((f"{m} / {w}", sel["genuine"], sel["impostor"]))
            if curves:
                path = det_path
                plot_det(curves, str(det_path), title=f"cadence bench {name}")
    except OSError as exc:
        raise BenchError(f"cannot write {path}: {exc.strerror or exc}") from None
    return doc


def _finite(o: Any) -> Any:
    """`o` with NaN and infinite floats (numpy ones too) replaced by None: JSON has no NaN."""
    import numpy as np

    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, (float, np.floating)) and not math.isfinite(float(o)):
        return None
    return o


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


#: the accuracy columns printed for benches whose rows come from scores
ACCURACY_COLUMNS = ("method", "window", "eer", "eer_mean_per_subject", "fnmr_at_fmr_1pct",
                    "fnmr_at_fmr_0_1pct", "n_genuine", "n_impostor")


def table_columns(results: list[dict[str, Any]]) -> list[str]:
    """Columns to print: the accuracy set where rows carry it, else the rows' own scalar fields.

    Benches that measure something other than error rates (the API's latencies) write rows
    with fields of their own; printing the accuracy set for them would show only dashes.
    """
    def present(c: str) -> bool:
        return any(r.get(c) is not None for r in results)

    if any(present(c) for c in ACCURACY_COLUMNS[2:]):
        return [c for c in ACCURACY_COLUMNS if c in ("method", "window") or present(c)]
    cols: list[str] = []
    for r in results:
        for k, v in r.items():
            if k not in cols and (v is None or isinstance(v, (str, int, float))):
                cols.append(k)
    return cols


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return "-" if v is None else str(v)


def print_results(doc: dict[str, Any], headline: tuple[str, ...] = ()) -> None:
    """Print the rows as a table, then the document's `headline` fields (a bench's must-show)."""
    from rich.table import Table

    from cadence.console import out_console

    table = Table(title=f"cadence bench {doc['benchmark']} ({doc['seconds']:.1f} s)")
    cols = table_columns(doc["results"])
    for c in cols:
        table.add_column(c, justify="left" if c in ("method", "window") else "right")
    for r in doc["results"]:
        table.add_row(*(_cell(r.get(c)) for c in cols))
    console = out_console()
    console.print(table)
    shown = [f"{k} {_cell(doc[k])}" for k in headline if k in doc]
    if shown:
        console.print(", ".join(shown))
