"""The scorer provider's memo must not freeze the package fallback (module docstring promise)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from server.services import scoring


def test_a_modality_package_landing_later_is_served_without_restart_with_a_registry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """"a server started before a modality package ... picks it up without a restart" (scoring.py).

    With a registry configured but no ACTIVE for the modality, the first call memoises the
    generic 'fallback' key; a package that lands afterwards must still be served next call.
    """
    from modalities.base import ScaledManhattan

    landed: dict[str, object] = {}
    pkg = SimpleNamespace(FEATURE_VERSION="x1", FEATURE_DIM=3, window_features=None,
                          default_scorer=lambda: ScaledManhattan(min_scale=0.01))
    monkeypatch.setattr(scoring, "modality_package", lambda m: landed.get(m))
    (tmp_path / "registry").mkdir()
    provider = scoring.ScorerProvider(tmp_path / "registry")
    assert provider.get("gait").model_id == "fallback:manhattan-scaled"
    landed["gait"] = pkg  # the package is installed while the server runs
    assert provider.get("gait").model_id.startswith("default:")


def test_same_without_a_registry_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    from modalities.base import ScaledManhattan

    landed: dict[str, object] = {}
    pkg = SimpleNamespace(FEATURE_VERSION="x1", FEATURE_DIM=3, window_features=None,
                          default_scorer=lambda: ScaledManhattan(min_scale=0.01))
    monkeypatch.setattr(scoring, "modality_package", lambda m: landed.get(m))
    provider = scoring.ScorerProvider(None)
    assert provider.get("gait").model_id == "fallback:manhattan-scaled"
    landed["gait"] = pkg
    assert provider.get("gait").model_id.startswith("default:")
