"""Keys of the audit log: the pseudonym HMAC key and the Ed25519 checkpoint-signing key.

Both come from settings (`CADENCE_AUDIT_HMAC_KEY`, `CADENCE_AUDIT_SIGNING_KEY`). Without them
a fixed development key is used, and refused outside ``environment="development"``: a
development key is public, so pseudonyms made with it could be reversed and seals forged.

Both follow the settings in force (`cadence.settings.get_settings`): a server app binds its own
around everything it runs, so an app built with explicit settings (tests, `cadence demo`, an
embedding) writes and looks up the entries its own export will find; the CLI, binding nothing,
uses the process's.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import string
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cadence.settings import Settings, get_settings

_DEV_HMAC = hashlib.sha256(b"cadence development audit pseudonym key - not a secret").digest()
_DEV_SEED = hashlib.sha256(b"cadence development audit signing key - not a secret").digest()


class KeyConfigError(RuntimeError):
    """A compliance key is missing, malformed, or a development key is used in production."""


def _looks_like_path(text: str) -> bool:
    """A setting naming a key file rather than holding the key.

    Why: "/var/lib/cadence/hmackey" is also valid base64; decoded, a mistyped path became the
    key itself. A value starting like a path, or holding '/' that is no valid base64, is a path
    (an inline base64 key starting with '/' must be given as hex or in a file).
    """
    if text.startswith(("/", "./", "../", "~")):
        return True
    return "/" in text and _strict_b64(text) is None


def _strict_b64(text: str) -> bytes | None:
    """`text` decoded as standard or URL-safe base64, every character checked; None if it is not."""
    text = "".join(text.split())  # `openssl rand -base64 64` wraps its lines: the breaks are no key
    try:
        return base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True) or None
    except (binascii.Error, ValueError):
        return None


def _key_file(text: str, field: str) -> bytes | None:
    """The bytes of the key file `text` names; None when it is an inline key; refused when unreadable."""
    p = Path(text).expanduser()
    try:
        if len(text) < 4096 and p.is_file():
            return p.read_bytes()
    except OSError as exc:
        raise KeyConfigError(f"{field}: cannot read key file {text}: {exc.strerror or exc}") from exc
    if _looks_like_path(text):
        raise KeyConfigError(f"{field}: cannot read key file {text}")
    return None


def _secret_bytes(value: str, field: str) -> bytes:
    """Read a key given inline (hex / strict base64) or as a path to a file holding it."""
    text = value.strip()
    raw = _key_file(text, field)
    if raw is not None:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return raw
        text = raw.decode("ascii", "replace").strip()
    if text and len(text) % 2 == 0 and all(c in string.hexdigits for c in text):
        return bytes.fromhex(text)
    out = _strict_b64(text)
    if out is None:
        raise KeyConfigError(f"{field}: not hex, base64, or a readable key file")
    return out


def _refuse_dev(settings: Settings, field: str) -> None:
    if settings.environment != "development":
        raise KeyConfigError(
            f"{field} is not set and environment={settings.environment!r}: the development key is refused "
            f"outside environment='development' (set CADENCE_{field.upper()})"
        )


def hmac_key(settings: Settings | None = None) -> bytes:
    """The secret that turns user ids into audit pseudonyms."""
    s = settings or get_settings()
    if s.audit_hmac_key is None:
        _refuse_dev(s, "audit_hmac_key")
        return _DEV_HMAC
    return _hmac_from(s.audit_hmac_key)


@functools.lru_cache(maxsize=8)
def _hmac_from(value: str) -> bytes:
    """The HMAC key a setting names, read once per process (restart to rotate).

    Every audited call (twice per authorize) pseudonymises with it: a key file is not re-read each time.
    """
    key = _secret_bytes(value, "audit_hmac_key")
    if len(key) < 16:
        raise KeyConfigError("audit_hmac_key: needs at least 16 bytes of secret")
    return key


def pseudonym(user_id: str, key: bytes | None = None) -> str:
    """Stable keyed pseudonym of a user id (128 bits of HMAC-SHA256, hex), under the settings in force' key."""
    k = key if key is not None else hmac_key()
    return hmac.new(k, user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def signing_key(settings: Settings | None = None) -> Ed25519PrivateKey:
    """The Ed25519 key that signs audit checkpoints."""
    s = settings or get_settings()
    if s.audit_signing_key is None:
        _refuse_dev(s, "audit_signing_key")
        return Ed25519PrivateKey.from_private_bytes(_DEV_SEED)
    raw = _secret_bytes(s.audit_signing_key, "audit_signing_key")
    if raw.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_private_key(raw, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyConfigError("audit_signing_key: the PEM file does not hold an Ed25519 private key")
        return key
    if len(raw) != 32:
        raise KeyConfigError(f"audit_signing_key: an Ed25519 seed is 32 bytes, got {len(raw)}")
    return Ed25519PrivateKey.from_private_bytes(raw)


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """Short fingerprint naming the key that signed a checkpoint (key rotation)."""
    return hashlib.sha256(public_bytes(key)).hexdigest()[:16]


def verify_keys(settings: Settings | None = None) -> dict[str, Ed25519PublicKey]:
    """Public keys accepted for checkpoints, by key id: the signing key's and any extra ones."""
    s = settings or get_settings()
    keys: dict[str, Ed25519PublicKey] = {}
    try:
        pub = signing_key(s).public_key()
        keys[key_id(pub)] = pub
    except KeyConfigError:
        if not s.audit_public_keys:
            raise
    for item in filter(None, (x.strip() for x in s.audit_public_keys.split(","))):
        raw = _secret_bytes(item, "audit_public_keys")
        if len(raw) != 32:
            raise KeyConfigError(f"audit_public_keys: an Ed25519 public key is 32 bytes, got {len(raw)}")
        pub = Ed25519PublicKey.from_public_bytes(raw)
        keys[key_id(pub)] = pub
    return keys
