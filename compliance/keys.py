"""Keys of the audit log: the pseudonym HMAC key and the Ed25519 checkpoint-signing key.

Both come from settings (`CADENCE_AUDIT_HMAC_KEY`, `CADENCE_AUDIT_SIGNING_KEY`). Without them
a fixed development key is used, and refused outside ``environment="development"``: a
development key is public, so pseudonyms made with it could be reversed and seals forged.
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


def _secret_bytes(value: str, field: str) -> bytes:
    """Read a key given inline (base64 / hex) or as a path to a file holding it."""
    text = value.strip()
    p = Path(text)
    if len(text) < 512 and p.is_file():
        raw = p.read_bytes()
        if raw.lstrip().startswith(b"-----BEGIN"):
            return raw
        text = raw.decode("ascii", "replace").strip()
    if text and len(text) % 2 == 0 and all(c in string.hexdigits for c in text):
        return bytes.fromhex(text)
    for decode in (lambda t: base64.b64decode(t, validate=True), base64.urlsafe_b64decode):
        try:
            out = decode(text)
        except (binascii.Error, ValueError):
            continue
        if out:
            return out
    raise KeyConfigError(f"{field}: not base64, hex, or a readable key file")


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
    """Stable keyed pseudonym of a user id (128 bits of HMAC-SHA256, hex)."""
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
