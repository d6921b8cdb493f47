"""Scorer hyper-parameters: checked like scikit-learn's, refused by name in a saved file; and input edges.

Before: a hand-edited `params` entry in a model file loaded (``min_scale: NaN`` then scored NaN,
``k: "5"`` crashed at compare) or raised a traceback (``views: "all"``); ``TouchKNN(k=0)`` and
``cohort_per_subject=0`` scored NaN; no scorer had ``get_params(deep)`` / ``set_params``, so
`sklearn.base.clone` failed and ``ScorerDetector.set_params`` took typos. Gait input in g scored
as standing still and input x 1e155 raised LinAlgError; several event and label edges crashed or
were accepted.

Then (review): the checks ran in full on every `compare` (``keystroke-fused`` built two member
scorers and called ``inspect.signature`` per call, ~40 us on the payment path); now parameter
names are introspected once per class and enrol/compare re-check only parameters that changed.
Gait units were guessed per window (median |a| in (0.3, 3) meant g): a tossed phone or a
gravity-removed stream was multiplied by 9.81; now such a window is refused, and g is converted
only on the caller's word (``to_ms2(xyz, units="g")``).
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import math
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

import modalities.gait.scorers
import modalities.keystroke.detectors
import modalities.keystroke.learned
import modalities.touch.scorers  # noqa: F401  (registers the scorers)
from modalities.base import (
    ModelVersionError,
    ParamsMixin,
    ScaledManhattan,
    Scorer,
    ScorerDetector,
    real,
    registered_scorers,
)
from modalities.events import AccelSeries, EventValidationError, KeyEvent, KeySequence
from modalities.gait.features import FEATURE_DIM as GAIT_DIM
from modalities.gait.features import window_features as gait_window
from modalities.gait.scorers import FUSION_VIEWS, GaitFusion, GaitLDA
from modalities.gait.signal import G, resample, to_ms2
from modalities.keystroke.detectors import (
    ManhattanScaledDetector,
    NearestNeighbourMahalanobisDetector,
    OneClassSVMDetector,
    OutlierCountDetector,
)
from modalities.keystroke.features import FEATURE_DIM as KEYSTROKE_DIM
from modalities.keystroke.features import windows_for_subject as keystroke_windows
from modalities.keystroke.learned import BackgroundSVMScorer, FusedScorer, LikelihoodRatioScorer
from modalities.touch.features import FEATURE_DIM as TOUCH_DIM
from modalities.touch.scorers import BackgroundLR, FusedTouch, PLDATouch, TouchKNN, TouchManhattan, TouchOneClassSVM
from tests.modalities.gait_synth import person, walk

DIMS = {"keystroke": KEYSTROKE_DIM, "touch": TOUCH_DIM, "gait": GAIT_DIM, "any": 10}
SCORERS = registered_scorers()
NAMES = sorted(n for n, c in SCORERS.items() if c.__module__.startswith("modalities."))
POPULATION = {n for n in NAMES if SCORERS[n].fit is not Scorer.fit}
SUBJECTS = np.repeat(np.arange(6), 30)


def _data(modality: str) -> np.ndarray:
    return np.abs(np.random.default_rng(0).normal(0.2, 0.05, (SUBJECTS.size, DIMS[modality])))


def _train(scorer: Scorer) -> Any:
    """What makes `scorer` use its parameters: fit (population-trained) or enrol (one-class)."""
    X = _data(scorer.modality)
    if type(scorer).name in POPULATION:
        return scorer.fit(X, SUBJECTS)
    return scorer.enroll(X[:30])


# --------------------------------------------------------------------------- parameter checks


BAD_PARAMS = [
    (TouchKNN, {"k": 0}, "k"),
    (TouchKNN, {"k": "5"}, "k"),
    (TouchKNN, {"k": 2.5}, "k"),
    (LikelihoodRatioScorer, {"cohort_per_subject": 0}, "cohort_per_subject"),
    (LikelihoodRatioScorer, {"shrinkage": 1.5}, "shrinkage"),
    (LikelihoodRatioScorer, {"znorm": "yes"}, "znorm"),
    (ManhattanScaledDetector, {"min_scale": math.nan}, "min_scale"),
    (ManhattanScaledDetector, {"min_scale": None}, "min_scale"),
    (ManhattanScaledDetector, {"min_scale": "0.005"}, "min_scale"),
    (ManhattanScaledDetector, {"min_scale": -1.0}, "min_scale"),
    (ManhattanScaledDetector, {"min_scale": math.inf}, "min_scale"),
    (OutlierCountDetector, {"z": math.nan}, "z"),
    (OneClassSVMDetector, {"nu": 0.0}, "nu"),
    (OneClassSVMDetector, {"gamma": -1.0}, "gamma"),
    (BackgroundSVMScorer, {"background": "late"}, "background"),
    (BackgroundSVMScorer, {"C": 0}, "C"),
    (FusedScorer, {"llr": {"cohort_per_subject": 0}}, "llr"),
    (FusedScorer, {"svm": {"bogus": 1}}, "svm"),
    (FusedScorer, {"weight_llr": math.nan}, "weight_llr"),
    (TouchManhattan, {"min_scale": 0}, "min_scale"),
    (TouchOneClassSVM, {"gamma": None}, "gamma"),
    (BackgroundLR, {"seed": -1}, "seed"),
    (PLDATouch, {"n_components": 0}, "n_components"),
    (FusedTouch, {"seed": "0"}, "seed"),
    (ScaledManhattan, {"min_scale": 0}, "min_scale"),
    (GaitLDA, {"blocks": "inv"}, "blocks"),
    (GaitLDA, {"blocks": ["inv", "bogus"]}, "blocks"),
    (GaitLDA, {"template": "mean"}, "template"),
    (GaitLDA, {"snorm": 1}, "snorm"),
    (GaitLDA, {"z_top": 0}, "z_top"),
    (GaitFusion, {"views": "all"}, "views"),
    (GaitFusion, {"views": {}}, "views"),
    (GaitFusion, {"views": {"a": [["inv"], 0]}}, "views"),
]


@pytest.mark.parametrize(("cls", "params", "field"), BAD_PARAMS,
                         ids=[f"{c.__name__}-{p}" for c, p, _ in BAD_PARAMS])
def test_bad_params_are_a_value_error_naming_the_parameter_when_used(cls: type[Scorer], params: dict[str, Any],
                                                                     field: str) -> None:
    scorer = cls(**params)  # __init__ only stores (scikit-learn's contract)
    with pytest.raises(ValueError, match=f"parameter '{field}'"):
        _train(scorer)


def test_bad_params_set_after_fitting_are_refused_at_compare() -> None:
    X = _data("touch")
    knn = TouchKNN()
    template = knn.enroll(X[:30])
    knn.set_params(k=0)
    with pytest.raises(ValueError, match="parameter 'k'"):
        knn.compare(template, X[30:35])


def test_fused_scorer_names_the_member_parameter() -> None:
    with pytest.raises(ValueError) as e:
        FusedScorer(llr={"cohort_per_subject": 0}).fit(_data("keystroke"), SUBJECTS)
    assert "'llr'" in str(e.value) and "cohort_per_subject" in str(e.value)


def test_bad_params_are_refused_before_writing_a_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="parameter 'k'"):
        TouchKNN(k=0).save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    """Every scorer fitted (population-trained ones) and saved once: file and arrays."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name in NAMES:
        scorer = SCORERS[name]()
        if name in POPULATION:
            scorer.fit(_data(scorer.modality), SUBJECTS)
        path = root / f"{name}.npz"
        scorer.save(path)
        with np.load(path) as z:
            out[name] = (path, dict(z))
    return out


def _rewrite(path: Path, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> Path:
    meta = json.loads(str(arrays["__meta__"]))
    meta["params"] = params
    with open(path, "wb") as fh:
        np.savez(fh, **{**arrays, "__meta__": np.array(json.dumps(meta))})  # type: ignore[arg-type]
    return path


#: values no parameter of any scorer accepts (JSON writes NaN, and reads it back)
JUNK: tuple[Any, ...] = ({"junk": [1]}, math.nan, "5", -1, [[]])


@pytest.mark.parametrize("name", NAMES)
def test_tampered_saved_params_are_a_model_version_error_naming_the_field(
        name: str, saved: dict[str, tuple[Path, dict[str, np.ndarray]]], tmp_path: Path) -> None:
    path, arrays = saved[name]
    params = json.loads(str(arrays["__meta__"]))["params"]
    assert isinstance(Scorer.load(path), SCORERS[name])
    bad = tmp_path / "bad.npz"
    assert params, name
    for field in params:
        for junk in JUNK:
            _rewrite(bad, arrays, {**params, field: junk})
            with pytest.raises(ModelVersionError) as e:
                Scorer.load(bad)
            assert str(bad) in str(e.value) and repr(field) in str(e.value), (field, junk, str(e.value))


@pytest.mark.parametrize(("name", "field", "value"), [
    ("gait-fusion", "views", "all"),
    ("keystroke-manhattan-scaled", "min_scale", math.nan),
    ("keystroke-manhattan-scaled", "min_scale", None),
    ("keystroke-manhattan-scaled", "min_scale", "0.005"),
    ("touch-knn", "k", "5"),
    ("touch-knn", "k", 0),
    ("keystroke-fused", "llr", {"cohort_per_subject": 0}),
    ("gait-lda", "blocks", ["inv", "inv"]),
])
def test_the_reported_tampered_files_are_refused(name: str, field: str, value: Any, tmp_path: Path,
                                                 saved: dict[str, tuple[Path, dict[str, np.ndarray]]]) -> None:
    path, arrays = saved[name]
    params = json.loads(str(arrays["__meta__"]))["params"]
    bad = _rewrite(tmp_path / "bad.npz", arrays, {**params, field: value})
    with pytest.raises(ModelVersionError, match=f"saved parameter '{field}'"):
        Scorer.load(bad)


def test_params_as_earlier_versions_wrote_them_still_load(saved: dict[str, tuple[Path, dict[str, np.ndarray]]],
                                                          tmp_path: Path) -> None:
    path, arrays = saved["keystroke-fused"]
    old = {"llr": {}, "svm": {}, "weight_llr": 1.0}
    assert isinstance(Scorer.load(_rewrite(tmp_path / "f.npz", arrays, old)), FusedScorer)
    path, arrays = saved["gait-fusion"]
    params = json.loads(str(arrays["__meta__"]))["params"]
    assert params["views"] == {k: [list(b), n] for k, (b, n) in FUSION_VIEWS.items()}  # resolved, as before
    loaded = Scorer.load(path)
    X = _data("gait")
    original = SCORERS["gait-fusion"]().fit(X, SUBJECTS)
    np.testing.assert_allclose(loaded.compare(loaded.enroll(X[:30]), X[30:40]),
                               original.compare(original.enroll(X[:30]), X[30:40]))


# --------------------------------------------------------------------------- scikit-learn contract


@pytest.mark.parametrize("name", NAMES)
def test_clone_and_get_params_follow_scikit_learn(name: str) -> None:
    cls = SCORERS[name]
    scorer = cls()
    params = scorer.get_params(deep=False)
    assert set(params) == set(cls._get_param_names()) == set(cls._param_checks)
    assert scorer.get_params() == params  # no nested estimators
    twin = clone(scorer)
    assert type(twin) is cls and twin is not scorer and twin.get_params(deep=False) == params


@pytest.mark.parametrize("name", NAMES)
def test_set_params_sets_known_names_and_refuses_unknown_ones(name: str) -> None:
    scorer = SCORERS[name]()
    key, value = sorted(scorer.get_params().items())[0]
    assert scorer.set_params(**{key: value}) is scorer
    with pytest.raises(ValueError, match="Invalid parameter 'bogus'"):
        scorer.set_params(bogus=1)


def test_clone_of_a_fitted_scorer_is_unfitted_and_set_params_reaches_fit() -> None:
    X = _data("keystroke")
    fitted = LikelihoodRatioScorer(cohort_per_subject=5).fit(X, SUBJECTS)
    twin = clone(fitted)
    assert twin.cohort_per_subject == 5 and not hasattr(twin, "mu_")
    twin.set_params(cohort_per_subject=3).fit(X, SUBJECTS)
    assert twin.cohort_.shape[0] == 3 * 6
    gf = GaitFusion(views={"a": (("inv",), 10)})
    gf.set_params(views={"b": [["raw"], 8]}).fit(_data("gait"), SUBJECTS)
    assert list(gf.members_) == ["b"]


def test_scorer_detector_clones_with_its_scorer_and_refuses_typos() -> None:
    scorer = ManhattanScaledDetector(min_scale=0.01)
    det = ScorerDetector(scorer=scorer)
    twin = clone(det)
    assert isinstance(twin.scorer, ManhattanScaledDetector) and twin.scorer is not scorer
    assert twin.scorer.min_scale == 0.01
    assert det.get_params()["scorer__min_scale"] == 0.01 and "scorer__min_scale" not in det.get_params(deep=False)
    det.set_params(scorer__min_scale=0.02, contamination=0.1)
    assert scorer.min_scale == 0.02 and det.contamination == 0.1
    with pytest.raises(ValueError, match="contamnation"):
        ScorerDetector().set_params(contamnation=0.2)
    with pytest.raises(ValueError, match="parameter 'contamination'"):
        ScorerDetector(contamination=0.9).fit(_data("any"))


def _expected_failures(est: ScorerDetector) -> dict[str, str]:
    if isinstance(est.scorer, OutlierCountDetector):
        return {"check_outliers_train": "integer outlier counts tie, so the contamination quantile flags none"}
    return {}


with warnings.catch_warnings():  # "does not inherit from BaseEstimator": on purpose (base.py imports no sklearn)
    warnings.simplefilter("ignore", UserWarning)
    _SKLEARN_CHECKS = parametrize_with_checks(
        [ScorerDetector(), ScorerDetector(ScaledManhattan(min_scale=0.01), contamination=0.1),
         ScorerDetector(ManhattanScaledDetector()), ScorerDetector(OutlierCountDetector()),
         ScorerDetector(NearestNeighbourMahalanobisDetector()), ScorerDetector(OneClassSVMDetector())],
        expected_failed_checks=_expected_failures)


@_SKLEARN_CHECKS
def test_scorer_detector_passes_scikit_learn_checks(estimator: Any, check: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "does not inherit from BaseEstimator": on purpose
        check(estimator)


# --------------------------------------------------------------------------- gait units


def test_gait_window_in_g_is_refused_saying_how_to_convert_and_converts_on_the_callers_word() -> None:
    s = walk(person(1), 10, 100.0)
    ms2 = gait_window(s)
    in_g = AccelSeries(s.t, s.xyz / G)
    with pytest.raises(EventValidationError) as e:
        gait_window(in_g)
    assert e.value.field == "xyz"
    assert "m/s^2 including gravity" in e.value.message and "TYPE_ACCELEROMETER" in e.value.message
    assert "9.80665" in e.value.message
    converted = gait_window(AccelSeries(in_g.t, to_ms2(in_g.xyz, units="g")))
    assert converted.quality == ms2.quality > 0.8
    np.testing.assert_allclose(converted.values, ms2.values, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(to_ms2(s.xyz), s.xyz)  # m/s^2 (the default): checked, unchanged
    with pytest.raises(ValueError, match="units"):
        to_ms2(s.xyz, units="mg")


def _review_windows() -> dict[str, AccelSeries]:
    """The reviewer's 5 s windows at 50 Hz (m/s^2 unless said otherwise)."""
    rng = np.random.default_rng(0)
    n = 250
    t = np.arange(n) / 50
    rest = np.c_[rng.normal(0, .05, n), rng.normal(0, .05, n), 9.81 + rng.normal(0, .05, n)]
    vib = rest + np.c_[np.zeros(n), np.zeros(n), 6 * np.sin(2 * np.pi * 23 * t)]
    fall = rest.copy()
    fall[:150] = rng.normal(0, 0.4, (150, 3))  # 3 s of 5 s near free fall (tossed or dropped, tumbling)
    lin = rng.normal(0, 1.2, (n, 3))  # gravity-removed "linear acceleration" while walking
    return {"rest": AccelSeries(t, rest), "vibrating table": AccelSeries(t, vib),
            "60% free fall": AccelSeries(t, fall), "linear acceleration": AccelSeries(t, lin)}


@pytest.mark.parametrize("name", ["60% free fall", "linear acceleration"])
def test_gait_window_that_only_looks_like_g_is_refused_not_multiplied(name: str) -> None:
    series = _review_windows()[name]
    for call in (lambda: to_ms2(series.xyz), lambda: resample(series), lambda: gait_window(series)):
        with pytest.raises(EventValidationError) as e:
            call()
        assert e.value.field == "xyz" and "gravity" in e.value.message


@pytest.mark.parametrize("name", ["rest", "vibrating table"])
def test_gait_window_in_m_s2_is_taken_as_it_is(name: str) -> None:
    series = _review_windows()[name]
    np.testing.assert_array_equal(to_ms2(series.xyz), series.xyz)
    assert gait_window(series).values.shape == (GAIT_DIM,)


@pytest.mark.parametrize("factor", [100.0, 1e6, 1e155, 1e300])
def test_gait_window_of_implausible_magnitude_is_refused_naming_units(factor: float) -> None:
    s = walk(person(1), 10, 100.0)
    with pytest.raises(EventValidationError) as e:
        gait_window(AccelSeries(s.t, s.xyz * factor))
    assert e.value.field == "xyz" and "units" in e.value.message


def test_gait_reading_beyond_any_sensor_is_refused_not_a_linalg_error() -> None:
    s = walk(person(1), 10, 100.0)
    xyz = s.xyz.copy()
    xyz[5, 1] = 1e200
    with pytest.raises(EventValidationError) as e:
        gait_window(AccelSeries(s.t, xyz))
    assert e.value.field == "xyz" and "index 5" in e.value.message


# --------------------------------------------------------------------------- cost of the checks on the scoring path


def _enrolled(name: str, params: dict[str, Any] | None = None,
              saved_in: Path | None = None) -> tuple[Scorer, dict[str, np.ndarray], np.ndarray]:
    """A scorer (fitted if population-trained, and read back from a file in `saved_in` if given), a template, probes."""
    scorer = SCORERS[name](**(params or {}))
    if name in POPULATION:
        scorer.fit(_data(scorer.modality), SUBJECTS)
    if saved_in is not None:
        scorer.save(saved_in / f"{name}.npz")
        scorer = Scorer.load(saved_in / f"{name}.npz")
    X = _data(scorer.modality)
    return scorer, scorer.enroll(X[:30]), X[30:32]


def test_param_names_are_introspected_once_per_class(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    signature = inspect.signature

    def counting(obj: Any, *args: Any, **kwargs: Any) -> inspect.Signature:
        calls.append(obj)
        return signature(obj, *args, **kwargs)

    class Fresh(ScaledManhattan):  # a class of its own: nothing cached for it yet
        _param_checks = {"min_scale": real(gt=0), "extra": real(ge=0)}

        def __init__(self, min_scale: float = 1e-3, extra: float = 0.0) -> None:
            super().__init__(min_scale)
            self.extra = extra

    monkeypatch.setattr(inspect, "signature", counting)
    fresh = Fresh()
    X = _data("any")
    for _ in range(3):
        assert Fresh._get_param_names() == ["extra", "min_scale"]
        assert set(fresh.get_params()) == {"extra", "min_scale"}
        fresh.set_params(extra=1.0)
        fresh.compare(fresh.enroll(X[:10]), X[10:12])
    assert len(calls) == 1


#: every scorer as a fresh clone has it, plus members' parameters as a model file gives them
#: (``keystroke-fused`` checked them by building both members, per call)
AS_SERVED = [(n, None) for n in NAMES] + [
    ("keystroke-fused", {"llr": {}, "svm": {}}),
    ("keystroke-fused", {"llr": {"shrinkage": 0.2}, "svm": {"C": 2.0}, "weight_llr": 0.5}),
    ("gait-fusion", {"views": {"a": [["inv", "cycle"], 20], "b": [["raw"], 10]}}),
    ("gait-lda", {"blocks": ["inv", "raw"], "template": "logreg"}),
]


@pytest.mark.parametrize(("name", "params"), AS_SERVED, ids=[f"{n}-{p}" if p else n for n, p in AS_SERVED])
def test_compare_builds_no_scorer_and_runs_no_parameter_check_while_parameters_stay(
        name: str, params: dict[str, Any] | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scorer, template, probe = _enrolled(name, params, saved_in=tmp_path)
    scorer.compare(template, probe)
    built: list[type] = []
    checked: list[type] = []
    signatures: list[Any] = []
    validate, signature = ParamsMixin._validate_params, inspect.signature

    def counting_init(init: Any) -> Any:
        @functools.wraps(init)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
            built.append(type(self))
            init(self, *args, **kwargs)
        return wrapper

    def counting_validate(self: ParamsMixin) -> None:
        checked.append(type(self))
        validate(self)

    def counting_signature(obj: Any, *args: Any, **kwargs: Any) -> inspect.Signature:
        signatures.append(obj)
        return signature(obj, *args, **kwargs)

    for cls in {c for scorer_cls in SCORERS.values() for c in scorer_cls.__mro__ if "__init__" in vars(c)}:
        if issubclass(cls, ParamsMixin):  # every scorer's constructor, members' included
            monkeypatch.setattr(cls, "__init__", counting_init(vars(cls)["__init__"]))
    monkeypatch.setattr(ParamsMixin, "_validate_params", counting_validate)
    monkeypatch.setattr(inspect, "signature", counting_signature)
    for _ in range(3):
        scorer.compare(template, probe)
    assert (built, checked, signatures) == ([], [], [])


def _noop(scorer: Scorer) -> Any:
    return scorer


@pytest.mark.parametrize(("name", "valid", "change", "field"), [
    ("touch-knn", _noop, lambda s: setattr(s, "k", 0), "k"),  # attribute assignment, as scikit-learn allows
    ("touch-knn", _noop, lambda s: s.set_params(k="5"), "k"),
    ("keystroke-manhattan-scaled", _noop, lambda s: setattr(s, "min_scale", math.nan), "min_scale"),
    ("keystroke-fused", _noop, lambda s: s.set_params(weight_llr=-1.0), "weight_llr"),
    # a dict or list parameter that passed, then edited in place
    ("keystroke-fused", lambda s: s.set_params(llr={"shrinkage": 0.2}), lambda s: s.llr.update(shrinkage=2.0), "llr"),
    ("gait-fusion", lambda s: s.set_params(views={"a": [["inv"], 5]}), lambda s: s.views["a"][0].append("bogus"),
     "views"),
    ("gait-lda", _noop, lambda s: setattr(s, "t_top", 0.0), "t_top"),
    ("touch-fused", _noop, lambda s: setattr(s, "seed", -1), "seed"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_bad_value_set_after_scoring_is_refused_at_the_next_compare(name: str, valid: Any, change: Any,
                                                                     field: str) -> None:
    scorer, template, probe = _enrolled(name)
    valid(scorer)
    expected = scorer.compare(template, probe)
    np.testing.assert_array_equal(scorer.compare(template, probe), expected)
    change(scorer)
    with pytest.raises(ValueError, match=f"parameter '{field}'"):
        scorer.compare(template, probe)
    with pytest.raises(ValueError, match=f"parameter '{field}'"):
        scorer.enroll(_data(scorer.modality)[:30])


def test_copies_check_their_parameters_afresh_and_the_memo_is_not_state() -> None:
    scorer, template, probe = _enrolled("touch-knn")
    assert isinstance(scorer, TouchKNN)
    before = pickle.dumps(scorer)
    scorer.compare(template, probe)
    assert pickle.dumps(scorer) == before  # the memo of checked values is a cache, not pickled
    twins: list[TouchKNN] = [copy.deepcopy(scorer), pickle.loads(before), copy.copy(scorer)]
    for twin in twins:
        twin.k = 0
        with pytest.raises(ValueError, match="parameter 'k'"):
            twin.compare(template, probe)


# --------------------------------------------------------------------------- input edges


def test_one_class_keystroke_detectors_enrol_from_lists() -> None:
    X = _data("keystroke")[:10]
    for det in (ManhattanScaledDetector(), OutlierCountDetector(), NearestNeighbourMahalanobisDetector()):
        a, b = det.enroll(X.tolist()), det.enroll(X)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("scorer", [LikelihoodRatioScorer(), BackgroundLR(), PLDATouch(n_components=3),
                                    GaitLDA(n_pca=10, n_lda=3)], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("bad", ["nan", "none"])
def test_missing_subject_labels_are_refused(scorer: Scorer, bad: str) -> None:
    y: np.ndarray = SUBJECTS.astype(float)
    if bad == "none":
        y = y.astype(object)
        y[7] = None
    else:
        y[7] = np.nan
    with pytest.raises(EventValidationError) as e:
        scorer.fit(_data(scorer.modality), y)
    assert e.value.field == "subjects" and "index 7" in e.value.message


def _typed(n: int = 60) -> KeySequence:
    t = np.arange(n) * 0.2
    return KeySequence(np.array(list("abcdefghij" * (n // 10)), dtype=object), t, t + 0.08)


def test_keystroke_windows_need_whole_numbers_of_keys() -> None:
    with pytest.raises(EventValidationError) as e:
        keystroke_windows(_typed(), 2.5)  # type: ignore[arg-type]
    assert e.value.field == "n_keys"
    with pytest.raises(EventValidationError) as e:
        keystroke_windows(_typed(), 20, 1.5)  # type: ignore[arg-type]
    assert e.value.field == "hop"
    assert len(keystroke_windows(_typed(), np.int64(20))) == 5  # type: ignore[arg-type]  # numpy ints pass


@pytest.mark.parametrize("key", ["", None, 3, 1.5])
def test_key_sequence_refuses_keys_key_event_refuses(key: Any) -> None:
    with pytest.raises(EventValidationError):
        KeyEvent(key, 0.0, 0.1)
    with pytest.raises(EventValidationError) as e:
        KeySequence(np.array(["a", key], dtype=object), np.array([0.0, 0.2]), np.array([0.1, 0.3]))
    assert e.value.field == "keys" and "index 1" in e.value.message


def test_times_given_as_strings_are_refused() -> None:
    with pytest.raises(EventValidationError) as e:
        KeySequence(["a", "b"], ["0.0", "0.2"], [0.1, 0.3])  # type: ignore[arg-type]  # what a caller may pass
    assert e.value.field == "press"
    with pytest.raises(EventValidationError) as e:
        KeySequence(np.array(["a", "b"], dtype=object), np.array([0.0, "0.2"], dtype=object), np.array([0.1, 0.3]))
    assert e.value.field == "press"
    with pytest.raises(EventValidationError) as e:
        KeyEvent("a", "0.0", 0.1)  # type: ignore[arg-type]
    assert e.value.field == "press"


def test_a_hard_walk_with_gravity_filtered_out_is_refused_though_its_median_passes() -> None:
    """Linear acceleration of a vigorous walk has a median |a| of 3-6 m/s^2: it passed as m/s^2 with gravity."""
    from scipy.signal import butter, sosfiltfilt

    from modalities.gait.signal import MIN_MEDIAN_ACCEL, gravity_estimate

    s = walk(person(1), 20, 100.0)
    linear = s.xyz - sosfiltfilt(butter(2, 0.3, fs=100.0, output="sos"), s.xyz, axis=0)
    vigorous = linear * (1.5 * MIN_MEDIAN_ACCEL / np.median(np.linalg.norm(linear, axis=1)))  # median |a| 4.5
    assert np.median(np.linalg.norm(vigorous, axis=1)) > MIN_MEDIAN_ACCEL  # the old check let it through
    for call in (lambda: to_ms2(vigorous), lambda: gait_window(AccelSeries(s.t, vigorous))):
        with pytest.raises(EventValidationError) as e:
            call()
        assert e.value.field == "xyz" and "gravity-removed" in e.value.message
    assert 9.0 < gravity_estimate(s.xyz) < 10.6  # the walk itself, gravity in it, is taken as it is
    np.testing.assert_array_equal(to_ms2(s.xyz), s.xyz)
