"""Population scorers take subject labels of shape (n,) only; a column or a scalar is refused with its shape.

A column (n, 1) of labels would broadcast against the windows (`labels == s` is an (n, n) mask),
and a scalar has no length: each is a clear error naming `subjects`, as the keystroke scorers give.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from modalities.events import EventValidationError
from modalities.gait import FEATURE_DIM as GAIT_DIM
from modalities.gait import GaitLDA
from modalities.touch import FEATURE_DIM as TOUCH_DIM
from modalities.touch.scorers import BackgroundLR, FusedTouch, PLDATouch, QuadBackgroundLR

N = 60


def _labels() -> np.ndarray:
    return np.repeat(np.arange(6), N // 6)


@pytest.mark.parametrize("make", [PLDATouch, BackgroundLR, QuadBackgroundLR, FusedTouch, lambda: GaitLDA(n_pca=20)],
                         ids=["plda", "background-lr", "background-qlr", "fused", "gait-lda"])
@pytest.mark.parametrize(("labels", "shape"), [(_labels()[:, None], "(60, 1)"), (np.int64(3), "()"),
                                               (_labels()[:-1], "(59,)")], ids=["column", "scalar", "short"])
def test_population_fit_refuses_labels_not_of_shape_n(make: Any, labels: Any, shape: str) -> None:
    scorer = make()
    dim = GAIT_DIM if isinstance(scorer, GaitLDA) else TOUCH_DIM
    X = np.random.default_rng(0).normal(size=(N, dim))
    said = rf"need one label per window \(60\), got shape {re.escape(shape)}$"
    with pytest.raises(EventValidationError, match=said) as e:
        scorer.fit(X, labels)
    assert e.value.field == "subjects"
