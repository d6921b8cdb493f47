"""Gait windows from a data folder, cached: shared by `train_scorer` and `cadence bench gait`.

Feature extraction dominates the bench's time, so each subject's windows are cached as
``.npz`` in the project cache dir, keyed by the file's bytes, `FEATURE_VERSION` and the
window/hop lengths: an edited file or a new feature version is recomputed, nothing else.
`load_augmented_windows` does the same for rate-augmented copies of training recordings
(`modalities.gait.augment`), which only population models are fitted on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from modalities.gait.augment import AUGMENT_VERSION, random_phone
from modalities.gait.features import FEATURE_VERSION, SubjectWindows, windows_for_subject

log = logging.getLogger(__name__)


#: rate-augmented copies per training recording, and their hop (at least this many seconds).
#: 0: two copies helped the inner split of training subjects at 25 Hz but hurt the A/B split
#: at both rates (BENCHMARKS.md "Gait"), so population models use the recordings as they are
AUGMENT_COPIES = 0
AUGMENT_MIN_HOP_S = 10.0


def _key(path: Path, window_s: float, hop_s: float, tag: str = "") -> str:
    """Cache key of `path`'s windows; a `DatasetError` naming the file if it cannot be read."""
    from evaluation.datasets import file_digest  # here: the loaders import pandas, this module numpy only

    return file_digest(path, f"gait-windows:{FEATURE_VERSION}:{window_s}:{hop_s}:{tag}")


def _present(f: Path) -> bool:
    """Whether cache entry `f` exists (a cache folder that cannot be searched has none, and fails when written)."""
    try:
        return f.exists()
    except OSError:
        return False


def _store(folder: Path, key: str, sw: SubjectWindows) -> None:
    """Write `sw` to the cache as ``folder/KEY.npz`` (atomically); a `DatasetError` naming it if it cannot be."""
    from evaluation.datasets import DatasetError

    target = folder / f"{key}.npz"
    tmp = folder / f"{key}.{os.getpid()}.tmp.npz"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, X=sw.X, start=sw.start, walk_pos=sw.walk_pos, walk_total=np.array(sw.walk_total))
        os.replace(tmp, target)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise DatasetError(f"cannot write the gait window cache {target} (CADENCE_CACHE_DIR): "
                           f"{exc.strerror or exc}") from None


def load_windows(data_dir: str | os.PathLike[str], subjects: Iterable[int] | None, window_s: float,
                 hop_s: float | None = None, *, progress: bool = False, augment: int = 0) -> dict[int, SubjectWindows]:
    """Feature windows per subject of the gait files in `data_dir` (any phone, rate >= 20 Hz).

    `augment` = k > 0 gives instead the windows of the k-th rate-augmented copy of each
    recording (`modalities.gait.augment.random_phone`, seeded by the file's bytes and k).
    """
    from evaluation.datasets import DatasetError, cache_dir, find_subject_files, load_bbmas_gait

    hop_s = hop_s or window_s / 2
    files = find_subject_files(data_dir, "gait")
    wanted = list(files) if subjects is None else [int(s) for s in subjects if int(s) in files]
    out: dict[int, SubjectWindows] = {}
    todo: list[int] = []
    folder = cache_dir() / "gait-windows"
    tag = f"{AUGMENT_VERSION}:{augment}" if augment else ""
    keys = {s: _key(files[s], window_s, hop_s, tag) for s in wanted}
    for s in wanted:
        f = folder / f"{keys[s]}.npz"
        if _present(f):
            try:
                with np.load(f, allow_pickle=False) as z:
                    out[s] = SubjectWindows(z["X"], z["start"], z["walk_pos"], float(z["walk_total"]), window_s)
                continue
            except (OSError, ValueError, KeyError):
                log.warning("discarding unreadable cache entry %s", f)
        todo.append(s)
    if todo:
        recs = load_bbmas_gait(data_dir, todo, progress=progress)
        for s in todo:
            if s not in recs:
                continue
            segs = recs[s].segments
            if augment:
                segs = random_phone(segs, seed=int(keys[s][:8], 16))
            try:
                sw = windows_for_subject(segs, window_s, hop_s=hop_s)
            except ValueError as exc:  # EventValidationError: what the features refuse, for this file
                raise DatasetError(f"{files[s]}: no usable data: {exc}") from None
            _store(folder, keys[s], sw)
            out[s] = sw
    return dict(sorted(out.items()))


def stack(windows: dict[int, SubjectWindows]) -> tuple[np.ndarray, np.ndarray]:
    """All windows of several subjects as (X, subject label per window)."""
    Xs = [w.X for w in windows.values() if len(w)]
    if not Xs:
        return np.zeros((0, 0)), np.zeros(0, int)
    y = np.concatenate([np.full(len(w), s) for s, w in windows.items() if len(w)])
    return np.vstack(Xs), y


def load_training_windows(data_dir: str | os.PathLike[str], subjects: Iterable[int] | None, window_s: float,
                          *, progress: bool = False,
                          copies: int = AUGMENT_COPIES) -> tuple[dict[int, SubjectWindows], np.ndarray, np.ndarray]:
    """Windows that population models are fitted on: the recordings' own plus `copies` rate-augmented copies.

    Returns (original windows per subject, X, subject label per row of X). Augmented copies use
    a hop of max(window, `AUGMENT_MIN_HOP_S`) to bound their feature-extraction time.
    """
    subjects = None if subjects is None else [int(s) for s in subjects]
    orig = load_windows(data_dir, subjects, window_s, progress=progress)
    Xs, ys = [], []
    X0, y0 = stack(orig)
    if X0.shape[0]:
        Xs.append(X0)
        ys.append(y0)
    hop = max(window_s, AUGMENT_MIN_HOP_S)
    for k in range(1, copies + 1):
        Xk, yk = stack(load_windows(data_dir, list(orig), window_s, hop, progress=progress, augment=k))
        if Xk.shape[0]:
            Xs.append(Xk)
            ys.append(yk)
    if not Xs:
        return orig, np.zeros((0, 0)), np.zeros(0, int)
    return orig, np.vstack(Xs), np.concatenate(ys)
