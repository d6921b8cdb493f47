"""Consent per modality and purpose, in plain language, revocable at any time."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mobile_client.api import ApiError
from mobile_client.profile import PURPOSES
from mobile_client.services import AppServices
from modalities.events import MODALITIES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModalityText:
    title: str
    what: str
    icon: str  # a short glyph shown in a coloured circle


TEXT: dict[str, ModalityText] = {
    "keystroke": ModalityText("Typing rhythm", "How long you hold keys and the pauses between them. "
                              "Never what you type.", "Aa"),
    "touch": ModalityText("Touch and swipes", "The speed, pressure and shape of your swipes. "
                          "Never what is on the screen.", "~"),
    "gait": ModalityText("Walking pattern", "The rhythm of your steps from the motion sensor, "
                         "while the phone is in your pocket. Never where you are.", "||"),
}
PURPOSE_TEXT: dict[str, tuple[str, str]] = {
    "authentication": ("Confirm it's me when I pay",
                       "Summaries leave this phone only when you make a payment."),
    "federated_training": ("Help improve the model privately",
                           "Your phone trains on your own data; only model updates are shared, never your behaviour."),
}


class ConsentController:
    """Reads and changes consents; every change is recorded on the server (or queued offline)."""

    def __init__(self, services: AppServices) -> None:
        self.s = services

    def current(self) -> dict[str, dict[str, bool]]:
        return {m: dict(self.s.profile.consents[m]) for m in MODALITIES}

    def set(self, modality: str, purpose: str, granted: bool) -> None:
        """Change one consent; revoking authentication also stops collecting that modality."""
        if modality not in MODALITIES:
            raise ValueError(f"modality: unknown {modality!r}")
        if purpose not in PURPOSES:
            raise ValueError(f"purpose: unknown {purpose!r}")
        self.s.profile.consents[modality][purpose] = bool(granted)
        if purpose == "authentication" and not granted:
            self.s.profile.consents[modality]["federated_training"] = False
        if self.s.profile.registered:
            try:
                self.s.api.set_consent(modality, purpose, bool(granted))
            except ApiError as exc:
                log.warning("consent change refused by server: %s", exc)
        self.s.save_profile()

    def apply(self, choices: dict[str, dict[str, bool]]) -> None:
        """Save the onboarding choices (registering the device first)."""
        if not any(c.get("authentication") for c in choices.values()):
            raise ValueError("consents: choose at least one way to confirm it's you")
        self.ensure_registered()
        for m, per in choices.items():
            for p, granted in per.items():
                self.set(m, p, granted)
        self.s.profile.onboarded = True
        self.s.profile.federated = any(c.get("federated_training") for c in choices.values())
        self.s.save_profile()

    def ensure_registered(self) -> None:
        if self.s.profile.registered:
            return
        try:
            self.s.api.register(platform="android" if _android() else "desktop")
        except ApiError as exc:
            if exc.status != 409:  # already registered is fine
                raise
        self.s.profile.registered = True
        self.s.save_profile()

    def active_modalities(self) -> list[str]:
        return [m for m in MODALITIES if self.s.profile.consented(m)]


def _android() -> bool:
    from mobile_client.platform_info import is_android

    return is_android()
