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
import logging
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from evaluation.progress import track
from modalities.events import ANDROID_ACTION_MASK, AccelSeries, KeySequence, TouchStream

log = logging.getLogger(__name__)
T = TypeVar("T")

LOADER_VERSION = "1"
G = 9.80665

#: file-name patterns per dataset kind; group 1 is the subject id, group 2 the device (if any)
PATTERNS: dict[str, re.Pattern[str]] = {
    "cmu": re.compile(r"^DSL-StrongPasswordData\.csv(?:\.gz)?$"),
    "keystroke": re.compile(r"^(\d+)_processed\.csv(?:\.gz)?$"),
    "touch": re.compile(r"^(\d+)_HandPhone_TouchEvent_?\(?([^)]*)\)?\.csv(?:\.gz)?$"),
    "gait": re.compile(r"^(\d+)_\w*?Phone_Accelerometer_?\(?([^)]*)\)?\.csv(?:\.gz)?$"),
}

#: screen size in pixels (width, height) of phones seen in BB-MAS; others are estimated
SCREENS: dict[str, tuple[float, float]] = {
    "HTC_One": (1080.0, 1920.0),
    "Samsung_S6": (1440.0, 2560.0),
}


class DatasetError(RuntimeError):
    """A data folder is missing, empty or holds files that cannot be parsed."""


# --------------------------------------------------------------------------- locating files


def modality_dir(data_dir: str | os.PathLike[str], kind: str) -> Path:
    """Return the folder holding files of `kind`: `data_dir` itself or one of its subfolders."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data folder not found: {root}")
    pat = PATTERNS[kind]
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    for folder in candidates:
        try:
            if any(pat.match(f.name) for f in folder.iterdir() if f.is_file()):
                return folder
        except PermissionError:  # pragma: no cover - unreadable subfolder
            continue
    raise DatasetError(f"no {kind} files (pattern {pat.pattern}) in {root} or its subfolders")


def find_subject_files(data_dir: str | os.PathLike[str], kind: str) -> dict[int, Path]:
    """Map subject id -> file for `kind`; a `.csv` wins over a `.csv.gz` of the same name.

    Two different files for one subject id (say two phone names) are a `DatasetError` naming
    both: which one is meant cannot be guessed.
    """
    folder = modality_dir(data_dir, kind)
    found: dict[int, Path] = {}
    for f in sorted(folder.iterdir(), key=lambda p: (p.name.endswith(".gz"), p.name)):
        m = PATTERNS[kind].match(f.name)
        if not (m and f.is_file()):
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
    """Subject ids with a `kind` file in `data_dir` (empty list if the folder has none)."""
    try:
        modality_dir(data_dir, kind)
    except DatasetError:
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


def same_file(a: Path, b: Path) -> bool:
    """True when `a` and `b` are the same file or hold the same bytes."""
    if a.resolve() == b.resolve():
        return True
    try:
        if a.stat().st_size != b.stat().st_size:
            return False
    except OSError as exc:
        raise DatasetError(f"cannot read {a} or {b}: {_reason(exc)}") from None
    return file_digest(a) == file_digest(b)


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


def _cached(path: Path, kind: str, parse: Callable[[Path], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    target = cache_dir() / kind / f"{_file_key(path, kind)}.npz"
    if target.exists():
        try:
            with np.load(target, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
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
    return arrays


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
    path = next(f for f in sorted(folder.iterdir()) if PATTERNS["cmu"].match(f.name))
    df: pd.DataFrame = _parse_named(path, lambda p: pd.read_csv(p, low_memory=False))
    missing = {"subject", "sessionIndex", "rep"} - set(df.columns)
    if missing:
        raise DatasetError(f"{path}: missing columns {sorted(missing)}")
    feats = cmu_feature_columns(df)
    if df.empty or not feats:
        raise DatasetError(f"{path}: no rows" if df.empty else f"{path}: no timing columns (H.*, DD.*, UD.*)")
    text = [c for c in feats if not pd.api.types.is_numeric_dtype(df[c])]
    if text:
        raise DatasetError(f"{path}: non-numeric values in columns {text[:5]}")
    missing_values = [c for c in feats if not np.isfinite(df[c].to_numpy(float)).all()]
    if missing_values:
        raise DatasetError(f"{path}: empty or non-finite values in columns {missing_values[:5]}")
    key = ["subject", "sessionIndex", "rep"]
    dup = df.duplicated()
    if dup.any():  # exact copies of a row would count twice as enrolment or test repetitions
        log.warning("%s: dropped %d exact duplicate rows", path, int(dup.sum()))
        df = df[~dup].reset_index(drop=True)
    clash = df[df.duplicated(key, keep=False)]
    if not clash.empty:
        first = clash.iloc[0]
        raise DatasetError(f"{path}: {len(clash)} rows share (subject, sessionIndex, rep) with different values, "
                           f"e.g. {first['subject']}, {first['sessionIndex']}, {first['rep']}")
    return df


def cmu_feature_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.split(".")[0] in ("H", "DD", "UD")]


# --------------------------------------------------------------------------- BB-MAS desktop keys


def _parse_keystroke(path: Path) -> dict[str, np.ndarray]:
    df = pd.read_csv(path)
    need = {"key", "time_since_beginning", "press_to_press", "hold_time"}
    if need - set(df.columns):
        raise DatasetError(f"{path}: missing columns {sorted(need - set(df.columns))}")
    df = df.dropna(subset=["key", "press_to_press", "hold_time"])
    if df.empty:
        raise DatasetError(f"{path}: no rows with key, press_to_press and hold_time")
    # The source's column names are swapped (see load_bbmas_keystrokes): press_to_press is the
    # hold time of the key and hold_time is the down-down latency from the previous press.
    hold = df["press_to_press"].to_numpy(float)
    dd = df["hold_time"].to_numpy(float)
    press = df["time_since_beginning"].to_numpy(float)
    if np.any(np.diff(press) < 0):
        press = np.cumsum(dd)
    hold = np.clip(hold, 0.0, None)
    return {"keys": df["key"].astype(str).to_numpy(dtype=str), "press": press, "release": press + hold}


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


def _parse_touch_times(raw: pd.Series) -> np.ndarray:
    s = raw.astype("string").str.strip()
    s = s.mask(s.str.lower().isin(["null", "nan", ""]))
    ts = pd.to_datetime(s, format="%Y-%m-%d %H:%M:%S:%f", errors="coerce")
    if ts.notna().sum() < s.notna().sum():  # other layouts: ISO strings or epoch numbers
        alt = pd.to_datetime(s, format="mixed", errors="coerce")
        ts = ts.fillna(alt)
    secs = (ts - pd.Timestamp("1970-01-01")).dt.total_seconds().to_numpy(float)
    return secs


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
    t = _parse_touch_times(df["time"])
    action = df["actionType"].to_numpy(float)
    # Batched "historical" samples have no action and no time: they are moves whose times were
    # not recorded; interpolate the times and label them MOVE.
    action = np.where(np.isfinite(action), action, 2.0).astype(np.int64) & ANDROID_ACTION_MASK
    action = action.astype(np.int8)
    t = _interpolate_missing(t)
    # Rounding in the source can make interpolated times step back by < 1 ms: keep order.
    t = np.maximum.accumulate(t)
    cols = {c: df[c].to_numpy(float) for c in ("Xvalue", "Yvalue", "pressure", "touchMajor", "touchMinor")}
    ok = np.all([np.isfinite(v) for v in cols.values()], axis=0)
    if not ok.any():
        raise DatasetError(f"{path}: no rows with finite Xvalue, Yvalue, pressure, touchMajor and touchMinor")
    return {
        "time": t[ok],
        "x": cols["Xvalue"][ok],
        "y": cols["Yvalue"][ok],
        "pressure": cols["pressure"][ok],
        "touch_major": cols["touchMajor"][ok],
        "touch_minor": cols["touchMinor"][ok],
        "action": action[ok],
        "pointer_id": df["pointerID"].fillna(0).to_numpy(np.int16)[ok],
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
    out: dict[int, TouchStream] = {}
    for sid, path in track(_select(files, subjects), "touch", progress):
        a = _cached(path, "touch", _parse_touch)
        device = device_of(path, "touch")
        w, h = screen_size(device, a["x"], a["y"])
        with _usable(path):
            out[sid] = TouchStream(screen_width=w, screen_height=h, device=device, **a)
    return out


# --------------------------------------------------------------------------- BB-MAS gait


def _parse_gait_times(raw: pd.Series) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(raw):
        # Epoch or since-boot clocks in s, ms, us or ns: pick the unit that makes the median
        # sampling interval plausible (1 ms .. 0.5 s, i.e. 2 Hz .. 1 kHz).
        v = raw.to_numpy(float)
        d = np.diff(v[np.isfinite(v)])
        step = float(np.median(d[d > 0])) if np.any(d > 0) else 1.0
        for scale in (1.0, 1e3, 1e6, 1e9):
            if 5e-4 <= step / scale <= 0.5:
                return v / scale
        return v
    ts = pd.to_datetime(raw.astype("string").str.strip(), format="mixed", errors="coerce")
    return (ts - pd.Timestamp("1970-01-01")).dt.total_seconds().to_numpy(float)


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
    t = _parse_gait_times(df[tcol])
    xyz = df[[x, y, z]].to_numpy(float)
    ok = np.isfinite(t) & np.isfinite(xyz).all(axis=1)
    t, xyz = t[ok], xyz[ok]
    if t.size == 0:
        raise DatasetError(f"{path}: no rows with a valid time and finite X/Y/Z")
    order = np.argsort(t, kind="stable")
    t, xyz = t[order], xyz[order]
    keep = np.concatenate([[True], np.diff(t) > 0])  # drop duplicate timestamps (keep the first)
    return {"t": t[keep], "xyz": xyz[keep]}


def to_ms2(xyz: np.ndarray) -> tuple[np.ndarray, str]:
    """Bring acceleration to m/s^2: recordings in g (median |a| near 1) are scaled by g."""
    mag = float(np.median(np.linalg.norm(xyz, axis=1))) if len(xyz) else G
    if 0.3 < mag < 3.0:
        return xyz * G, "g"
    return xyz, "m/s^2"


def split_segments(t: np.ndarray, max_gap: float = 1.0, min_duration: float = 5.0) -> list[slice]:
    """Split a recording at gaps longer than `max_gap` seconds; drop parts shorter than `min_duration`."""
    if t.size == 0:
        return []
    cuts = np.flatnonzero(np.diff(t) > max_gap) + 1
    bounds = np.concatenate([[0], cuts, [t.size]])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if t[b - 1] - t[a] >= min_duration]


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

    Times are parsed (wall-clock strings or epoch numbers), duplicate timestamps dropped (the
    first sample is kept), and each file split into segments at gaps longer than `max_gap`
    seconds (BB-MAS files hold two walks ~35 min apart). Values in g are converted to m/s^2.
    """
    files = find_subject_files(data_dir, "gait")
    out: dict[int, GaitRecording] = {}
    for sid, path in track(_select(files, subjects), "gait", progress):
        a = _cached(path, "gait", _parse_gait)
        xyz, units = to_ms2(a["xyz"])
        device = device_of(path, "gait")
        with _usable(path):
            segs = [AccelSeries(a["t"][s], xyz[s], device) for s in split_segments(a["t"], max_gap)]
        if not segs:
            log.warning("subject %s: no gait segment of 5 s or more in %s", sid, path.name)
            continue
        out[sid] = GaitRecording(sid, device, units, segs)
    return out
