"""The app's small persistent settings: who this device is, consents, federated opt-in."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from modalities.events import MODALITIES

PURPOSES = ("authentication", "federated_training")


def _default_consents() -> dict[str, dict[str, bool]]:
    return {m: {p: False for p in PURPOSES} for m in MODALITIES}


@dataclass
class Profile:
    """Persisted as JSON in the app's data folder (no behaviour in here)."""

    user_id: str = ""
    device_id: str = ""
    display_name: str = "Alex"
    registered: bool = False
    enrolled: list[str] = field(default_factory=list)
    consents: dict[str, dict[str, bool]] = field(default_factory=_default_consents)
    federated: bool = False
    last_sync: float | None = None
    onboarded: bool = False

    @classmethod
    def load(cls, path: Path) -> Profile:
        if path.exists():
            data = json.loads(path.read_text())
            p = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        else:
            p = cls()
        if not p.device_id:
            p.device_id = "dev-" + secrets.token_hex(6)
        if not p.user_id:
            p.user_id = "user-" + secrets.token_hex(6)
        for m in MODALITIES:
            p.consents.setdefault(m, {q: False for q in PURPOSES})
        return p

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)

    def consented(self, modality: str, purpose: str = "authentication") -> bool:
        return bool(self.consents.get(modality, {}).get(purpose, False))
