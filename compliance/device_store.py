"""Encrypted store of raw behavioural events on the phone (they never leave it).

Each record is sealed with AES-256-GCM under a key the caller supplies (a file, or the
platform keystore through `KeyProvider`); the record's id, kind and time are bound as
associated data, so a row cannot be swapped or relabelled without failing to decrypt.
Only kind and time are in clear, so retention by age runs without the key. SQLite's
``secure_delete`` overwrites deleted records; `destroy` also deletes the key (crypto-shredding).
Pure Python + cryptography: no kivy import, so it runs in tests and on desktop.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32


class DeviceStoreError(RuntimeError):
    """The store cannot be opened or a record does not decrypt (wrong key or tampering)."""


class KeyProvider(Protocol):
    """Source of the 32-byte data key (a file here; Android Keystore in the app)."""

    def get_key(self) -> bytes: ...

    def destroy(self) -> None: ...


class FileKeyProvider:
    """Key in a file readable by the owner only; created on first use."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def get_key(self) -> bytes:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(KEY_BYTES))
        key = self.path.read_bytes()
        if len(key) != KEY_BYTES:
            raise DeviceStoreError(f"key file {self.path}: expected {KEY_BYTES} bytes, found {len(key)}")
        return key

    def destroy(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class StoredEvent:
    id: int
    kind: str
    recorded_at: datetime
    payload: Any


def _ts(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("recorded_at: must be an aware datetime")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class DeviceStore:
    """Raw events, encrypted at rest, with age-based retention and delete-all.

    `payload` is bytes or anything JSON-serialisable (e.g. a dict of event columns).
    """

    def __init__(self, path: str | Path, key: bytes | KeyProvider, *, clock: Callable[[], datetime] | None = None) -> None:
        self._provider = None if isinstance(key, bytes | bytearray) else key
        raw = bytes(key) if isinstance(key, bytes | bytearray) else key.get_key()
        if len(raw) != KEY_BYTES:
            raise DeviceStoreError(f"key: expected {KEY_BYTES} bytes, got {len(raw)}")
        self._aead = AESGCM(raw)
        self._clock = clock or (lambda: datetime.now(UTC))
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
            "recorded_at TEXT NOT NULL, nonce BLOB NOT NULL, blob BLOB NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS ix_events_time ON events(recorded_at)")
        self._db.commit()

    # -- context manager
    def __enter__(self) -> DeviceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _aad(row_id: int, kind: str, at: str) -> bytes:
        return f"{row_id}|{kind}|{at}".encode()

    def put(self, kind: str, payload: Any, *, recorded_at: datetime | None = None) -> int:
        """Encrypt and store one record; returns its id."""
        if not isinstance(kind, str) or not kind:
            raise ValueError("kind: must be a non-empty string such as 'keystroke'")
        if isinstance(payload, bytes | bytearray):
            body = b"b" + bytes(payload)
        else:
            try:
                body = b"j" + json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
            except (TypeError, ValueError) as exc:
                raise ValueError(f"payload: not bytes or JSON-serialisable ({exc})") from exc
        at = _ts(recorded_at or self._clock())
        with self._db:
            cur = self._db.execute("INSERT INTO events(kind, recorded_at, nonce, blob) VALUES (?, ?, x'', x'')", (kind, at))
            row_id = int(cur.lastrowid or 0)
            nonce = secrets.token_bytes(12)
            blob = self._aead.encrypt(nonce, body, self._aad(row_id, kind, at))
            self._db.execute("UPDATE events SET nonce=?, blob=? WHERE id=?", (nonce, blob, row_id))
        return row_id

    def _decrypt(self, row: tuple[int, str, str, bytes, bytes]) -> StoredEvent:
        row_id, kind, at, nonce, blob = row
        try:
            body = self._aead.decrypt(nonce, blob, self._aad(row_id, kind, at))
        except InvalidTag as exc:
            raise DeviceStoreError(f"record {row_id}: does not decrypt (wrong key or tampered)") from exc
        payload: Any = body[1:] if body[:1] == b"b" else json.loads(body[1:])
        when = datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        return StoredEvent(id=row_id, kind=kind, recorded_at=when, payload=payload)

    def get(self, row_id: int) -> StoredEvent:
        row = self._db.execute("SELECT id, kind, recorded_at, nonce, blob FROM events WHERE id=?", (row_id,)).fetchone()
        if row is None:
            raise KeyError(row_id)
        return self._decrypt(row)

    def events(self, kind: str | None = None, *, since: datetime | None = None) -> Iterator[StoredEvent]:
        """Decrypted records, oldest first, optionally of one kind / newer than `since`."""
        sql = "SELECT id, kind, recorded_at, nonce, blob FROM events WHERE 1=1"
        args: list[str] = []
        if kind is not None:
            sql, args = sql + " AND kind=?", [*args, kind]
        if since is not None:
            sql, args = sql + " AND recorded_at>=?", [*args, _ts(since)]
        for row in self._db.execute(sql + " ORDER BY recorded_at, id", args).fetchall():
            yield self._decrypt(row)

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM events").fetchone()[0])

    def purge_older_than(self, max_age: timedelta | int, *, now: datetime | None = None) -> int:
        """Delete records older than `max_age` (a timedelta or days); returns how many."""
        age = timedelta(days=max_age) if isinstance(max_age, int) else max_age
        cutoff = _ts((now or self._clock()) - age)
        with self._db:
            n = self._db.execute("DELETE FROM events WHERE recorded_at < ?", (cutoff,)).rowcount
        return int(n)

    def delete_all(self) -> int:
        """Delete every record (the user asked); deleted pages are overwritten and compacted."""
        with self._db:
            n = self._db.execute("DELETE FROM events").rowcount
        self._db.execute("VACUUM")
        return int(n)

    def destroy(self) -> None:
        """Delete all records, the database file and (for a provider) the key itself."""
        self.delete_all()
        self.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)
        if self._provider is not None:
            self._provider.destroy()
