"""The workspace's CA and SuperLink certificate: the names SuperNodes dial, strict X.509, expiry, permissions."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from federated import deployment as d


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(path: Path) -> tuple[set[object], set[str]]:
    sans = _cert(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(sans.get_values_for_type(x509.IPAddress)), set(sans.get_values_for_type(x509.DNSName))


def _write_ca(workdir: Path, days: float) -> bytes:
    """A CA of this workspace ending in `days` (negative: already ended), as an older `ensure_tls` left it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Cadence federated CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=3000))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    folder = d.tls_dir(workdir)
    folder.mkdir(parents=True)
    (folder / "ca.key").write_bytes(d._key_pem(key))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (folder / "ca.crt").write_bytes(pem)
    return pem


def test_the_names_supernodes_dial_are_in_the_certificate_and_a_change_reissues_it(tmp_path: Path) -> None:
    loopback = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    first = d.ensure_tls(tmp_path, "0.0.0.0", ["192.168.1.10", "fl.bank.example", "2001:db8::7"])
    ca = first.ca.read_bytes()
    ips, dns = _sans(first.cert)
    # a wildcard bind address is no name anyone dials: not in the certificate
    assert ips == loopback | {ipaddress.ip_address("192.168.1.10"), ipaddress.ip_address("2001:db8::7")}
    assert dns == {"localhost", "fl.bank.example"}
    cert = first.cert.read_bytes()
    assert d.ensure_tls(tmp_path, "0.0.0.0", ["fl.bank.example", "2001:db8::7", "192.168.1.10"]).cert.read_bytes() \
        == cert  # the same names, in another order: reused
    second = d.ensure_tls(tmp_path, "0.0.0.0", ["fl.bank.example"])  # a name dropped: issued again, same CA
    assert second.cert.read_bytes() != cert and second.ca.read_bytes() == ca
    assert _sans(second.cert) == (loopback, {"localhost", "fl.bank.example"})
    _cert(second.cert).verify_directly_issued_by(_cert(second.ca))


@pytest.mark.parametrize("bad", ["0.0.0.0", "::", "fl.bank.example:9300", "-bad.example", "a..b", "bad_name",
                                 "x" * 64 + ".example", "", "*.bank.example", "https://fl.bank.example",
                                 "fe80::1%eth0"])
def test_a_name_no_certificate_can_hold_is_refused_by_name(tmp_path: Path, bad: str) -> None:
    with pytest.raises(d.DeploymentError, match="--tls-name"):
        d.ensure_tls(tmp_path, "127.0.0.1", [bad])
    assert not (tmp_path / "tls").exists()


def test_a_start_again_keeps_the_certificate_and_a_key_apart_from_it_is_issued_again(tmp_path: Path) -> None:
    """Same names: the same files (a scoped --host reads back without its zone); a key that is not the cert's: new pair."""
    first = d.ensure_tls(tmp_path, "fe80::1%eth0").cert.read_bytes()
    assert d.ensure_tls(tmp_path, "fe80::1%eth0").cert.read_bytes() == first
    other = tmp_path / "other"
    other.mkdir()
    tls = d.ensure_tls(tmp_path, "fe80::1%eth0")
    tls.key.write_bytes(d.ensure_tls(other, "127.0.0.1").key.read_bytes())  # restored apart from its certificate
    again = d.ensure_tls(tmp_path, "fe80::1%eth0")
    assert again.cert.read_bytes() != first
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(again.key.read_bytes(), password=None)
    assert key.public_key() == _cert(again.cert).public_key()


def test_the_certificates_carry_key_identifiers_and_pass_strict_verification(tmp_path: Path) -> None:
    tls = d.ensure_tls(tmp_path, "127.0.0.1")
    ca, cert = _cert(tls.ca), _cert(tls.cert)
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ca_ski == x509.SubjectKeyIdentifier.from_public_key(ca.public_key())
    assert cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest == \
        x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: the strict check is the extensions above")
    res = subprocess.run(["openssl", "verify", "-x509_strict", "-CAfile", str(tls.ca), str(tls.cert)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stdout + res.stderr


def test_a_server_certificate_without_key_identifiers_is_issued_again(tmp_path: Path) -> None:
    """A workspace from before the identifiers: its CA is kept, its server certificate replaced."""
    _write_ca(tmp_path, 3000)
    ca = (tmp_path / "tls" / "ca.crt").read_bytes()
    tls = d.ensure_tls(tmp_path, "127.0.0.1")
    assert tls.ca.read_bytes() == ca
    assert _cert(tls.cert).extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)


@pytest.mark.parametrize("days", [-1, 100])
def test_an_ended_or_ending_ca_is_refused_never_replaced(tmp_path: Path, days: int) -> None:
    ca = _write_ca(tmp_path, days)
    with pytest.raises(d.DeploymentError, match=r"CA .*(ended|ends) on .*move .*tls away"):
        d.ensure_tls(tmp_path, "127.0.0.1")
    assert (tmp_path / "tls" / "ca.crt").read_bytes() == ca and not (tmp_path / "tls" / "server.crt").exists()


@pytest.mark.parametrize(("days", "due"), [(3000, False), (2 * d.SERVER_DAYS + 30, False), (2 * d.SERVER_DAYS - 30, True),
                                           (d.SERVER_DAYS + 30, True)])
def test_a_ca_near_its_refusal_is_announced_a_year_ahead(tmp_path: Path, days: int, due: bool) -> None:
    """Refused a server certificate's life before it ends; said at every start in the year before that."""
    _write_ca(tmp_path, days)
    warning = d.ca_rotation_due(d.ensure_tls(tmp_path, "127.0.0.1"))
    assert (warning is not None) is due
    if due:
        assert "will refuse to start" in warning and "ca.crt" in warning


def test_a_server_certificate_never_outlives_its_ca(tmp_path: Path) -> None:
    _write_ca(tmp_path, 40)
    key, ca = d._ca(d.tls_dir(tmp_path))
    tls = d.ServerTLS(d.ca_path(tmp_path), d.tls_dir(tmp_path) / "server.crt", d.tls_dir(tmp_path) / "server.key")
    d._issue_server_cert(tls, key, ca, d._san_names("127.0.0.1", []))
    assert _cert(tls.cert).not_valid_after_utc <= ca.not_valid_after_utc


def test_key_files_left_readable_by_others_are_made_owner_only_again(tmp_path: Path) -> None:
    tls = d.ensure_tls(tmp_path, "127.0.0.1")
    os.chmod(tls.ca.parent, 0o755)
    for name in ("ca.key", "server.key"):
        os.chmod(tls.ca.parent / name, 0o644)
    d.ensure_tls(tmp_path, "127.0.0.1")
    assert stat.S_IMODE(tls.ca.parent.stat().st_mode) == 0o700
    assert {stat.S_IMODE((tls.ca.parent / n).stat().st_mode) for n in ("ca.key", "server.key")} == {0o600}
