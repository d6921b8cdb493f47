"""Encrypted store of raw behavioural events on the device, with retention and deletion.

Raw signals never leave the phone; they are kept so that enrolment can be redone and federated
training can read the owner's own data, and no longer than the retention policy allows. Events
are appended in batches; each batch is one file of Fernet-encrypted JSON (AES-128-CBC +
HMAC-SHA256) named by its creation time, so retention deletes whole files without decrypting.
The key lives in the platform `SecretStore`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from mobile_client.collectors import Event, modality_of
from mobile_client.secrets_store import SecretStore
from modalities.events import AccelSample, KeyEvent, TouchEvent

SECRET_NAME = "raw-store-key"
DEFAULT_RETENTION_DAYS = 30
_TYPES = {"keystroke": KeyEvent, "touch": TouchEvent, "gait": AccelSample}


class RawStoreError(RuntimeError):
    """A batch could not be decrypted (wrong key, tampered file)."""


@dataclass(frozen=True)
class StoreSummary:
    """What is stored, for the privacy screen."""

    counts: dict[str, int]
    n_bytes: int
    oldest: float | None
    retention_days: int


def _encode(ev: Event) -> dict[str, object]:
    d = asdict(ev)
    if isinstance(ev, TouchEvent):
        d["action"] = int(ev.action)
    return d


class RawEventStore:
    """Append-only encrypted batches per modality under `folder`."""

    def __init__(self, folder: Path, secrets: SecretStore, retention_days: int = DEFAULT_RETENTION_DAYS,
                 now: Callable[[], float] | None = None) -> None:
        if retention_days <= 0:
            raise ValueError("retention_days: must be > 0")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.retention_days = retention_days
        self._now = now or time.time
        self._secrets = secrets
        key = secrets.get(SECRET_NAME)
        if key is None:
            key = Fernet.generate_key()
            secrets.put(SECRET_NAME, key)
        self._fernet = Fernet(key)
        self._seq = 0

    def append(self, events: Sequence[Event]) -> int:
        """Store a batch (split by modality); returns how many events were written."""
        by_mod: dict[str, list[dict[str, object]]] = {}
        for ev in events:
            by_mod.setdefault(modality_of(ev), []).append(_encode(ev))
        for mod, rows in by_mod.items():
            d = self.folder / mod
            d.mkdir(exist_ok=True)
            self._seq += 1
            name = f"{self._now():.3f}-{self._seq:06d}-{len(rows)}.bin"
            blob = self._fernet.encrypt(json.dumps(rows, separators=(",", ":")).encode())
            (d / name).write_bytes(blob)
        return sum(len(r) for r in by_mod.values())

    def _files(self, modality: str | None = None) -> list[Path]:
        mods = [modality] if modality else list(_TYPES)
        return sorted(p for m in mods if (self.folder / m).is_dir() for p in (self.folder / m).glob("*.bin"))

    def read(self, modality: str) -> list[Event]:
        """Every stored event of one modality, oldest batch first."""
        if modality not in _TYPES:
            raise ValueError(f"modality: unknown {modality!r}")
        cls = _TYPES[modality]
        out: list[Event] = []
        for p in self._files(modality):
            try:
                rows = json.loads(self._fernet.decrypt(p.read_bytes()))
            except InvalidToken as exc:
                raise RawStoreError(f"{p.name}: cannot be decrypted (wrong key or tampered)") from exc
            out.extend(cls(**r) for r in rows)
        return out

    def summary(self) -> StoreSummary:
        counts = {m: 0 for m in _TYPES}
        n_bytes = 0
        oldest: float | None = None
        for p in self._files():
            created, _seq, n = p.stem.split("-")
            counts[p.parent.name] += int(n)
            n_bytes += p.stat().st_size
            oldest = float(created) if oldest is None else min(oldest, float(created))
        return StoreSummary(counts, n_bytes, oldest, self.retention_days)

    def apply_retention(self) -> int:
        """Delete batches older than the retention period; returns files deleted."""
        cutoff = self._now() - self.retention_days * 86400
        gone = 0
        for p in self._files():
            if float(p.stem.split("-")[0]) < cutoff:
                p.unlink()
                gone += 1
        return gone

    def delete_all(self) -> int:
        """Delete every batch and forget the key, so copies made elsewhere are unreadable too."""
        files = self._files()
        for p in files:
            p.unlink()
        self._secrets.delete(SECRET_NAME)
        key = Fernet.generate_key()
        self._secrets.put(SECRET_NAME, key)
        self._fernet = Fernet(key)
        return len(files)

    def is_empty(self) -> bool:
        return not self._files()


def all_events(store: RawEventStore, modalities: Iterable[str] = tuple(_TYPES)) -> dict[str, list[Event]]:
    return {m: store.read(m) for m in modalities}
