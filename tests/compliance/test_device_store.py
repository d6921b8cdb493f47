"""Encrypted raw-event store on the device: confidentiality, integrity, retention, deletion."""

from __future__ import annotations

import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from compliance.device_store import DeviceStore, DeviceStoreError, FileKeyProvider

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
KEYS = {"t": [0.0, 0.105, 0.231, 0.402], "key": [65, 66, 67, 68], "marker": "PLAINTEXT-MARKER-9137"}


def test_round_trip_and_nothing_in_clear(tmp_path: Path) -> None:
    kp = FileKeyProvider(tmp_path / "keys" / "store.key")
    with DeviceStore(tmp_path / "events.db", kp, clock=lambda: NOW) as st:
        a = st.put("keystroke", KEYS)
        b = st.put("gait", b"\x01\x02raw-accel", recorded_at=NOW - timedelta(hours=1))
        assert st.get(a).payload == KEYS and st.get(b).payload == b"\x01\x02raw-accel"
        assert [e.kind for e in st.events()] == ["gait", "keystroke"]
        assert [e.id for e in st.events("keystroke")] == [a]
    assert stat.S_IMODE((tmp_path / "keys" / "store.key").stat().st_mode) == 0o600
    raw = (tmp_path / "events.db").read_bytes()
    assert b"PLAINTEXT-MARKER" not in raw and b"raw-accel" not in raw
    with DeviceStore(tmp_path / "events.db", kp) as st:  # same key file: readable again
        assert st.get(a).payload["marker"] == KEYS["marker"]


def test_wrong_key_or_relabelled_row_does_not_decrypt(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    with DeviceStore(db, b"\x11" * 32) as st:
        rid = st.put("touch", {"x": [1, 2]})
    with DeviceStore(db, b"\x22" * 32) as st, pytest.raises(DeviceStoreError, match=f"record {rid}"):
        st.get(rid)
    con = sqlite3.connect(db)
    con.execute("UPDATE events SET kind='gait' WHERE id=?", (rid,))
    con.commit()
    con.close()
    with DeviceStore(db, b"\x11" * 32) as st, pytest.raises(DeviceStoreError, match="tampered"):
        st.get(rid)
    with pytest.raises(DeviceStoreError, match="32 bytes"):
        DeviceStore(db, b"short")


def test_retention_by_age_and_delete_all(tmp_path: Path) -> None:
    with DeviceStore(tmp_path / "e.db", b"\x33" * 32, clock=lambda: NOW) as st:
        for age in (31, 30.5, 29, 1):
            st.put("keystroke", {"age": age}, recorded_at=NOW - timedelta(days=age))
        assert st.purge_older_than(30) == 2
        assert sorted(e.payload["age"] for e in st.events()) == [1, 29]
        assert st.purge_older_than(timedelta(days=30)) == 0
        assert st.delete_all() == 2 and st.count() == 0


def test_destroy_removes_file_and_key(tmp_path: Path) -> None:
    kp = FileKeyProvider(tmp_path / "k")
    st = DeviceStore(tmp_path / "e.db", kp)
    st.put("gait", {"a": 1})
    st.destroy()
    assert not (tmp_path / "e.db").exists() and not (tmp_path / "k").exists()


def test_bad_payload_names_the_field(tmp_path: Path) -> None:
    with DeviceStore(tmp_path / "e.db", b"\x44" * 32) as st:
        with pytest.raises(ValueError, match="^payload:"):
            st.put("gait", {"x": object()})
        with pytest.raises(ValueError, match="^kind:"):
            st.put("", {})
