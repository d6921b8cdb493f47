"""The fusion engine the server decides with, reloaded when its calibration file changes.

`cadence models calibrate` and `cadence models train` rewrite the calibration file while
servers run. As with a registry activation, the new calibrators take effect without a
restart: each worker looks at the file's modification stamp at most once per
`check_every_s`, so a request pays one clock read. A file that cannot be read keeps the
engine already loaded, if one was (and says so in the log); no file, or none readable yet, means
every score is left out (reason `uncalibrated`). The tier policy (fusion/policy.yaml) is read
when the source is made: a broken policy file refuses the server's start with one line naming
the file and the field, rather than failing every decision.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from fusion.engine import FusionEngine
from fusion.policy import Decision, ModalityEvidence, PolicyError, default_policy
from fusion.policy import decide as policy_decide

log = logging.getLogger(__name__)


class FusionSource:
    """Hands out the current `FusionEngine` (None: uncalibrated) for `path`."""

    def __init__(self, path: Path | None, check_every_s: float = 2.0) -> None:
        self.path = Path(path) if path is not None else None
        self.check_every_s = check_every_s
        self._engine: FusionEngine | None = None
        self._stamp: tuple[int, int] | None = None
        self._next = 0.0
        self._lock = threading.Lock()
        default_policy()  # PolicyError (one line naming file and field) here, at start-up, not per request
        self._refresh(first=True)
        # the file was just looked at: `current` looks again only after `check_every_s`, so a
        # one-shot reader (`cadence models list`) reports a broken file once, not twice
        self._next = time.monotonic() + check_every_s

    def _refresh(self, first: bool = False) -> None:
        if self.path is None:
            if first:
                log.warning("fusion: no calibration file; every score is left out of decisions "
                            "(reason 'uncalibrated'), so they step up")
            return
        try:
            st = self.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except (FileNotFoundError, NotADirectoryError):  # NotADirectoryError: its folder is a file
            stamp = None
        except OSError as exc:  # unreadable folder: keep what is loaded, try again at the next look
            log.error("fusion: cannot look at %s (%s); %s", self.path, exc.strerror or exc, self._kept())
            return
        if stamp == self._stamp and not first:
            return
        if stamp is None:
            engine = None
            log.warning("fusion: no calibration file at %s yet; every score is left out of decisions "
                        "(reason 'uncalibrated'), so they step up until one is written", self.path)
        else:
            try:
                engine = FusionEngine.load(self.path)
            except PolicyError:
                raise  # not the calibration file's fault, and no calibration can stand in for the policy
            except Exception as exc:  # any damage: one bad file must not fail every request
                # FusionEngine.load's ValueError names the file and the field; anything else is named here
                what = exc if isinstance(exc, ValueError) else f"{self.path}: {type(exc).__name__}: {exc}"
                log.error("fusion: cannot load the calibration file %s; %s", what, self._kept())
                return  # the stamp stays old: the next look tries again
            log.info("fusion: calibrated modalities %s from %s", engine.calibrated_modalities, self.path)
        self._engine, self._stamp = engine, stamp

    def _kept(self) -> str:
        """What decisions use meanwhile, in words: the calibration loaded before, or none."""
        if self._engine is not None:
            return "keeping the calibration loaded before"
        return ("no calibration is loaded: every score is left out of decisions (reason 'uncalibrated'), "
                "so they step up until the file can be read")

    def current(self) -> FusionEngine | None:
        """The engine for this request (the file is looked at no more than every `check_every_s`)."""
        now = time.monotonic()
        if now >= self._next:
            with self._lock:
                if now >= self._next:
                    self._refresh()
                    self._next = now + self.check_every_s
        return self._engine

    def decide(self, evidence: list[ModalityEvidence], *, amount: float) -> Decision:
        engine = self.current()
        return engine.decide(evidence, amount=amount) if engine is not None else policy_decide(evidence, amount=amount)

    def calibrate(self, ev: ModalityEvidence) -> ModalityEvidence:
        engine = self.current()
        return engine.calibrate(ev) if engine is not None else ev
