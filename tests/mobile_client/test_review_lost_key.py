"""A raw-store key lost from the platform store: the old batches are not 'damaged recordings'."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.synthetic import SyntheticPerson
from mobile_client.raw_store import SECRET_NAME, RawEventStore, RawStoreError
from mobile_client.secrets_store import FileSecretStore


def test_a_store_whose_key_was_lost_is_a_wrong_key_not_torn_batches(tmp_path: Path) -> None:
    """Docs (raw_store module): 'A key that opens none of the batches is ... a RawStoreError'.

    The platform secret store lost the key (Android Keystore wiped, app data restored without
    it): the store makes a new key, which opens none of the batches. Since 4d593d6 the new
    key's key-check is written at once, so `read` takes every batch for a torn one, skips them
    silently and the Privacy screen lists them as 'damaged recordings', kept 30 days.
    """
    secrets = FileSecretStore(tmp_path / "s")
    store = RawEventStore(tmp_path / "raw", secrets)
    store.append(SyntheticPerson(2).keystrokes(40, 0).to_events())
    secrets.delete(SECRET_NAME)  # the key is gone; the encrypted batches stay
    reopened = RawEventStore(tmp_path / "raw", secrets)
    with pytest.raises(RawStoreError):
        reopened.read("keystroke")
