"""The app's small persistent settings: who this device is, consents (and the texts agreed to), federated opt-in."""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from modalities.events import MODALITIES

log = logging.getLogger(__name__)

PURPOSES = ("authentication", "federated_training")
#: the policy version a grant in a profile written before grants recorded theirs was given under: the
#: texts that app showed. The federated-training text has been corrected since (it promised secure
#: aggregation and noise the deployed system does not add), so those grants are not to the current text.
UNVERSIONED_POLICY: dict[str, str] = {"authentication": "2026-11-01", "federated_training": "2026-11-01"}


class ProfileUnreadable(RuntimeError):
    """profile.json exists but cannot be read now (permissions, I/O error, too many open files).

    Not moved aside and not replaced: it may be perfectly good, and a new profile would mean a new
    user and device id, orphaning what the bank holds. The app says so and stops (`__main__`).
    """

    def __init__(self, path: Path, exc: OSError) -> None:
        super().__init__(f"the settings file {path} cannot be read now ({exc.strerror or exc})")
        self.path = path


class ProfileError(ValueError):
    """profile.json is not a profile this app wrote (truncated, empty, wrong types)."""


def _check(data: object) -> dict[str, object]:
    """The fields of a saved profile, or ProfileError saying what is wrong with them."""
    if not isinstance(data, dict):
        raise ProfileError(f"expected a JSON object, got {type(data).__name__}")
    for name in ("user_id", "device_id", "display_name"):
        if name in data and not isinstance(data[name], str):
            raise ProfileError(f"{name}: expected text")
    for name in ("registered", "federated", "onboarded"):
        if name in data and not isinstance(data[name], bool):
            raise ProfileError(f"{name}: expected true or false")
    if "last_sync" in data and not (data["last_sync"] is None or isinstance(data["last_sync"], int | float)):
        raise ProfileError("last_sync: expected a number")
    enrolled = data.get("enrolled", [])
    if not (isinstance(enrolled, list) and all(isinstance(m, str) for m in enrolled)):
        raise ProfileError("enrolled: expected a list of modalities")
    consents = data.get("consents", {})
    if not (isinstance(consents, dict) and all(
            isinstance(per, dict) and all(isinstance(v, bool) for v in per.values()) for per in consents.values())):
        raise ProfileError("consents: expected {modality: {purpose: true/false}}")
    versions = data.get("consent_versions", {})
    if not (isinstance(versions, dict) and all(
            isinstance(per, dict) and all(isinstance(v, str) for v in per.values()) for per in versions.values())):
        raise ProfileError("consent_versions: expected {modality: {purpose: version}}")
    return data


def _unversioned(consents: dict[str, dict[str, bool]]) -> dict[str, dict[str, str]]:
    """The versions of a profile's grants written before they were recorded (`UNVERSIONED_POLICY`)."""
    return {m: {q: UNVERSIONED_POLICY.get(q, "") for q, on in per.items() if on} for m, per in consents.items()}


def _ids(raw: bytes) -> dict[str, str]:
    """The user and device ids of a damaged profile, where they can still be read (else none)."""
    out: dict[str, str] = {}
    text = raw.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    for name in ("user_id", "device_id"):
        value = data.get(name) if isinstance(data, dict) else None
        if not isinstance(value, str):
            m = re.search(rf'"{name}"\s*:\s*"([A-Za-z0-9_.-]{{1,64}})"', text)
            value = m.group(1) if m else None
        if value:
            out[name] = value
    return out


def default_consents() -> dict[str, dict[str, bool]]:
    """Every modality and purpose off: a fresh install's consents."""
    return {m: {p: False for p in PURPOSES} for m in MODALITIES}


def new_device_id() -> str:
    """A fresh install's device id (a new one after "Delete my data")."""
    return "dev-" + secrets.token_hex(6)


@dataclass
class Profile:
    """Persisted as JSON in the app's data folder (no behaviour in here)."""

    user_id: str = ""
    device_id: str = ""
    display_name: str = "Alex"
    registered: bool = False
    enrolled: list[str] = field(default_factory=list)
    consents: dict[str, dict[str, bool]] = field(default_factory=default_consents)
    #: {modality: {purpose: policy version}} of each grant: the text the person agreed to
    consent_versions: dict[str, dict[str, str]] = field(default_factory=dict)
    federated: bool = False
    last_sync: float | None = None
    onboarded: bool = False

    @classmethod
    def load(cls, path: Path) -> Profile:
        """The saved profile; a new one if there is none.

        A file that was read but is not this app's format (truncated, empty, wrong types, not
        UTF-8) is moved aside to `profile.json.bad-<time>` with a log line, and the app starts as
        on a new phone (the person sets up again) rather than failing on every start; the user
        and device ids are kept when they can still be read from it. A file that cannot be read
        now (an `OSError`: permissions, I/O, too many open files) raises `ProfileUnreadable` and
        is left alone.
        """
        p = cls()
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raw = None
        except OSError as exc:
            raise ProfileUnreadable(path, exc) from exc
        if raw is not None:
            try:
                data = _check(json.loads(raw.decode("utf-8")))
                p = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})  # type: ignore[arg-type]
                p.consents = {m: dict(per) for m, per in p.consents.items()}
                p.consent_versions = ({m: dict(per) for m, per in p.consent_versions.items()}
                                      if "consent_versions" in data else _unversioned(p.consents))
            except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError, ProfileError
                ids = _ids(raw)
                p = cls(user_id=ids.get("user_id", ""), device_id=ids.get("device_id", ""))
                cls._move_aside(path, str(exc) or type(exc).__name__)
        if not p.device_id:
            p.device_id = new_device_id()
        if not p.user_id:
            p.user_id = "user-" + secrets.token_hex(6)
        for m in MODALITIES:
            per = p.consents.setdefault(m, {})
            for q in PURPOSES:
                per.setdefault(q, False)
        return p

    @staticmethod
    def _move_aside(path: Path, why: str) -> None:
        bad = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            path.replace(bad)
        except OSError as exc:
            log.error("%s is unreadable (%s) and could not be moved aside (%s): starting as a new set-up",
                      path, why, exc)
            return
        log.warning("%s is unreadable (%s): moved to %s; the app starts as new and asks to be set up again",
                    path, why, bad.name)

    def save(self, path: Path) -> None:
        from mobile_client.api import atomic_write  # a temp file per writer: the worker and the UI both save

        atomic_write(path, json.dumps(asdict(self), indent=1).encode("utf-8"))

    def federated_consented(self) -> bool:
        """Federated training as the consents say (any modality with that consent)."""
        return any(c.get("federated_training") for c in self.consents.values())

    def consented(self, modality: str, purpose: str = "authentication") -> bool:
        return bool(self.consents.get(modality, {}).get(purpose, False))

    def record_consent(self, modality: str, purpose: str, granted: bool, version: str) -> None:
        """Hold a grant with the policy version it was given under, or a withdrawal (no version)."""
        self.consents.setdefault(modality, {})[purpose] = granted
        per = self.consent_versions.setdefault(modality, {})
        if granted:
            per[purpose] = version
        else:
            per.pop(purpose, None)

    def agreed_version(self, modality: str, purpose: str) -> str | None:
        """The policy version a granted consent was given under (None: not granted, or not recorded)."""
        if not self.consented(modality, purpose):
            return None
        return self.consent_versions.get(modality, {}).get(purpose)

    def agreed_to_current(self, modality: str, purpose: str = "authentication") -> bool:
        """Granted, under that purpose's current text: a grant of an earlier text does not cover it."""
        from mobile_client.policy import policy

        return self.agreed_version(modality, purpose) == policy(purpose).version
