"""Where the device keeps its secrets: the Android Keystore when available, else a 0600 file.

Two secrets live here: the Ed25519 seed of the device key and the key of the raw-event store.
The Android Keystore cannot hold an Ed25519 key on most phones in the field, so on Android we
create a non-exportable AES-256-GCM key inside the Keystore (hardware-backed where the phone has
it) and keep only the *wrapped* secrets on disk; the wrapping key never leaves the Keystore.
On desktop the secrets are files readable by the user only. The Android path cannot run on
this machine; it is guarded by `is_android()`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

from mobile_client.platform_info import is_android

log = logging.getLogger(__name__)

#: file beside the secrets naming the store that wrote them: a folder the Keystore wrapped must
#: never be read (or written) later as plain files
KIND_MARKER = ".store-kind"
KEYSTORE_KIND = "android-keystore"


def unwrap_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged secret can raise.

    ValueError/TypeError here, and on Android the Java exception pyjnius raises when the Keystore
    cannot unwrap a blob (AEADBadTagException and the like).
    """
    errors: tuple[type[BaseException], ...] = (ValueError, TypeError)
    try:
        from jnius import JavaException  # type: ignore[import-not-found]  # Android builds only
    except Exception:  # noqa: BLE001 - no pyjnius (desktop), or it cannot load: no Java errors to catch
        return errors
    return (*errors, JavaException)


class KeystoreUnavailable(RuntimeError):
    """The secrets were wrapped by the Android Keystore, which cannot be opened now."""


class SecretStore(Protocol):
    """Named small secrets (bytes)."""

    kind: str

    def get(self, name: str) -> bytes | None: ...

    def put(self, name: str, value: bytes) -> None: ...

    def delete(self, name: str) -> None: ...


def _safe(name: str) -> str:
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"name: secret names are letters, digits, '-' and '_', got {name!r}")
    return name


class FileSecretStore:
    """Secrets as files with mode 0600 in a private folder (desktop fallback)."""

    kind = "file (0600)"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)

    def get(self, name: str) -> bytes | None:
        p = self.folder / _safe(name)
        return p.read_bytes() if p.exists() else None

    def put(self, name: str, value: bytes) -> None:
        p = self.folder / _safe(name)
        tmp = p.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(value)
        os.replace(tmp, p)

    def delete(self, name: str) -> None:
        (self.folder / _safe(name)).unlink(missing_ok=True)


class AndroidKeystoreSecretStore:  # pragma: no cover - Android only
    """Secrets wrapped with an AES-GCM key held in the AndroidKeyStore (pyjnius)."""

    kind = "Android Keystore (wrapped)"
    ALIAS = "cadence-wrap"

    def __init__(self, folder: Path) -> None:
        if not is_android():
            raise RuntimeError("the Android Keystore needs Android")
        self.files = FileSecretStore(folder)
        from jnius import autoclass

        self._KeyStore = autoclass("java.security.KeyStore")
        self._Cipher = autoclass("javax.crypto.Cipher")
        self._GCMSpec = autoclass("javax.crypto.spec.GCMParameterSpec")
        ks = self._KeyStore.getInstance("AndroidKeyStore")
        ks.load(None)
        if not ks.containsAlias(self.ALIAS):
            KeyGenerator = autoclass("javax.crypto.KeyGenerator")
            Builder = autoclass("android.security.keystore.KeyGenParameterSpec$Builder")
            Props = autoclass("android.security.keystore.KeyProperties")
            gen = KeyGenerator.getInstance(Props.KEY_ALGORITHM_AES, "AndroidKeyStore")
            spec = (Builder(self.ALIAS, Props.PURPOSE_ENCRYPT | Props.PURPOSE_DECRYPT)
                    .setBlockModes([Props.BLOCK_MODE_GCM])
                    .setEncryptionPaddings([Props.ENCRYPTION_PADDING_NONE])
                    .setKeySize(256).build())
            gen.init(spec)
            gen.generateKey()
        self._key = ks.getKey(self.ALIAS, None)

    def get(self, name: str) -> bytes | None:
        blob = self.files.get(name)
        if blob is None:
            return None
        iv, ct = blob[:12], blob[12:]
        c = self._Cipher.getInstance("AES/GCM/NoPadding")
        c.init(self._Cipher.DECRYPT_MODE, self._key, self._GCMSpec(128, iv))
        return bytes(c.doFinal(ct))

    def put(self, name: str, value: bytes) -> None:
        c = self._Cipher.getInstance("AES/GCM/NoPadding")
        c.init(self._Cipher.ENCRYPT_MODE, self._key)
        ct = bytes(c.doFinal(value))
        self.files.put(name, bytes(c.getIV()) + ct)

    def delete(self, name: str) -> None:
        self.files.delete(name)


def platform_secret_store(folder: Path) -> SecretStore:
    """The platform keystore where available, else the file fallback, said out loud.

    Why the marker: a Keystore that opened once and fails later (an OS update, a locked
    profile) must not turn into the file store over the same folder. That would read wrapped
    blobs as if they were keys and write new secrets in the clear, silently.
    """
    folder = Path(folder)
    marker = folder / KIND_MARKER
    if is_android():
        try:
            store = AndroidKeystoreSecretStore(folder)
        except Exception as exc:  # noqa: BLE001 - pyjnius raises JavaException and others
            if marker.exists() and marker.read_text().strip() == KEYSTORE_KIND:
                raise KeystoreUnavailable(
                    f"the device's secrets in {folder} are wrapped by the Android Keystore, which cannot be "
                    f"opened now ({exc}); refusing to fall back to plain files") from exc
            log.warning("Android Keystore unavailable (%s): device secrets are kept as 0600 files, "
                        "not hardware-wrapped", exc)
        else:
            if not marker.exists():
                marker.write_text(KEYSTORE_KIND + "\n")
            return store
    return FileSecretStore(folder)
