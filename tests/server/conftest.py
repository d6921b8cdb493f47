"""Fixtures: an app on a temporary SQLite file, a signed device client, feature windows."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cadence.settings import Settings
from evaluation.synthetic import SyntheticPerson
from modalities.events import MODALITIES, FeatureWindow
from server.app import create_app
from server.client.api import DeviceClient
from server.client.features import evidence_unit, features_for


def make_settings(tmp_path: Path, **kw: object) -> Settings:
    base = {"database_url": f"sqlite:///{tmp_path / 'api.sqlite'}", "model_registry": tmp_path / "registry",
            "environment": "development"}
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def calibration_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fusion calibration fitted on six SYNTHETIC background people (not the test's two)."""
    from server.demo import fit_calibration, synthetic_people

    path = tmp_path_factory.mktemp("fusion") / "fusion-calibration.json"
    fit_calibration(synthetic_people(seed=3, n=6, first=20), None).save(path)
    return path


@pytest.fixture()
def settings(tmp_path: Path, calibration_file: Path) -> Settings:
    return make_settings(tmp_path, fusion_calibration=calibration_file)


@contextmanager
def built_app(settings: Settings) -> Iterator[FastAPI]:
    """`create_app(settings)`, its engine disposed on leaving (tests start their own clients)."""
    app = create_app(settings)
    try:
        yield app
    finally:
        app.state.engine.dispose()


@pytest.fixture()
def client(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings)
    with TestClient(app) as c:
        yield c
    app.state.engine.dispose()


@pytest.fixture(scope="session")
def windows() -> dict[str, dict[str, list[FeatureWindow]]]:
    """Feature windows of two SYNTHETIC people: {"owner"/"other": {modality: [windows]}}."""
    out = {}
    for name, seed in (("owner", 11), ("other", 12)):
        p = SyntheticPerson(seed)
        rng = np.random.default_rng(seed)
        out[name] = {"keystroke": features_for("keystroke", p.keystrokes(3000, rng)),
                     "touch": features_for("touch", p.touch(130, rng)),
                     "gait": features_for("gait", p.walk(280.0, rng=rng))}
    return out


def new_device(client: TestClient, user_id: str = "alice") -> DeviceClient:
    dev = DeviceClient("http://testserver", user_id=user_id, http=client)
    dev.register()
    return dev


@pytest.fixture()
def enrolled(client: TestClient, windows: dict) -> DeviceClient:
    """A registered device of 'alice' with consent and enrolment in all three modalities."""
    dev = new_device(client)
    for m in MODALITIES:
        dev.grant_consent(m)
        dev.enrol(windows["owner"][m][:5])
    return dev


def evidence(windows: dict, who: str = "owner", i: int = 5) -> list[FeatureWindow]:
    """One window of each modality: touch's single swipe is too few to count (`too_few_for_decision`)."""
    return [windows[who][m][i] for m in MODALITIES]


def decision_evidence(windows: dict, who: str = "owner", i: int = 5) -> list[FeatureWindow]:
    """What a client sends for the i-th decision: one keystroke and one gait window, 5 swipes (`evidence_unit`)."""
    return [w for m in MODALITIES for w in evidence_unit(m, windows[who][m], i)]


@pytest.fixture
def registry_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The versions `ModelRegistry.get` reads from here on, in order (what a memo should spare)."""
    from modalities.registry import ModelRegistry

    reads: list[str] = []
    real_get = ModelRegistry.get

    def counting_get(self: ModelRegistry, modality: str, version: str) -> object:
        reads.append(version)
        return real_get(self, modality, version)

    monkeypatch.setattr(ModelRegistry, "get", counting_get)
    return reads
