"""The app's SuperNode connects with TLS (CADENCE_SUPERLINK_CA) or not at all, unless a developer opts out by name."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("flwr")


def _real_ca(tmp_path: Path) -> Path:
    """The operator's CA certificate, as `cadence federated superlink` makes it."""
    from federated.deployment import ensure_tls

    return ensure_tls(tmp_path / "operator", "127.0.0.1").ca


@pytest.fixture
def windows() -> list:
    from evaluation.synthetic import SyntheticPerson
    from mobile_client import features

    return features.keystroke_windows(SyntheticPerson(1).keystrokes(200, 0).to_events())


@pytest.fixture
def no_tls_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from mobile_client import federation

    monkeypatch.delenv(federation.CA_ENV, raising=False)
    monkeypatch.delenv(federation.INSECURE_ENV, raising=False)
    monkeypatch.setattr(federation, "can_run_flower", lambda: True)


def test_without_a_ca_nothing_is_exported_or_started(tmp_path: Path, windows: list, no_tls_settings: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from mobile_client import federation

    started: list[list[str]] = []
    monkeypatch.setattr(federation.subprocess, "Popen", lambda cmd, **kw: started.append(cmd))
    with pytest.raises(federation.FederationTLSError, match="CADENCE_SUPERLINK_CA is not set"):
        federation.start_supernode("127.0.0.1:9300", tmp_path / "fed", windows, "keystroke", 9401)
    monkeypatch.setenv(federation.CA_ENV, str(tmp_path / "missing.crt"))
    with pytest.raises(ValueError, match="missing.crt is not a file"):  # the app logs a ValueError, tries next start
        federation.start_supernode("127.0.0.1:9300", tmp_path / "fed", windows, "keystroke", 9401)
    assert started == [] and not list(tmp_path.rglob("*.npz"))


def test_the_privacy_screen_says_why_it_does_not_take_part(no_tls_settings: None, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from mobile_client import federation

    monkeypatch.setenv("CADENCE_SUPERLINK", "127.0.0.1:9300")
    text = federation.status_text(True, None)
    assert text.startswith("On, but not taking part") and "certificate" in text
    ca = _real_ca(tmp_path)
    monkeypatch.setenv(federation.CA_ENV, str(ca))
    assert federation.status_text(True, None) == "On: will take part when your bank runs a training round"


def test_the_supernode_verifies_the_superlink_with_the_ca(tmp_path: Path, windows: list, no_tls_settings: None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from mobile_client import federation

    started: list[list[str]] = []

    class Proc:
        def poll(self) -> None:
            return None

    def popen(cmd: list[str], **kw: object) -> Proc:
        started.append(cmd)
        return Proc()

    monkeypatch.setattr(federation.subprocess, "Popen", popen)
    ca = _real_ca(tmp_path)
    monkeypatch.setenv(federation.CA_ENV, str(ca))
    federation.start_supernode("127.0.0.1:9300", tmp_path / "fed", windows, "keystroke", 9401)
    cmd = started[-1]
    assert cmd[cmd.index("--root-certificates") + 1] == str(ca) and "--insecure" not in cmd
    # the development opt-out, by name only
    monkeypatch.delenv(federation.CA_ENV)
    monkeypatch.setenv(federation.INSECURE_ENV, "1")
    federation.start_supernode("127.0.0.1:9300", tmp_path / "fed", windows, "keystroke", 9401)
    assert "--insecure" in started[-1] and "--root-certificates" not in started[-1]
    monkeypatch.setenv(federation.INSECURE_ENV, "yes")  # anything but "1" is no opt-out
    with pytest.raises(federation.FederationTLSError):
        federation.start_supernode("127.0.0.1:9300", tmp_path / "fed", windows, "keystroke", 9401)


def test_the_command_without_a_ca_keeps_the_operator_commands_secure_default(tmp_path: Path) -> None:
    """No `ca` is not `--insecure`: `cadence federated supernode` then uses its workdir's CA or refuses."""
    from mobile_client.federation import supernode_command

    cmd = supernode_command("127.0.0.1:9300", tmp_path / "d.npz", tmp_path / "fw", 9401)
    assert "--insecure" not in cmd and "--root-certificates" not in cmd
    assert "--insecure" in supernode_command("127.0.0.1:9300", tmp_path / "d.npz", tmp_path / "fw", 9401, insecure=True)


def _expired_ca(path: Path) -> Path:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Cadence federated CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=20)).not_valid_after(now - dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_a_file_that_is_no_usable_ca_certificate_is_refused_and_shown(tmp_path: Path, windows: list,
                                                                      no_tls_settings: None,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Only `is_file()` checked: the SuperNode died on it unseen and the screen said "starts again" for ever."""
    from mobile_client import federation

    started: list[list[str]] = []
    monkeypatch.setattr(federation.subprocess, "Popen", lambda cmd, **kw: started.append(cmd))
    monkeypatch.setenv("CADENCE_SUPERLINK", "127.0.0.1:9300")
    truncated = tmp_path / "truncated.crt"
    truncated.write_text("-----BEGIN CERTIFICATE-----\n")
    text_file = tmp_path / "notes.crt"
    text_file.write_text("ask the bank for the certificate\n")
    server_cert = _real_ca(tmp_path).parent / "server.crt"
    for path, why in ((truncated, "not a PEM certificate"), (text_file, "not a PEM certificate"),
                      (_expired_ca(tmp_path / "old.crt"), "expired on"), (server_cert, "not a CA certificate")):
        monkeypatch.setenv(federation.CA_ENV, str(path))
        problem = federation.tls_problem()
        assert problem is not None and str(path) in problem and why in problem, problem
        with pytest.raises(federation.FederationTLSError, match=why):
            federation.start_supernode("127.0.0.1:9300", tmp_path / "fed", windows, "keystroke", 9401)
        text = federation.status_text(True, None)
        assert text.startswith("On, but not taking part") and why in text, text
    assert started == [] and not list(tmp_path.rglob("*.npz"))
