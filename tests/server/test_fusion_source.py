"""The server's fusion engine follows its calibration file without a restart."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fusion.engine import FusionEngine
from fusion.policy import ModalityEvidence
from server.fusion_source import FusionSource


def _engine(version: str, shift: float) -> FusionEngine:
    rng = np.random.default_rng(0)
    eng = FusionEngine().fit_modality("keystroke", genuine=rng.normal(shift, 1, 300), impostor=rng.normal(shift - 4, 1, 300))
    eng.report["keystroke"]["model_version"] = version
    return eng


def _touch(path: Path, bump: int) -> None:
    """Give the file a new stamp even within the filesystem's time resolution."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump))


def test_a_rewritten_calibration_takes_effect_and_a_broken_one_does_not(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "fusion-calibration.json"
    src = FusionSource(path, check_every_s=0.0)
    ev = ModalityEvidence("keystroke", score=0.5, model_version="registry:v0002")
    assert src.current() is None and src.calibrate(ev).llr is None  # no file: uncalibrated rule
    assert src.decide([ev], amount=10).outcome in ("approve", "step_up", "deny")

    _engine("v0001", 0.0).save(path)
    first = src.current()
    assert first is not None and first.fitted_for("keystroke") == "v0001"
    assert src.calibrate(ev).llr is None  # fitted for v0001, not the served v0002

    _engine("v0002", 0.0).save(path)  # `cadence models calibrate` for the new version
    _touch(path, 1)
    assert src.current() is not first and src.calibrate(ev).llr is not None

    calibrated = src.current()
    path.write_text("{ half a file")
    _touch(path, 2)
    assert src.current() is calibrated and "keeping the calibration loaded before" in caplog.text

    path.unlink()
    assert src.current() is None


def test_the_file_is_looked_at_no_more_than_every_check_interval(tmp_path: Path) -> None:
    path = tmp_path / "fusion-calibration.json"
    _engine("v0001", 0.0).save(path)
    src = FusionSource(path, check_every_s=3600.0)
    before = src.current()
    _engine("v0002", 0.0).save(path)
    _touch(path, 1)
    assert src.current() is before  # not yet: the next look is an hour away
