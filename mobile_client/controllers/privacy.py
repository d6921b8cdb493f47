"""What is stored where, deleting my data, and federated training on/off."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mobile_client.api import ROUTES, ApiError
from mobile_client.device_key import DeviceKey
from mobile_client.profile import default_consents, new_device_id
from mobile_client.services import AppServices

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
        #: what the last settled erasure came to, in words (after a waiting erasure went or was refused)
        self.erase_message = ""
        #: called when federated training must stop now (an erasure, federated consent withdrawn), before
        #: its exported windows are deleted: the app stops its SuperNode. A reset (`_reset_device`) calls
        #: `AppServices.reset_hooks` instead, where the app registers the same.
        self.training_stops: list[Callable[[], None]] = []

    def _stop_training(self) -> None:
        """Stop federated training (the app's hooks) and delete what was exported for it."""
        for stop in list(self.training_stops):
            try:
                stop()
            except Exception:  # noqa: BLE001 - the files go even so
                log.exception("could not stop federated training")
        delete_federated_files(self.s)

    def erase_waiting(self) -> bool:
        return erase_pending(self.s)

    def settle(self) -> str:
        """Finish a waiting erasure (network: a worker job). Returns and records its state."""
        state, message = settle_pending_erase(self.s)
        if state:
            self.erase_state = state
        if message:
            self.erase_message = message
        return state

    def stored(self) -> list[StoredItem]:
        """Plain-language inventory of what this phone and the server hold (local only: no network)."""
        self.s.evidence.flush()
        summ = self.s.store.summary()
        rows = [StoredItem(f"On this phone: {n:,} {UNITS[m]}", "Encrypted; deleted after "
                           f"{summ.retention_days} days") for m, n in summ.counts.items()]
        place = KEY_PLACES.get(self.s.secrets.kind, self.s.secrets.kind)
        rows.append(StoredItem(f"Encrypted size: {summ.n_bytes / 1024:,.1f} KB", f"Key kept in {place}"))
        if summ.unreadable:
            rows.append(StoredItem(f"On this phone: {summ.unreadable} damaged recording(s) that cannot be read",
                                   f"Encrypted; deleted after {summ.retention_days} days"))
        from mobile_client.federation import FOLDER

        exported = sorted((self.s.data_dir / FOLDER).glob("device-*.npz"))
        if exported:
            what = ", ".join(MODALITY_NAMES.get(f.stem.removeprefix("device-"), "behaviour") for f in exported)
            rows.append(StoredItem(f"For training on this device: summaries of your {what}",
                                   "Not encrypted, readable by this app only; deleted when training stops"))
        enrolled = ", ".join(MODALITY_NAMES.get(m, m) for m in self.s.profile.enrolled) or "nothing yet"
        rows.append(StoredItem("On the bank's server: feature summaries only", f"Your pattern for: {enrolled}"))
        rows.append(StoredItem(f"Device key {self.s.key.fingerprint}", "Signs every request from this phone"))
        return rows

    def federated_on(self) -> bool:
        """Federated training as the consents say (any modality with that consent)."""
        return self.s.profile.federated_consented()

    def set_federated(self, on: bool) -> list[ConsentResult]:
        """Switch federated training for every modality used to confirm it's you; one result each.

        `profile.federated` follows the consents that went through (or wait in the queue).
        """
        from mobile_client.controllers.consent import ConsentController

        cc = ConsentController(self.s)
        results = [cc.set(m, "federated_training", bool(on)) for m in cc.active_modalities()]
        self.s.profile.federated = self.federated_on()
        self.s.save_profile()
        if not self.federated_on():  # withdrawn (or waiting for the bank): training stops now, its files go
            self._stop_training()
        return results

    def erase_later(self) -> int:
        """Queue the erasure for the bank and delete this phone's recordings now; returns files deleted.

        Collection stops first and the marker is written before the request is queued, so no
        batch is written after the deletion and a crash in between still knows to settle. The app
        also calls this for a "Delete my data" job that never ran (closed first).
        """
        if erase_pending(self.s):
            return 0
        self.s.evidence.paused = True
        (self.s.data_dir / ERASE_PENDING).write_text(str(time.time()))
        self.s.api.queue.push("DELETE", ROUTES["erase"].format(user_id=self.s.profile.user_id), {})
        self._stop_training()  # federated training on the data being erased stops, its exported windows go
        self.s.evidence.clear()  # waits for a batch being written: deleted next, never written after
        n_files = self.s.store.delete_all()
        self.s.api.forget_pending_payment()  # their bodies hold the behaviour being erased
        self.erase_state = "pending"
        return n_files

    def intend_delete(self) -> None:
        """Keep a "Delete my data" the app closed before sending: it waits for the next start."""
        if self.s.profile.registered:
            self.erase_later()
        else:
            _reset_device(self.s)

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
            if _holds_nothing(exc.status, exc.code):
                log.info("erase: the server holds nothing for this device any more (%s)", exc)
            elif exc.can_wait:
                log.warning("erase queued until the bank can take it: %s", exc)
                n_files = self.erase_later()
                later = "when you are back online" if exc.offline else "again when it can take the request"
                return (f"Deleted {n_files} encrypted files on this phone at {when}. Not finished: your bank has "
                        f"not erased your pattern yet; the server will be asked {later}. Until then nothing "
                        "is collected and payments from this phone are paused.")
            else:
                log.warning("erase refused: %s", exc)
                self.erase_state = "failed"
                return f"Nothing was deleted. {exc.user_message}"
        n_files = _reset_device(self.s)
        self.erase_state = "done"
        return (f"Deleted {n_files} encrypted files on this phone at {when}, and your bank erased your "
                "pattern. You can set Cadence up again.")


def delete_federated_files(s: AppServices) -> bool:
    """Delete `data_dir/federated/` (stop the SuperNode first); True when there was something.

    It holds the feature windows exported for federated training, unencrypted, and the
    SuperNode's working folder.
    """
    from mobile_client.federation import FOLDER

    folder = s.data_dir / FOLDER
    if not folder.exists():
        return False

    def failed(_fn: object, path: str, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
        log.warning("could not delete %s (federated training data): %s", path, exc_info[1])

    shutil.rmtree(folder, onerror=failed)
    log.info("federated training data deleted: %s", folder)
    return True


def _holds_nothing(status: int | None, code: str | None) -> bool:
    """A refusal that says the bank no longer knows this device or user: it holds nothing to erase."""
    return status in (401, 404) and code in ("unknown_device", "unknown_user")


def erase_pending(s: AppServices) -> bool:
    """An erasure waits for the bank (its marker is on disk): collection and payments are paused."""
    return (s.data_dir / ERASE_PENDING).exists()


def settle_pending_erase(s: AppServices) -> tuple[str, str]:
    """Finish an erasure that waited for the bank; network, so call it on the worker thread.

    Returns (state, message): ("", "") when none waited; "pending" while the bank still cannot
    take it; "done" when the bank erased (2xx) or holds nothing for this device (refused as
    `unknown_device` / `unknown_user`), and the app is then as new; "failed" when the bank
    refused it otherwise (e.g. 401 `stale_request` from a wrong phone clock, 403): then the
    device, its key and the bank's record are kept, the marker goes, and the message says so.
    The request's fate is read from `flush_queue`'s report (or `ApiClient.outcomes` when another
    flush sent it); when neither knows (a crash after it was sent), it is sent again: a bank that
    already erased answers `unknown_device`.
    """
    if not erase_pending(s):
        return "", ""
    path = ROUTES["erase"].format(user_id=s.profile.user_id)
    with s.api.lock:
        queued = next((i for i in s.api.queue.items() if i.get("method") == "DELETE" and i.get("path") == path), None)
        if queued is not None:
            outcome = s.api.flush_queue().of("DELETE", path)
            state = outcome.state if outcome is not None else "waiting"
            status, code = (outcome.status, outcome.code) if outcome is not None else (None, None)
        else:
            known = [o for o in s.api.outcomes.values() if o.method == "DELETE" and o.path == path]
            if known:
                state, status, code = known[-1].state, known[-1].status, known[-1].code
            else:
                try:
                    s.api.request("DELETE", path, retries=0, needs_body=False)
                    state, status, code = "sent", 200, None
                except ApiError as exc:
                    if exc.can_wait:
                        s.api.queue.push("DELETE", path, {})
                        state, status, code = "waiting", exc.status, exc.code
                    else:
                        state, status, code = "refused", exc.status, exc.code
    if state == "waiting":
        return "pending", ""
    if state == "sent" or _holds_nothing(status, code):
        _reset_device(s)
        return "done", "Your bank erased your pattern. The data on this phone was deleted: you can set Cadence up again."
    log.warning("the erasure that waited was refused by the bank (%s %s): this phone stays set up", status, code)
    why = ApiError("erase refused", status, {"code": code} if code else None).user_message
    message = ("Not erased: your bank refused the request to erase your pattern, so it still holds it and "
               f"this phone stays set up. {why} Try Delete my data again, or contact your bank.")
    # kept until shown (a notice, on disk) before the marker goes: the person asked for an erasure and
    # must not believe it done because the app closed before saying it was refused
    s.add_notices([message])
    (s.data_dir / ERASE_PENDING).unlink(missing_ok=True)
    s.evidence.paused = False
    return "failed", message


def _reset_device(s: AppServices) -> int:
    """Back to a fresh install (same person): no recordings, consents or set-up; a new device key and id."""
    p = s.profile  # changed in place: the evidence buffer's consent check reads this object
    p.consents = default_consents()  # collection stops first
    p.consent_versions = {}
    s.evidence.clear()  # waits for a batch being written: it is deleted next, never written after
    n_files = s.store.delete_all()
    s.api.queue.clear()
    s.api.outcomes.clear()  # an old erasure's "sent" must not settle a later one
    s.api.forget_pending_payment()
    s.notices.take()  # of consents of the erased set-up (notices.json): not left behind, nor shown to a new one
    for hook in list(s.reset_hooks):  # the app stops federated training here
        hook()
    delete_federated_files(s)  # the exported feature windows (after the SuperNode stopped)
    s.key.destroy()
    s.key = DeviceKey(s.secrets)
    p.device_id = new_device_id()
    p.registered = False
    p.enrolled = []
    p.federated = False
    p.onboarded = False
    p.last_sync = None
    s.api.key = s.key
    s.api.device_id = p.device_id
    s.api.last_sync = None
    s.save_profile()
    (s.data_dir / ERASE_PENDING).unlink(missing_ok=True)
    s.evidence.paused = False
    return n_files
