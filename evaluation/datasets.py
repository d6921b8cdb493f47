"""Loaders for the public datasets in a data folder (layout of ``../shared/datasets``).

Every loader takes a folder, finds files by name pattern (``<uid>_...csv[.gz]``), never reads
``index.csv``, and works on any folder with the same layout whatever subject ids it holds
(ids above 1000, other phone names in the file name). A folder may be the data root (with
``bbmas_phone_gait/`` etc. inside) or one modality folder itself: `modality_dir` finds it.

Parsed data is cached as ``.npz`` in the cache dir, keyed by the SHA-1 of the file's bytes
and the loader version, so an edited file is re-parsed and an unchanged one is not.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from evaluation.progress import track
from modalities.events import (
    ANDROID_ACTION_MASK,
    MAX_MEDIAN_HOLD_S,
    MAX_MEDIAN_KEY_INTERVAL_S,
    AccelSeries,
    KeySequence,
    TouchStream,
)
from modalities.gait.features import split_segments

log = logging.getLogger(__name__)
T = TypeVar("T")

#: "2": parse results carry the file's data warnings (rows dropped or repaired), see `loader_warnings`;
#: "3": absurd key intervals, touch coordinates and pointer ids refused, numeric touch times read
#: (a file parsed by an older version is parsed again, so what it let through is refused now);
#: "4": gait rows dropped for a time already read are counted in the warnings
LOADER_VERSION = "4"
#: logger of data caveats (rows dropped or repaired, duplicates): a bench run copies its records into
#: the bench's notes (``protocol.warnings`` of the JSON), see `evaluation.bench.run_bench`
DATA_LOGGER = "evaluation.datasets.data"
data_log = logging.getLogger(DATA_LOGGER)
#: key of a parse result's warnings (one string per caveat, without the file name)
WARNINGS = "warnings"
#: touch times may step back this much (rounding of interpolated times in the source); more is refused
TOUCH_BACKSTEP_S = 1e-3
#: longest key hold or down-down latency (s) a keystroke file may hold: beyond it a value is a broken
#: cell, not a pause (BB-MAS peaks at 311 s), and adding it up would wreck every later press time
MAX_KEY_INTERVAL_S = 3600.0
#: largest |touch coordinate| (px) accepted: no screen is a million pixels wide; beyond it the
#: value is a broken cell whose squares overflow in the touch features
MAX_TOUCH_COORD_PX = 1e6
#: range of a touch pointer id (stored as int16)
POINTER_ID_RANGE = (int(np.iinfo(np.int16).min), int(np.iinfo(np.int16).max))
G = 9.80665

#: file-name patterns per dataset kind; group 1 is the subject id, group 2 the device (if any)
PATTERNS: dict[str, re.Pattern[str]] = {
    "cmu": re.compile(r"^DSL-StrongPasswordData\.csv(?:\.gz)?$"),
    "keystroke": re.compile(r"^(\d+)_processed\.csv(?:\.gz)?$"),
    "touch": re.compile(r"^(\d+)_HandPhone_TouchEvent_?\(?([^)]*)\)?\.csv(?:\.gz)?$"),
    "gait": re.compile(r"^(\d+)_PocketPhone_Accelerometer_?\(?([^)]*)\)?\.csv(?:\.gz)?$"),
}

#: kinds stored as one file per subject (group 1 of the pattern); the others hold every subject in one file
PER_SUBJECT = ("keystroke", "touch", "gait")

#: screen size in pixels (width, height) of phones seen in BB-MAS; others are estimated
SCREENS: dict[str, tuple[float, float]] = {
    "HTC_One": (1080.0, 1920.0),
    "Samsung_S6": (1440.0, 2560.0),
}


class DatasetError(RuntimeError):
    """A data folder is missing, empty or holds files that cannot be parsed."""


class _NoKindFiles(DatasetError):
    """A data folder that is missing or holds no files of the kind asked for: `available_subjects` reads it as none."""


# --------------------------------------------------------------------------- locating files


def data_folder(data_dir: str | os.PathLike[str], label: str = "") -> Path:
    """`data_dir` as a folder; `DatasetError` ("[LABEL: ]data folder not found: ...") if it is none.

    `available_subjects` reads a missing folder as no subjects, so callers that must tell the
    two apart check the folder with this first.
    """
    root = Path(data_dir).expanduser()
    try:
        found = root.is_dir()
    except OSError as exc:  # a parent folder that cannot be searched
        raise DatasetError(f"{label + ': ' if label else ''}{root}: cannot read: {_reason(exc)}") from None
    if not found:
        raise _NoKindFiles(f"{label + ': ' if label else ''}data folder not found: {root}")
    return root


def listing(folder: Path) -> list[Path]:
    """The entries of `folder`, sorted by name; a `DatasetError` naming it if it cannot be listed."""
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise DatasetError(f"{folder}: cannot list: {_reason(exc)}") from None


def _is_file(path: Path) -> bool:
    """`path.is_file()`; a `DatasetError` naming it if that cannot be told (a link through an unreadable folder)."""
    try:
        return path.is_file()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {_reason(exc)}") from None


def _is_dir(path: Path) -> bool:
    """`path.is_dir()`; a `DatasetError` naming it if that cannot be told."""
    try:
        return path.is_dir()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {_reason(exc)}") from None


def modality_dir(data_dir: str | os.PathLike[str], kind: str) -> Path:
    """Return the folder holding files of `kind`: `data_dir` itself or its one subfolder with such files.

    Several subfolders with `kind` files (two phones' folders, or the parent of several data
    roots) are a `DatasetError` listing them: which one is meant cannot be guessed.
    """
    root = data_folder(data_dir)
    pat = PATTERNS[kind]

    def holds(entries: list[Path]) -> bool:
        return any(pat.match(f.name) and _is_file(f) for f in entries)

    entries = listing(root)  # an unreadable data folder is an error, not "no files"
    if holds(entries):
        return root
    found: list[Path] = []
    unreadable: list[str] = []
    for p in entries:
        try:
            if _is_dir(p) and holds(listing(p)):
                found.append(p)
        except DatasetError:  # an unreadable subfolder: named below if no other one holds the files
            unreadable.append(p.name)
    if len(found) > 1:
        raise DatasetError(f"{root} has {len(found)} subfolders with {kind} files: "
                           f"{', '.join(p.name for p in found[:10])}{' ...' if len(found) > 10 else ''}; "
                           "give the one to use")
    if found:
        return found[0]
    if unreadable:  # the files may be there: an error, not "no subjects" to `available_subjects`
        raise DatasetError(f"no {kind} files (pattern {pat.pattern}) in {root} or its readable subfolders; "
                           f"cannot list: {', '.join(unreadable[:10])}{' ...' if len(unreadable) > 10 else ''}")
    raise _NoKindFiles(f"no {kind} files (pattern {pat.pattern}) in {root} or its subfolders")


def _per_subject(kind: str) -> None:
    """A `DatasetError` unless `kind` is stored as one file per subject (`PER_SUBJECT`)."""
    if kind == "cmu":  # its subjects are rows of one file: there are no subject files to list or split
        raise DatasetError("cmu data is one file holding every subject, not a file per subject: it has no "
                           "subject files to list or split into folds (read it with load_cmu; "
                           "bench keystroke-cmu splits its subjects itself)")
    if kind not in PER_SUBJECT:
        raise DatasetError(f"unknown data kind {kind!r}; known: {', '.join(PER_SUBJECT)}")


#: what a file of each kind's name holds besides its subject id (a file with it that does not match is named)
_KIND_MARK = {"keystroke": "_processed.csv", "touch": "_HandPhone_TouchEvent", "gait": "_PocketPhone_Accelerometer"}
_warned_unread: set[Path] = set()


def _looks_like(kind: str, name: str) -> bool:
    """Whether `name` looks like a `kind` file, whatever its case (say "s11_processed.csv", "12_processed.CSV.gz")."""
    name = name.lower()
    return _KIND_MARK.get(kind, "\0").lower() in name and (name.endswith(".csv") or name.endswith(".csv.gz"))


def no_subjects_hint(kind: str) -> str:
    """How a `kind` file must be named: for messages about a folder where none was found."""
    return f"files named like {PATTERNS[kind].pattern} (the subject id, digits, first)"


def _warn_unread(path: Path, kind: str, why: str = "") -> None:
    """Name, once per process, a file that looks like `kind` data but is not read (say "s11_processed.csv").

    `why` says why it is not read; by default how a `kind` file must be named.
    """
    if path not in _warned_unread:
        _warned_unread.add(path)
        data_log.warning("%s: not read: %s", path, why or no_subjects_hint(kind))


def _broken_link(path: Path) -> str:
    """Why `path`, a name of a data file that is no file, is not read: "" unless it is a link to nothing."""
    try:
        if path.is_symlink() and not path.exists():
            return f"a link to {os.readlink(path)}, which does not exist"
    except OSError:
        pass
    return ""


def find_subject_files(data_dir: str | os.PathLike[str], kind: str) -> dict[int, Path]:
    """Map subject id -> file for `kind`; a `.csv` wins over a `.csv.gz` of the same name.

    Two different files for one subject id (say two phone names) are a `DatasetError` naming
    both: which one is meant cannot be guessed.
    """
    _per_subject(kind)
    folder = modality_dir(data_dir, kind)
    found: dict[int, Path] = {}
    for f in sorted(listing(folder), key=lambda p: (p.name.endswith(".gz"), p.name)):
        m = PATTERNS[kind].match(f.name)
        if m is None:  # named if it looks like data (any case; a dangling link too), not a folder
            if _looks_like(kind, f.name) and not _is_dir(f):
                _warn_unread(f, kind)
            continue
        if not _is_file(f):
            why = _broken_link(f)  # a folder or a special file with a data name: not data, not named
            if why:
                _warn_unread(f, kind, why)
            continue
        sid = int(m.group(1))
        if sid in found:
            if f.name == found[sid].name + ".gz":  # the plain .csv of the same name wins
                continue
            raise DatasetError(f"subject {sid} has two {kind} files in {folder}: {found[sid].name} and {f.name}; "
                               "keep one")
        found[sid] = f
    return dict(sorted(found.items()))


def device_of(path: Path, kind: str) -> str:
    m = PATTERNS[kind].match(path.name)
    return (m.group(2) if m and m.lastindex and m.lastindex >= 2 else "") or "unknown"


def available_subjects(data_dir: str | os.PathLike[str], kind: str) -> list[int]:
    """Subject ids with a `kind` file in `data_dir` (empty list if the folder is missing or has none).

    A folder that cannot be listed, or with several subfolders holding `kind` files, is a
    `DatasetError` (not "no subjects": the data may be there).
    """
    _per_subject(kind)
    try:
        modality_dir(data_dir, kind)
    except _NoKindFiles:
        return []
    return list(find_subject_files(data_dir, kind))  # a folder with bad files is still an error


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Cache folder: ``$CADENCE_CACHE_DIR`` or ``~/.cache/cadence``; a `DatasetError` naming it if unusable.

    Read from the environment (not `cadence.settings`) so the loaders work without the server's settings.
    """
    env = os.environ.get("CADENCE_CACHE_DIR")
    d = Path(env or Path.home() / ".cache" / "cadence")
    try:
        d.mkdir(parents=True, exist_ok=True)
        if not d.is_dir():
            raise NotADirectoryError(20, "not a folder")
    except OSError as exc:
        what = f"CADENCE_CACHE_DIR={env}" if env else f"cache folder {d} (set CADENCE_CACHE_DIR to another)"
        raise DatasetError(f"{what}: cannot use it as the cache folder: {exc.strerror or exc}") from None
    return d


def _reason(exc: BaseException) -> str:
    """A one-line reason for a file that could not be read or parsed."""
    if isinstance(exc, gzip.BadGzipFile):
        return "not gzip data although the name ends in .gz"
    if isinstance(exc, (EOFError, zlib.error)):
        return f"truncated or corrupt gzip data ({exc})"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text (a binary file?)"
    if isinstance(exc, pd.errors.EmptyDataError):
        return "empty file (no header row)"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return " ".join(str(exc).split())


def file_digest(path: Path, salt: str = "") -> str:
    """SHA-1 of `salt` and the file's bytes; a `DatasetError` naming the file if it cannot be read."""
    h = hashlib.sha1(salt.encode())
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {_reason(exc)}") from None
    return h.hexdigest()


#: decompressed bytes hashed for a file's content fingerprint (`content_fingerprint`)
FINGERPRINT_BYTES = 1 << 20


def _open_content(path: Path) -> io.BufferedIOBase:
    """`path` opened for reading its content: decompressed when it is gzip data (by its magic, not its name)."""
    fh = open(path, "rb")
    if fh.read(2) == b"\x1f\x8b":
        fh.close()
        return gzip.open(path, "rb")
    fh.seek(0)
    return fh


def content_fingerprint(path: Path, nbytes: int = FINGERPRINT_BYTES) -> tuple[int | None, str]:
    """(length, SHA-256) of the first `nbytes` (default `FINGERPRINT_BYTES`) of the file's decompressed content.

    CRLF line ends are read as LF (`_lines_as_lf`). The length is the content's whole length
    when it is shorter than that (then the hash covers all of it), else None. Equal content
    always gives equal fingerprints, whatever the compression or line ends; equal fingerprints
    with a None length only say the first MiB is the same (`same_content` then compares
    everything). A `DatasetError` names a file that cannot be read.
    """
    head = b""
    try:
        with _open_content(path) as fh:
            for chunk in _lines_as_lf(fh, nbytes + 1):  # one read, as before, unless CRLF shortened it
                head += chunk
                if len(head) > nbytes:
                    break
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read: {_reason(exc)}") from None
    size = len(head) if len(head) <= nbytes else None
    return size, hashlib.sha256(head[:nbytes]).hexdigest()


def _lines_as_lf(fh: Any, size: int = 1 << 20) -> Iterator[bytes]:
    """The content of `fh` in chunks with CRLF line ends read as LF.

    Why: a training file saved again with Windows line ends (an editor, a spreadsheet) is the
    same person's data; compared byte for byte it passed the train/eval leak check.
    """
    carry = b""
    for chunk in iter(lambda: fh.read(size), b""):
        chunk = carry + chunk
        carry = b"\r" if chunk.endswith(b"\r") else b""  # its LF may start the next chunk
        yield (chunk[:-1] if carry else chunk).replace(b"\r\n", b"\n")
    if carry:
        yield carry


def _content_digest(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with _open_content(path) as fh:
            for chunk in _lines_as_lf(fh):
                h.update(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read: {_reason(exc)}") from None
    return h.hexdigest()


def same_content(pairs: Iterable[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """The pairs of `pairs` whose files hold the same decompressed content (see `shared_content`)."""
    prints: dict[Path, tuple[int | None, str]] = {}
    digests: dict[Path, str] = {}

    def fp(p: Path) -> tuple[int | None, str]:
        if p not in prints:
            prints[p] = content_fingerprint(p)
        return prints[p]

    def full(p: Path) -> str:
        if p not in digests:
            digests[p] = _content_digest(p)
        return digests[p]

    out = []
    for a, b in pairs:
        if a.resolve() == b.resolve():
            out.append((a, b))
        elif fp(a) == fp(b) and (fp(a)[0] is not None or full(a) == full(b)):
            out.append((a, b))
    return out


def same_file(a: Path, b: Path) -> bool:
    """True when `a` and `b` are the same file or hold the same content once decompressed."""
    return bool(same_content([(a, b)]))


def shared_content(
    kind: str,
    train_dir: str | os.PathLike[str],
    eval_dir: str | os.PathLike[str],
    *,
    train_subjects: Iterable[int] | None = None,
    eval_subjects: Iterable[int] | None = None,
) -> list[tuple[int, int]]:
    """(training subject, evaluation subject) pairs whose `kind` files hold the same data, whatever their ids.

    Compares decompressed content, so a file linked, copied, renamed to another subject id or
    (de)compressed is found. Each file's first MiB is hashed (`content_fingerprint`); only files
    whose first MiB matches are read whole, so a check of two folders costs about 1 MiB of
    decompression per file. Subjects default to every file of the folder. Sorted by
    evaluation subject.
    """
    tr_files, ev_files = find_subject_files(train_dir, kind), find_subject_files(eval_dir, kind)
    tr = dict(_select(tr_files, train_subjects))
    ev = dict(_select(ev_files, eval_subjects))
    by_print: dict[tuple[int | None, str], list[int]] = {}
    for s, p in tr.items():
        by_print.setdefault(content_fingerprint(p), []).append(s)
    candidates = [(t, e) for e, p in ev.items() for t in by_print.get(content_fingerprint(p), [])]
    pairs = same_content([(tr[t], ev[e]) for t, e in candidates])
    shared = {(t, e) for t, e in candidates if (tr[t], ev[e]) in pairs}
    return sorted(shared, key=lambda te: (te[1], te[0]))


#: decompressed bytes first compared by `duplicate_content` (a check of every k-fold bench run: kept small)
PREFIX_BYTES = 1 << 16


def duplicate_content(kind: str, data_dir: str | os.PathLike[str]) -> list[tuple[int, int]]:
    """(subject, other subject) pairs of one folder whose `kind` files hold the same data.

    A copy of one person's file under another id would put the same person on both sides of a
    split by subject. Compared as `shared_content` compares two folders, but each file's first
    64 KiB (`PREFIX_BYTES`) is hashed first: only files whose starts match are compared further,
    so the 90 BB-MAS gait files take a few hundredths of a second. Sorted by the second subject.
    """
    files = find_subject_files(data_dir, kind)
    by_prefix: dict[tuple[int | None, str], list[int]] = {}
    for s, p in files.items():
        by_prefix.setdefault(content_fingerprint(p, PREFIX_BYTES), []).append(s)
    candidates = [(a, b) for subs in by_prefix.values() for i, a in enumerate(subs) for b in subs[i + 1:]]
    pairs = same_content([(files[a], files[b]) for a, b in candidates])
    return sorted(((a, b) for a, b in candidates if (files[a], files[b]) in pairs), key=lambda ab: (ab[1], ab[0]))


def _file_key(path: Path, kind: str) -> str:
    return file_digest(path, f"{kind}:{LOADER_VERSION}:")


def _parse_named(path: Path, parse: Callable[[Path], T]) -> T:
    """`parse(path)` with every read or parse failure turned into a `DatasetError` naming the file."""
    try:
        return parse(path)
    except DatasetError as exc:
        if str(path) in str(exc):
            raise
        raise DatasetError(f"{path}: {exc}") from None
    except (OSError, EOFError, zlib.error, ValueError) as exc:  # bad gzip, unreadable, unparsable values
        raise DatasetError(f"{path}: cannot parse: {_reason(exc)}") from None


def _cache_entry(path: Path, kind: str, parse: Callable[[Path], dict[str, np.ndarray]],
                 only: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """`parse(path)` from the cache (parsed and stored first if absent); `only` reads just those arrays."""
    target = cache_dir() / kind / f"{_file_key(path, kind)}.npz"
    if target.exists():
        try:
            with np.load(target, allow_pickle=False) as z:
                return {k: z[k] for k in z.files if only is None or k in only}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # corrupt cache entry: parse again
            log.warning("discarding unreadable cache entry %s", target)
    arrays = _parse_named(path, parse)
    tmp = target.with_suffix(f".{os.getpid()}.tmp.npz")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy stubs mistype **kwds
        os.replace(tmp, target)
    except OSError as exc:
        raise DatasetError(f"cannot write the parse cache {target} (CADENCE_CACHE_DIR): {_reason(exc)}") from None
    return {k: v for k, v in arrays.items() if only is None or k in only}


def _cached(path: Path, kind: str, parse: Callable[[Path], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The parsed arrays of `path`; its data warnings go to `data_log` on every load, cached or not."""
    arrays = _cache_entry(path, kind, parse)
    for w in arrays.pop(WARNINGS, np.zeros(0, str)).tolist():
        data_log.warning("%s: %s", path, w)
    return arrays


def loader_warnings(data_dir: str | os.PathLike[str], kind: str, subjects: Iterable[int] | None = None) -> list[str]:
    """``"FILE: what was dropped or repaired"`` for each caveat of the `kind` files of `subjects`.

    What the loader logs when it reads them, for callers that may not read them (a feature
    cache in front of the loader): cached files cost one small read, others are parsed.
    """
    files = find_subject_files(data_dir, kind)
    out: list[str] = []
    for _, path in _select(files, subjects):
        a = _cache_entry(path, kind, _PARSERS[kind], only=(WARNINGS,))
        out += [f"{path}: {w}" for w in a.get(WARNINGS, np.zeros(0, str)).tolist()]
    return out


def _warnings(msgs: list[str]) -> np.ndarray:
    return np.array(msgs, dtype=str) if msgs else np.zeros(0, str)


def _numbers(df: pd.DataFrame, col: str) -> np.ndarray:
    """Column `col` as floats (empty cells NaN); a cell that is no number is a `DatasetError` naming column and row."""
    v = df[col]
    if pd.api.types.is_numeric_dtype(v):
        return v.to_numpy(float)
    text = v.astype("string").str.strip()
    num = pd.to_numeric(text, errors="coerce")
    bad = (num.isna() & text.notna() & (text != "")).to_numpy(bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"column {col}, data row {i + 1}: {str(v.iloc[i])[:40]!r} is not a number")
    return num.to_numpy(float)


def _rows(n: int, what: str) -> str:
    return f"{n:,} row{'s' if n != 1 else ''} {what}"


@contextmanager
def _usable(path: Path) -> Iterator[None]:
    """Event containers built from `path`'s arrays inside the block: invalid ones are a `DatasetError` naming it."""
    try:
        yield
    except DatasetError:
        raise
    except ValueError as exc:  # EventValidationError: e.g. an empty or unordered sequence
        raise DatasetError(f"{path}: no usable data: {_reason(exc)}") from None


def _select(files: dict[int, Path], subjects: Iterable[int] | None) -> list[tuple[int, Path]]:
    if subjects is None:
        return list(files.items())
    wanted = set(int(s) for s in subjects)
    return [(s, p) for s, p in files.items() if s in wanted]


# --------------------------------------------------------------------------- CMU


def load_cmu(data_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """CMU keystroke benchmark as a DataFrame: subject, sessionIndex, rep and 31 timing columns."""
    folder = modality_dir(data_dir, "cmu")
    path = next(f for f in listing(folder) if PATTERNS["cmu"].match(f.name) and _is_file(f))
    df: pd.DataFrame = _parse_named(path, lambda p: pd.read_csv(p, low_memory=False))
    missing = {"subject", "sessionIndex", "rep"} - set(df.columns)
    if missing:
        raise DatasetError(f"{path}: missing columns {sorted(missing)}")
    try:
        feats = cmu_feature_columns(df)
    except DatasetError as exc:
        raise DatasetError(f"{path}: {exc}") from None
    if df.empty or not feats:
        raise DatasetError(f"{path}: no rows" if df.empty else f"{path}: no timing columns (H.*, DD.*, UD.*)")
    text = [c for c in feats if not pd.api.types.is_numeric_dtype(df[c])]
    if text:
        raise DatasetError(f"{path}: non-numeric values in columns {text[:5]}")
    missing_values = [c for c in feats if not np.isfinite(df[c].to_numpy(float)).all()]
    if missing_values:
        raise DatasetError(f"{path}: empty or non-finite values in columns {missing_values[:5]}")
    _refuse_cmu_milliseconds(path, df, feats)
    # the bench orders each subject's rows by (sessionIndex, rep) to enrol on the first 200: a text
    # cell would sort the column as text (1, 10, 11, ..., 2) and an empty one last, silently
    empty = df["subject"].isna().to_numpy(bool) | (df["subject"].astype(str).str.strip() == "").to_numpy(bool)
    if empty.any():
        raise DatasetError(f"{path}: column subject, data row {int(np.flatnonzero(empty)[0]) + 1}: empty")
    df = df.copy()
    for c in ("sessionIndex", "rep"):
        try:
            v = _numbers(df, c)
        except DatasetError as exc:
            raise DatasetError(f"{path}: {exc}") from None
        bad = ~np.isfinite(v) | (v != np.round(v))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            what = f"{v[i]:g} is not a whole number" if np.isfinite(v[i]) else "empty"
            raise DatasetError(f"{path}: column {c}, data row {i + 1}: {what}")
        df[c] = v.astype(np.int64)
    key = ["subject", "sessionIndex", "rep"]
    dup = df.duplicated()
    if dup.any():  # exact copies of a row would count twice as enrolment or test repetitions
        data_log.warning("%s: dropped %d exact duplicate rows", path, int(dup.sum()))
        df = df[~dup].reset_index(drop=True)
    clash = df[df.duplicated(key, keep=False)]
    if not clash.empty:
        first = clash.iloc[0]
        raise DatasetError(f"{path}: {len(clash)} rows share (subject, sessionIndex, rep) with different values, "
                           f"e.g. {first['subject']}, {first['sessionIndex']}, {first['rep']}")
    return df


def _refuse_cmu_milliseconds(path: Path, df: pd.DataFrame, feats: list[str]) -> None:
    """Refuse CMU timings that cannot be seconds (the limits `KeySequence` applies to typing).

    The CMU loader reads the timing columns straight into features, never through a
    `KeySequence`, so a copy converted to milliseconds would otherwise be scored as it is.
    """
    for prefix, what, limit in (("H.", "key hold", MAX_MEDIAN_HOLD_S),
                                ("DD.", "time from press to press", MAX_MEDIAN_KEY_INTERVAL_S)):
        cols = [c for c in feats if c.startswith(prefix)]
        if not cols:
            continue
        median = float(np.median(df[cols].to_numpy(float)))
        if median > limit:
            raise DatasetError(f"{path}: the median {what} ({prefix}* columns) is {median:.4g} s: no person types that "
                               f"slowly (limit {limit:g} s), so the timings look like milliseconds; the CMU "
                               "benchmark's are seconds: divide them by 1000")


#: the CMU timing layout, for messages
CMU_LAYOUT = "H.k1, DD.k1.k2, UD.k1.k2, H.k2, ..., H.kn"


def cmu_feature_columns(df: pd.DataFrame) -> list[str]:
    """The CMU timing columns in the CMU order `CMU_LAYOUT`, whatever their order in the file.

    The learned keystroke scorers read H and DD by position in that order
    (`modalities.keystroke.learned.log_timing`), so the key order is rebuilt from the names:
    the H columns name the keys, each DD column links a key to the next. Columns that do not
    make one such chain (a DD or UD without its pair, a key linked twice, a missing H) are a
    `DatasetError` naming a column. No timing column at all gives an empty list.
    """
    from modalities.keystroke.features import fixed_text_names

    feats = [str(c) for c in df.columns if str(c).split(".")[0] in ("H", "DD", "UD")]
    keys = [c[2:] for c in feats if c.startswith("H.")]
    nxt: dict[str, str] = {}
    for c in (c for c in feats if c.startswith("DD.")):
        rest = c[3:]  # "a.b", where key names may hold dots themselves ("Shift.r")
        links = [(rest[:i], rest[i + 1:]) for i, ch in enumerate(rest)
                 if ch == "." and rest[:i] in keys and rest[i + 1:] in keys]
        if len(links) > 1:
            raise DatasetError(f"column {c}: which two keys it links is ambiguous ({CMU_LAYOUT} expected)")
        if links:
            nxt.setdefault(*links[0])  # a key linked twice: the second link is left over, named below
    first = [k for k in keys if k not in nxt.values()]
    order = first[:1] or keys[:1]
    while order and order[-1] in nxt and nxt[order[-1]] not in order:
        order.append(nxt[order[-1]])
    want = fixed_text_names(order) if order else []
    odd = next((c for c in feats if c not in want), None)
    if odd is not None or len(feats) != len(set(feats)):
        what = f"column {odd} does not fit" if odd else "repeated columns do not fit"
        raise DatasetError(f"{what} the CMU timing layout {CMU_LAYOUT} "
                           f"(keys in typing order: {', '.join(order) or 'none'})")
    missing = next((c for c in want if c not in feats), None)
    if missing is not None:
        raise DatasetError(f"no column {missing}: the CMU timing layout {CMU_LAYOUT} needs it "
                           f"(keys in typing order: {', '.join(order) or 'none'})")
    return want


# --------------------------------------------------------------------------- BB-MAS desktop keys


def _parse_keystroke(path: Path) -> dict[str, np.ndarray]:
    df = pd.read_csv(path)
    need = {"key", "time_since_beginning", "press_to_press", "hold_time"}
    if need - set(df.columns):
        raise DatasetError(f"{path}: missing columns {sorted(need - set(df.columns))}")
    # The source's column names are swapped (see load_bbmas_keystrokes): press_to_press is the
    # hold time of the key and hold_time is the down-down latency from the previous press.
    cols = {c: _numbers(df, c) for c in ("time_since_beginning", "press_to_press", "hold_time")}
    for c, v in cols.items():
        if np.isinf(v).any():
            i = int(np.flatnonzero(np.isinf(v))[0])
            raise DatasetError(f"column {c}, data row {i + 1}: {v[i]} is not a finite time")
    notes: list[str] = []
    ok = df["key"].notna().to_numpy() & np.isfinite(cols["press_to_press"]) & np.isfinite(cols["hold_time"])
    if not ok.any():
        raise DatasetError(f"{path}: no rows with key, press_to_press and hold_time")
    if not ok.all():
        notes.append(_rows(int((~ok).sum()), "with an empty key, press_to_press or hold_time dropped"))
    rows = np.flatnonzero(ok)  # data row of each kept key, 0-based
    for c, what in (("press_to_press", "hold time"), ("hold_time", "down-down latency")):
        big = ok & (np.abs(np.nan_to_num(cols[c])) > MAX_KEY_INTERVAL_S)
        if big.any():
            i = int(np.flatnonzero(big)[0])
            raise DatasetError(f"column {c}, data row {i + 1}: {cols[c][i]:g} s is not a plausible {what} "
                               f"(more than {MAX_KEY_INTERVAL_S:g} s)")
    hold = cols["press_to_press"][ok]
    dd = cols["hold_time"][ok]
    press = cols["time_since_beginning"][ok]
    missing, back = int((~np.isfinite(press)).sum()), int(np.sum(np.diff(press) < 0))
    if missing or back:
        press = np.cumsum(dd)
        what = " and ".join(x for x in (f"empty in {missing:,} rows" if missing else "",
                                        f"going back at {back:,} rows" if back else "") if x)
        notes.append(f"time_since_beginning {what}: press times rebuilt by adding up hold_time (the down-down latency)")
        if np.any(dd[1:] < 0):
            i = int(rows[1:][dd[1:] < 0][0])
            raise DatasetError(f"time_since_beginning cannot be used and hold_time (the down-down latency) cannot "
                               f"replace it: column hold_time, data row {i + 1}: {cols['hold_time'][i]} is negative")
    else:
        jump = np.diff(press) > MAX_KEY_INTERVAL_S
        if jump.any():
            i = int(rows[1:][jump][0])
            raise DatasetError(f"column time_since_beginning, data row {i + 1}: {press[1:][jump][0]:g} is more than "
                               f"{MAX_KEY_INTERVAL_S:g} s after the previous key's press time: not a plausible pause")
    if np.any(hold < 0):
        notes.append(f"press_to_press (the hold time) negative in {int(np.sum(hold < 0)):,} rows: read as 0")
    hold = np.clip(hold, 0.0, None)
    return {"keys": df["key"][ok].astype(str).to_numpy(dtype=str), "press": press, "release": press + hold,
            WARNINGS: _warnings(notes)}


def load_bbmas_keystrokes(
    data_dir: str | os.PathLike[str], subjects: Iterable[int] | None = None, *, progress: bool = False
) -> dict[int, KeySequence]:
    """BB-MAS desktop keystrokes (PriyaBansal68's processed rows) as one `KeySequence` per subject.

    Column fix applied at load time: in these files ``press_to_press`` holds the key's hold
    (dwell) time, ``hold_time`` the down-down latency from the previous press and
    ``release_to_press`` the up-down flight time; ``time_since_beginning`` is the press time.
    We rebuild press/release times from them, so every downstream feature is computed from
    events, not from the mislabelled columns. Times are quantised to ~15.6 ms.
    """
    files = find_subject_files(data_dir, "keystroke")
    out: dict[int, KeySequence] = {}
    for sid, path in track(_select(files, subjects), "keystrokes", progress):
        a = _cached(path, "keystroke", _parse_keystroke)
        with _usable(path):
            out[sid] = KeySequence(a["keys"].astype(object), a["press"], a["release"])
    return out


# --------------------------------------------------------------------------- BB-MAS touch


#: origin of times read from text: a time with a zone (``Z``, ``+02:00``) is brought to UTC, one without
#: is read as UTC (BB-MAS wall-clock times: only their differences are used)
EPOCH = pd.Timestamp("1970-01-01", tz="UTC")
#: the touch time layouts `_parse_touch_times` reads (for its error messages)
TOUCH_TIME_LAYOUTS = "'YYYY-M-D H:M:S:mmm' as in BB-MAS, ISO 8601, or epoch seconds or milliseconds"


def _parse_touch_times(raw: pd.Series) -> tuple[np.ndarray, int]:
    """Seconds since the epoch (NaN where empty or ``null``) and the count of other values not readable as a time.

    Numbers are epoch times whose unit (s, ms, us, ns) is inferred as for gait (`_time_scale`).
    """
    s = raw.astype("string").str.strip()
    s = s.mask(s.str.lower().isin(["null", "nan", ""]))
    num = pd.to_numeric(s, errors="coerce").to_numpy(float)
    is_num = np.isfinite(num)
    secs = np.full(len(s), np.nan)
    if is_num.any():
        scale = _time_scale(num[is_num])
        if scale is not None:
            secs[is_num] = num[is_num] / scale
    text = s.mask(pd.Series(is_num, index=s.index))
    if text.notna().any():
        ts = pd.to_datetime(text, format="%Y-%m-%d %H:%M:%S:%f", errors="coerce", utc=True)
        from_text = (ts - EPOCH).dt.total_seconds().to_numpy(float)
        if ts.notna().sum() < text.notna().sum():  # other layouts: ISO strings
            alt = pd.to_datetime(text, format="mixed", errors="coerce", utc=True)
            from_text = np.where(ts.notna().to_numpy(bool), from_text, (alt - EPOCH).dt.total_seconds().to_numpy(float))
        secs = np.where(is_num, secs, from_text)
    return secs, int((s.notna().to_numpy(bool) & ~np.isfinite(secs)).sum())


def _interpolate_missing(t: np.ndarray) -> np.ndarray:
    """Fill NaN times by linear interpolation over row index between timed neighbours."""
    ok = np.isfinite(t)
    if ok.all():
        return t
    if not ok.any():
        raise DatasetError("no timed rows")
    idx = np.arange(t.size)
    return np.interp(idx, idx[ok], t[ok])


def _parse_touch(path: Path) -> dict[str, np.ndarray]:
    df = pd.read_csv(path)
    need = {"Xvalue", "Yvalue", "pressure", "touchMajor", "touchMinor", "pointerID", "actionType", "time"}
    if need - set(df.columns):
        raise DatasetError(f"{path}: missing columns {sorted(need - set(df.columns))}")
    notes: list[str] = []
    cols = {c: _numbers(df, c) for c in ("Xvalue", "Yvalue", "pressure", "touchMajor", "touchMinor")}
    action = _numbers(df, "actionType")
    pointer = _numbers(df, "pointerID")
    for c in ("Xvalue", "Yvalue"):
        v = cols[c]
        bad = np.isinf(v) | (np.abs(np.nan_to_num(v)) > MAX_TOUCH_COORD_PX)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DatasetError(f"column {c}, data row {i + 1}: {v[i]:g} is not a screen coordinate "
                               f"(|value| at most {MAX_TOUCH_COORD_PX:g} px)")
    lo, hi = POINTER_ID_RANGE
    bad = np.isfinite(pointer) & ((pointer != np.round(pointer)) | (pointer < lo) | (pointer > hi))
    bad |= np.isinf(pointer)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"column pointerID, data row {i + 1}: {pointer[i]:g} is not a pointer id "
                           f"(an integer in [{lo}, {hi}])")
    t, unreadable = _parse_touch_times(df["time"])
    if unreadable and not np.isfinite(t).any():
        raise DatasetError(f"column time: {unreadable:,} of {len(df):,} times unreadable (expected "
                           f"{TOUCH_TIME_LAYOUTS}): no timed rows")
    if unreadable:
        notes.append(_rows(unreadable, "with a time that is not readable: their times interpolated"))
    # Batched "historical" samples have no action and no time: they are moves whose times were
    # not recorded; interpolate the times and label them MOVE.
    action = np.where(np.isfinite(action), action, 2.0).astype(np.int64) & ANDROID_ACTION_MASK
    action = action.astype(np.int8)
    t = _interpolate_missing(t)
    # Rounding in the source can make interpolated times step back by < 1 ms: keep order. A
    # larger step back (rows out of order, a clock set back) would put many events at one instant.
    d = np.diff(t)
    back = d < -TOUCH_BACKSTEP_S
    if back.any():
        raise DatasetError(f"time goes back by more than {TOUCH_BACKSTEP_S * 1e3:g} ms at {int(back.sum()):,} rows "
                           f"(by up to {-float(d.min()):.3g} s; first at data row {int(np.flatnonzero(back)[0]) + 2}): "
                           "rows out of order or a clock set back; fix or remove the file")
    t = np.maximum.accumulate(t)
    ok = np.all([np.isfinite(v) for v in cols.values()], axis=0)
    if not ok.any():
        raise DatasetError(f"{path}: no rows with finite Xvalue, Yvalue, pressure, touchMajor and touchMinor")
    if not ok.all():
        notes.append(_rows(int((~ok).sum()), "with an empty or non-finite Xvalue, Yvalue, pressure, touchMajor or "
                                             "touchMinor dropped"))
    if not np.isfinite(pointer[ok]).all():
        notes.append(_rows(int((~np.isfinite(pointer[ok])).sum()), "without a pointerID: read as pointer 0"))
    return {
        "time": t[ok],
        "x": cols["Xvalue"][ok],
        "y": cols["Yvalue"][ok],
        "pressure": cols["pressure"][ok],
        "touch_major": cols["touchMajor"][ok],
        "touch_minor": cols["touchMinor"][ok],
        "action": action[ok],
        "pointer_id": np.nan_to_num(pointer, nan=0.0).astype(np.int16)[ok],
        WARNINGS: _warnings(notes),
    }


def screen_size(device: str, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Known screen size of `device`, else estimated from the touch positions seen."""
    if device in SCREENS:
        return SCREENS[device]
    w = float(np.nanpercentile(x, 99.5)) if x.size else 1080.0
    h = float(np.nanpercentile(y, 99.5)) if y.size else 1920.0
    return max(w, 1.0), max(h, 1.0)


def load_bbmas_touch(
    data_dir: str | os.PathLike[str], subjects: Iterable[int] | None = None, *, progress: bool = False
) -> dict[int, TouchStream]:
    """BB-MAS HandPhone touch events as one `TouchStream` per subject (times in seconds).

    Action codes are masked with Android's ``ACTION_MASK`` (261 -> 5, pointer down with the
    pointer index in the high byte). Rows with an empty ``actionType`` and ``null`` time are
    batched historical move points;
    their times are interpolated linearly (by row index) between the neighbouring timed rows
    and they are labelled MOVE. The device name in the file name sets the screen size.
    """
    files = find_subject_files(data_dir, "touch")
    parsed = [(sid, path, _cached(path, "touch", _parse_touch), device_of(path, "touch"))
              for sid, path in track(_select(files, subjects), "touch", progress)]
    models = {device: model_touch_scales(device, [a for _, _, a, d in parsed if d == device])
              for device in sorted({d for _, _, _, d in parsed})}
    for device, scales in models.items():
        if scales.estimated:
            data_log.warning("touch: phone model %r is not in Cadence's tables: its %s estimated over its %d "
                             "file(s) here", device, scales.estimated, scales.files)
    out: dict[int, TouchStream] = {}
    for sid, path, a, device in parsed:
        m = models[device]
        with _usable(path):
            out[sid] = TouchStream(screen_width=m.screen[0], screen_height=m.screen[1], device=device,
                                   contact_scale=m.contact, pressure_scale=m.pressure, **a)
    return out


@dataclass(frozen=True)
class TouchModelScales:
    """A phone model's screen (px) and, when measured here, its typical contact size and pressure."""

    screen: tuple[float, float]
    contact: float | None = None
    pressure: float | None = None
    #: what was estimated from the files (empty: all from Cadence's tables)
    estimated: str = ""
    files: int = 0


def model_touch_scales(device: str, arrays: list[dict[str, np.ndarray]]) -> TouchModelScales:
    """The scales of phone model `device`: Cadence's tables, else pooled over every file of it.

    Why pooled: estimated from each file alone, a model missing from `SCREENS` and
    `modalities.touch.strokes.DEVICE_PROFILES` had each person's positions, contact sizes and
    pressures divided by that person's own, which erases part of what tells people apart (one
    folder's renamed copy of the HTC One files read 0.227 EER for 5 swipes instead of 0.203).
    """
    from modalities.touch.strokes import DEVICE_PROFILES, measured_profile

    def pooled(key: str) -> np.ndarray:
        parts = [np.asarray(a[key], float) for a in arrays]
        return np.concatenate(parts) if parts else np.empty(0)

    screen = SCREENS[device] if device in SCREENS else screen_size(device, pooled("x"), pooled("y"))
    said = "" if device in SCREENS else f"screen ({screen[0]:.0f} x {screen[1]:.0f} px) was"
    if device in DEVICE_PROFILES:
        return TouchModelScales(screen, estimated=said, files=len(arrays))
    prof = measured_profile(pooled("touch_major"), pooled("pressure"))
    scales = f"contact-size ({prof.contact_scale:.3g}) and pressure scales were"
    return TouchModelScales(screen, contact=prof.contact_scale, pressure=prof.pressure_scale,
                            estimated=f"{said[:-4]} and {scales}" if said else scales, files=len(arrays))


# --------------------------------------------------------------------------- BB-MAS gait


def _time_scale(v: np.ndarray) -> float | None:
    """Divisor that brings numeric clock values `v` (s, ms, us or ns) to seconds; None if no unit fits.

    Epoch or since-boot clocks: picks the unit that makes the median sampling interval plausible
    (0.5 ms .. 0.5 s, i.e. 2 Hz .. 2 kHz). The values are sorted first, so rows out of time
    order (which the loaders sort or refuse later) do not change the unit.
    """
    d = np.diff(np.sort(v[np.isfinite(v)]))
    step = float(np.median(d[d > 0])) if np.any(d > 0) else 1.0
    for scale in (1.0, 1e3, 1e6, 1e9):
        if 5e-4 <= step / scale <= 0.5:
            return scale
    return None


def _parse_gait_times(raw: pd.Series) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(raw):
        v = raw.to_numpy(float)
        scale = _time_scale(v)
        return v / scale if scale else v
    ts = pd.to_datetime(raw.astype("string").str.strip(), format="mixed", errors="coerce", utc=True)
    return (ts - EPOCH).dt.total_seconds().to_numpy(float)


def _first_of_each_time(t: np.ndarray, tcol: str) -> tuple[np.ndarray, list[str]]:
    """Row indices of `t` in time order, one per distinct time (its first row in the file), and notes on the rest.

    Two samples at one instant cannot both lie on a time axis, so the later ones are dropped,
    and counted (a bench copies the notes): a row repeating the time of the row before it (BB-MAS
    has them) apart from one whose time goes back to one an earlier row already had (rows out of
    order, which the sort alone would not say were dropped).
    """
    order = np.argsort(t, kind="stable")
    again = np.concatenate([[False], np.diff(t[order]) == 0])
    dropped = order[again]  # never row 0: the first row of each time sorts first (stable)
    repeats = int(np.sum(t[dropped - 1] == t[dropped]))
    notes = []
    if repeats:
        notes.append(_rows(repeats, f"with the same {tcol} as the row before them dropped (the first kept)"))
    if dropped.size > repeats:
        notes.append(_rows(int(dropped.size) - repeats, f"going back to the {tcol} of an earlier row dropped "
                                                        "(the first kept)"))
    return order[~again], notes


def _parse_gait(path: Path) -> dict[str, np.ndarray]:
    df = pd.read_csv(path)
    cols = {c.lower(): c for c in df.columns}
    try:
        x, y, z = (cols[k] for k in ("xvalue", "yvalue", "zvalue"))
    except KeyError:
        try:
            x, y, z = (cols[k] for k in ("x", "y", "z"))
        except KeyError as exc:
            raise DatasetError(f"{path}: no X/Y/Z value columns in {list(df.columns)}") from exc
    tcol = cols.get("time") or cols.get("timestamp")
    if tcol is None:
        raise DatasetError(f"{path}: no time column")
    xyz = np.column_stack([_numbers(df, c) for c in (x, y, z)])
    t = _parse_gait_times(df[tcol])
    bad_t = ~np.isfinite(t)
    bad_v = ~np.isfinite(xyz).all(axis=1) & ~bad_t
    ok = ~bad_t & ~bad_v
    t, xyz = t[ok], xyz[ok]
    if t.size == 0:
        raise DatasetError(f"{path}: no rows with a valid time and finite X/Y/Z")
    notes: list[str] = []
    if bad_t.any():
        notes.append(_rows(int(bad_t.sum()), f"with an empty or unreadable {tcol} dropped"))
    if bad_v.any():
        notes.append(_rows(int(bad_v.sum()), f"with an empty or non-finite {x}, {y} or {z} dropped"))
    back = int(np.sum(np.diff(t) < 0))
    if back:
        notes.append(f"{tcol} goes back at {back:,} rows: rows sorted by time")
    keep, dropped = _first_of_each_time(t, tcol)
    notes.extend(dropped)
    return {"t": t[keep], "xyz": xyz[keep], WARNINGS: _warnings(notes)}


#: each kind's parser (the cached part of its loader)
_PARSERS: dict[str, Callable[[Path], dict[str, np.ndarray]]] = {
    "keystroke": _parse_keystroke, "touch": _parse_touch, "gait": _parse_gait,
}


def to_ms2(xyz: np.ndarray) -> tuple[np.ndarray, str]:
    """Bring acceleration to m/s^2: recordings in g (median |a| near 1) are scaled by g."""
    mag = float(np.median(np.hypot(np.hypot(xyz[:, 0], xyz[:, 1]), xyz[:, 2]))) if len(xyz) else G  # no overflow
    if 0.3 < mag < 3.0:
        return xyz * G, "g"
    return xyz, "m/s^2"


@dataclass(frozen=True)
class GaitRecording:
    """One subject's accelerometer file split into contiguous walking segments."""

    subject: int
    device: str
    units: str
    segments: list[AccelSeries]

    @property
    def duration(self) -> float:
        return float(sum(s.duration for s in self.segments))


def load_bbmas_gait(
    data_dir: str | os.PathLike[str],
    subjects: Iterable[int] | None = None,
    *,
    progress: bool = False,
    max_gap: float = 1.0,
) -> dict[int, GaitRecording]:
    """BB-MAS PocketPhone accelerometer, one `GaitRecording` per subject.

    Times are parsed (wall-clock strings or epoch numbers), rows sorted by time, rows at a time
    already read dropped (the first sample is kept; counted in the data warnings), and each file
    split into segments at gaps longer than `max_gap` seconds (BB-MAS files hold two walks ~35 min
    apart). Values in g are converted to m/s^2.
    """
    from modalities.gait import signal

    files = find_subject_files(data_dir, "gait")
    out: dict[int, GaitRecording] = {}
    for sid, path in track(_select(files, subjects), "gait", progress):
        a = _cached(path, "gait", _parse_gait)
        xyz, units = to_ms2(a["xyz"])
        device = device_of(path, "gait")
        with _usable(path):
            segs = [AccelSeries(a["t"][s], xyz[s], device) for s in split_segments(a["t"], max_gap)]
            for seg in segs:  # what the gait features refuse (rate, units, |a|, peaks): refused here, naming the file
                signal.check_rate(seg.t)
                signal.to_ms2(seg.xyz)
        if not segs:
            data_log.warning("%s: no gait segment of 5 s or more (gaps over %g s split the recording): "
                             "subject %s skipped", path, max_gap, sid)
            continue
        out[sid] = GaitRecording(sid, device, units, segs)
    return out
