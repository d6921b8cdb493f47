"""A damaged, tampered or foreign scorer file is refused with a ModelVersionError naming it.

Before, such files surfaced as KeyError, JSONDecodeError, TypeError or BadZipFile, or loaded
and then crashed (wrong shapes) or scored NaN (non-finite state) at compare time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import modalities.gait.scorers
import modalities.keystroke.detectors
import modalities.keystroke.learned
import modalities.touch.scorers  # noqa: F401  (registers the scorers)
from modalities.base import ModelVersionError, Scorer, registered_scorers
from modalities.gait.features import FEATURE_DIM as GAIT_DIM
from modalities.keystroke.features import FEATURE_DIM as KEYSTROKE_DIM
from modalities.touch.features import FEATURE_DIM as TOUCH_DIM

DIMS = {"keystroke": KEYSTROKE_DIM, "touch": TOUCH_DIM, "gait": GAIT_DIM, "any": 10}
NAMES = sorted(n for n, c in registered_scorers().items() if c.__module__.startswith("modalities."))
POPULATION = [n for n in NAMES if registered_scorers()[n].fit is not Scorer.fit]


def _data(name: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.abs(rng.normal(0.2, 0.05, (6 * 30, DIMS[registered_scorers()[name].modality])))


def _saved(name: str, tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A fitted scorer saved to `tmp_path`, and the file's arrays."""
    scorer = registered_scorers()[name]()
    scorer.fit(_data(name), np.repeat(np.arange(6), 30))
    path = tmp_path / "m.npz"
    scorer.save(path)
    with np.load(path) as z:
        return path, dict(z)


def _write(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    return path


def _load_refused(path: Path) -> str:
    with pytest.raises(ModelVersionError) as e:
        Scorer.load(path)
    assert str(path) in str(e.value)
    return str(e.value)


def _with_meta(arrays: dict[str, np.ndarray], meta: object) -> dict[str, np.ndarray]:
    return {**arrays, "__meta__": np.array(json.dumps(meta))}


@pytest.mark.parametrize("name", NAMES)
def test_tampered_metadata_is_refused(name: str, tmp_path: Path) -> None:
    path, z = _saved(name, tmp_path)
    meta = json.loads(str(z["__meta__"]))
    state = {k: v for k, v in z.items() if k != "__meta__"}
    bad = tmp_path / "bad.npz"
    assert "__meta__" in _load_refused(_write(bad, state))
    assert "JSON" in _load_refused(_write(bad, {**state, "__meta__": np.array("not json")}))
    assert "object" in _load_refused(_write(bad, _with_meta(state, [1, 2])))
    for key in ("version", "params", "name"):
        assert key in _load_refused(_write(bad, _with_meta(state, {k: v for k, v in meta.items() if k != key})))
    assert "bogus" in _load_refused(_write(bad, _with_meta(state, {**meta, "params": {"bogus": 1}})))


@pytest.mark.parametrize("name", NAMES)
def test_damaged_or_foreign_files_are_refused(name: str, tmp_path: Path) -> None:
    path, _ = _saved(name, tmp_path)
    raw = path.read_bytes()
    bad = tmp_path / "bad.npz"
    bad.write_bytes(raw[: len(raw) // 2])
    _load_refused(bad)
    bad.write_bytes(b"garbage" * 10)
    _load_refused(bad)
    np.save(tmp_path / "single.npy", np.zeros(3))
    _load_refused(tmp_path / "single.npy")


@pytest.mark.parametrize("name", POPULATION)
def test_state_of_wrong_shape_or_not_finite_is_refused_at_load(name: str, tmp_path: Path) -> None:
    path, z = _saved(name, tmp_path)
    assert isinstance(Scorer.load(path), registered_scorers()[name])
    bad = tmp_path / "bad.npz"
    cut = {k: (v[..., :-1] if k != "__meta__" and v.ndim and v.shape[-1] > 1 else v) for k, v in z.items()}
    assert "shape" in _load_refused(_write(bad, cut))
    nan = {k: (np.full_like(v, np.nan) if v.dtype.kind == "f" else v) for k, v in z.items()}
    assert "NaN" in _load_refused(_write(bad, nan))
    first = next(k for k, v in z.items() if k != "__meta__" and v.dtype.kind == "f")
    one_inf = {**z, first: np.where(np.arange(z[first].size).reshape(z[first].shape) == 0, np.inf, z[first])}
    assert "NaN or infinite" in _load_refused(_write(bad, one_inf))
