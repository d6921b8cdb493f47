"""Review fixes: model activation input and messages, the security-flags metric, HEAD health probes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from cadence.cli import app as cli
from modalities.base import ScaledManhattan
from modalities.registry import ModelRegistry, RegistryError
from server.app import create_app
from server.models import AuthSession, SecurityFlag
from tests.server.conftest import make_settings

ADMIN = {"X-API-Key": "dev-admin-key"}
BANK = {"X-API-Key": "dev-bank-key"}
#: a version the old schema let through (`^v\d{4,}$`): a folder name longer than the file system allows
OVERLONG = "v" + "1" * 300


def _published(tmp_path: Path) -> ModelRegistry:
    reg = ModelRegistry(tmp_path / "registry")
    assert reg.publish("keystroke", ScaledManhattan(min_scale=0.01), metrics={}, card="# card", source="unit") == "v0001"
    return reg


# --- 1. model activation: bounded versions, unknown ones are unknown, no server path in answers ------------


@pytest.mark.parametrize("version", [OVERLONG, "v" + "1" * 5000])
def test_registry_treats_an_impossible_version_as_unknown(tmp_path: Path, version: str) -> None:
    reg = _published(tmp_path)
    with pytest.raises(RegistryError, match="is not in the registry") as caught:  # was OSError (ENAMETOOLONG)
        reg.get("keystroke", version)
    assert str(reg.root) not in caught.value.public and str(reg.root) in str(caught.value)
    with pytest.raises(RegistryError):
        reg.activate("keystroke", version)


def test_registry_versions_are_ascii_digits(tmp_path: Path) -> None:
    reg = _published(tmp_path)
    with pytest.raises(RegistryError, match="malformed"):
        reg.get("keystroke", "v\u0661\u0662\u0663\u0664")  # Arabic-Indic digits: `\d` took them


@pytest.fixture()
def app_client(tmp_path: Path) -> Any:
    app = create_app(make_settings(tmp_path))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
    app.state.engine.dispose()


@pytest.mark.parametrize("version", [OVERLONG, "v" + "1" * 10, "v\u0661\u0662\u0663\u0664"])
def test_activate_refuses_a_version_the_registry_cannot_hold(app_client: TestClient, tmp_path: Path,
                                                               version: str) -> None:
    _published(tmp_path)
    r = app_client.post("/v1/models/keystroke/activate", json={"version": version}, headers=ADMIN)
    assert r.status_code == 422 and r.json()["code"] == "validation_error", r.text  # was 500 (and 404)
    assert r.json()["errors"][0]["loc"] == ["body", "version"]


def test_unknown_model_is_answered_without_the_registry_path(app_client: TestClient, tmp_path: Path) -> None:
    _published(tmp_path)
    r = app_client.post("/v1/models/keystroke/activate", json={"version": "v0002"}, headers=ADMIN)
    assert r.status_code == 404 and r.json()["code"] == "unknown_model", r.text
    assert r.json()["detail"] == "version: keystroke v0002 is not in the registry"


def test_unloadable_model_is_answered_without_the_registry_path(app_client: TestClient, tmp_path: Path) -> None:
    reg = _published(tmp_path)
    (reg.root / "keystroke" / "v0001" / "model.npz").write_bytes(b"not a model")
    r = app_client.post("/v1/models/keystroke/activate", json={"version": "v0001"}, headers=ADMIN)
    assert r.status_code == 409 and r.json()["code"] == "unloadable_model", r.text
    assert str(tmp_path) not in r.text and "ROOT/keystroke/v0001/model.npz" in r.json()["detail"]


def test_cli_activate_of_an_impossible_version_is_one_error_line(tmp_path: Path) -> None:
    reg = _published(tmp_path)
    r = CliRunner(env={"COLUMNS": "400"}).invoke(cli, ["models", "activate", "keystroke", OVERLONG,
                                                       "--registry", str(reg.root)])
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)  # was OSError
    assert r.output.startswith("error: ") and "is not in the registry" in r.output
    assert len(r.output.strip().splitlines()) == 1


# --- 3. cadence_security_flags_total counts the flags stored, by kind ------------------------------------


def _flag_metric(client: TestClient) -> dict[str, float]:
    prefix = 'cadence_security_flags_total{kind="'
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(prefix):
            kind, value = line[len(prefix):].split('"} ')
            out[kind] = float(value)
    return out


def _stored_flags(client: TestClient) -> dict[str, float]:
    with client.app.state.cadence.sessions() as db:  # type: ignore[attr-defined]
        kinds = list(db.scalars(select(SecurityFlag.kind)))
    return {k: float(kinds.count(k)) for k in set(kinds)}


def _bot_like(window: Any) -> dict[str, Any]:
    """A window with a scripted event rate (the plausibility check refuses or flags it)."""
    return dict(window.to_dict(), n_events=100_000, start=0.0, end=1.0)


def test_a_refused_enrolment_is_not_counted_as_a_flag(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    r = enrolled.signed("POST", f"/v1/users/{enrolled.user_id}/enrolment",
                        {"windows": [_bot_like(windows["owner"]["keystroke"][21])]})
    assert r.status_code == 422 and r.json()["code"] == "implausible_input", r.text
    assert _stored_flags(client) == {}
    assert _flag_metric(client) == {}  # was implausible_input 1 with no flag stored


def test_flags_stored_by_sessions_are_counted(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    sid = enrolled.signed("POST", "/v1/sessions", {"user_id": enrolled.user_id}).json()["session_id"]
    r = enrolled.signed("POST", f"/v1/sessions/{sid}/evidence",
                        {"windows": [_bot_like(windows["owner"]["keystroke"][20])]})
    assert r.status_code == 200, r.text
    assert _stored_flags(client) == {"implausible_input": 1.0}
    assert _flag_metric(client) == {"implausible_input": 1.0}  # was not counted
    with client.app.state.cadence.sessions() as db, db.begin():  # type: ignore[attr-defined]
        db.get(AuthSession, sid).status = "step_up"
    r = client.post(f"/v1/sessions/{sid}/step-up", json={"success": False}, headers=BANK)
    assert r.status_code == 200 and r.json()["status"] == "terminate", r.text
    assert _stored_flags(client) == {"implausible_input": 1.0, "session_terminated": 1.0}
    assert _flag_metric(client) == _stored_flags(client)  # session_terminated was not counted
    # refused posts store nothing and count nothing: the session ended (409), a replayed window (409, flagged)
    again = enrolled.signed("POST", f"/v1/sessions/{sid}/evidence", {"windows": [windows["owner"]["touch"][40].to_dict()]})
    assert again.status_code == 409, again.text
    sid2 = enrolled.signed("POST", "/v1/sessions", {"user_id": enrolled.user_id}).json()["session_id"]
    replay = enrolled.signed("POST", f"/v1/sessions/{sid2}/evidence", {"windows": [windows["owner"]["touch"][0].to_dict()]})
    assert replay.status_code == 409 and replay.json()["code"] == "evidence_replay", replay.text
    assert _stored_flags(client) == {"implausible_input": 1.0, "session_terminated": 1.0, "evidence_replay": 1.0}
    assert _flag_metric(client) == _stored_flags(client)


# --- 4. HEAD on the probes ---------------------------------------------------------------------------------


def test_health_and_ready_answer_head(app_client: TestClient) -> None:
    for path in ("/v1/health", "/v1/ready"):
        r = app_client.head(path)
        assert r.status_code == 200 and r.content == b"", (path, r.status_code, r.text)  # was 405
    assert "X-Cadence-Instance" in app_client.head("/v1/health").headers
    spec = app_client.app.openapi()  # type: ignore[attr-defined]
    assert {"get", "head"} <= set(spec["paths"]["/v1/health"])


def test_a_405_names_every_method_of_the_path_head_too(app_client: TestClient) -> None:
    for path in ("/v1/health", "/v1/ready"):
        r = app_client.post(path)
        assert r.status_code == 405 and r.json()["code"] == "method_not_allowed", r.text
        assert r.headers["allow"] == "GET, HEAD", r.headers  # was "GET": HEAD is a route of its own


def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_clients_host(app_client: TestClient) -> None:
    """Starlette's slash redirect built its Location from the Host header (an open redirect)."""
    for method, path in (("GET", "/v1/health/"), ("POST", "/v1/devices/"), ("POST", "/v1/transactions/authorize/")):
        r = app_client.request(method, path, headers={"host": "evil.example"}, follow_redirects=False)
        assert r.status_code == 404, (path, r.status_code, r.headers.get("location"))
        assert r.json()["code"] == "not_found" and "location" not in r.headers


# --- 4. a server of several workers reports every worker's requests at each scrape ----------------


def _health_count(text: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith('cadence_http_requests_total{') and 'route="/v1/health"' in line and 'method="GET"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to start a multi-worker server")
def test_metrics_of_a_two_worker_server_sum_both_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each scrape counts every worker's requests (it read only the answering worker's before)."""
    import tempfile

    import httpx

    from server.loadgen import start_server
    from server.signing import HEADER_INSTANCE

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # where `cadence serve` makes the workers' shared metrics folder
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    srv = start_server(tmp_path, env={"CADENCE_API_WORKERS": "2"})
    try:
        answered: set[str] = set()
        for _ in range(40):  # a new connection each: the two workers' accepts share them
            r = httpx.get(srv.url + "/v1/health", timeout=5.0)
            assert r.status_code == 200
            answered.add(r.headers[HEADER_INSTANCE])
        scrapes = [httpx.get(srv.url + "/metrics", timeout=5.0) for _ in range(6)]
        counts = {_health_count(s.text) for s in scrapes}
        by = {s.headers[HEADER_INSTANCE] for s in scrapes}
        assert len(answered) == 2, "only one worker answered: nothing to sum"
        # start_server's own readiness probes are health calls too: at least the 40, the same in every scrape
        assert len(counts) == 1 and min(counts) >= 40, (counts, by)
        assert len(list(temp.glob("cadence-metrics-*"))) == 1
    finally:
        srv.stop()
    assert not list(temp.glob("cadence-metrics-*")), "the shared metrics folder outlived the server"


def test_serve_refuses_a_metrics_folder_it_cannot_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    monkeypatch.setenv("CADENCE_DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    monkeypatch.setenv("CADENCE_MODEL_REGISTRY", str(tmp_path / "registry"))
    served: list[int] = []
    monkeypatch.setattr("cadence.commands.serve._run", lambda *a, **kw: served.append(kw["workers"]))
    r = CliRunner(env={"COLUMNS": "400"}).invoke(cli, ["serve", "--workers", "2", "--port", "9"])
    assert not served, "served with workers that cannot share their metrics"
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.output.startswith("error: ") and "PROMETHEUS_MULTIPROC_DIR" in r.output
    assert len(r.output.strip().splitlines()) == 1
