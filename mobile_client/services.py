"""Everything the controllers use, built once per app run from a data folder and a server URL."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mobile_client.api import ApiClient, OfflineQueue
from mobile_client.clock import Clock, monotonic
from mobile_client.device_key import DeviceKey
from mobile_client.evidence import EvidenceBuffer
from mobile_client.notices import NOTICES_FILE, NoticeBook
from mobile_client.profile import Profile
from mobile_client.raw_store import RawEventStore
from mobile_client.secrets_store import SecretStore, platform_secret_store, unwrap_errors

log = logging.getLogger(__name__)

DEFAULT_SERVER = "http://127.0.0.1:8000"


class DeviceKeyUnreadable(RuntimeError):
    """The device's signing key exists but is not a key (damaged or replaced secrets file).

    It is not replaced silently: the server knows this phone by that key, so a new one means
    setting the app up again, which the person (or support) should decide, not the app.
    """

    def __init__(self, folder: Path, why: str) -> None:
        super().__init__(f"the device key in {folder} cannot be read ({why})")
        self.folder = folder


@dataclass
class AppServices:
    data_dir: Path
    profile: Profile
    secrets: SecretStore
    key: DeviceKey
    store: RawEventStore
    evidence: EvidenceBuffer
    api: ApiClient
    #: called when the app is reset to a fresh install ("Delete my data"): controllers drop their state
    reset_hooks: list[Callable[[], None]] = field(default_factory=list)
    #: set by `close`: a job still running then no longer writes the profile (the app saved its intent)
    closed: bool = False
    #: what the person must be told of work done out of sight (a queued consent change the bank
    #: refused, `consent.undo_refused`); kept on disk until the app takes them (`take_notices`) to show
    notices: NoticeBook = field(default_factory=NoticeBook)

    @property
    def profile_path(self) -> Path:
        return self.data_dir / "profile.json"

    def save_profile(self) -> None:
        if self.closed:
            log.info("profile not saved: the app has closed (what the last job was asked is saved already)")
            return
        if self.api.last_sync is not None:
            self.profile.last_sync = self.api.last_sync
        self.profile.save(self.profile_path)

    def close(self) -> None:
        """Flush and save, then stop writing: what a job still running does after this is not kept."""
        self.evidence.flush()
        self.save_profile()
        self.closed = True
        self.api.close()

    def add_notices(self, messages: list[str]) -> None:
        """Keep `messages` for the person until shown, across a restart (written even after `close`)."""
        self.notices.add(messages)

    def take_notices(self) -> list[str]:
        """The notices not shown yet (also those heard before a restart), removed: each is shown once."""
        return self.notices.take()

    def reset_hook(self, hook: Callable[[], None]) -> None:
        if hook not in self.reset_hooks:
            self.reset_hooks.append(hook)


def build_services(data_dir: Path, server_url: str = DEFAULT_SERVER, retention_days: int = 30,
                   retries: int = 3, bank_api_key: str | None = None, clock: Clock = monotonic) -> AppServices:
    """`clock` must be the one the collectors stamp events with (evidence recency is measured on it)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    profile = Profile.load(data_dir / "profile.json")  # ProfileUnreadable: a read error, nothing moved
    secrets = platform_secret_store(data_dir / "secrets")
    try:
        key = DeviceKey(secrets)
    except unwrap_errors() as exc:  # not 32 bytes of an Ed25519 seed, or (Android) a blob the Keystore cannot unwrap
        raise DeviceKeyUnreadable(data_dir / "secrets", str(exc)) from exc
    store = RawEventStore(data_dir / "raw", secrets, retention_days)
    store.apply_retention()
    evidence = EvidenceBuffer(store, allowed=lambda m: profile.consented(m, "authentication"), clock=clock)
    evidence.paused = (data_dir / "erase_pending").exists()  # privacy.ERASE_PENDING: an erasure waits
    api = ApiClient(server_url, key, profile.device_id, profile.user_id, OfflineQueue(data_dir / "outbox.jsonl"),
                    retries=retries, bank_api_key=bank_api_key)
    services = AppServices(data_dir, profile, secrets, key, store, evidence, api,
                           notices=NoticeBook(data_dir / NOTICES_FILE))  # one unreadable is moved aside
    from mobile_client.controllers.consent import watch_queue  # imports this module: not at the top

    watch_queue(services)  # a queued consent change the bank refuses is undone here, whoever sent it
    return services
