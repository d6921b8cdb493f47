"""Data-subject requests: export (GDPR Art. 20) and erasure (Art. 17) across every data holder.

Packages that keep personal data (the server's templates, evidence and decisions) register a
*holder* that knows its own tables; this module only fans out to them and adds the consent
ledger. Audit entries are never erased: they name the person by a keyed pseudonym only.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from compliance import audit
from compliance.consent import consents_of
from compliance.keys import pseudonym
from compliance.models import ConsentRecord, utcnow

log = logging.getLogger(__name__)


@runtime_checkable
class DataHolder(Protocol):
    """What a package holding personal data implements so requests and retention reach it."""

    name: str

    def export(self, session: Session, user_id: str) -> dict[str, Any]: ...

    def erase(self, session: Session, user_id: str) -> dict[str, int]: ...

    def erase_modality(self, session: Session, user_id: str, modality: str) -> int: ...

    def purge(self, session: Session, policy: Any, *, now: Any, dry_run: bool) -> dict[str, int]: ...

    # optional: `lock(session, user_id)` takes the holder's row locks before an erasure changes
    # anything (see `erase_user`), in the order the holder's own writers take them


_HOLDERS: dict[str, DataHolder] = {}


def register_holder(holder: DataHolder) -> DataHolder:
    """Register (or replace, by `name`) a data holder; returns it so it can decorate."""
    missing = [m for m in ("name", "export", "erase", "erase_modality", "purge") if not hasattr(holder, m)]
    if missing:
        raise TypeError(f"holder {holder!r} lacks {', '.join(missing)}")
    if not isinstance(holder.name, str) or not holder.name:
        raise TypeError("holder.name: must be a non-empty string")
    _HOLDERS[holder.name] = holder
    return holder


def unregister_holder(name: str) -> None:
    _HOLDERS.pop(name, None)


def registered_holders() -> list[DataHolder]:
    return list(_HOLDERS.values())


def load_holder_modules(modules: Iterable[str] | None = None) -> list[str]:
    """Import the modules that register holders (settings.holder_modules); returns those found.

    Used by the CLI, which runs without the server app having been imported.
    """
    if modules is None:
        from cadence.settings import get_settings

        modules = get_settings().holder_modules
    found = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise
            log.info("holder module %s not present", name)
            continue
        found.append(name)
    return found


def export_user(session: Session, user_id: str) -> dict[str, Any]:
    """Everything held about a person as JSON-ready data: consents, each holder's data, audit."""
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("user_id: must be a non-empty string")
    return {
        "user_id": user_id,
        "exported_at": utcnow().isoformat(),
        "consents": consents_of(session, user_id),
        "data": {h.name: h.export(session, user_id) for h in registered_holders()},
        "audit": {"pseudonym": pseudonym(user_id), "entries": audit.entries_for(session, user_id)},
    }


def erase_user(session: Session, user_id: str, *, actor: str = "admin") -> dict[str, int]:
    """Erase a person: consent records and every holder's data; audit stays under the pseudonym.

    Runs in the caller's transaction, so either everything goes or nothing does. Writes one
    audit entry with the counts removed.
    """
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("user_id: must be a non-empty string")
    for h in registered_holders():  # the holders' row locks first, in the order their own writers take them
        lock = getattr(h, "lock", None)
        if callable(lock):
            lock(session, user_id)
    n = session.scalar(select(func.count()).select_from(ConsentRecord).where(ConsentRecord.user_id == user_id)) or 0
    session.execute(delete(ConsentRecord).where(ConsentRecord.user_id == user_id).execution_options(synchronize_session="fetch"))
    removed: dict[str, int] = {"compliance.consents": int(n)}
    for h in registered_holders():
        for table, count in h.erase(session, user_id).items():
            removed[f"{h.name}.{table}"] = int(count)
    audit.append_audit(session, event="subject.erase", actor=actor, subject=user_id, payload={"removed": removed})
    session.flush()
    return removed
