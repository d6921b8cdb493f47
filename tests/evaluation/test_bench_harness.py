"""The bench harness writes the fixed JSON schema, the scores CSV and a DET plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cadence.cli import app
from evaluation.bench import BenchContext, BenchOutput, register, run_bench
from evaluation.protocols import ScoreTable

ROW_KEYS = {"method", "window", "eer", "eer_mean_per_subject", "fnmr_at_fmr_1pct", "fnmr_at_fmr_0_1pct", "n_genuine", "n_impostor"}


@register("selftest-toy", "harness self-test on synthetic scores (tests only)")
def _toy(ctx: BenchContext) -> BenchOutput:
    rng = np.random.default_rng(ctx.seed)
    t = ScoreTable()
    for s in range(1, 6):
        for p in range(1, 6):
            mu = 1.0 if s == p else -1.0
            t.add(method="toy", window="1 x", modality="gait", template_subject=s, probe_subject=p, scores=rng.normal(mu, 1, 20))
    return BenchOutput(protocol={"kind": "toy"}, train_subjects=[], eval_subjects=[1, 2, 3, 4, 5], scores=t)


def test_run_bench_writes_schema(tmp_path: Path) -> None:
    doc = run_bench("selftest-toy", BenchContext(out=tmp_path), print_table=False)
    on_disk = json.loads((tmp_path / "selftest-toy.json").read_text())
    assert on_disk == json.loads(json.dumps(doc))
    assert {"benchmark", "version", "protocol", "train_subjects", "eval_subjects", "results", "seconds"} <= set(on_disk)
    (row,) = on_disk["results"]
    assert ROW_KEYS <= set(row)
    assert row["n_genuine"] == 100 and row["n_impostor"] == 400
    assert 0.05 < row["eer"] < 0.3
    assert (tmp_path / "selftest-toy-scores.csv").read_text().startswith("method,window,modality")
    assert (tmp_path / "selftest-toy-det.png").stat().st_size > 5000


def test_cli_help_and_list() -> None:
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0 and "bench" in r.output
    r = CliRunner().invoke(app, ["bench", "list"])
    assert r.exit_code == 0 and "selftest-toy" in r.output


def test_cli_unknown_bench_and_bad_folder(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["bench", "no-such-bench", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown bench" in r.output
    r = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["bench", "selftest-toy", "--data-dir", str(tmp_path / "missing")])
    assert r.exit_code != 0 and "not a folder" in r.output
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["bench", "selftest-toy", "--out", str(blocker / "sub")])
    assert r.exit_code == 2 and "cannot write to" in r.output, r.output
    assert not isinstance(r.exception, OSError)


def test_printed_table_shows_each_bench_its_own_fields(capsys: pytest.CaptureFixture[str]) -> None:
    """Each kind of row prints its own fields, and the headline prints under the table.

    Accuracy rows print their error rates; the API's latency rows used to print only dashes.
    """
    from evaluation.bench import print_results, table_columns

    acc = [{"method": "m", "window": "5 swipes", "eer": 0.1468, "n_genuine": 10, "n_impostor": 90}]
    assert table_columns(acc) == ["method", "window", "eer", "n_genuine", "n_impostor"]
    lat = [{"method": "authorize", "window": "3 modalities", "p50_ms": 2.58, "p99_ms": 4.86, "per_s": 250.0, "errors": 0},
           {"method": "health", "window": "-", "p50_ms": 0.55, "p99_ms": 2.07, "per_s": 250.0, "errors": 0}]
    assert table_columns(lat) == ["method", "window", "p50_ms", "p99_ms", "per_s", "errors"]
    print_results({"benchmark": "api", "seconds": 1.0, "results": lat, "p99_ratio": 2.348, "errors": 0},
                  headline=("p99_ratio", "errors", "absent"))
    out = capsys.readouterr().out
    assert "4.8600" in out and "250.0" in out
    assert "p99_ratio 2.3480, errors 0" in out and "absent" not in out
