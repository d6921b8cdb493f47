"""Run Flower's deployment engine on this machine: SuperLink, SuperNodes and `flwr run`.

What the operator commands (`cadence federated ...`) and the end-to-end test use. Every
process is started in its own session (process group) so that `stop` ends it and every
child it spawned (ServerApp / ClientApp subprocesses); `FLWR_HOME` lives in the workspace,
the update check is off, runtime dependency installation is disabled, and everything binds
127.0.0.1 unless told otherwise.

Connections use TLS unless a caller asks for ``insecure`` by name: the SuperLink serves with a
certificate from the workspace's own CA (`ensure_tls`, ``WORKDIR/tls/``), SuperNodes and `flwr`
verify it against that CA (``--root-certificates`` / ``root-certificates`` in config.toml).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from cadence.files import atomic_write  # owner-only (0600) from the first byte
from federated.config import RUN_ID_PLACEHOLDER, run_config_string, status_path, write_json_atomic

APP_DIR = Path(__file__).resolve().parent / "app"
#: the same training under SecAgg+ (`cadence federated run --secagg`; federated/secagg.py)
SECAGG_APP_DIR = Path(__file__).resolve().parent / "app-secagg"
FEDERATION = "cadence"


class DeploymentError(RuntimeError):
    """A Flower process failed to start, or a run failed or timed out."""


def find_bin(name: str) -> str:
    """`name` next to this Python (the venv's own Flower/cadence), else on PATH.

    A clear error instead of `FileNotFoundError` from `Popen` when it is nowhere.
    """
    p = Path(sys.executable).parent / name
    if p.exists():
        return str(p)
    found = shutil.which(name)
    if found is None:
        raise DeploymentError(f"{name}: not found next to {sys.executable} nor on PATH (is Cadence installed "
                              f"with its Flower dependency in this environment?)")
    return found



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(workdir: str | os.PathLike[str]) -> dict[str, str]:
    """Environment for Flower processes: FLWR_HOME inside the workspace, no update check."""
    env = dict(os.environ)
    home = Path(workdir).resolve() / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    env.update(FLWR_HOME=str(home), FLWR_DISABLE_UPDATE_CHECK="1", RAY_DISABLE_USAGE_STATS="1",
               PYTHONUNBUFFERED="1")
    # SuperLink/SuperNode start flower-superexec, flwr-serverapp, flwr-clientapp by name
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (``[::1]:9300``, what a URL and gRPC need)."""
    h = host.strip()
    if ":" in h and not h.startswith("["):
        h = f"[{h}]"
    return f"{h}:{port}"


def write_connection(workdir: str | os.PathLike[str], address: str, *, insecure: bool = False) -> Path:
    """`$FLWR_HOME/config.toml` naming our SuperLink as the default federation.

    TLS unless `insecure`: `flwr` verifies the SuperLink against the workspace's CA (`ca_path`).
    """
    path = connection_path(workdir)
    home = path.parent
    tls = "insecure = true\n" if insecure else (f"root-certificates = {json.dumps(str(ca_path(workdir)))}\n"
                                               f"insecure = false\n")
    try:
        home.mkdir(parents=True, exist_ok=True)
        path.write_text(f'[superlink]\ndefault = "{FEDERATION}"\n\n[superlink.{FEDERATION}]\n'
                        f"address = {json.dumps(address)}\n{tls}")  # a JSON string is a TOML basic string
    except OSError as exc:  # the workspace is a file, or not writable: named, not a traceback
        raise DeploymentError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def connection_path(workdir: str | os.PathLike[str]) -> Path:
    return Path(workdir).resolve() / "flwr-home" / "config.toml"


def _connection(workdir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The workspace's ``[superlink.cadence]`` table of config.toml, None without a readable one."""
    try:
        return dict(tomllib.loads(connection_path(workdir).read_text())["superlink"][FEDERATION])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_connection(workdir: str | os.PathLike[str]) -> str | None:
    """The SuperLink address `write_connection` named for this workspace, None without one."""
    conn = _connection(workdir)
    return None if conn is None or "address" not in conn else str(conn["address"])


def insecure_connection(workdir: str | os.PathLike[str]) -> Path | None:
    """The workspace's config.toml when it says ``insecure = true`` (``--insecure``, or written before TLS), else None.

    `flwr` then talks to the SuperLink unencrypted: the commands using it say so.
    """
    conn = _connection(workdir)
    return connection_path(workdir) if conn is not None and conn.get("insecure") is True else None


#: the SuperLink's state (registered SuperNodes, runs) in the workspace: with it in memory
#: (Flower's default) a restarted SuperLink no longer knew the SuperNodes, which then died
#: on their next heartbeat (401) and the next run waited `round-timeout` for devices
SUPERLINK_DB = "superlink.db"


def superlink_cmd(host: str, port: int, database: str | os.PathLike[str] | None = None, *,
                  tls: ServerTLS | None) -> list[str]:
    """flower-superlink serving its Fleet, Control and Runtime APIs with `tls` (None: ``--insecure``, by name)."""
    security = ["--insecure"] if tls is None else ["--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert),
                                                   "--ssl-keyfile", str(tls.key)]
    cmd = [find_bin("flower-superlink"), *security, "--disable-runtime-dependency-installation",
           "--host", host, "--port", str(port)]
    if database is not None:
        cmd += ["--database", str(Path(database).resolve())]
    return cmd


def check_superlink_db(database: str | os.PathLike[str]) -> None:
    """Raise `DeploymentError` naming `database` when it exists but is not a readable SQLite file.

    flower-superlink would otherwise stop with a traceback (``file is not a database``).
    A missing or empty file is fine: the SuperLink creates it.
    """
    import sqlite3

    p = Path(database)
    if not p.exists():
        return
    if not p.is_file():
        raise DeploymentError(f"SuperLink state {p} is not a file; move it away (the SuperLink makes a new one)")
    try:
        if p.stat().st_size == 0:
            return
        con = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True)
        try:
            con.execute("PRAGMA schema_version").fetchone()
            row = con.execute("PRAGMA quick_check").fetchone()
        finally:
            con.close()
    except (sqlite3.Error, OSError) as exc:
        raise DeploymentError(f"SuperLink state {p} is damaged ({exc}); move it away (the SuperLink then starts "
                              f"afresh: SuperNodes must reconnect, past runs are forgotten)") from exc
    if row is None or str(row[0]).lower() != "ok":
        raise DeploymentError(f"SuperLink state {p} is damaged (quick_check: {row[0] if row else 'no answer'}); "
                              f"move it away (the SuperLink then starts afresh)")


def check_port_free(host: str, port: int, what: str, option: str = "--port") -> None:
    """Raise `DeploymentError` naming `what` when `host:port` is taken (Flower would fail with a traceback)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise DeploymentError(f"{what}: cannot use host {host!r}: {exc.strerror or exc}") from exc
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: a port left in TIME_WAIT by a stopped SuperLink is free; a listener is not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            raise DeploymentError(f"{what}: port {port} on {host} is not available ({exc.strerror or exc}); "
                                  f"is another SuperLink/SuperNode running there? Choose another {option}") from exc


def supernode_cmd(superlink: str, data: str | os.PathLike[str], port: int, host: str = "127.0.0.1", *,
                  root_certificates: str | os.PathLike[str] | None, secagg_only: bool = False,
                  pinned_bin: str | os.PathLike[str] | None = None) -> list[str]:
    """flower-supernode verifying the SuperLink against the CA `root_certificates` (None: ``--insecure``, by name).

    `secagg_only`: node config ``secagg-only=true`` (Cadence's plain app refuses the device,
    `federated.client_app.secagg_only`), and the SuperNode runs Cadence's SecAgg+ app only: it
    starts through `federated.pinned_app`, whose launchers (in `pinned_bin`, default
    ``pinned-bin`` next to the data file) check each run's app before Flower runs any of it.
    """
    data_path = Path(data).resolve()
    security = ["--insecure"] if root_certificates is None else ["--root-certificates",
                                                                 str(Path(root_certificates).resolve())]
    node_config = f'data="{data_path}"' + (" secagg-only=true" if secagg_only else "")
    cmd = [find_bin("flower-supernode"), *security, "--superlink", superlink, "--host", host, "--port", str(port),
           "--node-config", node_config]
    if not secagg_only:
        return cmd
    bin_dir = Path(pinned_bin) if pinned_bin is not None else data_path.parent / "pinned-bin"
    return [sys.executable, "-m", "federated.pinned_app", "supernode", str(bin_dir.resolve()), *cmd]


# ---------------------------------------------------------------- TLS: the workspace's own CA

TLS_DIR = "tls"
#: a server certificate this close to its end is issued again when the SuperLink starts
RENEW_BEFORE = dt.timedelta(days=30)
SERVER_DAYS = 365
CA_DAYS = 3650
#: names every SuperLink certificate covers: what local SuperNodes, `flwr` and SuperExec dial
LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")
#: one label of a host name (RFC 1123): letters, digits, inner hyphens, up to 63 characters
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class ServerTLS:
    """The SuperLink's certificate, its key and the CA that signed it (what SuperNodes trust)."""

    ca: Path
    cert: Path
    key: Path


def tls_dir(workdir: str | os.PathLike[str]) -> Path:
    return Path(workdir).resolve() / TLS_DIR


def ca_path(workdir: str | os.PathLike[str]) -> Path:
    """The CA certificate SuperNodes and `flwr` verify the workspace's SuperLink with (copy it to each device)."""
    return tls_dir(workdir) / "ca.crt"


def is_loopback(host: str) -> bool:
    """`host` is this machine only (127.0.0.0/8, ::1, localhost): nothing else can reach it."""
    h = host.strip().strip("[]")
    if h.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(h.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


#: why a SuperLink is kept on loopback unless the operator says otherwise (`cadence federated superlink`)
CONTROL_API_EXPOSED = (
    "Flower 1.41 serves its Control API (which starts runs: code of the caller's choosing, run on this machine) "
    "and its Runtime API on the same port as the SuperNodes' Fleet API, without authentication")


def is_wildcard(host: str) -> bool:
    """`host` is 0.0.0.0 or ``::`` (every interface): an address to bind, never one anybody dials."""
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_unspecified
    except ValueError:
        return False


def check_tls_name(name: str) -> str:
    """`name` (an IP address or a host name SuperNodes dial) as a certificate can name it; else `DeploymentError`.

    Refused by name: a wildcard address, ``host:port``, a URL, a wildcard or malformed host
    name; such a name in the certificate would match no address a SuperNode dials.
    """
    n = name.strip()
    if "%" in n:  # a certificate holds no zone: "fe80::1%eth0" would never match the one read back
        raise DeploymentError(f"--tls-name {name}: a scoped address (with a %zone) cannot be named in a certificate; "
                              f"give a global address or a host name")
    try:
        if ipaddress.ip_address(n.strip("[]")).is_unspecified:
            raise DeploymentError(f"--tls-name {name}: a wildcard address is nobody's address; give the "
                                  f"address or host name SuperNodes dial")
        return n.strip("[]")
    except ValueError:
        pass
    labels = n.split(".")
    if not n or len(n) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise DeploymentError(f"--tls-name {name!r}: not an IP address nor a host name (letters, digits, hyphens "
                              f"and dots; no port, scheme or wildcard), e.g. --tls-name 192.168.1.10 or "
                              f"--tls-name fl.bank.example")
    return n.lower()


def ensure_tls(workdir: str | os.PathLike[str], host: str, names: Sequence[str] = ()) -> ServerTLS:
    """The workspace's CA (made once, then reused) and a server certificate for `host`, `names` and loopback.

    `names`: the addresses and host names remote SuperNodes dial (``--tls-name``); a wildcard
    `host` is named by none. The CA is never replaced silently (every SuperNode trusts it): one
    that ended, or ends within a server certificate's life, is an error. The server
    certificate is issued again when it names other names, was not signed by this CA, lacks
    key identifiers or ends soon. Files are owner-only (0600; keys made so again if found
    wider) in an owner-only folder.
    """
    sans = _san_names(host, names)  # a bad name is refused before anything is written
    folder = tls_dir(workdir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        ca_key, ca_cert = _ca(folder)
        _check_ca_lifetime(ca_cert, folder)
        tls = ServerTLS(folder / "ca.crt", folder / "server.crt", folder / "server.key")
        _owner_only(folder / "ca.key", tls.key)
        if not _server_cert_fits(tls, ca_cert, sans):
            _issue_server_cert(tls, ca_key, ca_cert, sans)
    except OSError as exc:
        raise DeploymentError(f"cannot write the SuperLink's TLS files in {folder}: {exc.strerror or exc}") from exc
    return tls


def _owner_only(*keys: Path) -> None:
    """Private keys found readable by others (copied, restored from a backup) are made 0600 again."""
    for key in keys:
        if key.exists() and key.stat().st_mode & 0o077:
            os.chmod(key, 0o600)


#: this long before the CA would be refused (`_check_ca_lifetime`), starting the SuperLink says so: a
#: year to hand every SuperNode a new CA before the restart that needs it
CA_WARN_BEFORE = dt.timedelta(days=SERVER_DAYS)


def ca_rotation_due(tls: ServerTLS) -> str | None:
    """A warning when the workspace's CA will be refused within `CA_WARN_BEFORE`; else None."""
    from cryptography import x509

    ends = x509.load_pem_x509_certificate(tls.ca.read_bytes()).not_valid_after_utc
    refused_from = ends - dt.timedelta(days=SERVER_DAYS)
    if refused_from - dt.datetime.now(dt.UTC) >= CA_WARN_BEFORE:
        return None
    return (f"the SuperLink's CA {tls.ca} ends on {ends:%Y-%m-%d}, and from {refused_from:%Y-%m-%d} the SuperLink "
            f"will refuse to start with it: make a new CA before then (move {tls.ca.parent} away and restart) and "
            f"give every SuperNode the new ca.crt (docs/federated.md)")


def _check_ca_lifetime(ca_cert: Any, folder: Path) -> None:
    """Refuse a CA that ended or ends within a server certificate's life: a new one must be handed to every SuperNode."""
    ends = ca_cert.not_valid_after_utc
    now = dt.datetime.now(dt.UTC)
    if ends - now < dt.timedelta(days=SERVER_DAYS):
        verb = "ended" if ends <= now else "ends"
        raise DeploymentError(f"the SuperLink's CA in {folder} {verb} on {ends:%Y-%m-%d} (within the "
                              f"{SERVER_DAYS} days a server certificate lasts); move {folder} away to make a new "
                              f"CA, then give every SuperNode the new ca.crt (it is never replaced silently)")


def _ca(folder: Path) -> tuple[Any, Any]:
    """(key, certificate) of the workspace's CA: read when both files exist, else made."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key_file, cert_file = folder / "ca.key", folder / "ca.crt"
    if key_file.exists() or cert_file.exists():
        try:
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise DeploymentError(f"the SuperLink's CA in {folder} is unusable ({exc}); move {folder} away to make a "
                                  f"new one (every SuperNode then needs the new ca.crt)") from exc
        return key, cert
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Cadence federated CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    atomic_write(key_file, _key_pem(key))
    atomic_write(cert_file, cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _san_names(host: str, extra: Sequence[str]) -> list[Any]:
    """The subject alternative names for loopback, `host` (unless a wildcard) and the checked `extra` names.

    An IP address as an IP, else a DNS name.
    """
    from cryptography import x509

    names: list[Any] = []
    bound = [] if is_wildcard(host) else [host.strip().strip("[]").split("%")[0]]  # a certificate holds no zone
    for h in (*LOOPBACK_NAMES, *bound, *(check_tls_name(n) for n in extra)):
        try:
            n: Any = x509.IPAddress(ipaddress.ip_address(h))
        except ValueError:
            n = x509.DNSName(h)
        if n not in names:
            names.append(n)
    return names


def _server_cert_fits(tls: ServerTLS, ca_cert: Any, names: list[Any]) -> bool:
    """The certificate on disk (with its key) is this CA's, names exactly `names`, has key identifiers, is not ending soon."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    if not (tls.cert.is_file() and tls.key.is_file()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
        cert.verify_directly_issued_by(ca_cert)
        key = serialization.load_pem_private_key(tls.key.read_bytes(), password=None)
        if key.public_key() != cert.public_key():  # a key restored apart from its certificate: Flower would not start
            return False
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    return (set(sans) == set(names) and aki == x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())
            and cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > RENEW_BEFORE)


def _issue_server_cert(tls: ServerTLS, ca_key: Any, ca_cert: Any, names: list[Any]) -> None:
    """A server certificate for `names` from the CA, never outliving it, with the key identifiers strict verifiers need.

    Subject and Authority Key Identifiers: without them ``openssl verify -x509_strict`` (and
    Python 3.13's default TLS context) refuse the chain.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Cadence SuperLink")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + dt.timedelta(days=SERVER_DAYS), ca_cert.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    atomic_write(tls.key, _key_pem(key))
    atomic_write(tls.cert, cert.public_bytes(serialization.Encoding.PEM))


def ca_problem(path: str | os.PathLike[str]) -> str | None:
    """Why `path` cannot be the CA a SuperNode verifies its SuperLink by; None if it can.

    Checked before flower-supernode starts: on a file that is no PEM CA certificate (or an
    expired one) it dies with a gRPC error where nobody looks (the desktop app discards its output).
    The words follow the path: "is not a PEM certificate", "expired on 2030-01-01", ...
    """
    from cryptography import x509

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    try:
        cert = x509.load_pem_x509_certificate(data)
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    except ValueError:
        return "is not a PEM certificate (the SuperLink's WORKDIR/tls/ca.crt is one)"
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc <= now:
        return f"expired on {cert.not_valid_after_utc:%Y-%m-%d} (ask for the SuperLink's new ca.crt)"
    if cert.not_valid_before_utc > now:
        return f"is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (is this computer's clock right?)"
    if constraints is None or not constraints.ca:
        return "is not a CA certificate (the SuperLink's WORKDIR/tls/ca.crt, not its server.crt)"
    return None


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def spawn(cmd: list[str], workdir: str | os.PathLike[str], log_name: str) -> subprocess.Popen[bytes]:
    """Start `cmd` in its own process group, logging to ``WORKDIR/logs/LOG_NAME.log``."""
    logs = Path(workdir).resolve() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    fh = open(logs / f"{log_name}.log", "ab")  # noqa: SIM115 - lives as long as the process
    try:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=flower_env(workdir),
                                start_new_session=True, cwd=str(Path(workdir).resolve()))
    finally:
        fh.close()


class Interrupted(Exception):
    """A SIGINT/SIGTERM/SIGHUP that `SignalGuard` turned into an exception once armed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class SignalGuard:
    """SIGINT/SIGTERM/SIGHUP noted while something starts, raised as `Interrupted` once armed."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: list[int] = []
        self.armed = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.armed:
            raise Interrupted(signum)

    def arm(self) -> None:
        """From now on a signal interrupts; one that came before interrupts at once."""
        self.armed = True
        if self.received:
            raise Interrupted(self.received[0])

    def ignore(self) -> None:
        """While what was started is being stopped, a second signal must not cut the clean-up short."""
        self.armed = False
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


@contextmanager
def signals_deferred() -> Iterator[SignalGuard]:
    """A `SignalGuard` handling the three signals inside the block; the old handlers come back after it."""
    guard = SignalGuard()
    old = {sig: signal.signal(sig, guard.handler) for sig in SignalGuard.SIGNALS}
    try:
        yield guard
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def run_foreground(cmd: list[str], workdir: str | os.PathLike[str]) -> int:
    """Run `cmd` until it exits; on SIGTERM/SIGINT/SIGHUP stop it and every process it started.

    `subprocess.call` forwards no signal: `kill <pid>` of `cadence federated superlink` left
    flower-superlink and flower-superexec running under PID 1 (and a SuperNode training).
    The handlers go in before `Popen` (a signal while it starts would orphan the child in its
    own session), and every signal is ignored during `stop` (Ctrl-C there left a traceback).
    """
    proc: subprocess.Popen[bytes] | None = None
    code = 0
    with signals_deferred() as guard:
        try:
            proc = subprocess.Popen(cmd, env=flower_env(workdir), start_new_session=True)
            guard.arm()  # a signal that came while it started stops it at once
            code = proc.wait()
        except Interrupted:
            pass
        finally:
            guard.ignore()
            if proc is not None:
                stop(proc)  # also what it left in its group when it exited by itself
    return 128 + guard.received[0] if guard.received else code


def descendants(pid: int) -> list[int]:
    """Every process started by `pid`, including detached ones.

    Flower's SuperExec starts in a new session: killing the process group alone would leave it.
    """
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:  # noqa: BLE001 - process gone or psutil missing: nothing more to find
        return []


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM `proc`'s process group and every descendant, SIGKILL what is left after `timeout`."""
    kids = descendants(proc.pid)
    if proc.poll() is None:
        _kill_group(proc.pid, signal.SIGTERM)
    for pid in kids:
        _kill(pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    kids += descendants(proc.pid)
    _kill_group(proc.pid, signal.SIGKILL)
    for pid in kids:
        _kill(pid, signal.SIGKILL)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def speaks_tls(address: str, timeout: float = 2.0) -> bool | None:
    """Whether the SuperLink at ``host:port`` answers a TLS handshake; None when nothing answers there.

    A SuperNode whose TLS setting differs from its SuperLink's only retries, and Flower logs no
    cause: `cadence federated supernode` asks first and says so. The certificate is not
    checked here (flower-supernode does that): only whether TLS is spoken at all.
    """
    import ssl

    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except (OSError, ValueError):
        return None
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        with ctx.wrap_socket(sock, server_hostname=host or None):
            return True
    except (ssl.SSLError, ConnectionResetError):
        return False
    except OSError:  # timed out or closed mid-handshake: cannot tell
        return None
    finally:
        sock.close()


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise DeploymentError(f"process exited with code {proc.returncode} before listening on {host}:{port}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.3)
    raise DeploymentError(f"nothing listening on {host}:{port} after {timeout:.0f} s")


def app_config(app_dir: Path = APP_DIR) -> dict[str, Any]:
    """The run-config keys the Flower app declares (``[tool.flwr.app.config]``), with their defaults."""
    doc = tomllib.loads((app_dir / "pyproject.toml").read_text())
    return dict(doc["tool"]["flwr"]["app"]["config"])


#: how long `submit_run` retries while the SuperLink is unavailable (it was just started, say)
SUPERLINK_WAIT_S = 30.0


def submit_run(workdir: str | os.PathLike[str], config: Mapping[str, Any], app_dir: Path = APP_DIR,
               timeout: float = 120.0, wait_s: float = SUPERLINK_WAIT_S) -> dict[str, Any]:
    """`flwr run APP cadence --run-config ...` against the SuperLink in ``config.toml``.

    Keys the app does not declare are refused here, by name: the SuperLink only answers
    "Invalid run configuration". While the SuperLink is unavailable the submission is
    retried for up to `wait_s` seconds: an operator script that starts the SuperLink and
    submits right after would otherwise fail on a SuperLink still starting.
    """
    undeclared = sorted(set(config) - set(app_config(app_dir)))
    if undeclared:
        raise DeploymentError(f"run config: {', '.join(undeclared)} not declared in {app_dir / 'pyproject.toml'} "
                              f"[tool.flwr.app.config]")
    cmd = [find_bin("flwr"), "run", str(app_dir), FEDERATION, "--run-config", run_config_string(config), "--format", "json"]
    deadline = time.monotonic() + wait_s
    while True:  # own session: a terminal's Ctrl-C reaches this command, which stops the run, not `flwr run` mid-submit
        res = subprocess.run(cmd, env=flower_env(workdir), capture_output=True, text=True, timeout=timeout,
                             cwd=str(Path(workdir).resolve()), start_new_session=True)
        if res.returncode != 0:
            raise DeploymentError(f"flwr run failed ({res.returncode}): {res.stdout[-2000:]} {res.stderr[-2000:]}")
        try:
            return _submitted(res.stdout, workdir)
        except DeploymentError as exc:
            if "unavailable" not in str(exc).lower() or time.monotonic() >= deadline:
                raise
        time.sleep(1.0)


def _submitted(stdout: str, workdir: str | os.PathLike[str]) -> dict[str, Any]:
    """`flwr run --format json`'s answer; a refusal raises (flwr exits 0 with ``success: false``).

    Without this a run that never started would be waited for until the caller's timeout.
    """
    try:
        info = dict(json.loads(stdout[stdout.index("{"):]))
    except ValueError as exc:
        raise DeploymentError(f"flwr run gave no JSON answer: {stdout[-2000:]!r}") from exc
    if info.get("success") is False or not info.get("run-id"):
        detail = " ".join(str(info.get("error-message") or info).split()).rstrip(".")
        raise DeploymentError(f"flwr run refused the run: {detail}.{_hint(detail, workdir)}")
    return info


def _hint(reason: str, workdir: str | os.PathLike[str]) -> str:
    """What to check, only where flwr's reason points there (a refused config is not a missing SuperLink)."""
    low = reason.lower()
    if "run configuration" in low or "run config" in low:
        return (f" Check the --run-config keys and values against {APP_DIR / 'pyproject.toml'} "
                f"[tool.flwr.app.config].")
    start = f" Is a SuperLink running for this workdir? Start one with `cadence federated superlink --workdir {workdir}`."
    if any(w in low for w in ("configuration not found", "not found in the flower configuration")):
        return start
    if any(w in low for w in ("unavailable", "connection", "connect", "deadline")):
        return start + _tls_mismatch_hint(workdir)
    return ""


def _tls_mismatch_hint(workdir: str | os.PathLike[str]) -> str:
    """A running SuperLink and this workspace disagreeing on TLS is also only "unavailable" to `flwr`."""
    if insecure_connection(workdir) is not None:
        return (f" If one is running with TLS, it cannot answer this workdir's config.toml (insecure = true): "
                f"restart it with `cadence federated superlink --workdir {workdir}` (TLS unless --insecure), "
                f"which rewrites config.toml.")
    return (" If one is running, it may have been started with --insecure (or before TLS) while this workdir "
            "connects with TLS: stop it and start it again without --insecure.")


def flwr_run_status(workdir: str | os.PathLike[str], run_id: str | int, timeout: float = 60.0) -> tuple[str, str]:
    """(status, details) of a run as the SuperLink has it (`flwr ls --run-id`), e.g. ``finished:failed``.

    Raises `DeploymentError` when the SuperLink does not answer.
    """
    cmd = [find_bin("flwr"), "ls", FEDERATION, "--run-id", str(run_id), "--format", "json"]
    try:
        res = subprocess.run(cmd, env=flower_env(workdir), capture_output=True, text=True, timeout=timeout,
                             cwd=str(Path(workdir).resolve()), start_new_session=True)
        info = dict(json.loads(res.stdout[res.stdout.index("{"):]))
    except (subprocess.TimeoutExpired, ValueError) as exc:
        raise DeploymentError(f"flwr ls gave no answer: {exc}") from exc
    runs = info.get("runs") or []
    if info.get("success") is False or not runs:
        raise DeploymentError(" ".join(str(info.get("error-message") or info).split()))
    return str(runs[0].get("status", "")), str(runs[0].get("status-details", ""))


def status_template(workdir: str | os.PathLike[str]) -> Path:
    """The ``status-file`` `cadence federated run` sends: the ServerApp fills in its run id.

    One file per run, so two runs from one workspace never read (or delete) each other's progress.
    """
    return Path(workdir).resolve() / f"status-{RUN_ID_PLACEHOLDER}.json"


def run_status_file(workdir: str | os.PathLike[str], run_id: str | int) -> Path:
    return status_path(str(status_template(workdir)), run_id)


LATEST = "latest-run.json"


def write_latest(workdir: str | os.PathLike[str], run_id: str | int) -> Path:
    """Point `cadence federated status` at run `run_id` (the last one submitted from this workspace)."""
    path = Path(workdir).resolve() / LATEST
    write_json_atomic(path, {"run_id": str(run_id)}, indent=None)  # its status file follows (`run_status_file`)
    return path


def latest_run_id(workdir: str | os.PathLike[str]) -> str | None:
    """The run last submitted from `workdir` (`write_latest`); None when none was (or its pointer is unreadable)."""
    try:
        return str(json.loads((Path(workdir).resolve() / LATEST).read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def latest_status_file(workdir: str | os.PathLike[str], run_id: str | int | None = None) -> Path:
    """Status file of run `run_id`, else of the last run submitted here (else the pre-run-id ``status.json``)."""
    wd = Path(workdir).resolve()
    if run_id is None:
        run_id = latest_run_id(wd)
    return wd / "status.json" if run_id is None else run_status_file(wd, run_id)


def record_end(path: str | os.PathLike[str], error: str) -> None:
    """Write ``failed`` with `error` to a status file still saying waiting/running (its ServerApp is gone)."""
    p = Path(path)
    doc = read_status(p)
    if doc.get("state") in ("done", "failed"):
        return
    if doc.get("state") == "unknown":
        doc = {}
    doc.update(state="failed", error=error, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
    try:
        write_json_atomic(p, doc, default=str)
    except OSError:  # pragma: no cover - the caller reports the end anyway
        pass


def stop_command(workdir: str | os.PathLike[str], run_id: str | int) -> str:
    """The shell command an operator runs to stop run `run_id` of this workspace's SuperLink."""
    home = Path(workdir).resolve() / "flwr-home"
    return f"FLWR_HOME={home} flwr stop {run_id} {FEDERATION}"


def stop_run(workdir: str | os.PathLike[str], run_id: str | int, timeout: float = 60.0) -> None:
    """`flwr stop RUN_ID cadence` (same FLWR_HOME and connection as `submit_run`); raise when it did not stop."""
    cmd = [find_bin("flwr"), "stop", str(run_id), FEDERATION, "--format", "json"]
    try:
        res = subprocess.run(cmd, env=flower_env(workdir), capture_output=True, text=True, timeout=timeout,
                             cwd=str(Path(workdir).resolve()), start_new_session=True)
        info = dict(json.loads(res.stdout[res.stdout.index("{"):]))
    except (subprocess.TimeoutExpired, ValueError, OSError) as exc:
        raise DeploymentError(f"flwr stop gave no answer: {exc}") from exc
    if info.get("success") is not True:
        raise DeploymentError("flwr stop: " + " ".join(str(info.get("error-message") or info).split()))


def read_status(path: str | os.PathLike[str]) -> dict[str, Any]:
    """`load_status` for pollers: no second look, and a status that cannot be read is state "unknown" with why.

    Its writers replace the file whole (`write_json_atomic`): one that does not decode is damaged.
    """
    try:
        return load_status(path, settle_s=0.0)
    except StatusFileError as exc:
        return {"state": "unknown", "detail": f"{exc} yet" if exc.missing else str(exc)}


class StatusFileError(DeploymentError):
    """No status to show: the file is not there (`missing`), or it is unreadable or damaged."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


def load_status(path: str | os.PathLike[str], *, settle_s: float = 1.0, poll: float = 0.1) -> dict[str, Any]:
    """The status object in `path`, for one look at it (`cadence federated status`); else `StatusFileError`.

    A file that does not decode is read again for up to `settle_s` (a writer caught mid-write);
    one that still does not is damaged, and the error names how.
    """
    p = Path(path)
    deadline = time.monotonic() + settle_s
    while True:
        if not p.exists():
            raise StatusFileError(f"no status file at {p}", missing=True)
        try:
            doc = json.loads(p.read_text())
            break
        except ValueError as exc:
            if time.monotonic() >= deadline:
                raise StatusFileError(f"status file {p} is damaged: not readable JSON ({exc})") from None
            time.sleep(poll)
        except OSError as exc:  # a folder, no permission
            raise StatusFileError(f"status file {p} is unreadable: {exc.strerror or exc}") from None
    if not isinstance(doc, dict):  # `null`, a number: not a status (damaged or not ours)
        raise StatusFileError(f"status file {p} is damaged: it holds no status object ({type(doc).__name__})")
    return doc


class RunTimeout(DeploymentError):
    """`wait_for_run` gave up: the run is still going on the SuperLink."""

    def __init__(self, message: str, last: dict[str, Any]) -> None:
        super().__init__(message)
        self.last = last


def wait_for_run(status_file: str | os.PathLike[str], timeout: float, on_progress: Any = None, *,
                 flwr_status: Callable[[], tuple[str, str]] | None = None, check_every: float = 10.0,
                 poll: float = 1.0, run_id: str | int | None = None) -> dict[str, Any]:
    """Poll the ServerApp's status file until the run is done; raise when it failed (or `timeout`).

    The ServerApp writes ``failed`` with the reason; `flwr_status` (e.g. `flwr_run_status` of
    the run) is asked every `check_every` s, so a run Flower finished without a word in the
    status file (stopped, its ServerApp killed) or a SuperLink gone for good ends the wait too;
    such an end is written to the status file (``failed``), so `cadence federated status`
    stops saying running. With `run_id`, a status written by another run is not this run's.
    Past `timeout`, `RunTimeout` (the run goes on: stop it with `stop_run`).
    """
    t0 = time.monotonic()
    last = None
    next_check = t0 + check_every
    unreachable = 0

    def current() -> dict[str, Any]:
        st = read_status(status_file)
        if run_id is not None and "run_id" in st and str(st["run_id"]) != str(run_id):
            return {"state": "unknown", "detail": f"{status_file} is run {st['run_id']}'s, not run {run_id}'s"}
        return st

    while time.monotonic() - t0 < timeout:
        st = current()
        if on_progress is not None and st.get("round") != last:
            on_progress(st)
            last = st.get("round")
        if st.get("state") == "done":
            return st
        if st.get("state") == "failed":
            raise DeploymentError(f"run failed: {st.get('error', 'no reason given')}")
        if flwr_status is not None and time.monotonic() >= next_check:
            next_check = time.monotonic() + check_every
            try:
                state, details = flwr_status()
                unreachable = 0
            except DeploymentError as exc:
                unreachable += 1
                if unreachable >= 3:
                    last_st = read_status(status_file)
                    # the run cannot be followed any more: say so in its status file (not 'running' for ever)
                    if run_id is None or str(last_st.get("run_id", run_id)) == str(run_id):
                        record_end(status_file, f"the SuperLink stopped answering ({exc}); the run's outcome "
                                                f"is unknown (see the SuperLink log)")
                    raise DeploymentError(f"run: the SuperLink stopped answering ({exc}); "
                                          f"last status {last_st}") from exc
                continue
            if state.startswith("finished"):
                st = current()  # the ServerApp writes its last word before it finishes
                if st.get("state") in ("done", "failed"):
                    continue
                ended = f"run ended as {state}{': ' + details if details else ''}"
                record_end(status_file, f"{ended} (Flower finished it without a word from the ServerApp)")
                raise DeploymentError(f"{ended} (status file said {st.get('state')!r}; see the SuperLink log)")
        time.sleep(poll)
    last_st = current()
    raise RunTimeout(f"run not done after {timeout:g} s (--timeout); last status {last_st}", last_st)
