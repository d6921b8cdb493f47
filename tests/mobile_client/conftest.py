"""Fixtures of the app's tests that drive the real app in a subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mobile_client import features
from tests.mobile_client.test_ui import PROBE, _env


@pytest.fixture(autouse=True)
def _fresh_log_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the first of `features`' once-per-run log lines, whatever ran before it."""
    monkeypatch.setattr(features, "_said", set())


@pytest.fixture(scope="module")
def gl_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """test_ui's headless environment; skips with the reason where no offscreen GL window opens."""
    env = _env(tmp_path_factory.mktemp("kivy"))
    p = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    if "WINDOW-OK" not in p.stdout:
        pytest.skip(f"cannot open a headless Kivy window here ({(p.stderr.strip().splitlines() or ['?'])[-1]})")
    return env
