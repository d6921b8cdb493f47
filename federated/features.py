"""Per-device feature windows: what one phone holds about its one owner.

Federated clients never see raw signals of other people: each device computes its owner's
feature windows with the modality package (`modalities/<m>/features.py`) and keeps them in a
single ``.npz`` file (``X``: (n, d) windows in time order, plus the feature version). The
bench and the operator commands write one such file per subject ("device"), and a SuperNode
is pointed at exactly one of them.

Only the modality feature functions are imported here (pure numpy/scipy); torch is not.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modalities.events import MODALITIES

log = logging.getLogger(__name__)

#: fewest windows a device takes part with: the scaling round's feature sums are not masked, and
#: from one window's sums the server reads that window, from two every feature's two values
#: (`client_app` refuses the round below it; the desktop app exports nothing below it)
MIN_SUMMARY_WINDOWS = 5

#: decision window of the bench rows, per modality (labels as in the modality benches)
WINDOWS: dict[str, str] = {"keystroke": "50 keys", "touch": "5 swipes", "gait": "10 s"}
#: keys per keystroke window, swipes per touch decision, seconds per gait window
KEYS, SWIPES, GAIT_SECONDS = 50, 5, 10.0


class DeviceDataError(ValueError):
    """A device feature file is missing, malformed, or of another modality/feature version."""


@dataclass(frozen=True)
class FeatureSpec:
    """What a modality's feature extractor produces (checked when a device file is read)."""

    modality: str
    feature_version: str
    dim: int
    window: str


def check_modality(modality: str) -> str:
    """Return `modality` or raise naming the field."""
    if modality not in MODALITIES:
        raise DeviceDataError(f"modality: unknown {modality!r}; expected one of {', '.join(MODALITIES)}")
    return modality


def feature_spec(modality: str) -> FeatureSpec:
    """Feature version and dimension of `modality`'s window features."""
    check_modality(modality)
    if modality == "keystroke":
        from modalities.keystroke import features as kf

        return FeatureSpec(modality, kf.FEATURE_VERSION, kf.FEATURE_DIM, WINDOWS[modality])
    if modality == "touch":
        from modalities.touch import features as tf

        return FeatureSpec(modality, tf.FEATURE_VERSION, tf.FEATURE_DIM, WINDOWS[modality])
    from modalities.gait import features as gf

    return FeatureSpec(modality, gf.FEATURE_VERSION, gf.FEATURE_DIM, WINDOWS[modality])


def subject_windows(modality: str, data_dir: str | os.PathLike[str], subjects: Iterable[int] | None = None,
                    *, max_windows: int | None = None) -> dict[int, np.ndarray]:
    """Time-ordered training windows (n, d) per subject, cut as the modality bench cuts them.

    keystroke: 50-key windows (hop 25) of BB-MAS desktop typing; touch: one swipe per window
    (taps left out; decisions average 5 swipes' scores); gait: 10 s windows of detected
    walking (hop 5 s, `modalities.gait.data.load_windows`' cache). Subjects with fewer than 4
    windows are left out (nothing to enrol and test). `max_windows` keeps the first ones.
    """
    check_modality(modality)
    from evaluation import datasets as ds

    out: dict[int, np.ndarray] = {}
    if modality == "keystroke":
        from modalities.keystroke.features import window_matrix

        for sid, seq in ds.load_bbmas_keystrokes(data_dir, subjects).items():
            out[sid] = window_matrix(seq, KEYS)
    elif modality == "touch":
        from modalities.touch.features import stream_features

        for sid, stream in ds.load_bbmas_touch(data_dir, subjects).items():
            X, is_tap, start = stream_features(stream)
            order = np.argsort(start[~is_tap], kind="stable")
            out[sid] = X[~is_tap][order]
    else:
        from modalities.gait.data import load_windows

        for sid, sw in load_windows(data_dir, subjects, GAIT_SECONDS).items():
            out[sid] = sw.X
    res = {}
    for sid, X in out.items():
        X = np.asarray(X, dtype=np.float64)
        X = X[np.all(np.isfinite(X), axis=1)]
        if max_windows is not None:
            X = X[:max_windows]
        if X.shape[0] >= 4:
            res[int(sid)] = X
    return res


@dataclass(frozen=True)
class EvalSplit:
    """One evaluation subject: enrolment windows (n, d) and probe decisions (m, k, d).

    A probe decision is `k` consecutive windows whose per-window scores are averaged (k = 5
    swipes for touch, 1 otherwise), as the modality bench scores it.
    """

    enrol: np.ndarray
    probes: np.ndarray


def eval_splits(modality: str, data_dir: str | os.PathLike[str],
                subjects: Iterable[int] | None = None) -> dict[int, EvalSplit]:
    """Enrol/probe data per evaluation subject, split as the modality bench splits it.

    keystroke: the key sequence is halved in time and each half cut into 50-key windows;
    touch: earliest half of the swipes enrol, the rest form non-overlapping 5-swipe decisions
    (subjects with < 10 swipes skipped); gait: 10 s windows before / after half the walking
    time (`SubjectWindows.chronological`). Subjects without 2 enrolment windows and 1 probe
    are left out.
    """
    check_modality(modality)
    from evaluation import datasets as ds
    from evaluation.protocols import chronological_split

    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if modality == "keystroke":
        from modalities.keystroke.features import window_matrix

        for sid, seq in ds.load_bbmas_keystrokes(data_dir, subjects).items():
            a, b = chronological_split(len(seq))
            out[sid] = (window_matrix(seq[a], KEYS), window_matrix(seq[b], KEYS)[:, None, :])
    elif modality == "touch":
        from modalities.touch.features import stream_features

        for sid, stream in ds.load_bbmas_touch(data_dir, subjects).items():
            X, is_tap, start = stream_features(stream)
            X = X[~is_tap][np.argsort(start[~is_tap], kind="stable")]
            if len(X) < 2 * SWIPES:
                continue
            a, b = chronological_split(len(X))
            P = X[b]
            n = len(P) // SWIPES
            out[sid] = (X[a], P[: n * SWIPES].reshape(n, SWIPES, -1))
    else:
        from modalities.gait.data import load_windows

        for sid, sw in load_windows(data_dir, subjects, GAIT_SECONDS).items():
            e, t = sw.chronological(0.5)
            out[sid] = (sw.X[e], sw.X[t][:, None, :])
    res = {}
    for sid, (E, P) in out.items():
        E = np.asarray(E, np.float64)
        P = np.asarray(P, np.float64)
        E = E[np.all(np.isfinite(E), axis=1)]
        P = P[np.all(np.isfinite(P), axis=(1, 2))] if P.size else P
        if len(E) >= 2 and len(P) >= 1:
            res[int(sid)] = EvalSplit(E, P)
    return res


def write_device_file(path: str | os.PathLike[str], X: np.ndarray, spec: FeatureSpec, subject: int | None = None) -> Path:
    """Store one device's windows (what a SuperNode's ``--data`` points at)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    np.savez(p, X=np.asarray(X, np.float32), modality=np.array(spec.modality),
             feature_version=np.array(spec.feature_version), subject=np.array(-1 if subject is None else int(subject)))
    return p


def device_file_name(subject: int) -> str:
    """File name of a subject's device file (``device-<subject>.npz``)."""
    return f"device-{int(subject)}.npz"


def device_order(subjects: Iterable[int]) -> list[int]:
    """Subjects in the order a simulation numbers their device files (partition ids sort file names).

    Slots follow that order (`federated.task.device_key`), so central training given the same
    order puts every subject on the same prototype as the federated run.
    """
    return sorted(subjects, key=device_file_name)


def write_device_files(folder: str | os.PathLike[str], windows: dict[int, np.ndarray], spec: FeatureSpec) -> list[Path]:
    """One ``device-<subject>.npz`` per subject in `folder`, in `device_order`."""
    return [write_device_file(Path(folder) / device_file_name(sid), windows[sid], spec, sid)
            for sid in device_order(windows)]


def read_device_file(path: str | os.PathLike[str], modality: str | None = None, *,
                     log_path: bool = True) -> np.ndarray:
    """Windows of one device; refuses another modality or feature version, or a file without usable windows.

    The `DeviceDataError` names no local path: on a SuperNode its message becomes the
    ClientApp's error reply to the server, and the device's path never leaves the device.
    The path is written to this device's own log instead (`log_path`); a local command that
    prints its own error line with the path (`device_file_error`) passes False, so the
    operator reads the failure once.
    """
    p = Path(path)
    try:
        return _read_device_file(p, modality)
    except DeviceDataError as exc:
        if log_path:
            log.error("device file %s: %s", p, exc)
        raise


def _read_device_file(p: Path, modality: str | None) -> np.ndarray:
    import zipfile

    if not p.is_file():
        raise DeviceDataError("data: the device file was not found (its path is in the device's log)")
    try:
        with np.load(p, allow_pickle=False) as z:
            X = np.asarray(z["X"], np.float32)
            mod = str(z["modality"])
            version = str(z["feature_version"]) if "feature_version" in z.files else ""
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        # EOFError (empty file), BadZipFile (truncated copy): unreadable, not a crash
        raise DeviceDataError(f"data: the device file is not a readable device feature file "
                              f"({type(exc).__name__}; empty, cut short or of another kind?)") from None
    except Exception as exc:  # anything else np.load raises on a damaged archive (zlib.error, ...)
        raise DeviceDataError(f"data: the device file is damaged ({type(exc).__name__})") from None
    if modality is not None and mod != modality:
        raise DeviceDataError(f"data: the device file holds {mod} windows, this run trains {modality}")
    want = feature_spec(modality if modality is not None else mod).feature_version
    if version != want:
        raise DeviceDataError(f"data: the device file holds {mod} features of version {version or '(none)'!r}, "
                              f"the current {mod} features are version {want!r}; recompute the device's windows")
    if X.ndim != 2 or X.shape[0] == 0 or not np.all(np.isfinite(X)):
        raise DeviceDataError(f"data: the device file must hold a non-empty finite (n, d) array X, got shape {X.shape}")
    dim = feature_spec(mod).dim
    if X.shape[1] != dim:  # refused as the SuperNode starts, not left out of a run's scaling round later
        raise DeviceDataError(f"data: the device file holds windows of {X.shape[1]} features, {mod} features of "
                              f"version {want!r} have {dim}; recompute the device's windows")
    return X


def device_file_error(path: str | os.PathLike[str], exc: DeviceDataError) -> str:
    """`exc` for a local error line (the operator's own terminal): with the file's path."""
    return f"{exc} [{path}]"
