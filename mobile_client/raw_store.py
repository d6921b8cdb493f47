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

Batches are written atomically (a temporary file, synced, then renamed), so a crash leaves a
batch whole or absent. A batch that still cannot be read (torn by an older version that wrote
in place, or damaged) is skipped with a log line and counted in `StoreSummary.unreadable`; the
rest of the modality stays readable. A key that opens none of the batches is a different
thing, a `RawStoreError`: a small `key-check` token beside the batches tells the two apart.

Event times are the collectors' clock (`mobile_client.clock.monotonic`: CLOCK_BOOTTIME on the
phone), which starts again at every boot, so events of different boots must never be put in one
time line. Each batch records the boot it was written in, as the wall clock minus the time since boot at writing
(`boot`, CLOCK_BOOTTIME, which counts deep sleep as the wall clock does: the same all through
one boot, whatever the app runs and however long the phone slept between them), and `read_recordings` joins
batches, in the order written, into one recording while their boots agree (within
`BOOT_TOLERANCE_S`) and their times do not go back (beyond `REORDER_S`): the short app runs of
one boot make one recording (a payment's few keys are not a window of their own), two boots
never do. Batch format: Fernet-encrypted JSON `{"v": 3, "boot": <s>, "events": [...]}`. Batches
written before are read as they are: `{"v": 2, "recording": "<hex>", ...}` by that recording,
and a bare JSON list of events (the first format) each as a recording of its own, since which
of them came from the same boot cannot be told.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from mobile_client.collectors import Event, modality_of
from mobile_client.files import atomic_write
from mobile_client.secrets_store import SecretStore, unwrap_errors
from modalities.events import AccelSample, KeyEvent, TouchEvent

log = logging.getLogger(__name__)

SECRET_NAME = "raw-store-key"
#: a batch's file name: `<created>-<seq>-<count>.bin`
BATCH_NAME = re.compile(r"^(\d+(?:\.\d+)?)-(\d+)-(\d+)$")
DEFAULT_RETENTION_DAYS = 30
#: how often writes and reads delete what retention no longer allows (`RawEventStore._sweep`)
SWEEP_S = 3600.0
#: beside the batches: a token of a constant made with the store's key, to tell a wrong key from a bad batch
KEY_CHECK = "key-check"
_KEY_CHECK_TEXT = b"cadence raw store key check"
#: how far back in time a batch's first event may lie behind the last one stored in the same recording
#: (keys are stored when released, so a held key is stored after later presses) before it counts as
#: another clock, that is another recording
REORDER_S = 10.0
#: two batches whose boot estimates (wall clock - time since boot) differ by more are of two boots
#: (or of a wall clock set in between: then not joined either, which only costs windows)
BOOT_TOLERANCE_S = 5.0
_TYPES = {"keystroke": KeyEvent, "touch": TouchEvent, "gait": AccelSample}


class RawStoreError(RuntimeError):
    """The store's key opens none of its batches (a wrong key, not one damaged batch)."""


@dataclass(frozen=True)
class StoreSummary:
    """What is stored, for the privacy screen."""

    counts: dict[str, int]
    n_bytes: int
    oldest: float | None
    retention_days: int
    #: batches found unreadable (torn or damaged) and skipped by `read`: kept until retention deletes them
    unreadable: int = 0


def _time(row: dict[str, object]) -> float:
    """When an encoded event happened (a key press counts from its press)."""
    t = row["press"] if "press" in row else row["time"]
    return float(t)  # type: ignore[arg-type]


def _boottime() -> float:
    """Seconds since boot, deep sleep included (CLOCK_BOOTTIME; `time.monotonic` where there is none)."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(clock) if clock is not None else time.monotonic()


def _encode(ev: Event) -> dict[str, object]:
    d = asdict(ev)
    if isinstance(ev, TouchEvent):
        d["action"] = int(ev.action)
    return d


class RawEventStore:
    """Append-only encrypted batches per modality under `folder`."""

    def __init__(self, folder: Path, secrets: SecretStore, retention_days: int = DEFAULT_RETENTION_DAYS,
                 now: Callable[[], float] | None = None, uptime: Callable[[], float] | None = None) -> None:
        if retention_days <= 0:
            raise ValueError("retention_days: must be > 0")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.retention_days = retention_days
        self._now = now or time.time
        #: with the wall clock: which boot a batch is written in. The time since boot *including*
        #: deep sleep (CLOCK_BOOTTIME), as the wall clock counts it: `time.monotonic` stops while
        #: the phone sleeps, so every sleep would look like another boot
        self._uptime = uptime or _boottime
        self._secrets = secrets
        self._seq = 0
        #: wall-clock time of the last retention sweep (`_sweep`): none yet
        self._swept_at = -math.inf
        self._strays: set[Path] = set()
        #: batches `read` could not decrypt or parse (logged once each)
        self._bad: set[Path] = set()
        try:
            key = secrets.get(SECRET_NAME)  # Android: a damaged blob raises pyjnius' JavaException
            new = key is None
            if key is None:
                key = Fernet.generate_key()
                secrets.put(SECRET_NAME, key)
            self._fernet = Fernet(key)
            if not self._all_files() and (new or not (self.folder / KEY_CHECK).exists()):
                # (a store with batches but no key-check gets one at its first read; a new key beside
                # batches gets none: they were locked by a key that is lost, which `read` then says)
                self._write_key_check()
        except unwrap_errors() as exc:
            n = len(self._all_files())
            log.warning("the raw-store key in %s is not a usable key (%s): deleting the %d encrypted batch(es) it "
                        "locked (unreadable without it) and starting with a new key", secrets.kind, exc, n)
            for f in self._all_files():  # the old batches go first: none is left beside a new key
                f.unlink(missing_ok=True)
            self._new_key()

    def _sweep(self) -> None:
        """`apply_retention` when the last sweep is `SWEEP_S` or more ago (or the clock went back).

        Why: retention ran only as the app started, so an app left open for weeks kept recordings
        past the period the Privacy screen promises. Writes and reads sweep now, at most hourly.
        A failed deletion is logged and tried again at the next sweep.
        """
        now = self._now()
        if 0 <= now - self._swept_at < SWEEP_S:
            return
        self._swept_at = now
        try:
            self.apply_retention()
        except OSError as exc:
            log.warning("raw store: retention could not delete an old batch (%s); tried again later", exc)

    def append(self, events: Sequence[Event]) -> int:
        """Store a batch (split by modality); returns how many events were written."""
        self._sweep()
        by_mod: dict[str, list[dict[str, object]]] = {}
        for ev in events:
            by_mod.setdefault(modality_of(ev), []).append(_encode(ev))
        for mod, rows in by_mod.items():
            d = self.folder / mod
            d.mkdir(exist_ok=True)
            self._seq += 1
            name = f"{self._now():.3f}-{self._seq:06d}-{len(rows)}.bin"
            payload = {"v": 3, "boot": round(self._now() - self._uptime(), 3), "events": rows}
            blob = self._fernet.encrypt(json.dumps(payload, separators=(",", ":")).encode())
            atomic_write(d / name, blob)
        return sum(len(r) for r in by_mod.values())

    def _new_key(self) -> Fernet:
        self._secrets.delete(SECRET_NAME)
        key = Fernet.generate_key()
        self._secrets.put(SECRET_NAME, key)
        self._fernet = Fernet(key)
        self._write_key_check()
        return self._fernet

    def _write_key_check(self) -> None:
        atomic_write(self.folder / KEY_CHECK, self._fernet.encrypt(_KEY_CHECK_TEXT))

    def _key_checks(self) -> bool:
        """The key-check token opens with the current key (False: none, or made with another key)."""
        try:
            return self._fernet.decrypt((self.folder / KEY_CHECK).read_bytes()) == _KEY_CHECK_TEXT
        except (OSError, InvalidToken):
            return False

    def _all_files(self, modality: str | None = None) -> list[Path]:
        """Every `.bin` under the modality folders, batches or not."""
        mods = [modality] if modality else list(_TYPES)
        return sorted(p for m in mods if (self.folder / m).is_dir() for p in (self.folder / m).glob("*.bin"))

    def _leftovers(self) -> list[Path]:
        """Temporary files of batch writes a crash interrupted (see `atomic_write`)."""
        return sorted(p for m in _TYPES if (self.folder / m).is_dir() for p in (self.folder / m).glob(".*.tmp"))

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
        """Every stored event of one modality, oldest batch first (recordings one after another).

        Times of different recordings are on different clocks: to cut windows, use
        `read_recordings` and cut each recording on its own.
        """
        return [ev for rec in self.read_recordings(modality) for ev in rec]

    def read_recordings(self, modality: str) -> list[list[Event]]:
        """The stored events of one modality, one list per recording (one boot's, see above), oldest first.

        A batch that cannot be decrypted or parsed is skipped (logged once, counted in
        `summary().unreadable`). `RawStoreError` when the key opens no batch at all and the
        key-check says it is not this store's key (a wrong key: nothing could be read).
        """
        if modality not in _TYPES:
            raise ValueError(f"modality: unknown {modality!r}")
        self._sweep()
        cls = _TYPES[modality]
        recordings: dict[str, list[Event]] = {}
        bad: list[tuple[Path, Exception]] = []
        good = 0
        boot: tuple[str, float, float] | None = None  # the open boot recording: key, boot estimate, latest time
        for p in self._files(modality):
            try:
                blob = self._fernet.decrypt(p.read_bytes())
            except (InvalidToken, OSError) as exc:
                bad.append((p, exc))
                continue
            try:
                data = json.loads(blob)
                if isinstance(data, list):  # written before recordings were kept: a recording of its own
                    rec, rows = f"batch:{p.name}", data
                elif "boot" in data:
                    rec, rows = "", data["events"]
                    booted = float(data["boot"])
                else:
                    rec, rows = f"rec:{data['recording']}", data["events"]
                events = [cls(**r) for r in rows]
            except (ValueError, TypeError, KeyError) as err:
                good += 1  # the key opened it: the key is right, the batch is not
                bad.append((p, err))
                continue
            good += 1
            if not rec:  # v3: joins the open recording while in the same boot and not back in time
                first, latest = min(map(_time, rows), default=0.0), max(map(_time, rows), default=0.0)
                if boot is None or abs(booted - boot[1]) > BOOT_TOLERANCE_S or first < boot[2] - REORDER_S:
                    boot = (f"boot:{p.name}", booted, latest)
                else:
                    boot = (boot[0], boot[1], max(boot[2], latest))
                rec = boot[0]
            recordings.setdefault(rec, []).extend(events)
        if good and not (self.folder / KEY_CHECK).exists():
            self._write_key_check()  # a store made before key-checks: this key opens its batches
        if bad and not good and not self._key_checks():
            raise RawStoreError(f"{bad[0][0].name}: cannot be decrypted: the raw store's key opens none of its "
                                f"{len(bad)} {modality} batch(es) (wrong key)") from bad[0][1]
        for p, why in bad:
            if p not in self._bad:
                self._bad.add(p)
                log.warning("raw store: skipping %s, which cannot be read (torn or damaged: %s); retention deletes it",
                            p, type(why).__name__)
        return list(recordings.values())

    def summary(self) -> StoreSummary:
        counts = {m: 0 for m in _TYPES}
        n_bytes = 0
        oldest: float | None = None
        for p in self._files():
            created, _seq, n = p.stem.split("-")
            counts[p.parent.name] += int(n)
            n_bytes += p.stat().st_size
            oldest = float(created) if oldest is None else min(oldest, float(created))
        unreadable = sum(1 for p in self._bad if p.exists())
        return StoreSummary(counts, n_bytes, oldest, self.retention_days, unreadable)

    def apply_retention(self) -> int:
        """Delete batches older than the retention period; returns files deleted."""
        self._swept_at = self._now()
        cutoff = self._now() - self.retention_days * 86400
        gone = 0
        for p in self._files():
            if float(p.stem.split("-")[0]) < cutoff:
                p.unlink()
                gone += 1
        for p in self._leftovers():  # a write a crash interrupted (an hour old: no write is still going on)
            try:
                if p.stat().st_mtime < time.time() - 3600:
                    p.unlink()
            except OSError:
                pass
        return gone

    def delete_all(self) -> int:
        """Delete every batch (strays beside them too) and forget the key, so copies are unreadable."""
        files = self._all_files()
        for p in files + self._leftovers():
            p.unlink(missing_ok=True)
        self._bad.clear()
        self._new_key()
        return len(files)

    def delete_modality(self, modality: str) -> int:
        """Delete every stored batch of one modality (its consent was withdrawn); returns files deleted.

        Strays and interrupted writes in its folder go too. The key stays: the other modalities'
        batches are locked with it (withdrawing one consent is not "delete my data").
        """
        if modality not in _TYPES:
            raise ValueError(f"modality: unknown {modality!r}")
        folder = self.folder / modality
        files = self._all_files(modality)
        leftovers = sorted(folder.glob(".*.tmp")) if folder.is_dir() else []
        for p in files + leftovers:
            p.unlink(missing_ok=True)
        self._bad = {p for p in self._bad if p.parent != folder}
        self._strays = {p for p in self._strays if p.parent != folder}
        return len(files)

    def is_empty(self) -> bool:
        return not self._files()


def all_events(store: RawEventStore, modalities: Iterable[str] = tuple(_TYPES)) -> dict[str, list[Event]]:
    return {m: store.read(m) for m in modalities}
