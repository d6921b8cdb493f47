r"""The device's Ed25519 key: possession factor for every request (PSD2 SCA) and its signature.

The canonical string is the server's (`server.signing`):
``METHOD\\nPATH\\nSHA256(body)\\nTIMESTAMP\\nNONCE``. It is rebuilt here rather than
imported because the server package is not shipped in the Android build; a test checks both
produce the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mobile_client.secrets_store import SecretStore

HEADER_DEVICE = "X-Cadence-Device"
HEADER_TIMESTAMP = "X-Cadence-Timestamp"
HEADER_NONCE = "X-Cadence-Nonce"
HEADER_SIGNATURE = "X-Cadence-Signature"
SECRET_NAME = "device-ed25519"


def b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def canonical_request(method: str, path: str, body: bytes, timestamp: str, nonce: str) -> bytes:
    """The bytes a device signs for one request."""
    return "\n".join([method.upper(), path, hashlib.sha256(body).hexdigest(), timestamp, nonce]).encode()


class DeviceKey:
    """Loads or creates the device key in a `SecretStore`."""

    def __init__(self, store: SecretStore) -> None:
        self.store = store
        seed = store.get(SECRET_NAME)
        if seed is None:
            key = Ed25519PrivateKey.generate()
            from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

            seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            store.put(SECRET_NAME, seed)
        self._key = Ed25519PrivateKey.from_private_bytes(seed)

    @property
    def public_key_b64(self) -> str:
        return b64e(self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    @property
    def fingerprint(self) -> str:
        """Short id shown in the privacy screen (first 8 bytes of the public key's SHA-256)."""
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return hashlib.sha256(raw).hexdigest()[:16]

    def sign_headers(self, device_id: str, method: str, path: str, body: bytes,
                     *, timestamp: float | None = None, nonce: str | None = None) -> dict[str, str]:
        ts = str(int(timestamp if timestamp is not None else time.time()))
        nonce = nonce or secrets.token_urlsafe(16)
        sig = self._key.sign(canonical_request(method, path, body, ts, nonce))
        return {HEADER_DEVICE: device_id, HEADER_TIMESTAMP: ts, HEADER_NONCE: nonce, HEADER_SIGNATURE: b64e(sig)}

    def sign_raw(self, message: bytes) -> bytes:
        """Sign arbitrary bytes (the registration proof)."""
        return self._key.sign(message)

    def destroy(self) -> None:
        """Forget the key (delete my data): the server will no longer accept this device."""
        self.store.delete(SECRET_NAME)

