"""Encrypted store of raw behavioural events on the device, with retention and deletion.

Raw signals never leave the phone; they are kept so that enrolment can be redone and federated
training can read the owner's own data, and no longer than the retention policy allows. Events
are appended in batches; each batch is one file of Fernet-encrypted JSON (AES-128-CBC +
HMAC-SHA256) named by its creation time, so retention deletes whole files without decrypting.
The key lives in the platform `SecretStore`.

A key that is not a Fernet key any more (a damaged or replaced secrets file) can decrypt
nothing: the batches it locked are deleted, with a log line, and a new key is made. The raw
events are only this phone's cache (the server keeps its own templates), so the person loses at
most what set-up would record again, and no unreadable behaviour is left outside retention and
"delete my data". A file under the store that is not a batch this store wrote is ignored with a
log line (and removed by `delete_all`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from mobile_client.collectors import Event, modality_of
from mobile_client.secrets_store import SecretStore, unwrap_errors
from modalities.events import AccelSample, KeyEvent, TouchEvent

log = logging.getLogger(__name__)

SECRET_NAME = "raw-store-key"
#: a batch's file name: `<created>-<seq>-<count>.bin`
BATCH_NAME = re.compile(r"^(\d+(?:\.\d+)?)-(\d+)-(\d+)$")
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
        self._seq = 0
        self._strays: set[Path] = set()
        try:
            key = secrets.get(SECRET_NAME)  # Android: a damaged blob raises pyjnius' JavaException
            if key is None:
                key = Fernet.generate_key()
                secrets.put(SECRET_NAME, key)
            self._fernet = Fernet(key)
        except unwrap_errors() as exc:
            n = len(self._all_files())
            log.warning("the raw-store key in %s is not a usable key (%s): deleting the %d encrypted batch(es) it "
                        "locked (unreadable without it) and starting with a new key", secrets.kind, exc, n)
            for f in self._all_files():  # the old batches go first: none is left beside a new key
                f.unlink(missing_ok=True)
            self._fernet = self._new_key()

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

    def _new_key(self) -> Fernet:
        self._secrets.delete(SECRET_NAME)
        key = Fernet.generate_key()
        self._secrets.put(SECRET_NAME, key)
        return Fernet(key)

    def _all_files(self, modality: str | None = None) -> list[Path]:
        """Every `.bin` under the modality folders, batches or not."""
        mods = [modality] if modality else list(_TYPES)
        return sorted(p for m in mods if (self.folder / m).is_dir() for p in (self.folder / m).glob("*.bin"))

    def _files(self, modality: str | None = None) -> list[Path]:
        """The batches this store wrote; anything else is logged (once) and left alone."""
        out = []
        for p in self._all_files(modality):
            if BATCH_NAME.match(p.stem):
                out.append(p)
            elif p not in self._strays:
                self._strays.add(p)
                log.warning("raw store: ignoring %s, which is not a batch this app wrote", p)
        return out

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
        """Delete every batch (strays beside them too) and forget the key, so copies are unreadable."""
        files = self._all_files()
        for p in files:
            p.unlink(missing_ok=True)
        self._fernet = self._new_key()
        return len(files)

    def is_empty(self) -> bool:
        return not self._files()


def all_events(store: RawEventStore, modalities: Iterable[str] = tuple(_TYPES)) -> dict[str, list[Event]]:
    return {m: store.read(m) for m in modalities}
