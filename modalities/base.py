"""The scorer contract every modality follows (server, fusion, federated and benches use it).

Three stages, as in bob.bio.base / SpeechBrain verification pipelines, so each can run where
it belongs (population training centrally or federated, enrolment and comparison on the
device or on the server):

1. ``fit(X, subjects)``: learn the population part from many subjects' feature windows
   (a no-op for purely one-class methods). Returns ``self``.
2. ``enroll(X) -> Template``: one subject's enrolment windows -> a template (plain arrays).
3. ``compare(template, X) -> scores``: one score per probe window, higher is more genuine.

`ScorerDetector` wraps a scorer as a scikit-learn-style one-class estimator for one person
(`fit` enrols, `score_samples` compares, `decision_function = score_samples - offset_`).

Scorers save to a single ``.npz`` (no pickle) with their name and version, so a model file
read back by another version is refused with a clear error instead of scoring garbage.

Hyper-parameters follow scikit-learn's estimator contract without importing scikit-learn (this
module runs on the phone): ``__init__`` only stores its keyword arguments; ``get_params(deep=True)``
and ``set_params(**params)`` (nested ``scorer__min_scale``, unknown names refused) make
`sklearn.base.clone` work; each class lists a check per parameter in ``_param_checks``.
``_validate_params`` runs every check: when the scorer fits, saves and loads. Enrolment and
comparison (the payment path) call ``_check_params``, which re-runs the checks only when a
parameter changed since they last passed (``set_params`` or plain attribute assignment put a new
object there, or a dict/list parameter was edited in place), so a bad value is still refused
before it scores, at the cost of one identity comparison per parameter. A bad value is an
`InvalidParameterError` (a ``ValueError``) naming the parameter; in a saved file it is a
`ModelVersionError` naming it. ``set_params`` itself does not check (scikit-learn's contract).
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import numbers
import operator
import os
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Self

import numpy as np

from modalities.events import EventValidationError

Template = dict[str, np.ndarray]

_REGISTRY: dict[str, type[Scorer]] = {}


class ModelVersionError(ValueError):
    """A saved scorer or template does not match the code reading it."""


class InvalidParameterError(ValueError):
    """A hyper-parameter has the wrong type or is out of range; `param` names it."""

    def __init__(self, owner: str, param: str, message: str) -> None:
        super().__init__(f"{owner}: parameter {param!r} {message}")
        self.owner = owner
        self.param = param
        self.message = message


#: a parameter check: returns if the value is acceptable, else raises ValueError saying what it must be
ParamCheck = Callable[[Any], None]


def describe(value: Any, limit: int = 60) -> str:
    """`repr` of a value, shortened for an error message (saved files may hold anything)."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def real(*, gt: float | None = None, ge: float | None = None, le: float | None = None,
         none: bool = False) -> ParamCheck:
    """Check: a finite number (not a bool or a string) with the given bounds; `none` also allows None."""

    def check(value: Any) -> None:
        if value is None and none:
            return
        if not _is_real(value):
            raise ValueError(f"must be a number{' or None' if none else ''}, got {describe(value)}")
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"must be finite, got {v}")
        for ok, what, bound in ((gt is None or v > gt, ">", gt), (ge is None or v >= ge, ">=", ge),
                                (le is None or v <= le, "<=", le)):
            if not ok:
                raise ValueError(f"must be {what} {bound:g}, got {v:g}")

    return check


def integer(*, ge: int | None = None, le: int | None = None) -> ParamCheck:
    """Check: an integer (not a bool, a float or a string) in [`ge`, `le`]."""

    def check(value: Any) -> None:
        if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
            raise ValueError(f"must be an integer, got {describe(value)}")
        v = int(value)
        if ge is not None and v < ge:
            raise ValueError(f"must be >= {ge}, got {v}")
        if le is not None and v > le:
            raise ValueError(f"must be <= {le}, got {v}")

    return check


def boolean(value: Any) -> None:
    """Check: True or False (not 0/1 or a string)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"must be True or False, got {describe(value)}")


def one_of(*options: str) -> ParamCheck:
    """Check: one of the given strings."""

    def check(value: Any) -> None:
        if not (isinstance(value, str) and value in options):
            raise ValueError(f"must be one of {list(options)}, got {describe(value)}")

    return check


#: a seed for numpy's and scikit-learn's random generators
seed_check = integer(ge=0, le=2**32 - 1)


def _jsonable(value: Any) -> Any:
    """Parameters as JSON writes them: tuples as lists, numpy scalars as Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


class ParamsMixin:
    """scikit-learn's `get_params` / `set_params` contract (what `sklearn.base.clone` needs), numpy only.

    Parameters are the keyword arguments of ``__init__``, stored unchanged under the same names;
    `_param_checks` maps each to its check, run by `_validate_params`.
    """

    _param_checks: ClassVar[dict[str, ParamCheck]] = {}

    @classmethod
    def _get_param_names(cls) -> list[str]:
        """The keyword arguments of ``__init__``, sorted (introspected once per class, then cached)."""
        return list(_param_names(cls))

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Hyper-parameters by name; with `deep`, also those of nested estimators as ``name__param``."""
        out: dict[str, Any] = {}
        for key in self._get_param_names():
            value = getattr(self, key)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{key}__{k}", v) for k, v in value.get_params().items())
            out[key] = value
        return out

    def set_params(self, **params: Any) -> Self:
        """Set hyper-parameters (``name__param`` for a nested estimator's); an unknown name is a ValueError."""
        names = self._get_param_names()
        nested: dict[str, dict[str, Any]] = {}
        for full, value in params.items():
            key, delim, sub = full.partition("__")
            if key not in names:
                raise ValueError(f"Invalid parameter {key!r} for estimator {type(self).__name__}. "
                                 f"Valid parameters are: {names!r}.")
            if delim:
                nested.setdefault(key, {})[sub] = value
            else:
                setattr(self, key, value)
        for key, sub_params in nested.items():
            inner = getattr(self, key)
            if not hasattr(inner, "set_params"):
                raise ValueError(f"Invalid parameter {next(iter(sub_params))!r} for {key}={describe(inner)} "
                                 f"of estimator {type(self).__name__}: it has no parameters")
            inner.set_params(**sub_params)
        return self

    def __repr__(self) -> str:
        """``Class(param=value, ...)`` with the parameters that differ from their defaults, as scikit-learn prints."""
        sig = inspect.signature(type(self).__init__)  # type: ignore[misc]
        shown = []
        for key in self._get_param_names():
            value, default = getattr(self, key, None), sig.parameters[key].default
            try:
                same = value is default or (type(value) is type(default) and bool(value == default))
            except Exception:  # e.g. an array: ambiguous truth value
                same = False
            if not same:
                shown.append(f"{key}={describe(value)}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def _validate_params(self) -> None:
        """Run every parameter's check; the first failure is an `InvalidParameterError` naming it.

        On success, remembers the values checked, so that `_check_params` can skip the checks
        while they stay the same.
        """
        owner = type(self).__name__
        for name, check in self._param_checks.items():
            try:
                check(getattr(self, name))
            except Exception as exc:  # junk of any type (a saved file) must name the parameter
                raise InvalidParameterError(owner, name, str(exc) or type(exc).__name__) from exc
        values = _checked_params(type(self))[1](self)
        mutable = tuple(i for i, v in enumerate(values) if not _immutable(v))
        self.__dict__[_CHECKED] = (values, mutable, tuple(_copy(values[i]) for i in mutable))

    def _check_params(self) -> None:
        """`_validate_params`, skipped when the parameters are the very objects that last passed it.

        The per-call check of `enroll` / `compare`: identity of each parameter's value, plus
        equality with a copy for a dict or list (edited in place). Anything else (a new value from
        `set_params` or attribute assignment, a first use, a copy) runs every check.
        """
        seen = self.__dict__.get(_CHECKED)
        if seen is not None:
            values = _checked_params(type(self))[1](self)
            old, mutable, copies = seen
            try:
                if all(map(operator.is_, values, old)) and (
                        not mutable or all(values[i] == c for i, c in zip(mutable, copies))):
                    return
            except Exception:  # e.g. an array put inside a list (ambiguous truth value): check in full
                pass
        self._validate_params()

    def __getstate__(self) -> dict[str, Any]:
        """Pickled / copied state, without `_check_params`'s memo: a copy checks its parameters afresh.

        (The memo is a cache, not state: scikit-learn's checks hash a nested estimator before and after
        fit and must see it unchanged.)
        """
        state = self.__dict__.copy()
        state.pop(_CHECKED, None)
        return state


#: instance attribute holding the parameter values that last passed `ParamsMixin._validate_params`
_CHECKED = "_params_checked"

_IMMUTABLE_SCALARS = (str, bytes, int, float, complex, bool, type(None), np.generic)


def _immutable(value: Any) -> bool:
    """True for values that cannot change in place (numbers, strings, None, tuples of those)."""
    if isinstance(value, _IMMUTABLE_SCALARS):
        return True
    if isinstance(value, (tuple, frozenset)):
        return all(_immutable(v) for v in value)
    # builtin containers can be edited in place; other objects (a nested scorer) check themselves
    return not isinstance(value, (list, dict, set, bytearray, np.ndarray))


def _copy(value: Any) -> Any:
    """A deep copy of a parameter value (plain dicts, lists and tuples copied directly: faster than `copy.deepcopy`)."""
    if isinstance(value, _IMMUTABLE_SCALARS):
        return value
    if type(value) is dict:
        return {k: _copy(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_copy(v) for v in value)
    return copy.deepcopy(value)


#: per class: `ParamsMixin._get_param_names`, and `_param_checks`'s names with a getter of their values
_PARAM_NAMES: dict[type, tuple[str, ...]] = {}
_CHECKED_PARAMS: dict[type, tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]] = {}


def _param_names(cls: type) -> tuple[str, ...]:
    """`ParamsMixin._get_param_names` of `cls`, introspected once (``inspect.signature`` costs ~10 us)."""
    names = _PARAM_NAMES.get(cls)
    if names is None:
        init = cls.__init__  # type: ignore[misc]  # introspected, as BaseEstimator does
        params = [] if init is object.__init__ else [p for p in inspect.signature(init).parameters.values()
                                                     if p.name != "self" and p.kind != p.VAR_KEYWORD]
        if any(p.kind == p.VAR_POSITIONAL for p in params):
            raise RuntimeError(f"{cls.__name__}.__init__ must take explicit keyword arguments, not *args")
        names = _PARAM_NAMES[cls] = tuple(sorted(p.name for p in params))
    return names


def _checked_params(cls: type[ParamsMixin]) -> tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]:
    """Names in `cls._param_checks` and a function returning an instance's values of them as a tuple."""
    found = _CHECKED_PARAMS.get(cls)
    if found is None:
        names = tuple(cls._param_checks)
        get: Callable[[Any], tuple[Any, ...]]
        if not names:
            def get(obj: Any) -> tuple[Any, ...]:
                return ()
        elif len(names) == 1:
            one = operator.attrgetter(names[0])

            def get(obj: Any) -> tuple[Any, ...]:
                return (one(obj),)
        else:
            get = operator.attrgetter(*names)
        found = _CHECKED_PARAMS[cls] = (names, get)
    return found


def check_state(owner: str, state: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int | str | None, ...]],
                *, positive: Iterable[str] = (), labels: Iterable[str] = (),
                dims: dict[str, int] | None = None) -> dict[str, int]:
    """Refuse saved state whose arrays a tampered or foreign file got wrong, before they score garbage.

    `shapes` gives each key's expected shape: an int is a fixed size, a str a size that must agree
    across keys (bound on first use, or preset in `dims`), None any size. Arrays must be non-empty,
    numeric (keys in `labels` may also hold strings) and, if floating, finite; keys in `positive`
    must be > 0. Returns the bound sizes.
    """
    dims = dict(dims or {})
    for key, shape in shapes.items():
        v = np.asarray(state[key])
        if v.dtype.kind not in ("biufU" if key in labels else "biuf"):
            raise ModelVersionError(f"{owner}: state {key!r} must be numeric, got dtype {v.dtype}")
        if v.ndim != len(shape) or v.size == 0:
            raise ModelVersionError(f"{owner}: state {key!r} has shape {v.shape}, expected {len(shape)}-D non-empty")
        for axis, (want, got) in enumerate(zip(shape, v.shape)):
            if isinstance(want, str):
                want = dims.setdefault(want, got)
            if want is not None and got != want:
                raise ModelVersionError(f"{owner}: state {key!r} has shape {v.shape}, axis {axis} should be {want}")
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise ModelVersionError(f"{owner}: state {key!r} holds NaN or infinite values")
        if key in positive and not np.all(v > 0):
            raise ModelVersionError(f"{owner}: state {key!r} must be > 0")
    return dims


def distinct_subjects(subjects: np.ndarray) -> int:
    """How many subjects the labels name; a NaN or None label (or labels that cannot be ordered) is refused.

    NaN never equals itself, so each NaN label would otherwise count as a subject of its own (or,
    through ``labels == s``, of none), and population models would learn from nonsense.
    """
    y = np.asarray(subjects)
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y)
    elif y.dtype.kind == "O":
        bad = np.array([v is None or (isinstance(v, numbers.Real) and not math.isfinite(float(v))) for v in y.ravel()],
                       dtype=bool)
    else:
        bad = np.zeros(y.size, dtype=bool)
    if bad.any():
        i = int(np.flatnonzero(bad.ravel())[0])
        raise EventValidationError("subjects", f"labels must name a subject (NaN or None at index {i})")
    try:
        return int(np.unique(y).size)
    except TypeError as exc:
        raise EventValidationError("subjects", f"labels must be of one kind (numbers or strings): {exc}") from exc


def _read_model_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metadata and state arrays of a saved scorer; a damaged or foreign file is a ModelVersionError naming it."""
    try:
        z = np.load(path, allow_pickle=False)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelVersionError(f"{path}: not a readable .npz scorer model file ({type(exc).__name__})") from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ModelVersionError(f"{path}: not a scorer model file (a single array, not an .npz archive)")
    with z:
        if "__meta__" not in z.files:
            raise ModelVersionError(f"{path}: not a scorer model file (no __meta__ entry)")
        try:
            raw = z["__meta__"]
            state = {k[len("state__"):]: z[k] for k in z.files if k.startswith("state__")}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise ModelVersionError(f"{path}: damaged scorer model file ({exc})") from exc
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise ModelVersionError(f"{path}: scorer metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ModelVersionError(f"{path}: scorer metadata must be a JSON object, got {type(meta).__name__}")
    for key, kind in (("name", str), ("version", str), ("params", dict)):
        if not isinstance(meta.get(key), kind):
            raise ModelVersionError(f"{path}: scorer metadata lacks {key!r} (or it is not a {kind.__name__})")
    for k, v in state.items():
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise ModelVersionError(f"{path}: state {k!r} holds NaN or infinite values")
    return meta, state


class Scorer(ParamsMixin, ABC):
    """Base class: population fit, enrolment, comparison, versioned save/load."""

    #: registry name, e.g. "keystroke-manhattan-scaled"
    name: ClassVar[str]
    modality: ClassVar[str]
    #: bump when the meaning of saved state or templates changes
    version: ClassVar[str] = "1"
    #: feature version this scorer expects (checked against incoming windows)
    feature_version: ClassVar[str] = ""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "name" in cls.__dict__:
            _REGISTRY[cls.name] = cls

    # -- population ---------------------------------------------------------------------
    def fit(self, X: np.ndarray, subjects: np.ndarray | None = None) -> Self:
        """Learn from other people's windows; default: nothing to learn."""
        return self

    # -- per subject ---------------------------------------------------------------------
    @abstractmethod
    def enroll(self, X: np.ndarray) -> Template:
        """Build a template from one subject's enrolment windows (n, d)."""

    @abstractmethod
    def compare(self, template: Template, X: np.ndarray) -> np.ndarray:
        """Score probe windows (n, d) against `template`; higher is more genuine."""

    # -- persistence ------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        """Learned population state as arrays (empty for one-class scorers)."""
        return {}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        if state:
            raise ModelVersionError(f"{self.name} has no population state, got {sorted(state)}")

    def _file_params(self) -> dict[str, Any]:
        """The parameters a saved file records (JSON): the constructor's keyword arguments."""
        return {k: v for k, v in self.get_params().items() if "__" not in k}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the scorer to one ``.npz``; invalid parameters are refused (the file would not load)."""
        self._validate_params()
        meta = {"name": self.name, "version": self.version, "modality": self.modality,
                "feature_version": self.feature_version, "params": _jsonable(self._file_params())}
        text = json.dumps(meta, allow_nan=False)
        state = {f"state__{k}": np.asarray(v) for k, v in self.get_state().items()}
        with open(path, "wb") as fh:
            np.savez(fh, __meta__=np.array(text), **state)  # type: ignore[arg-type]  # numpy stubs

    @staticmethod
    def load(path: str | os.PathLike[str]) -> Scorer:
        """A saved scorer; a damaged, tampered or foreign file is a `ModelVersionError` naming it."""
        meta, state = _read_model_file(path)
        cls = _REGISTRY.get(meta["name"])
        if cls is None:
            raise ModelVersionError(f"unknown scorer {meta['name']!r} in {path}")
        if meta["version"] != cls.version:
            raise ModelVersionError(f"{path}: {meta['name']} version {meta['version']}, code has {cls.version}")
        try:
            obj = cls(**meta["params"])
        except Exception as exc:  # e.g. an unknown keyword: whatever a file holds, never a traceback
            raise ModelVersionError(f"{path}: {meta['name']} parameters do not fit this code ({exc})") from exc
        try:
            obj._validate_params()
        except InvalidParameterError as exc:
            raise ModelVersionError(f"{path}: {meta['name']} saved parameter {exc.param!r} {exc.message}") from exc
        except Exception as exc:
            raise ModelVersionError(f"{path}: {meta['name']} parameters do not fit this code ({exc!r})") from exc
        try:
            obj.set_state(state)
        except ModelVersionError as exc:
            raise ModelVersionError(f"{path}: {exc}") from exc
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise ModelVersionError(f"{path}: {meta['name']} state does not fit this code ({exc!r})") from exc
        return obj

    def check_features(self, X: np.ndarray, dim: int | None = None) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[0] == 0:
            raise EventValidationError("values", f"expected (n, d) feature windows, got shape {X.shape}")
        if dim is not None and X.shape[1] != dim:
            raise EventValidationError("values", f"expected {dim} features, got {X.shape[1]}")
        if not np.all(np.isfinite(X)):
            raise EventValidationError("values", "features must be finite")
        return X


def registered_scorers() -> dict[str, type[Scorer]]:
    return dict(_REGISTRY)


class ScaledManhattan(Scorer):
    """Killourhy & Maxion's scaled Manhattan detector, usable on any modality's features.

    Score = -mean_j |x_j - mean_j| / MAD_j, with every scale floored at `min_scale` (coarse
    clocks such as BB-MAS's 15.6 ms ticks make many MADs zero otherwise).
    """

    name = "manhattan-scaled"
    modality = "any"

    _param_checks = {"min_scale": real(gt=0)}

    def __init__(self, min_scale: float = 1e-3) -> None:
        self.min_scale = min_scale

    def enroll(self, X: np.ndarray) -> Template:
        self._check_params()
        X = self.check_features(X)
        mean = X.mean(axis=0)
        mad = np.mean(np.abs(X - mean), axis=0)
        return {"mean": mean, "scale": np.maximum(mad, self.min_scale)}

    def compare(self, template: Template, X: np.ndarray) -> np.ndarray:
        self._check_params()
        X = self.check_features(X, template["mean"].shape[0])
        return -np.mean(np.abs(X - template["mean"]) / template["scale"], axis=1)


def _scorer_or_none(value: Any) -> None:
    if value is not None and not (callable(getattr(value, "enroll", None)) and callable(getattr(value, "compare", None))):
        raise ValueError(f"must be a Scorer (with enroll and compare) or None, got {describe(value)}")


class ScorerDetector(ParamsMixin):
    """scikit-learn-style one-class estimator for one person around any `Scorer`.

    ``fit(X)`` enrols, ``score_samples(X)`` compares (higher is more normal) and
    ``decision_function(X) = score_samples(X) - offset_`` so that 0 is the threshold;
    `offset_` is set so that a fraction `contamination` (0 to 0.5) of enrolment windows falls below it.
    `get_params` / `set_params` follow scikit-learn (``scorer__min_scale`` reaches the scorer), so
    `sklearn.base.clone` and the estimator checks work; it does not inherit `sklearn.base.BaseEstimator`
    only because this module must import without scikit-learn.
    """

    _param_checks = {"scorer": _scorer_or_none, "contamination": real(ge=0.0, le=0.5)}

    def __init__(self, scorer: Scorer | None = None, contamination: float = 0.05) -> None:
        self.scorer = scorer
        self.contamination = contamination

    def fit(self, X: np.ndarray, y: Any = None) -> ScorerDetector:
        from sklearn.utils.validation import validate_data

        self._validate_params()
        X = validate_data(self, X, reset=True)
        scorer = self.scorer if self.scorer is not None else ScaledManhattan()
        self.template_ = scorer.enroll(X)
        self.scorer_ = scorer
        self.offset_ = float(np.quantile(scorer.compare(self.template_, X), self.contamination))
        return self

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        from sklearn.utils.validation import check_is_fitted, validate_data

        check_is_fitted(self, "template_")
        X = validate_data(self, X, reset=False)
        return self.scorer_.compare(self.template_, X)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.score_samples(X) - self.offset_

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.where(self.decision_function(X) >= 0, 1, -1)

    def __sklearn_tags__(self) -> Any:
        from sklearn.utils import Tags, TargetTags

        tags = Tags(estimator_type="outlier_detector", target_tags=TargetTags(required=False))
        return tags
