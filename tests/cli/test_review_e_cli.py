"""Review E of the operator CLI: `compliance erase|export|purge`, `models calibrate|list`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner, Result

from cadence.cli import app
from cadence.db import Base, make_engine
from cadence.settings import get_settings
from compliance.consent import grant_consent, policy_text
from compliance.models import ConsentRecord
from server.models import Template, User
from tests.compliance.conftest import isolated_holders

runner = CliRunner()


@pytest.fixture
def no_holders(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """CADENCE_HOLDER_MODULES=[] and an empty holder registry (restored after)."""
    with isolated_holders(monkeypatch):
        yield


def _server_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A database with every table (a server's), holding one person: consent, user row, template."""
    url = f"sqlite:///{tmp_path / 'server.sqlite'}"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    with Session(engine) as s, s.begin():
        s.add(User(id="pat"))
        s.flush()
        s.add(Template(user_id="pat", modality="touch", feature_version="f1", feature_dim=1, model_id="m",
                       data={}, n_windows=1))
        grant_consent(s, user_id="pat", modality="touch", purpose="authentication",
                      policy_version=policy_text("authentication").version)
    engine.dispose()
    monkeypatch.setenv("CADENCE_DATABASE_URL", url)
    get_settings.cache_clear()
    return url


def _count(url: str, table: type) -> int:
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            return int(s.scalar(select(func.count()).select_from(table)) or 0)
    finally:
        engine.dispose()


def _one_line_error(r: Result, *needles: str) -> None:
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert "Traceback" not in r.output
    for needle in needles:
        assert needle in r.output, r.output


# --- 1. the server's tables without the server's data holder ----------------------------------------------


@pytest.mark.parametrize("command", [["compliance", "erase", "pat", "--yes"], ["compliance", "export", "pat"],
                                     ["compliance", "purge"]])
def test_server_data_without_its_holder_is_refused_not_left_out(command: list[str], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                no_holders: None) -> None:
    """CADENCE_HOLDER_MODULES without server.holders: the erasure removed the consents only and said "erased".

    The person's user row and template stayed (and the audit log recorded a `subject.erase`);
    the export left them out. Refused, naming the setting, before anything changes.
    """
    url = _server_db(tmp_path, monkeypatch)
    r = runner.invoke(app, command)
    _one_line_error(r, "server_user", "server_template", "CADENCE_HOLDER_MODULES", "server.holders")
    assert _count(url, User) == 1 and _count(url, Template) == 1 and _count(url, ConsentRecord) == 1


def test_a_compliance_only_database_still_needs_no_server_holder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 no_holders: None) -> None:
    """Empty server tables (a database `models activate` migrated): nothing of the server's to leave out."""
    url = _server_db(tmp_path, monkeypatch)
    engine = make_engine(url)
    with Session(engine) as s, s.begin():
        s.query(Template).delete()
        s.query(User).delete()
    engine.dispose()
    r = runner.invoke(app, ["compliance", "erase", "pat", "--yes"])
    assert r.exit_code == 0, r.output
    assert _count(url, ConsentRecord) == 0


# --- 2. `models calibrate` on a folder without the modality's people ----------------------------------------


@pytest.mark.parametrize("layout", ["empty", "other modality"])
def test_calibrate_refuses_a_wrong_data_folder_before_making_the_audit_database(
        layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo'd --data-dir was refused only after the audit database was created and migrated.

    On a fresh machine that left ./cadence.sqlite (the default URL) behind in whatever folder
    the operator ran it from; `models train` checks its data first, so does calibrate now.
    """
    from modalities.base import ScaledManhattan
    from modalities.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "registry")
    reg.activate("touch", reg.publish("touch", ScaledManhattan(min_scale=0.05), metrics={}, card="# c", source="t"))
    data = tmp_path / "people"
    data.mkdir()
    if layout == "other modality":
        (data / "101_processed.csv").write_text("key,time\n")  # keystroke-looking files, no touch ones
    db = tmp_path / "audit.sqlite"
    monkeypatch.setenv("CADENCE_DATABASE_URL", f"sqlite:///{db}")
    get_settings.cache_clear()
    try:
        r = runner.invoke(app, ["models", "calibrate", "touch", "--data-dir", str(data),
                                "--registry", str(reg.root)])
    finally:
        get_settings.cache_clear()
    _one_line_error(r, "touch: calibration needs at least 3 subjects with touch data, found 0", str(data))
    assert not db.exists(), "the audit database was made for a refused calibration"
    assert not (reg.root / "fusion-calibration.json").exists()


# --- 3. `models list` with an ACTIVE that is no file --------------------------------------------------------


def test_models_list_names_an_active_that_is_a_folder(tmp_path: Path) -> None:
    """ACTIVE made a folder: the server serves the package default, and `models list` said nothing at all."""
    from modalities.base import ScaledManhattan
    from modalities.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "registry")
    reg.publish("touch", ScaledManhattan(min_scale=0.05), metrics={}, card="# c", source="t")
    (reg.root / "touch" / "ACTIVE").mkdir()
    r = runner.invoke(app, ["models", "list", "--registry", str(reg.root)])
    assert r.exit_code == 0, r.output
    assert "warning:" in r.output and "ACTIVE is not a file" in " ".join(r.output.split()), r.output
