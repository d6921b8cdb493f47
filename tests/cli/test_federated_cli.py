"""`cadence federated prepare` refuses bad input by name; `superlink` / `supernode` use TLS unless told otherwise."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cadence.cli import app
from federated.deployment import CONTROL_API_EXPOSED
from tests.federated.conftest import flower_commands


def _prepare(*args: str) -> tuple[int, str]:
    r = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["federated", "prepare", "--modality", "touch", *args])
    return r.exit_code, r.output


def test_prepare_refuses_bad_options(tmp_path: Path) -> None:
    code, out = _prepare("--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--subjects", "a,b")
    assert code == 2 and "--subjects" in out and "comma-separated subject ids" in out
    code, out = _prepare("--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--subjects", "")
    assert code == 2 and "comma-separated subject ids" in out  # it meant every subject
    code, out = _prepare("--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert code == 2 and "not a folder" in out
    (tmp_path / "f").write_text("")
    code, out = _prepare("--data-dir", str(tmp_path), "--out", str(tmp_path / "f" / "o"))
    assert code == 2 and "cannot write to" in out


def test_prepare_refuses_a_folder_of_another_modalitys_devices(tmp_path: Path) -> None:
    """`prepare --modality touch` wrote touch device files among keystroke ones without a word."""
    import numpy as np

    out = tmp_path / "o"
    out.mkdir()
    np.savez(out / "device-1.npz", modality=np.array("keystroke"), windows=np.zeros((4, 3), np.float32))
    before = (out / "device-1.npz").read_bytes()
    code, said = _prepare("--data-dir", str(tmp_path), "--out", str(out), "--subjects", "1")
    said = " ".join(said.split())
    assert code == 2 and "device-1.npz: keystroke" in said and "a folder of its own" in said, said
    assert (out / "device-1.npz").read_bytes() == before


def test_prepare_names_subjects_without_data(data_dir: Path, tmp_path: Path) -> None:
    code, out = _prepare("--data-dir", str(data_dir), "--out", str(tmp_path / "o"), "--subjects", "999")
    assert code == 2 and "no touch subject among 999" in out and not list((tmp_path / "o").glob("*.npz"))
    code, out = _prepare("--data-dir", str(data_dir), "--out", str(tmp_path / "o"), "--subjects", "1,999")
    assert code == 0 and "wrote 1 device files" in out and "left out" in out and "999" in out


# ---------------------------------------------------------------- TLS by default (docs/federated.md)


def _started(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The Flower commands `superlink` / `supernode` would run (nothing is started)."""
    return flower_commands(monkeypatch)


def _fed(*args: str) -> tuple[int, str, str]:
    r = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["federated", *args])
    return r.exit_code, r.stdout, r.stderr


def _superlink(fw: Path, *extra: str) -> tuple[int, str, str]:
    from federated.deployment import free_port

    return _fed("superlink", "--workdir", str(fw), "--port", str(free_port()), *extra)


def test_a_superlink_host_that_does_not_resolve_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cmds = _started(monkeypatch)
    code, out, err = _superlink(tmp_path / "fw", "--host", "nosuch.invalid")
    said = " ".join((out + err).split())
    assert code == 2 and "--host nosuch.invalid: cannot listen there" in said and "Control API" not in said, said
    assert cmds == [] and not (tmp_path / "fw").exists()


def test_a_second_superlink_on_one_workdir_is_refused_and_rewrites_nothing(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """It started on the same state file and pointed FLWR_HOME's connection at its own port."""
    import fcntl
    import os

    cmds = _started(monkeypatch)
    fw = tmp_path / "fw"
    code, _, err = _superlink(fw, "--insecure")
    assert code == 0 and len(cmds) == 1, err  # the first one (its lock goes when it stops)
    config = (fw / "flwr-home" / "config.toml").read_bytes()
    held = os.open(fw / "superlink.lock", os.O_RDWR)  # a SuperLink of this workdir is running
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(held, 0)
        os.write(held, b"pid 4242, 127.0.0.1:19310")
        code, out, err = _superlink(fw, "--insecure")
    finally:
        os.close(held)
    said = " ".join((out + err).split())
    assert code == 2 and "a SuperLink already runs for it (pid 4242, 127.0.0.1:19310)" in said, said
    assert len(cmds) == 1 and (fw / "flwr-home" / "config.toml").read_bytes() == config
    code, _, err = _superlink(fw, "--insecure")  # once it stopped, the workdir is free again
    assert code == 0 and len(cmds) == 2, err


def test_the_superlink_serves_tls_with_owner_only_certificates_made_once(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cmds = _started(monkeypatch)
    fw = tmp_path / "fw"
    code, out, err = _superlink(fw, "--host", "127.0.0.1")
    assert code == 0, out + err
    tls = (fw / "tls").resolve()
    files = {p.name: p.read_bytes() for p in tls.iterdir()}
    assert sorted(files) == ["ca.crt", "ca.key", "server.crt", "server.key"]
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in tls.iterdir()} == {"0o600"}
    assert oct(stat.S_IMODE(tls.stat().st_mode)) == "0o700"
    cmd = cmds[0]
    assert "--insecure" not in cmd
    assert [cmd[cmd.index(o) + 1] for o in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile")] == \
        [str(tls / "ca.crt"), str(tls / "server.crt"), str(tls / "server.key")]
    conn = tomllib.loads((fw / "flwr-home" / "config.toml").read_text())["superlink"]["cadence"]
    assert conn["insecure"] is False and conn["root-certificates"] == str(tls / "ca.crt")
    # a restart reuses them: SuperNodes keep trusting the same CA
    assert _superlink(fw)[0] == 0
    assert {p.name: p.read_bytes() for p in tls.iterdir()} == files


def test_the_server_certificate_names_the_host_and_loopback_and_is_signed_by_the_ca(tmp_path: Path) -> None:
    import ipaddress

    from cryptography import x509

    from federated.deployment import ensure_tls

    ca_before = ensure_tls(tmp_path, "127.0.0.1").ca.read_bytes()
    tls = ensure_tls(tmp_path, "10.0.0.7")  # another host: a new server certificate from the same CA
    assert tls.ca.read_bytes() == ca_before
    ca = x509.load_pem_x509_certificate(tls.ca.read_bytes())
    cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address(a) for a in
                                                               ("127.0.0.1", "::1", "10.0.0.7")}
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]


def test_a_damaged_ca_is_a_clear_error_not_a_silent_new_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _started(monkeypatch)
    fw = tmp_path / "fw"
    assert _superlink(fw)[0] == 0
    (fw / "tls" / "ca.key").write_text("not a key")
    code, out, err = _superlink(fw)
    assert code == 2 and err.startswith("error:") and "move" in err and "Traceback" not in out + err
    assert (fw / "tls" / "ca.key").read_text() == "not a key"


def test_insecure_superlink_only_by_name_and_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cmds = _started(monkeypatch)
    fw = tmp_path / "fw"
    code, out, err = _superlink(fw, "--insecure")
    assert code == 0 and "--insecure" in cmds[0] and "--ssl-certfile" not in cmds[0]
    assert "warning: --insecure" in err and "without TLS" in err
    assert tomllib.loads((fw / "flwr-home" / "config.toml").read_text())["superlink"]["cadence"]["insecure"] is True
    assert not (fw / "tls").exists()


def test_a_supernode_without_the_ca_is_refused_up_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cmds = _started(monkeypatch)
    fw, data = tmp_path / "fw", tmp_path / "device.npz"
    base = ("supernode", "--workdir", str(fw), "--data", str(data), "--port")
    from federated.deployment import free_port

    code, out, err = _fed(*base, str(free_port()))
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: no CA")
    assert "--root-certificates" in err and "--insecure" in err
    code, out, err = _fed(*base, str(free_port()), "--root-certificates", str(tmp_path / "missing.crt"))
    assert code == 2 and "missing.crt is not a file" in err
    code, out, err = _fed(*base, str(free_port()), "--root-certificates", str(data), "--insecure")
    assert code == 2 and "choose one" in err
    assert cmds == []
    # the workspace's CA (made by its SuperLink) is the default; --insecure only by name, with a warning
    assert _superlink(fw)[0] == 0
    code, out, err = _fed(*base, str(free_port()))
    assert code == 0, err
    assert cmds[-1][cmds[-1].index("--root-certificates") + 1] == str((fw / "tls" / "ca.crt").resolve())
    code, out, err = _fed(*base, str(free_port()), "--insecure")
    assert code == 0 and "--insecure" in cmds[-1] and "warning: --insecure" in err


def test_a_wildcard_superlink_names_what_supernodes_dial_or_warns(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import ipaddress

    from cryptography import x509

    _started(monkeypatch)
    fw = tmp_path / "fw"
    code, out, err = _superlink(fw, "--host", "0.0.0.0", "--expose-control-api")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:") and "Control API" not in line]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0] and "--tls-name" in warnings[0]
    code, out, err = _superlink(fw, "--host", "0.0.0.0", "--expose-control-api",
                                "--tls-name", "192.168.1.10", "--tls-name", "fl.bank.example")
    assert code == 0 and [line for line in err.splitlines() if line.startswith("warning:")] == [
        "warning: --host 0.0.0.0 with --expose-control-api: " + CONTROL_API_EXPOSED], err
    sans = x509.load_pem_x509_certificate((fw / "tls" / "server.crt").read_bytes()).extensions \
        .get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("192.168.1.10") in sans.get_values_for_type(x509.IPAddress)
    assert "fl.bank.example" in sans.get_values_for_type(x509.DNSName)
    code, out, err = _superlink(fw, "--tls-name", "fl.bank.example:9300")
    assert code == 2 and err.startswith("error: --tls-name") and len(err.strip().splitlines()) == 1
    code, out, err = _superlink(fw, "--insecure", "--tls-name", "fl.bank.example")
    assert code == 2 and "choose one" in err


def test_a_superlink_off_loopback_is_refused_unless_its_control_api_may_be_reached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower 1.41 serves the Control API (start a run: any code) on the SuperNodes' port, unauthenticated.

    `--host 0.0.0.0`, as the docs told operators, let any device run code on the SuperLink machine.
    """
    cmds = _started(monkeypatch)
    fw = tmp_path / "fw"
    # (addresses: a host name is resolved first, and one that does not resolve is refused as such)
    for host in ("0.0.0.0", "192.168.1.10", "::", "10.0.0.7"):
        code, out, err = _superlink(fw, "--host", host, "--tls-name", "fl.bank.example")
        assert code == 2 and err.startswith(f"error: --host {host}: Flower 1.41 serves its Control API"), err
        assert "/v1/fleet/" in err and "--expose-control-api" in err and len(err.strip().splitlines()) == 1
    assert cmds == [] and not fw.exists()  # refused before anything was made
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):  # a gateway in front forwards the Fleet API only
        code, out, err = _superlink(fw, "--host", host, "--tls-name", "fl.bank.example")
        assert code == 0 and "warning:" not in err, (host, err)


def test_run_and_status_say_an_old_insecure_connection_is_not_encrypted(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from federated import deployment as d

    fw = tmp_path / "fw"
    config = d.write_connection(fw, "127.0.0.1:9300", insecure=True)  # as before TLS
    monkeypatch.setattr(d, "submit_run", lambda *a, **k: (_ for _ in ()).throw(d.DeploymentError("no SuperLink")))
    code, out, err = _fed("run", "--workdir", str(fw), "--registry", str(tmp_path / "reg"))
    assert code == 2 and "error: no SuperLink" in err
    for res in ((code, out, err), _fed("status", "--workdir", str(fw))):
        warnings = [line for line in res[2].splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and str(config) in warnings[0] and "not encrypted" in warnings[0], res
    # a TLS workspace: not a word
    d.write_connection(fw, "127.0.0.1:9300")
    assert "warning:" not in _fed("status", "--workdir", str(fw))[2]


def test_a_refused_supernode_touches_no_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _started(monkeypatch)
    monkeypatch.chdir(tmp_path)
    from federated.deployment import free_port

    code, out, err = _fed("supernode", "--data", "device.npz", "--port", str(free_port()))
    assert code == 2 and err.startswith("error: no CA")
    code, out, err = _fed("supernode", "--data", "device.npz", "--port", str(free_port()), "--workdir", "fw",
                          "--root-certificates", "missing.crt")
    assert code == 2 and "missing.crt" in err
    assert list(tmp_path.iterdir()) == []


def test_a_supernode_refuses_a_file_that_is_no_ca_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cmds = _started(monkeypatch)
    from federated.deployment import ensure_tls, free_port

    tls = ensure_tls(tmp_path / "fw", "127.0.0.1")
    bogus = tmp_path / "ca.crt"
    bogus.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    for ca, why in ((bogus, "not a PEM certificate"), (tls.cert, "not a CA certificate")):
        code, out, err = _fed("supernode", "--data", str(tmp_path / "d.npz"), "--port", str(free_port()),
                              "--workdir", str(tmp_path / "w"), "--root-certificates", str(ca))
        assert code == 2 and err.startswith("error: --root-certificates") and why in err, err
    assert cmds == []


# ---------------------------------------------------------------- a TLS / insecure mismatch is named


@pytest.fixture
def listener(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start a loopback server speaking TLS (the workspace's certificate) or plain bytes; stopped after the test."""
    import socket
    import ssl
    import threading

    from federated.deployment import ensure_tls

    started: list[tuple[socket.socket, threading.Thread]] = []

    def start(tls: bool) -> str:
        srv = socket.create_server(("127.0.0.1", 0))
        srv.settimeout(5)
        files = ensure_tls(tmp_path / "link", "127.0.0.1")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(files.cert, files.key)

        def serve() -> None:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                try:
                    if tls:
                        with ctx.wrap_socket(conn, server_side=True) as t:
                            t.recv(1)
                    else:  # what an insecure gRPC server answers a TLS hello with: an HTTP/2 frame
                        conn.recv(1024)
                        conn.sendall(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64")
                except OSError:
                    pass

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        started.append((srv, t))
        return f"127.0.0.1:{srv.getsockname()[1]}"

    yield start
    for srv, t in started:
        srv.close()
        t.join(5)


def test_speaks_tls_tells_a_tls_superlink_from_an_insecure_one_and_from_none(listener) -> None:  # type: ignore[no-untyped-def]
    from federated.deployment import free_port, speaks_tls

    assert speaks_tls(listener(True)) is True
    assert speaks_tls(listener(False)) is False
    assert speaks_tls(f"127.0.0.1:{free_port()}") is None  # nothing there yet: no warning
    assert speaks_tls("not an address") is None


def test_an_insecure_supernode_is_told_the_superlink_speaks_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 listener) -> None:  # type: ignore[no-untyped-def]
    from federated.deployment import free_port

    _started(monkeypatch)
    base = ["supernode", "--workdir", str(tmp_path / "fw"), "--data", str(tmp_path / "d.npz"),
            "--port", str(free_port())]
    code, out, err = _fed(*base, "--superlink", listener(True), "--insecure")
    assert code == 0 and "speaks TLS and this SuperNode was started with --insecure" in err, (out, err)
    ca = tmp_path / "link" / "tls" / "ca.crt"
    code, out, err = _fed(*base, "--superlink", listener(False), "--root-certificates", str(ca))
    assert code == 0 and "does not speak TLS" in err, (out, err)
