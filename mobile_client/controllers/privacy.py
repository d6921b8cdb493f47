"""What is stored where, deleting my data, and federated training on/off."""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mobile_client.api import ROUTES, ApiError
from mobile_client.device_key import DeviceKey
from mobile_client.profile import PURPOSES
from mobile_client.services import AppServices
from modalities.events import MODALITIES

if TYPE_CHECKING:
    from mobile_client.controllers.consent import ConsentResult

log = logging.getLogger(__name__)

UNITS = {"keystroke": "key presses", "touch": "touch points", "gait": "motion samples"}


@dataclass(frozen=True)
class StoredItem:
    label: str
    detail: str


#: where the secret keys are kept, in people's words (`SecretStore.kind`)
KEY_PLACES = {"file (0600)": "a private file that only this app can read",
              "Android Keystore (wrapped)": "this phone's secure key store"}
#: the modalities in people's words
MODALITY_NAMES = {"keystroke": "typing rhythm", "touch": "touch and swipes", "gait": "walking pattern"}
#: marks an erase request that waits in the offline queue (the device key is kept to sign it)
ERASE_PENDING = "erase_pending"


class PrivacyController:
    def __init__(self, services: AppServices) -> None:
        self.s = services
        #: how the last "delete my data" went: "" (not asked), "done", "pending" or "failed"
        self.erase_state = ""

    def stored(self) -> list[StoredItem]:
        """Plain-language inventory of what this phone and the server hold."""
        if settle_pending_erase(self.s):
            self.erase_state = "done"
        self.s.evidence.flush()
        summ = self.s.store.summary()
        rows = [StoredItem(f"On this phone: {n:,} {UNITS[m]}", "Encrypted; deleted after "
                           f"{summ.retention_days} days") for m, n in summ.counts.items()]
        place = KEY_PLACES.get(self.s.secrets.kind, self.s.secrets.kind)
        rows.append(StoredItem(f"Encrypted size: {summ.n_bytes / 1024:,.1f} KB", f"Key kept in {place}"))
        enrolled = ", ".join(MODALITY_NAMES.get(m, m) for m in self.s.profile.enrolled) or "nothing yet"
        rows.append(StoredItem("On the bank's server: feature summaries only", f"Your pattern for: {enrolled}"))
        rows.append(StoredItem(f"Device key {self.s.key.fingerprint}", "Signs every request from this phone"))
        return rows

    def federated_on(self) -> bool:
        """Federated training as the consents say (any modality with that consent)."""
        return any(c.get("federated_training") for c in self.s.profile.consents.values())

    def set_federated(self, on: bool) -> list[ConsentResult]:
        """Switch federated training for every modality used to confirm it's you; one result each.

        `profile.federated` follows the consents that went through (or wait in the queue).
        """
        from mobile_client.controllers.consent import ConsentController

        cc = ConsentController(self.s)
        results = [cc.set(m, "federated_training", bool(on)) for m in cc.active_modalities()]
        self.s.profile.federated = self.federated_on()
        self.s.save_profile()
        return results

    def delete_my_data(self) -> str:
        """Erase my data here and on the server; returns what happened (`erase_state` says how it went).

        Confirmed by the server (or nothing on record there): every recording here is deleted
        and the app is back to a fresh state: the device key is discarded, the next set-up
        registers a new device. A server that cannot take the request yet (no connection, 5xx,
        429): the recordings here are deleted and the request waits in the queue, signed with
        the current key when it is sent; the rest is reset once it went through
        (`settle_pending_erase`). A refusal changes nothing.
        """
        when = time.strftime("%H:%M")
        if not self.s.profile.registered:
            n_files = _reset_device(self.s)
            self.erase_state = "done"
            return f"Deleted {n_files} encrypted files on this phone at {when}. You can set Cadence up again."
        try:
            self.s.api.erase()
        except ApiError as exc:
            if exc.status in (401, 404) and exc.code in ("unknown_device", "unknown_user"):
                log.info("erase: the server holds nothing for this device any more (%s)", exc)
            elif exc.can_wait:
                log.warning("erase queued until the bank can take it: %s", exc)
                self.s.api.queue.push("DELETE", ROUTES["erase"].format(user_id=self.s.profile.user_id), {})
                (self.s.data_dir / ERASE_PENDING).write_text(str(time.time()))
                n_files = self.s.store.delete_all()
                self.s.evidence.clear()
                self.erase_state = "pending"
                later = "when you are back online" if exc.offline else "again when it can take the request"
                return (f"Deleted {n_files} encrypted files on this phone at {when}. Not finished: your bank has "
                        f"not erased your pattern yet; the server will be asked {later}.")
            else:
                log.warning("erase refused: %s", exc)
                self.erase_state = "failed"
                return f"Nothing was deleted. {exc.user_message}"
        n_files = _reset_device(self.s)
        self.erase_state = "done"
        return (f"Deleted {n_files} encrypted files on this phone at {when}, and your bank erased your "
                "pattern. You can set Cadence up again.")


def settle_pending_erase(s: AppServices) -> bool:
    """Finish an erasure that waited in the queue once it has left it; True when it did.

    The queue keeps the request while the bank cannot take it and drops it once it was sent
    (or refused as unknown: the bank no longer knows this device), so either way the bank
    holds nothing for this device and the app goes back to a fresh state.
    """
    marker = s.data_dir / ERASE_PENDING
    if not marker.exists():
        return False
    path = ROUTES["erase"].format(user_id=s.profile.user_id)
    if any(i.get("method") == "DELETE" and i.get("path") == path for i in s.api.queue.items()):
        s.api.flush_queue()
        if any(i.get("method") == "DELETE" and i.get("path") == path for i in s.api.queue.items()):
            return False
    _reset_device(s)
    return True


def _reset_device(s: AppServices) -> int:
    """Back to a fresh install (same person): no recordings, consents or set-up; a new device key and id."""
    n_files = s.store.delete_all()
    s.evidence.clear()
    s.api.queue.clear()
    s.key.destroy()
    s.key = DeviceKey(s.secrets)
    p = s.profile  # changed in place: the evidence buffer's consent check reads this object
    p.device_id = "dev-" + secrets.token_hex(6)
    p.registered = False
    p.enrolled = []
    p.consents = {m: {q: False for q in PURPOSES} for m in MODALITIES}
    p.federated = False
    p.onboarded = False
    p.last_sync = None
    s.api.key = s.key
    s.api.device_id = p.device_id
    s.api.last_sync = None
    s.save_profile()
    (s.data_dir / ERASE_PENDING).unlink(missing_ok=True)
    return n_files
