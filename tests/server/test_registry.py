"""Model registry: publish, list, activate, load; the server serves the active version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cadence.cli import app as cli
from modalities.base import ScaledManhattan
from modalities.registry import ModelRegistry, RegistryError
from server.app import create_app
from tests.server.conftest import make_settings


def test_publish_activate_load(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    assert reg.list() == [] and reg.active("gait") is None
    v1 = reg.publish("gait", ScaledManhattan(min_scale=0.01), metrics={"eer": 0.2}, card="# test card", source="unit")
    v2 = reg.publish("gait", ScaledManhattan(min_scale=0.02), metrics={"eer": 0.1}, card="# test card", source="unit")
    assert (v1, v2) == ("v0001", "v0002")
    assert [m.version for m in reg.list("gait")] == ["v0001", "v0002"]
    assert reg.active("gait") is None  # publishing never activates
    reg.activate("gait", v2)
    active = reg.active("gait")
    assert active is not None and active.version == "v0002" and active.metrics == {"eer": 0.1}
    loaded = reg.load("gait")
    assert isinstance(loaded, ScaledManhattan) and loaded.min_scale == 0.02
    assert (tmp_path / "gait" / "v0002" / "MODEL_CARD.md").read_text() == "# test card"


def test_registry_refuses_bad_input(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    with pytest.raises(RegistryError, match="modality"):
        reg.publish("mouse", ScaledManhattan(), metrics={}, card="x", source="s")
    with pytest.raises(RegistryError, match="card"):
        reg.publish("gait", ScaledManhattan(), metrics={}, card=" ", source="s")
    with pytest.raises(RegistryError, match="version"):
        reg.activate("gait", "v0009")
    with pytest.raises(TypeError):
        reg.publish("gait", ScaledManhattan(), metrics={"bad": np.float32(1)}, card="x", source="s")


def test_server_serves_active_version_and_cli(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "registry")
    v = reg.publish("touch", ScaledManhattan(min_scale=0.05), metrics={"eer": 0.3}, card="# card", source="unit")
    app = create_app(make_settings(tmp_path))
    with TestClient(app) as client:
        assert client.get("/v1/models/touch/active").json()["model_id"] != f"registry:{v}"
        r = client.post("/v1/models/touch/activate", json={"version": v}, headers={"X-API-Key": "dev-admin-key"})
        assert r.status_code == 200 and r.json()["active"] is True
        assert client.get("/v1/models/touch/active").json()["model_id"] == f"registry:{v}"
        assert [m["version"] for m in client.get("/v1/models").json()] == [v]
    app.state.engine.dispose()
    out = CliRunner().invoke(cli, ["models", "list", "--registry", str(tmp_path / "registry")])
    assert out.exit_code == 0 and "v0001" in out.output and "*" in out.output
    bad = CliRunner().invoke(cli, ["models", "activate", "touch", "v0042", "--registry", str(tmp_path / "registry")])
    assert bad.exit_code == 2
