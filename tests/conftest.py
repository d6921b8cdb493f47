"""Shared fixtures: the data folder, an isolated cache, temp homes for Kivy and Flower."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared datasets folder (``CADENCE_DATA_DIR``); tests that need it skip without it."""
    d = os.environ.get("CADENCE_DATA_DIR")
    if not d:
        pytest.skip("CADENCE_DATA_DIR is not set: tests on the real datasets are skipped")
    p = Path(d)
    if not p.is_dir():
        pytest.skip(f"CADENCE_DATA_DIR={d} is not a folder: tests on the real datasets are skipped")
    return p


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the parse cache of a test run out of the user's home unless one is configured."""
    if "CADENCE_CACHE_DIR" not in os.environ:
        os.environ["CADENCE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cadence-cache"))


@pytest.fixture(scope="session", autouse=True)
def _nothing_written_where_the_tests_run() -> Iterator[None]:
    """No test may leave the embedded default database (./cadence.sqlite) where the suite runs.

    A command run with the default settings writes it into the working directory: a test that
    forgets its own `CADENCE_DATABASE_URL` (or a cached `get_settings`) would audit into the
    checkout. Fails the run's last test when one did.
    """
    stray = Path.cwd() / "cadence.sqlite"
    before = stray.exists()
    yield
    if not before and stray.exists():
        pytest.fail(f"a test wrote {stray}: it must use a database of its own (CADENCE_DATABASE_URL, "
                    "get_settings.cache_clear())", pytrace=False)

