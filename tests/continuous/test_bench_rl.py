"""`cadence bench rl --quick` on the real data: the four rows, per-user results, the paper's figures."""

import json

import pytest

from evaluation.bench import BenchContext, run_bench

ROWS = {"ddqn-paper-protocol", "ddqn-held-out", "rf-held-out", "keystroke-held-out"}


@pytest.mark.slow
def test_quick_bench_writes_the_four_rows(data_dir, tmp_path) -> None:
    ctx = BenchContext(data_dir=data_dir, out=tmp_path, quick=True, progress=False)
    doc = run_bench("rl", ctx, print_table=False)
    on_disk = json.loads((tmp_path / "rl.json").read_text())
    assert on_disk["benchmark"] == "rl" and (tmp_path / "rl-scores.csv").is_file()
    rows = {r["method"]: r for r in doc["results"]}
    assert set(rows) == ROWS
    for r in rows.values():
        assert r["window"] == "100 keys"
        assert 0.0 <= r["eer"] <= 1.0 and r["n_genuine"] > 0 and r["n_impostor"] > 0
        assert 0.0 <= r["far_mean_per_user"] <= 1.0 and 0.0 <= r["frr_mean_per_user"] <= 1.0
    # the held-out rows score exactly the same windows
    held = [rows[m] for m in ROWS - {"ddqn-paper-protocol"}]
    assert len({(r["n_genuine"], r["n_impostor"]) for r in held}) == 1
    owners = set(doc["eval_subjects"])
    assert owners and not owners & set(doc["train_subjects"])
    for m in ROWS:
        per = doc["per_user"][m]
        assert {p["user"] for p in per} == owners
        assert all({"accuracy", "far", "frr", "eer"} <= set(p) for p in per)
    assert doc["paper"]["test"] == {"accuracy": 0.8106, "eer": 0.0323, "far": 0.0356, "frr": 0.0174}
    assert doc["keystroke_scorer"][0]["scorer"]
    assert doc["config"]["env"]["n_obs"] == 100 and doc["protocol"]["quick"] is True


def test_bench_rl_refuses_a_seed_too_big_and_a_lone_train_dir(tmp_path) -> None:
    """Both are clear CLI messages before any data is read (a huge seed overflowed torch's seed late)."""
    from typer.testing import CliRunner

    from cadence.cli import app

    runner = CliRunner()
    big = runner.invoke(app, ["bench", "rl", "--quick", "--seed", str(10**16), "--data-dir", str(tmp_path),
                              "--out", str(tmp_path / "o")])
    assert big.exit_code == 2 and "--seed" in big.output and "Traceback" not in big.output
    lone = runner.invoke(app, ["bench", "rl", "--train-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert lone.exit_code != 0 and "go together" in lone.output, lone.output
