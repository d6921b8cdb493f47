"""What is stored where, deleting my data, and federated training on/off."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from mobile_client.api import ROUTES, ApiError
from mobile_client.services import AppServices

log = logging.getLogger(__name__)

UNITS = {"keystroke": "key presses", "touch": "touch points", "gait": "motion samples"}


@dataclass(frozen=True)
class StoredItem:
    label: str
    detail: str


class PrivacyController:
    def __init__(self, services: AppServices) -> None:
        self.s = services

    def stored(self) -> list[StoredItem]:
        """Plain-language inventory of what this phone and the server hold."""
        self.s.evidence.flush()
        summ = self.s.store.summary()
        rows = [StoredItem(f"On this phone: {n:,} {UNITS[m]}", "Encrypted; deleted after "
                           f"{summ.retention_days} days") for m, n in summ.counts.items()]
        rows.append(StoredItem(f"Encrypted size: {summ.n_bytes / 1024:,.1f} KB",
                               f"Key kept in: {self.s.secrets.kind}"))
        enrolled = ", ".join(self.s.profile.enrolled) or "nothing yet"
        rows.append(StoredItem("On the bank's server: feature summaries only", f"Templates for: {enrolled}"))
        rows.append(StoredItem(f"Device key {self.s.key.fingerprint}", "Signs every request from this phone"))
        return rows

    def set_federated(self, on: bool) -> None:
        from mobile_client.controllers.consent import ConsentController

        self.s.profile.federated = bool(on)
        cc = ConsentController(self.s)
        for m in cc.active_modalities():
            cc.set(m, "federated_training", bool(on))
        self.s.save_profile()

    def delete_my_data(self) -> str:
        """Erase raw events here and ask the server to erase templates; returns what happened."""
        n_files = self.s.store.delete_all()
        self.s.evidence.clear()
        server = "server asked to erase your templates"
        try:
            if self.s.profile.registered:
                self.s.api.erase()
        except ApiError as exc:
            if exc.offline:
                self.s.api.queue.push("DELETE", ROUTES["erase"].format(user_id=self.s.profile.user_id), {})
                server = "server will be asked when you are back online"
            else:
                server = f"the server did not erase your templates ({exc.user_message})"
                log.warning("erase refused: %s", exc)
        self.s.profile.enrolled = []
        self.s.save_profile()
        return f"Deleted {n_files} encrypted files on this phone at {time.strftime('%H:%M')}; {server}."
