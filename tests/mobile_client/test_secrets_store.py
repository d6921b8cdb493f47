"""Which store keeps the device's secrets, and that a failing Keystore never degrades silently."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mobile_client import secrets_store as ss


class _FakeKeystore(ss.FileSecretStore):
    """Stands in for the Android Keystore store (pyjnius cannot run here): wraps by reversing."""

    kind = "fake keystore"

    def get(self, name: str) -> bytes | None:
        v = super().get(name)
        return None if v is None else v[::-1]

    def put(self, name: str, value: bytes) -> None:
        super().put(name, value[::-1])


class _Broken:
    def __init__(self, folder: Path) -> None:
        raise RuntimeError("KeyStoreException: keystore locked")


@pytest.fixture
def android(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(ss, "is_android", lambda: True)
    return monkeypatch


def test_desktop_uses_plain_files_without_a_marker(tmp_path: Path) -> None:
    store = ss.platform_secret_store(tmp_path / "s")
    assert isinstance(store, ss.FileSecretStore)
    assert not (tmp_path / "s" / ss.KIND_MARKER).exists()


def test_a_folder_the_keystore_wrapped_is_never_read_as_plain_files(android: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    folder = tmp_path / "s"
    android.setattr(ss, "AndroidKeystoreSecretStore", _FakeKeystore)
    ss.platform_secret_store(folder).put("device-key", b"seed-bytes")
    assert (folder / ss.KIND_MARKER).read_text().strip() == ss.KEYSTORE_KIND

    android.setattr(ss, "AndroidKeystoreSecretStore", _Broken)  # later, the Keystore fails to open
    with pytest.raises(ss.KeystoreUnavailable, match="refusing to fall back"):
        ss.platform_secret_store(folder)
    assert (folder / "device-key").read_bytes() == b"seed-bytes"[::-1]  # still wrapped, untouched


def test_no_keystore_from_the_start_falls_back_with_a_warning(android: pytest.MonkeyPatch, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    android.setattr(ss, "AndroidKeystoreSecretStore", _Broken)
    with caplog.at_level(logging.WARNING, logger=ss.__name__):
        store = ss.platform_secret_store(tmp_path / "s")
    assert isinstance(store, ss.FileSecretStore)
    assert "not hardware-wrapped" in caplog.text and "keystore locked" in caplog.text


def test_the_marker_is_not_a_secret_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="secret names"):
        ss.FileSecretStore(tmp_path).get(ss.KIND_MARKER)


def test_the_app_says_why_it_cannot_start_instead_of_crashing(android: pytest.MonkeyPatch, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    import mobile_client.__main__ as entry
    import mobile_client.services as services

    def no_keystore(*a: object, **k: object) -> None:
        raise ss.KeystoreUnavailable("the device's secrets are wrapped by the Android Keystore, which cannot be opened")

    android.setattr(services, "build_services", no_keystore)
    android.setattr("mobile_client.platform_info.is_android", lambda: False)  # the desktop window path
    android.setattr("mobile_client.headless.window_size", lambda *a: None)
    with caplog.at_level(logging.ERROR):
        assert entry.main(data=tmp_path) == 1
    assert "cannot be opened" in caplog.text and "reinstall" in caplog.text
