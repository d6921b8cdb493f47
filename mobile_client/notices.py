"""What the person must be told of work done out of sight, kept on disk until it was shown.

A notice (a queued consent change the bank refused, `consent.undo_refused`) may be the only
way the person learns that the bank still holds a consent they withdrew: closing or killing
the app before it was shown must not lose it. So each notice is written (atomically, like the
app's other files) when it is heard and removed only when the app takes it to show it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from mobile_client.files import atomic_write

log = logging.getLogger(__name__)

#: the file in the app's data folder that holds the notices not shown yet
NOTICES_FILE = "notices.json"


class NoticeBook:
    """Notices not shown yet, in the order heard; `path` None keeps them in memory only."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()  # the worker adds them, the main thread may take them
        self._notices = _load(self.path) if self.path is not None else []

    def add(self, messages: list[str]) -> None:
        """Keep `messages`, on disk too; a disk that fails is logged: they are still shown in this run."""
        with self._lock:
            # a message still waiting is not kept twice: a flush whose hooks were cut short (the app
            # died) hears of the same refusal again at its next start
            messages = [m for m in messages if m not in self._notices]
            if not messages:
                return
            self._notices = [*self._notices, *messages]
            try:
                self._save(self._notices)
            except OSError as exc:
                log.error("notices could not be written to %s (%s): lost if the app closes before showing them",
                          self.path, exc)

    def take(self) -> list[str]:
        """The notices not shown yet, removed here and from disk: each is shown once."""
        with self._lock:
            taken, self._notices = self._notices, []
            if taken:
                try:
                    self._save([])
                except OSError as exc:
                    log.error("shown notices could not be removed from %s (%s): shown again at the next start",
                              self.path, exc)
            return taken

    def __len__(self) -> int:
        with self._lock:
            return len(self._notices)

    def _save(self, notices: list[str]) -> None:
        if self.path is None:
            return
        if notices:
            atomic_write(self.path, json.dumps(notices).encode("utf-8"))
        else:
            self.path.unlink(missing_ok=True)


def _load(path: Path) -> list[str]:
    """The notices kept in `path`; one that cannot be read is moved aside (logged) and counts as none.

    Start-up must not fail on it; moved aside, it is neither overwritten nor shown half-read.
    """
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError
        _move_aside(path, str(exc) or type(exc).__name__)
        return []
    if not isinstance(data, list) or not all(isinstance(n, str) for n in data):
        _move_aside(path, "not a list of texts")
        return []
    return data


def _move_aside(path: Path, why: str) -> None:
    bad = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        path.replace(bad)
    except OSError as exc:
        log.error("notices in %s cannot be read (%s) nor moved aside (%s): treated as none", path, why, exc)
        return
    log.error("notices in %s cannot be read (%s): moved to %s; notices not shown yet may be lost",
              path, why, bad.name)
