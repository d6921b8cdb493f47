"""`cadence demo` end to end: server on loopback, enrolment, owner and impostor transactions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cadence.cli import app


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path | None) -> tuple[str, dict]:
    monkeypatch.setenv("CADENCE_MODEL_REGISTRY", str(tmp_path / "no-registry"))
    from cadence.settings import get_settings

    get_settings.cache_clear()
    out = tmp_path / "demo.json"
    args = ["demo", "--json", str(out)] + (["--data-dir", str(data_dir)] if data_dir else [])
    if data_dir is None:
        monkeypatch.delenv("CADENCE_DATA_DIR", raising=False)
    result = CliRunner(env={"COLUMNS": "400"}).invoke(app, args)  # one line per message, whatever the terminal
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    return result.output, json.loads(out.read_text())


def _approvals(doc: dict, genuine: bool) -> int:
    return sum(r["decision"] == "approve" for r in doc["rows"] if r["genuine"] is genuine)


def test_demo_synthetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a production environment without an audit key is not the demo's: its own server audits under
    # DemoSettings' development key (the app binds its settings' key), so it runs all the same
    monkeypatch.setenv("CADENCE_ENVIRONMENT", "production")
    monkeypatch.delenv("CADENCE_AUDIT_HMAC_KEY", raising=False)
    output, doc = _run(tmp_path, monkeypatch, None)
    assert "SYNTHETIC" in output
    assert "decision" in output and "approve" in output
    assert {r["genuine"] for r in doc["rows"]} == {True, False}
    assert _approvals(doc, True) > _approvals(doc, False)
    # every approved transaction's evidence (a keystroke window, 5 swipes, a gait window) re-enrolled, no
    # other, and of it only the modalities that matched in that decision
    per = {"keystroke": 1, "touch": 5, "gait": 1}
    assert [r["adapted"] for r in doc["rows"]] == [
        sum(n for m, n in per.items() if f"{m} match" in r["reasons"] or f"{m} strong_match" in r["reasons"])
        if r["decision"] == "approve" else 0 for r in doc["rows"]]
    n = _approvals(doc, True) + _approvals(doc, False)
    total = sum(r["adapted"] for r in doc["rows"])
    assert total > 0 and f"templates adapted: {total} windows of {n} approved transactions re-enrolled" in output


def test_demo_bbmas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    output, doc = _run(tmp_path, monkeypatch, data_dir)
    assert "SYNTHETIC" not in output and "BB-MAS" in output
    assert _approvals(doc, True) > _approvals(doc, False)


def test_demo_on_a_folder_without_people_says_so(tmp_path: Path) -> None:
    r = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["demo", "--data-dir", str(tmp_path)])
    assert r.exit_code == 2 and "need 8 subjects with all three BB-MAS modalities" in r.output and "found 0" in r.output


def test_demo_leaves_out_a_subject_a_loader_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     data_dir: Path) -> None:
    """Subject 1 with no 5 s of walking (the gait loader skips it): the next subject is the owner, no KeyError."""
    import evaluation.datasets as ds

    real = ds.load_bbmas_gait
    monkeypatch.setattr(ds, "load_bbmas_gait", lambda d, s=None: {k: v for k, v in real(d, s).items() if k != 1})
    output, doc = _run(tmp_path, monkeypatch, data_dir)
    assert "BB-MAS subject 2 is the owner" in output and "BB-MAS subject 1 " not in output
    assert {r["genuine"] for r in doc["rows"]} == {True, False}
