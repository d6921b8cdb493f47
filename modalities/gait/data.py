"""Gait windows from a data folder, cached: shared by `train_scorer` and `cadence bench gait`.

Feature extraction dominates the bench's time, so each subject's windows are cached as
``.npz`` in the project cache dir, keyed by the file's bytes, `FEATURE_VERSION` and the
window/hop lengths: an edited file or a new feature version is recomputed, nothing else.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from modalities.gait.features import FEATURE_VERSION, SubjectWindows, windows_for_subject

log = logging.getLogger(__name__)


def _key(path: Path, window_s: float, hop_s: float) -> str:
    h = hashlib.sha1(f"gait-windows:{FEATURE_VERSION}:{window_s}:{hop_s}:".encode())
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_windows(data_dir: str | os.PathLike[str], subjects: Iterable[int] | None, window_s: float,
                 hop_s: float | None = None, *, progress: bool = False) -> dict[int, SubjectWindows]:
    """Feature windows per subject of the gait files in `data_dir` (any phone, rate >= 20 Hz)."""
    from evaluation.datasets import cache_dir, find_subject_files, load_bbmas_gait

    hop_s = hop_s or window_s / 2
    files = find_subject_files(data_dir, "gait")
    wanted = list(files) if subjects is None else [int(s) for s in subjects if int(s) in files]
    out: dict[int, SubjectWindows] = {}
    todo: list[int] = []
    folder = cache_dir() / "gait-windows"
    keys = {s: _key(files[s], window_s, hop_s) for s in wanted}
    for s in wanted:
        f = folder / f"{keys[s]}.npz"
        if f.exists():
            try:
                with np.load(f, allow_pickle=False) as z:
                    out[s] = SubjectWindows(z["X"], z["start"], z["walk_pos"], float(z["walk_total"]), window_s)
                continue
            except (OSError, ValueError, KeyError):
                log.warning("discarding unreadable cache entry %s", f)
        todo.append(s)
    if todo:
        recs = load_bbmas_gait(data_dir, todo, progress=progress)
        folder.mkdir(parents=True, exist_ok=True)
        for s in todo:
            if s not in recs:
                continue
            sw = windows_for_subject(recs[s].segments, window_s, hop_s=hop_s)
            tmp = folder / f"{keys[s]}.{os.getpid()}.tmp.npz"
            np.savez(tmp, X=sw.X, start=sw.start, walk_pos=sw.walk_pos, walk_total=np.array(sw.walk_total))
            os.replace(tmp, folder / f"{keys[s]}.npz")
            out[s] = sw
    return dict(sorted(out.items()))


def stack(windows: dict[int, SubjectWindows]) -> tuple[np.ndarray, np.ndarray]:
    """All windows of several subjects as (X, subject label per window)."""
    Xs = [w.X for w in windows.values() if len(w)]
    if not Xs:
        return np.zeros((0, 0)), np.zeros(0, int)
    y = np.concatenate([np.full(len(w), s) for s, w in windows.items() if len(w)])
    return np.vstack(Xs), y
