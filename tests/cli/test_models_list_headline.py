"""`cadence models list` shows each version's headline metrics, in a fixed order, whoever published it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from cadence.cli import app
from federated import task
from federated.config import RunSettings
from federated.features import feature_spec
from federated.orchestration import RunOutcome, dp_accounting, publish
from federated.scorer import EmbeddingScorer
from modalities.base import ScaledManhattan
from modalities.registry import ModelRegistry


def _federated(registry: Path, *, dp: bool, epsilon: float | None = 7.93) -> str:
    """Publish as a federated run does (`orchestration.publish`: metrics.json is the run's summary)."""
    spec = feature_spec("keystroke")
    s = RunSettings(registry=str(registry), dp=dp, num_server_rounds=20, noise_multiplier=2.34, min_nodes=46)
    scorer = EmbeddingScorer.from_weights(task.initial_weights(spec.dim, 64, 0), np.zeros(spec.dim, np.float32),
                                          np.ones(spec.dim, np.float32), modality="keystroke",
                                          feature_version=spec.feature_version)
    o = RunOutcome(modality="keystroke", strategy="fedavg", rounds=20, num_devices=46, dp=dp,
                   epsilon=epsilon if dp else None, delta=1e-3 if dp else None, noise_multiplier=2.34 if dp else None,
                   clipping_norm=1.0 if dp else None, bytes_per_client_per_round=84_000,
                   download_bytes_per_client_per_round=84_000, wall_seconds=61.2, train_loss=[] if dp else [2.1, 1.7],
                   server_momentum=0.8, dp_accounting=dp_accounting(s, 46) if dp else None, scorer=scorer)
    return publish(o, s)


def _row(output: str, version: str) -> str:
    """The metrics cell (the last column) of `version`'s row."""
    line = next(ln for ln in output.splitlines() if re.search(rf"\b{version}\b", ln))
    return " ".join([c for c in line.split("\u2502") if c.strip()][-1].split())


def _list(registry: Path) -> str:
    r = CliRunner(env={"COLUMNS": "1000"}).invoke(app, ["models", "list", "--registry", str(registry)])
    assert r.exit_code == 0, (r.output, r.exception)
    return r.output


def test_federated_models_show_rounds_devices_and_privacy(tmp_path: Path) -> None:
    reg = tmp_path / "registry"
    dp_version = _federated(reg, dp=True)
    plain = _federated(reg, dp=False)
    no_eps = _federated(reg, dp=True, epsilon=None)  # noise too small for a finite epsilon
    out = _list(reg)
    assert "rounds=20, num_devices=46, dp=yes, epsilon=7.93, delta=0.001" in _row(out, dp_version)
    assert "rounds=20, num_devices=46, dp=no" in _row(out, plain)
    assert "epsilon" not in _row(out, plain)
    assert "dp=yes, epsilon=inf" in _row(out, no_eps)
    assert "bytes_per_client" not in out and "clipping_norm" not in out


def test_centrally_trained_and_other_models_show_their_error_rates_first(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "registry")
    central = reg.publish("touch", ScaledManhattan(min_scale=0.05), card="# c", source="central:/data",
                          metrics={"n_subjects": 80, "calibration_eer": 0.08123456, "calibration_cllr": 0.41})
    bench = reg.publish("touch", ScaledManhattan(min_scale=0.05), card="# c", source="unit",
                        metrics={"a_note": "x", "eer": 0.2})
    other = reg.publish("touch", ScaledManhattan(min_scale=0.05), card="# c", source="unit",
                        metrics={"b": 2, "a": 1, "nested": {"x": 1}})
    out = _list(reg.root)
    assert "calibration_eer=0.08123, calibration_cllr=0.41, n_subjects=80" in _row(out, central)
    assert _row(out, bench).endswith("eer=0.2")
    assert _row(out, other).endswith("a=1, b=2")  # no headline key: the plain values, by name


def test_calibrate_without_an_active_version_says_what_to_do(tmp_path: Path) -> None:
    reg = tmp_path / "registry"
    runner = CliRunner(env={"COLUMNS": "1000"})
    args = ["models", "calibrate", "keystroke", "--registry", str(reg), "--data-dir", str(tmp_path)]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "no active keystroke model" in r.output and "publish one first" in r.output
    version = _federated(reg, dp=False)  # published by a federated run, not activated
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and f"activate one first: cadence models activate keystroke {version}" in r.output
    assert "Traceback" not in r.output
