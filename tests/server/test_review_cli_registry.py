"""The `models` and `serve` commands agree with the server, and say what is wrong with a registry.

- `models train|calibrate|list|activate` write and read the fusion calibration the server reads
  (`CADENCE_FUSION_CALIBRATION` when set), not always the registry's;
- a damaged registry (ACTIVE naming no version, an empty ACTIVE, a version folder without its
  model) is named by `models list`, and by the server's log once, not on every request;
- a half-published version is never activated, and `publish` leaves none behind;
- `models train --seed` and `serve --host/--port` name the option they refuse.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from cadence.cli import app
from cadence.settings import get_settings
from fusion.engine import FusionEngine
from modalities.base import ScaledManhattan
from modalities.registry import ModelRegistry, RegistryError
from server.app import load_fusion
from server.services.scoring import ScorerProvider
from tests.server.test_operator_errors import audit_db, audit_events
from tests.server.test_training import fake_training  # noqa: F401 - a fixture

WIDE = {"COLUMNS": "400"}


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()  # settings are read once per process: an earlier test's would stay
    yield
    get_settings.cache_clear()


def _cli(*args: str) -> Result:
    return CliRunner(env=WIDE).invoke(app, list(args))


def _length_split(folder: Path, subjects: list[int]) -> dict[int, tuple[Any, Any, Any, Any]]:
    """`keystroke_length_split` without datasets: each person's windows sit around a point of their own.

    Probes of 30-100 keys, the shorter ones noisier and of lower quality.
    """
    import numpy as np

    rng = np.random.default_rng(1)
    out = {}
    for s in subjects:
        centre = rng.normal(0.0, 3.0, 4)
        keys = np.repeat([30, 50, 70, 100], 10)
        X = centre + rng.normal(0.0, 1.0, (keys.size, 4)) * np.sqrt(100 / keys)[:, None]
        out[s] = (centre + rng.normal(0.0, 1.0, (6, 4)), X, keys / 220 + rng.normal(0, 0.01, keys.size), keys)
    return out


def _calibrated_column(output: str, modality: str) -> dict[str, str]:
    return {line.split("│")[2].strip(): line.split("│")[4].strip() for line in output.splitlines()
            if f"│ {modality}" in line}


# ------------------------------------------------------------------ 1. CADENCE_FUSION_CALIBRATION


def test_models_commands_write_and_read_the_calibration_file_the_server_reads(
        fake_training: dict[str, Exception], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    import evaluation.pair_scores

    setting = tmp_path / "elsewhere" / "cal.json"
    setting.parent.mkdir()
    monkeypatch.setenv("CADENCE_FUSION_CALIBRATION", str(setting))
    url = audit_db(tmp_path, monkeypatch)
    reg_root = tmp_path / "registry"
    registry_file = reg_root / "fusion-calibration.json"

    r = _cli("models", "train", "--data-dir", str(tmp_path), "--registry", str(reg_root), "-m", "keystroke")
    assert r.exit_code == 0, r.output
    assert f"fusion calibration: {setting}" in r.output, r.output  # announces the file it wrote
    assert setting.is_file() and not registry_file.exists()
    served = load_fusion(get_settings(), reg_root)  # what the server decides with
    assert served is not None and served.fitted_for("keystroke") == "v0001"
    assert _calibrated_column(_cli("models", "list", "--registry", str(reg_root)).output, "keystroke") == {"v0001": "yes"}

    reg = ModelRegistry(reg_root)  # a model trained elsewhere (e.g. federated): activated, then calibrated
    v2 = reg.publish("keystroke", ScaledManhattan(min_scale=0.5), metrics={}, card="# other", source="test")
    r = _cli("models", "activate", "keystroke", v2, "--registry", str(reg_root))
    assert r.exit_code == 0 and "has no fusion calibrator yet" in r.output, r.output
    monkeypatch.setattr(evaluation.pair_scores, "keystroke_length_split", _length_split)
    r = _cli("models", "calibrate", "keystroke", "--data-dir", str(tmp_path), "--registry", str(reg_root))
    assert r.exit_code == 0, r.output
    assert str(setting) in r.output, r.output
    assert FusionEngine.load(setting).fitted_for("keystroke") == v2 and not registry_file.exists()
    assert load_fusion(get_settings(), reg_root).fitted_for("keystroke") == v2
    assert _calibrated_column(_cli("models", "list", "--registry", str(reg_root)).output, "keystroke") == {
        "v0001": "", v2: "yes"}
    assert [e for e, _ in audit_events(url)] == ["model.activated", "model.activated", "model.calibrated"]


def test_a_calibration_the_audit_log_could_not_record_is_put_back(
        fake_training: dict[str, Exception], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A calibration saved but not recorded (a locked database) is put back as it was.

    Servers decided with an unrecorded calibration; `activate` already undid an unrecorded switch.
    """
    from sqlalchemy.exc import OperationalError

    import evaluation.pair_scores
    from server.services import compliance_hooks

    url = audit_db(tmp_path, monkeypatch)
    reg_root = tmp_path / "registry"
    cal = reg_root / "fusion-calibration.json"
    assert _cli("models", "train", "--data-dir", str(tmp_path), "--registry", str(reg_root), "-m", "keystroke").exit_code == 0
    v2 = ModelRegistry(reg_root).publish("keystroke", ScaledManhattan(min_scale=0.5), metrics={}, card="# other",
                                         source="test")
    assert _cli("models", "activate", "keystroke", v2, "--registry", str(reg_root)).exit_code == 0
    before = cal.read_bytes()
    monkeypatch.setattr(evaluation.pair_scores, "keystroke_length_split", _length_split)
    audit = compliance_hooks.audit

    def locked(session, *, event: str, **kw):  # type: ignore[no-untyped-def]
        if event == "model.calibrated":
            raise OperationalError("INSERT INTO compliance_audit", {}, Exception("database is locked"))
        return audit(session, event=event, **kw)

    monkeypatch.setattr(compliance_hooks, "audit", locked)
    r = _cli("models", "calibrate", "keystroke", "--data-dir", str(tmp_path), "--registry", str(reg_root))
    assert r.exit_code == 2 and "database is locked" in r.output, r.output
    assert cal.read_bytes() == before and FusionEngine.load(cal).fitted_for("keystroke") == "v0001"
    assert "model.calibrated" not in [e for e, _ in audit_events(url)]
    monkeypatch.setattr(compliance_hooks, "audit", audit)  # recorded: the calibration stays
    assert _cli("models", "calibrate", "keystroke", "--data-dir", str(tmp_path), "--registry", str(reg_root)).exit_code == 0
    assert FusionEngine.load(cal).fitted_for("keystroke") == v2


def test_a_calibration_setting_that_cannot_be_written_is_refused_before_training(
        fake_training: dict[str, Exception], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("CADENCE_FUSION_CALIBRATION", str(tmp_path / "no-such-folder" / "cal.json"))
    url = audit_db(tmp_path, monkeypatch)
    r = _cli("models", "train", "--data-dir", str(tmp_path), "--registry", str(tmp_path / "registry"),
             "-m", "keystroke")
    assert r.exit_code == 2 and "CADENCE_FUSION_CALIBRATION" in r.output and "no-such-folder" in r.output, r.output
    assert ModelRegistry(tmp_path / "registry").list() == [] and audit_events(url) == []


# ------------------------------------------------------------------ 2. registry damage


@pytest.fixture
def audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`models activate` audits into the test's own database."""
    monkeypatch.setenv("CADENCE_DATABASE_URL", f"sqlite:///{tmp_path / 'audit.sqlite'}")
    get_settings.cache_clear()


def _published(root: Path) -> ModelRegistry:
    reg = ModelRegistry(root)
    for m in ("keystroke", "touch", "gait"):
        reg.activate(m, reg.publish(m, ScaledManhattan(min_scale=0.05), metrics={}, card="# c", source="t"))
    return reg


def test_models_list_names_an_active_naming_no_version_an_empty_active_and_a_version_without_its_model(
        tmp_path: Path, audited: None) -> None:
    reg = _published(tmp_path / "registry")
    (reg.root / "keystroke" / "ACTIVE").write_text("v0009\n")  # its folder was moved away
    (reg.root / "touch" / "ACTIVE").write_text("")
    (reg.root / "gait" / "v0001" / "model.npz").unlink()
    r = _cli("models", "list", "--registry", str(reg.root))
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    warnings = [line for line in r.output.splitlines() if line.startswith("warning:")]
    assert any("keystroke" in w and "v0009" in w for w in warnings), r.output
    assert any("touch" in w and "ACTIVE is empty" in w for w in warnings), r.output
    assert any("gait v0001" in w and "no model.npz" in w for w in warnings), r.output


def test_the_server_logs_why_the_active_model_is_not_served_once_not_per_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        registry_reads: list[str]) -> None:
    reg = _published(tmp_path / "registry")
    pointer = reg.root / "keystroke" / "ACTIVE"
    pointer.write_text("v0009\n")
    reads = registry_reads
    reads.clear()  # counted from here: the set-up above read the registry too
    provider = ScorerProvider(reg.root)

    def unserved() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "not served" in r.getMessage()]

    with caplog.at_level(logging.INFO, logger="server.services.scoring"):
        for _ in range(30):  # three per authorize
            assert provider.get("keystroke").model_id.startswith("default:")
        assert len(unserved()) == 1 and "v0009" in unserved()[0], unserved()
        assert len(reads) == 1  # the answer is memoised: the registry is not read again per request
        pointer.write_text("")
        for _ in range(5):
            assert provider.get("keystroke").model_id.startswith("default:")
        assert len(unserved()) == 2 and "empty" in unserved()[1], unserved()
        reg.activate("keystroke", "v0001")
        assert provider.get("keystroke").model_id == "registry:v0001"
        (reg.root / "keystroke" / "v0002").mkdir()  # a folder named later (ACTIVE then names it): seen next call
        pointer.write_text("v0002\n")
        assert provider.get("keystroke").model_id.startswith("default:")
        (reg.root / "keystroke" / "v0002").rmdir()
        reg.publish("keystroke", ScaledManhattan(min_scale=0.05), metrics={}, card="# c", source="t")  # v0002
        assert provider.get("keystroke").model_id == "registry:v0002"  # its files appeared: served at once
    assert len(unserved()) == 3, unserved()


def test_a_half_published_version_is_never_activated(tmp_path: Path, audited: None) -> None:
    """What an interrupted publish of an earlier release left: model.npz only, no meta.json nor MODEL_CARD.md."""
    reg = _published(tmp_path / "registry")
    half = reg.root / "keystroke" / "v0002"
    half.mkdir()
    (half / "model.npz").write_bytes((reg.root / "keystroke" / "v0001" / "model.npz").read_bytes())
    with pytest.raises(RegistryError, match="incomplete"):
        reg.activate("keystroke", "v0002")
    r = _cli("models", "activate", "keystroke", "v0002", "--registry", str(reg.root))
    assert r.exit_code == 2 and "incomplete" in r.output and "meta.json" in r.output, r.output
    assert reg.active("keystroke").version == "v0001"  # type: ignore[union-attr]
    listed = _cli("models", "list", "--registry", str(reg.root))
    assert any(line.startswith("warning:") and "v0002" in line and "incomplete" in line
               for line in listed.output.splitlines()), listed.output


def test_an_interrupted_publish_leaves_no_folder_that_reads_as_a_version(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The process dies while writing (no clean-up runs): nothing is listed, activatable, or numbered."""
    import shutil

    reg = ModelRegistry(tmp_path / "registry")
    real_write_text = Path.write_text

    def disk_full(self: Path, *args: object, **kwargs: object) -> int:
        if self.name == "MODEL_CARD.md":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", disk_full)
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **kw: None)  # as if killed: no clean-up
    with pytest.raises(RegistryError, match="No space left"):
        reg.publish("keystroke", ScaledManhattan(min_scale=0.05), metrics={}, card="# c", source="t")
    monkeypatch.undo()
    assert [p.name for p in (reg.root / "keystroke").iterdir() if p.name.startswith("v")] == []
    assert reg.list() == [] and reg.problems() == []
    with pytest.raises(RegistryError):
        reg.activate("keystroke", "v0001")
    assert reg.publish("keystroke", ScaledManhattan(min_scale=0.05), metrics={}, card="# c", source="t") == "v0001"


def test_what_a_dead_publish_left_is_reported_and_removed_by_the_next_publish_once_stale(tmp_path: Path) -> None:
    """A killed publish's hidden folder was left forever; a live one's (younger) must survive another publish."""
    reg = ModelRegistry(tmp_path / "registry")
    base = reg.check_publishable("keystroke")
    dead, live = base / ".publishing-dead", base / ".publishing-live"
    for d in (dead, live):
        d.mkdir()
        (d / "model.npz").write_bytes(b"partial")
    hours_ago = time.time() - 2 * 3600
    os.utime(dead, (hours_ago, hours_ago))
    assert reg.list() == []  # never listed, stale or not
    problems = reg.problems()
    assert len(problems) == 1 and str(dead) in problems[0] and "2.0 h ago" in problems[0], problems
    listed = _cli("models", "list", "--registry", str(reg.root))
    assert any(line.startswith("warning:") and ".publishing-dead" in line for line in listed.output.splitlines()), \
        listed.output
    assert reg.publish("keystroke", ScaledManhattan(min_scale=0.05), metrics={}, card="# c", source="t") == "v0001"
    assert not dead.exists() and (live / "model.npz").read_bytes() == b"partial"
    assert reg.problems() == []


def test_concurrent_publishers_get_distinct_complete_versions(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "registry")
    got: list[str] = []
    barrier = threading.Barrier(8)

    def publish() -> None:
        barrier.wait()
        got.append(ModelRegistry(reg.root).publish("gait", ScaledManhattan(min_scale=0.05), metrics={}, card="# c",
                                                   source="t"))

    threads = [threading.Thread(target=publish) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [f"v{i:04d}" for i in range(1, 9)]
    assert [mv.version for mv in reg.list("gait")] == sorted(got) and reg.problems() == []
    assert sorted(p.name for p in (reg.root / "gait").iterdir()) == sorted(got)  # no staging folder left


# ------------------------------------------------------------------ 3. --seed, 4. --host/--port


@pytest.mark.parametrize("seed", ["-5", str(2**32)])
def test_models_train_names_seed_when_it_is_out_of_range(fake_training: dict[str, Exception], tmp_path: Path,  # noqa: F811
                                                         monkeypatch: pytest.MonkeyPatch, seed: str) -> None:
    audit_db(tmp_path, monkeypatch)
    r = _cli("models", "train", "--data-dir", str(tmp_path), "--registry", str(tmp_path / "registry"),
             "-m", "keystroke", "--seed", seed)
    assert r.exit_code == 2 and "--seed" in r.output, r.output
    assert not (tmp_path / "registry").exists()


@pytest.fixture
def serve_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "serve.sqlite"
    monkeypatch.setenv("CADENCE_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("CADENCE_MODEL_REGISTRY", str(tmp_path / "registry"))
    get_settings.cache_clear()
    return db


@pytest.mark.parametrize(("args", "env", "named"), [
    (["--host", "999.1.1.1"], {}, "--host"),
    ([], {"CADENCE_HOST": "999.1.1.1"}, "CADENCE_HOST"),
])
def test_serve_names_a_host_it_cannot_listen_on(serve_settings: Path, monkeypatch: pytest.MonkeyPatch,
                                                args: list[str], env: dict[str, str], named: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    r = _cli("serve", *args)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and named in lines[0] and "999.1.1.1" in lines[0], r.output
    assert not serve_settings.exists()  # refused before the database is made


def test_serve_names_a_port_that_is_taken(serve_settings: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = _cli("serve", "--host", "127.0.0.1", "--port", str(port))
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--port" in lines[0] and str(port) in lines[0], r.output
    assert not serve_settings.exists()


def test_the_demo_uses_the_calibration_file_the_setting_names(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`cadence demo` takes CADENCE_FUSION_CALIBRATION, as the server and `models train` do (it read only the registry's)."""
    from server import demo

    elsewhere = tmp_path / "elsewhere.json"
    demo.fit_calibration(demo.synthetic_people(0, 6, first=200), None).save(elsewhere)
    assert demo.served_models(None, elsewhere)[1] == elsewhere  # fitted for the packages' models: it applies
    assert demo.served_models(None)[1] is None
    monkeypatch.setenv("CADENCE_FUSION_CALIBRATION", str(elsewhere))
    monkeypatch.setenv("CADENCE_MODEL_REGISTRY", str(tmp_path / "registry"))
    get_settings.cache_clear()
    seen: dict[str, object] = {}

    @contextmanager
    def fake_server(settings: object) -> Iterator[str]:
        seen["calibration"] = getattr(settings, "fusion_calibration", None)
        yield "http://127.0.0.1:9"

    monkeypatch.setattr("server.runner.running_server", fake_server)
    monkeypatch.setattr(demo, "run_scenario", lambda url, genuine, impostor: [])
    try:
        label, _ = demo.run_demo(None)
    finally:
        get_settings.cache_clear()
    assert seen["calibration"] == elsewhere and str(elsewhere) in label
