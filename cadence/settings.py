"""All settings in one place, read from ``CADENCE_*`` environment variables or a ``.env`` file.

Nothing is read at import time: call `get_settings()` where a setting is needed, and override
it in tests with `get_settings.cache_clear()` plus environment variables or by passing a
`Settings` object explicitly. A server app binds the `Settings` it was built with around all it
runs (`bind_settings`), so code deep in a request (audit pseudonyms, the retention policy, the
holders) reads that app's settings, not the process's.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: the longest session period a setting may name (larger ones overflowed date arithmetic: 500s)
_TEN_YEARS_S = 10 * 365 * 86_400.0


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
    port: int = Field(default=8000, ge=1, le=65535)
    #: server: uvicorn worker processes for `cadence serve` (SQLite WAL serialises writers)
    api_workers: int = Field(default=1, ge=1, le=256)
    #: server: threads per worker running the (synchronous) request handlers; more only adds
    #: GIL contention and database connections, since SQLite serialises writers anyway
    api_threads: int = Field(default=8, ge=1, le=256)
    #: server: checkpoint the SQLite WAL from a background thread, not in request commits (server/sqlite_writers.py)
    sqlite_background_checkpoint: bool = True
    #: server: run the authorize handler on the event loop (None = when the database is SQLite)
    api_inline_handlers: bool | None = None
    #: server: pin each worker process of a multi-worker `cadence serve` to a CPU of its own
    #: (Linux; server/affinity.py). For hosts whose cores serve the API alone
    api_pin_workers: bool = False
    environment: str = "development"
    #: server: API keys -> scopes ("bank", "admin"); the defaults are development keys,
    #: refused outside development (set CADENCE_API_KEYS='{"<secret>": ["bank"]}')
    api_keys: dict[str, list[str]] = Field(default_factory=lambda: {"dev-bank-key": ["bank"],
                                                                    "dev-admin-key": ["admin", "bank"]})
    #: server: Ed25519 seed (base64url, 32 bytes) signing decision tokens; None = a key made
    #: at start-up (development only: tokens do not verify across restarts)
    server_signing_key: str | None = None
    #: server: device requests must carry an Ed25519 signature (off only in unit tests)
    require_signed_requests: bool = True
    #: server: allowed clock skew for signed requests, seconds (older = stale, refused)
    signature_max_skew_s: int = Field(default=300, ge=1)
    #: server: largest request body accepted, bytes
    max_body_bytes: int = Field(default=262_144, gt=0)
    #: server: requests per second a device may make (token bucket of twice that; 429 beyond);
    #: 0 = no limit (server/services/devices.py RateLimiter)
    device_rate_per_s: float = Field(default=50.0, ge=0, allow_inf_nan=False)
    #: server: Redis holding the rate budgets above, shared by every worker and instance
    #: (redis://, rediss:// or unix://; server/services/shared_limits.py). Empty: each process
    #: keeps its own budgets (so N workers allow N times the rate)
    rate_limit_redis_url: str = ""
    #: server: apply the retention policy every this many seconds, in one worker per database
    #: (server/retention_schedule.py); 0 = off, when `cadence compliance purge` runs from cron instead
    purge_interval_s: float = Field(default=86_400.0, ge=0, allow_inf_nan=False)
    #: server: addresses of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed
    #: (comma-separated, e.g. "10.0.0.5"; "*" for any). Empty: the client address is the TCP
    #: peer's, so a client cannot pick the address its refused requests are charged to
    forwarded_allow_ips: str = ""
    #: server: consecutive failed authentications before the user is locked (PSD2 RTS Art. 4)
    lockout_failures: int = Field(default=5, ge=1)
    #: server: the currencies `authorize` accepts, each with how many EUR one unit counts as when
    #: its amount picks a tier of fusion/policy.yaml (whose bands are EUR); any other currency is
    #: 422 `unsupported_currency`. The defaults are rough and rounded up, so a payment is never put
    #: in a lower tier than its value in EUR; a bank sets its own (JSON, e.g. {"EUR": 1, "CHF": 1.1})
    tier_currency_rates: dict[str, float] = Field(default_factory=lambda: {"EUR": 1.0, "GBP": 1.2, "USD": 1.0})
    #: server: continuous sessions' risk: the mean LLR of the last `session_window` windows,
    #: stepped up from `session_step_up_risk` and ended from `session_terminate_risk` (the one
    #: place these are set: both session engines read them; a tracker-engine session keeps those it opened with)
    session_window: int = Field(default=5, ge=1, le=1000)
    #: above 0.5, the risk of a session before any evidence: at or below it every session would be
    #: held in step-up before its first window (and the stored fresh state could not be read back)
    session_step_up_risk: float = Field(default=0.6, gt=0.5, lt=1.0)
    session_terminate_risk: float = Field(default=0.9, gt=0.0, lt=1.0)
    #: server: sessions a user may open per hour (429 `too_many_sessions` beyond): each one is a
    #: status oracle for whoever holds the device key
    session_max_per_hour: int = Field(default=12, ge=1)
    #: server: a session opened within this many seconds after another of the user's sessions was
    #: terminated, or left in step-up, starts in step-up (the bank's step-up clears it); 0 = off
    session_hold_s: float = Field(default=3600.0, ge=0, le=_TEN_YEARS_S, allow_inf_nan=False)
    #: server: a session with no window for this long, or open for this long, expires (409 `session_expired`)
    session_idle_timeout_s: float = Field(default=1800.0, gt=0, le=_TEN_YEARS_S, allow_inf_nan=False)
    session_max_lifetime_s: float = Field(default=43_200.0, gt=0, le=_TEN_YEARS_S, allow_inf_nan=False)
    #: server: enrolment quality gate (per modality)
    enrol_min_windows: int = Field(default=3, ge=1)
    enrol_min_quality: float = Field(default=0.05, ge=0.0, le=1.0)
    #: server: fitted score calibration (fusion.engine.FusionEngine JSON); None = look for
    #: fusion-calibration.json in the model registry; without one every score is left out
    #: of decisions (reason `uncalibrated`) and they step up
    fusion_calibration: Path | None = None
    #: compliance: secret key of the audit log's pseudonyms (HMAC-SHA256 of user ids), base64 or
    #: a path to a file holding it; None = a development key, refused outside development
    audit_hmac_key: str | None = None
    #: compliance: Ed25519 private key (raw 32-byte seed, base64, or a PEM file path) that signs
    #: audit checkpoints; None = a development key, refused outside development
    audit_signing_key: str | None = None
    #: compliance: extra Ed25519 public keys (base64, comma-separated) accepted for old seals
    audit_public_keys: str = ""
    #: compliance: retention policy YAML; None = the default shipped in compliance/retention.yaml
    retention_policy: Path | None = None
    #: compliance: modules imported so they register their data holders (export/erase/purge)
    holder_modules: list[str] = Field(default_factory=lambda: ["server.holders"])

    @field_validator("model_registry", mode="before")
    @classmethod
    def _registry_named(cls, v: object) -> object:
        """An empty CADENCE_MODEL_REGISTRY would be the current folder: models published into whatever folder runs it."""
        if isinstance(v, str) and not v.strip():
            raise ValueError("empty path (use '.' for the current folder)")
        return v

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, v: str) -> str:
        """Each entry an IP address or network, or "*": a typo would silently trust nobody (or the wrong host)."""
        for item in (x.strip() for x in v.split(",")):
            if item in ("", "*"):
                continue
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network (comma-separated, or *)") from None
        return v

    @field_validator("rate_limit_redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        """A Redis URL or nothing: a typo would otherwise surface only as warnings, one per request burst."""
        v = v.strip()
        if not v:
            return v
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"not a URL ({exc})") from None
        if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
            raise ValueError("expected redis://host:port/db, rediss://... or unix:///path/to/socket")
        return v

    @field_validator("tier_currency_rates")
    @classmethod
    def _currency_rates(cls, v: dict[str, float]) -> dict[str, float]:
        """ISO 4217-shaped codes, each a finite positive rate: a typo must not price payments at 0 or inf."""
        if not v:
            raise ValueError("must name at least one currency")
        for code, rate in v.items():
            if not (len(code) == 3 and code.isascii() and code.isupper() and code.isalpha()):
                raise ValueError(f"{code!r} is not a three-letter upper-case currency code")
            if not (math.isfinite(rate) and 0 < rate <= 1e6):
                raise ValueError(f"{code}: rate {rate!r} must be a finite number in (0, 1e6]")
        return v

    @field_validator("session_terminate_risk")
    @classmethod
    def _terminate_above_step_up(cls, v: float, info: ValidationInfo) -> float:
        """A terminate risk below the step-up risk would end sessions that should only step up."""
        step_up = info.data.get("session_step_up_risk")
        if step_up is not None and v < step_up:
            raise ValueError(f"must be >= session_step_up_risk ({v} < {step_up})")
        return v


class SettingsError(ValueError):
    """A CADENCE_* setting (environment or .env) has a value the system cannot run with."""


@lru_cache
def process_settings() -> Settings:
    """The settings from CADENCE_* variables and `.env`; a bad value raises `SettingsError` naming it."""
    import re

    from pydantic import ValidationError
    from pydantic_settings import SettingsError as SourceError

    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"CADENCE_{'_'.join(str(p) for p in e['loc'][:1]).upper()}={e.get('input')!r}: {e['msg']}" for e in exc.errors()
        )
        raise SettingsError(f"invalid setting {problems}") from None
    except SourceError as exc:  # a list/dict variable that is not JSON: pydantic-settings' own error
        m = re.search(r'field "(\w+)"', str(exc))
        name = f"CADENCE_{m.group(1).upper()}" if m else "a CADENCE_* variable"
        reason = f" ({exc.__cause__})" if exc.__cause__ else ""
        raise SettingsError(f"invalid setting {name} (environment or .env): not valid JSON{reason}") from None


#: the settings of the app running this code (None: the process's)
_BOUND: ContextVar[Settings | None] = ContextVar("cadence_settings", default=None)


@contextmanager
def bind_settings(settings: Settings) -> Iterator[None]:
    """Make `settings` the ones in force in this context (and in threads started from a copy of it).

    Why a context variable: two apps with different settings may run in one process (tests, the
    demo beside an operator's server), each request and background job under its own app's.
    """
    token = _BOUND.set(settings)
    try:
        yield
    finally:
        _BOUND.reset(token)


class _SettingsInForce:
    """`get_settings()`: the settings an app bound here (`bind_settings`), else the process's (cached)."""

    def __call__(self) -> Settings:
        bound = _BOUND.get()
        return process_settings() if bound is None else bound

    @staticmethod
    def cache_clear() -> None:
        """Forget the process's settings: the next call re-reads CADENCE_* and `.env` (tests)."""
        process_settings.cache_clear()


get_settings = _SettingsInForce()
