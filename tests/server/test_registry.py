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
        served = client.get("/v1/models/touch/active").json()
        assert served["model_id"] == f"registry:{v}"
        assert served["calibrated"] is False and served["calibrated_for"] == ""  # no calibration file here
        assert [m["version"] for m in client.get("/v1/models").json()] == [v]
        central = reg.publish("touch", ScaledManhattan(min_scale=0.05), metrics={}, card="# card",
                              source=f"central:{tmp_path / 'people'}")
        listed = {m["version"]: m["source"] for m in client.get("/v1/models").json()}
        assert listed == {v: "unit", central: "central"}  # anyone may read it: no path on the server
        # a published version this code cannot load is refused with a reason, not a 500
        bad_v = reg.publish("touch", ScaledManhattan(), metrics={}, card="# card", source="unit")
        np.savez(reg.get("touch", bad_v).path / "model.npz", __meta__=np.array(
            '{"name": "no-such-scorer", "version": "1", "modality": "touch", "feature_version": "", "params": {}}'))
        r = client.post("/v1/models/touch/activate", json={"version": bad_v}, headers={"X-API-Key": "dev-admin-key"})
        assert r.status_code == 409 and r.json()["code"] == "unloadable_model" and "no-such-scorer" in r.json()["detail"]
        assert client.get("/v1/models/touch/active").json()["model_id"] == f"registry:{v}"  # unchanged
    app.state.engine.dispose()
    out = CliRunner().invoke(cli, ["models", "list", "--registry", str(tmp_path / "registry")])
    assert out.exit_code == 0 and "v0001" in out.output and "*" in out.output
    bad = CliRunner().invoke(cli, ["models", "activate", "touch", "v0042", "--registry", str(tmp_path / "registry")])
    assert bad.exit_code == 2


def test_a_fresh_process_loads_and_activates_every_published_kind(tmp_path: Path) -> None:
    """A process that imported no scorer module still loads and activates every published kind.

    `cadence models activate` and the server's workers are such processes; the registry once
    defined only the federated scorer's class itself.
    """
    import subprocess
    import sys

    from federated.scorer import EmbeddingScorer
    from modalities.gait.scorers import GaitManhattan
    from modalities.keystroke.detectors import ManhattanScaledDetector
    from modalities.touch.scorers import TouchKNN

    reg = ModelRegistry(tmp_path / "reg")
    rng = np.random.default_rng(0)
    fed = EmbeddingScorer.from_weights({"fc1.weight": rng.normal(size=(4, 3)), "fc1.bias": np.zeros(4),
                                        "fc2.weight": rng.normal(size=(2, 4)), "fc2.bias": np.zeros(2)},
                                       np.zeros(3), np.ones(3), modality="gait", feature_version="x")
    published = {"keystroke": ManhattanScaledDetector(), "touch": TouchKNN(), "gait": GaitManhattan()}
    for modality, scorer in published.items():
        reg.publish(modality, scorer, metrics={}, source="test", card="test")
    fed_version = reg.publish("gait", fed, metrics={}, source="test", card="test")
    code = ("import sys; from modalities.registry import ModelRegistry; r = ModelRegistry(sys.argv[1]); "
            "[r.activate(m, 'v0001') for m in ('keystroke', 'touch')]; r.activate('gait', sys.argv[2]); "
            "print(*(r.load(m).name for m in ('keystroke', 'touch', 'gait')))")
    res = subprocess.run([sys.executable, "-c", code, str(reg.root), fed_version], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["keystroke-manhattan-scaled", "touch-knn", "federated-embedding"]


def test_concurrent_activations_never_collide(tmp_path: Path) -> None:
    """Threads of one server activating at once: each call succeeds and ACTIVE is always whole."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    reg = ModelRegistry(tmp_path)
    versions = [reg.publish("touch", ScaledManhattan(min_scale=s), metrics={}, card="# c", source="t") for s in (0.01, 0.02)]
    barrier = Barrier(8)

    def go(i: int) -> str:
        barrier.wait()
        for _ in range(15):
            reg.activate("touch", versions[i % 2])
        return "ok"

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(go, range(8))) == ["ok"] * 8  # no FileNotFoundError of a shared temp file
    active = reg.active("touch")
    assert active is not None and active.version in versions
    assert sorted(p.name for p in (tmp_path / "touch").iterdir()) == ["ACTIVE", *versions]  # no temp file left


def test_a_model_of_another_modality_is_never_activated(tmp_path: Path) -> None:
    """A gait model copied into keystroke's folder: refused by the registry, the API and the CLI."""
    import shutil

    from modalities.gait.scorers import GaitManhattan
    from modalities.keystroke.detectors import ManhattanScaledDetector
    from modalities.registry import WrongModalityError

    reg = ModelRegistry(tmp_path / "registry")
    good = reg.publish("keystroke", ManhattanScaledDetector(), metrics={}, card="# c", source="t")
    reg.activate("keystroke", good)
    gait = reg.publish("gait", GaitManhattan(), metrics={}, card="# c", source="t")
    shutil.copytree(reg.get("gait", gait).path, tmp_path / "registry" / "keystroke" / "v0003")
    with pytest.raises(WrongModalityError, match="gait"):
        reg.activate("keystroke", "v0003")
    with pytest.raises(WrongModalityError):
        reg.publish("keystroke", GaitManhattan(), metrics={}, card="# c", source="t")
    app = create_app(make_settings(tmp_path))
    with TestClient(app) as client:
        r = client.post("/v1/models/keystroke/activate", json={"version": "v0003"}, headers={"X-API-Key": "dev-admin-key"})
        assert r.status_code == 409 and r.json()["code"] == "unloadable_model" and "gait" in r.json()["detail"]
        # an ACTIVE pointer set by hand (or before this check) is not served: the default serves instead
        (tmp_path / "registry" / "keystroke" / "ACTIVE").write_text("v0003\n")
        assert not client.get("/v1/models/keystroke/active").json()["model_id"].startswith("registry:")
    app.state.engine.dispose()
    (tmp_path / "registry" / "keystroke" / "ACTIVE").write_text(good + "\n")
    bad = CliRunner(env={"COLUMNS": "400"}).invoke(cli, ["models", "activate", "keystroke", "v0003", "--registry",
                                                         str(tmp_path / "registry")])
    assert bad.exit_code == 2 and "gait" in bad.output and "Traceback" not in bad.output, bad.output
    active = reg.active("keystroke")
    assert active is not None and active.version == good


def test_a_registry_created_after_the_server_started_is_served(tmp_path: Path) -> None:
    """A fresh clone: `cadence serve` first, then `cadence models train` creates the registry folder.

    The server fixed "no registry" at start-up and served the defaults until restarted.
    """
    app = create_app(make_settings(tmp_path))  # make_settings points at tmp_path/registry, not there yet
    assert not (tmp_path / "registry").exists()
    try:
        with TestClient(app) as client:
            assert client.get("/v1/models/touch/active").json()["model_id"].startswith("default:")
            r = client.post("/v1/models/touch/activate", json={"version": "v0001"}, headers={"X-API-Key": "dev-admin-key"})
            assert r.status_code == 409 and r.json()["code"] == "no_registry" and str(tmp_path) not in r.text
            assert r.json()["detail"].startswith("registry: "), r.text
            assert not (tmp_path / "registry").exists()
            reg = ModelRegistry(tmp_path / "registry")
            v = reg.publish("touch", ScaledManhattan(min_scale=0.05), metrics={"eer": 0.3}, card="# card", source="unit")
            reg.activate("touch", v)
            assert client.get("/v1/models/touch/active").json()["model_id"] == f"registry:{v}"
            assert [m["version"] for m in client.get("/v1/models").json()] == [v]
    finally:
        app.state.engine.dispose()


def test_the_active_version_is_read_again_only_when_its_files_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      registry_reads: list[str]) -> None:
    """Each `authorize` asks for three scorers: the registry's metadata is not re-read and re-parsed every time.

    A new ACTIVE, and a damaged active version, are still seen on the very next call.
    """
    from server.services.scoring import ScorerProvider

    reg = ModelRegistry(tmp_path / "registry")
    v1 = reg.publish("gait", ScaledManhattan(min_scale=0.01), metrics={}, card="# c", source="unit")
    v2 = reg.publish("gait", ScaledManhattan(min_scale=0.02), metrics={}, card="# c", source="unit")
    reg.activate("gait", v1)
    reads = registry_reads
    reads.clear()  # counted from here: the set-up above read the registry too
    provider = ScorerProvider(tmp_path / "registry")
    assert provider.get("gait").model_id == f"registry:{v1}"
    first = len(reads)
    for _ in range(20):
        assert provider.get("gait").model_id == f"registry:{v1}"
    assert len(reads) == first  # unchanged files: nothing read again
    reg.activate("gait", v2)
    assert provider.get("gait").model_id == f"registry:{v2}"  # the next call serves the new ACTIVE
    reg.activate("gait", v1)
    assert provider.get("gait").model_id == f"registry:{v1}"
    (reg.root / "gait" / v1 / "model.npz").unlink()  # the active version damaged: the package default serves
    assert provider.get("gait").model_id.startswith("default:")
    (reg.root / "gait" / "ACTIVE").unlink()
    assert provider.get("gait").model_id.startswith("default:")
    assert provider.get("touch").model_id.startswith("default:")  # a modality with no folder at all
