"""A damaged registry file is a clear error and repairable, never a traceback or a dead modality."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cadence.cli import app as cli
from cadence.settings import get_settings
from modalities.base import ScaledManhattan
from modalities.registry import ModelRegistry, RegistryError
from server.services.scoring import ScorerProvider


@pytest.fixture(autouse=True)
def _own_audit_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`models activate` audits into the configured database: the test's own, not ./cadence.sqlite."""
    monkeypatch.setenv("CADENCE_DATABASE_URL", f"sqlite:///{tmp_path / 'audit.sqlite'}")
    get_settings.cache_clear()  # settings are read once per process: an earlier test's would stay
    yield
    get_settings.cache_clear()


def _cli(*args: str) -> object:
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("content", [b"\xff\n", b"v0001; rm -rf /\n"])
def test_a_damaged_active_file_is_named_and_activate_rewrites_it(tmp_path: Path, content: bytes) -> None:
    reg = ModelRegistry(tmp_path)
    v = reg.publish("touch", ScaledManhattan(min_scale=0.05), metrics={}, card="# c", source="t")
    (tmp_path / "touch" / "ACTIVE").write_bytes(content)
    with pytest.raises(RegistryError, match="ACTIVE.*models activate touch"):
        reg.active("touch")
    damaged: list[str] = []
    assert [m.version for m in reg.list("touch", damaged=damaged)] == [v]  # the versions are still listed
    assert len(damaged) == 1 and "ACTIVE" in damaged[0] and "models activate touch" in damaged[0]  # and why none is active
    assert ScorerProvider(tmp_path).get("touch").model_id.startswith("default:")  # served, by the default
    listed = _cli("models", "list", "--registry", str(tmp_path))
    assert "Traceback" not in listed.output and v in listed.output, listed.output  # type: ignore[attr-defined]
    assert "warning" in listed.output and "ACTIVE" in listed.output, listed.output  # type: ignore[attr-defined]
    fixed = _cli("models", "activate", "touch", v, "--registry", str(tmp_path))
    assert fixed.exit_code == 0, fixed.output  # type: ignore[attr-defined]
    assert reg.active("touch").version == v  # type: ignore[union-attr]


@pytest.mark.parametrize(("key", "value"), [("scorer", 5), ("feature_version", ["x"]), ("created", None)])
def test_junk_types_in_meta_json_are_a_registry_error(tmp_path: Path, key: str, value: object) -> None:
    reg = ModelRegistry(tmp_path)
    v = reg.publish("touch", ScaledManhattan(min_scale=0.05), metrics={}, card="# c", source="t")
    meta = tmp_path / "touch" / v / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), key: value}))
    with pytest.raises(RegistryError, match=f"{key} must be a string"):
        reg.get("touch", v)
    for args in (("models", "list"), ("models", "activate", "touch", v)):
        r = _cli(*args, "--registry", str(tmp_path))
        assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit), r.output  # type: ignore[attr-defined]
