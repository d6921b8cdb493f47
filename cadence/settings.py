"""All settings in one place, read from ``CADENCE_*`` environment variables or a ``.env`` file.

Nothing is read at import time: call `get_settings()` (cached) where a setting is needed, and
override it in tests with `get_settings.cache_clear()` plus environment variables or by
passing a `Settings` object explicitly.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CADENCE_", env_file=".env", extra="ignore")

    #: folder with the datasets (layout of ../shared/datasets); None = not available
    data_dir: Path | None = None
    #: where parsed datasets are cached
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "cadence")
    #: SQLAlchemy URL; SQLite file is the embedded default
    database_url: str = "sqlite:///./cadence.sqlite"
    #: where versioned models live (federated training writes here, the server reads)
    model_registry: Path = Path("model-registry")
    host: str = "127.0.0.1"
    port: int = 8000
    environment: str = "development"


@lru_cache
def get_settings() -> Settings:
    return Settings()
