"""Enrolment tasks (typing, swiping, walking): progress, quality check, upload of features."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from mobile_client import features
from mobile_client.api import ApiError
from mobile_client.evidence import window_digest
from mobile_client.services import AppServices
from modalities.events import FeatureWindow

log = logging.getLogger(__name__)

PASSPHRASE = "cadence keeps my money safe"
PASSPHRASE_REPEATS = 4
FREE_TEXT_PROMPT = "In a sentence or two, what would you do with a free afternoon?"
FREE_TEXT_MIN_CHARS = 80
SWIPES_NEEDED = 12
#: seconds of continuous walking set-up's gait windows need (`features.MIN_ENROL_WINDOWS`)
WALK_NEEDED_S = features.gait_walk_seconds(features.MIN_ENROL_WINDOWS["gait"])
#: the walk asked for (progress bar, a live sensor's timer): what set-up needs and two windows more,
#: so a turn or a pause on the way (which gives no window) still leaves enough
WALK_SECONDS = features.gait_walk_seconds(features.MIN_ENROL_WINDOWS["gait"] + 2)
#: seconds of recording the desktop replays for the walk: the walk asked for, and slack for a
#: recording's uneven sample spacing, which the progress (gaps times their median) counts short
REPLAY_WALK_S = WALK_SECONDS + 2.0

TASKS = ("keystroke", "touch", "gait")
TASK_TITLES = {"keystroke": "Type", "touch": "Swipe", "gait": "Walk"}


@dataclass
class TaskState:
    modality: str
    progress: float = 0.0
    windows: list[FeatureWindow] = field(default_factory=list)
    report: features.QualityReport | None = None
    #: windows the server accepted for this task (0: not sent yet); a redone task starts at 0
    sent: int = 0
    #: fingerprints (`window_digest`) of the windows last sent without an answer (the connection
    #: dropped after the bank answered, a 5xx, an unreadable answer): the bank may have stored them
    unanswered: frozenset[str] = frozenset()


class EnrolmentController:
    """Marks the evidence buffer at each task's start and turns its events into windows."""

    def __init__(self, services: AppServices) -> None:
        self.s = services
        self.tasks = {m: TaskState(m) for m in TASKS}
        self.typed_passphrases = 0

    def todo(self) -> list[str]:
        """Tasks for the modalities the person agreed to and has not set up, in order.

        After a modality was revoked (the server deleted its template) and switched on again,
        this is that modality's task alone.
        """
        return [m for m in TASKS if self.s.profile.consented(m) and m not in self.s.profile.enrolled]

    def missing(self) -> list[str]:
        """Modalities switched on but not set up (Home offers to set them up); empty before onboarding."""
        return self.todo() if self.s.profile.onboarded else []

    def begin(self, modality: str) -> None:
        self.s.evidence.mark(modality)
        self.tasks[modality] = TaskState(modality)
        if modality == "keystroke":
            self.typed_passphrases = 0

    # -- typing -------------------------------------------------------------------------
    def submit_passphrase(self, text: str) -> bool:
        """One repetition typed; True when it matched (mistyped ones do not count)."""
        ok = text.strip().lower() == PASSPHRASE
        if ok:
            self.typed_passphrases += 1
        self._update_typing(free_text="")
        return ok

    def typing_progress(self, free_text: str) -> float:
        return self._update_typing(free_text)

    def _update_typing(self, free_text: str) -> float:
        p = 0.6 * min(self.typed_passphrases / PASSPHRASE_REPEATS, 1.0) + 0.4 * min(len(free_text) / FREE_TEXT_MIN_CHARS, 1.0)
        self.tasks["keystroke"].progress = p
        return p

    # -- swiping and walking ------------------------------------------------------------------
    def swipe_progress(self) -> float:
        n = len(features.split_strokes(self.s.evidence.since_mark("touch")))  # type: ignore[arg-type]
        p = min(n / SWIPES_NEEDED, 1.0)
        self.tasks["touch"].progress = p
        return p

    def walk_progress(self) -> float:
        """Share of the walk done: the samples recorded since the task began, at their usual rate.

        Each sample counts as one interval of the sensor's (or recording's) usual spacing, the
        median gap between samples, so a pause (the phone left on a table, a walk stopped and
        started again) adds nothing, where the span from first to last sample would count it as
        walking. A replayed recording that was looped keeps its spacing and counts in full.
        """
        ev = self.s.evidence.since_mark("gait")
        gaps = np.diff(np.array([float(e.time) for e in ev])) if len(ev) >= 2 else np.empty(0)  # type: ignore[union-attr]
        gaps = gaps[gaps > 0]
        walked = gaps.size * float(np.median(gaps)) if gaps.size else 0.0
        p = min(walked / WALK_SECONDS, 1.0)
        self.tasks["gait"].progress = p
        return p

    # -- quality and upload -------------------------------------------------------------------
    def check(self, modality: str) -> features.QualityReport:
        """Features of the task's events and a pass/fail a person can act on.

        Input this phone cannot measure (touches without a contact size, text a soft keyboard
        committed without key presses: `features.unmeasurable`) gives no windows, and the report
        says the modality is unavailable here (`QualityReport.unavailable`) rather than asking
        for more: set-up goes on without it, `finish` sends nothing of it and it stays not set up.
        """
        events = self.s.evidence.since_mark(modality)
        windows = features.windows_for(modality, events)
        st = self.tasks[modality]
        st.windows = features.usable(windows)
        st.report = features.quality_report(modality, windows, unavailable=features.unmeasurable(modality, events))
        return st.report

    def ready(self) -> bool:
        """Every task passed, or was found unavailable on this phone (it is then not sent)."""
        return all(self.tasks[m].report is not None and (self.tasks[m].report.ok or self.tasks[m].report.unavailable)  # type: ignore[union-attr]
                   for m in self.todo())

    def finish(self) -> dict[str, int]:
        """Send every passed task's windows to the server; returns windows sent per modality.

        A task the server already accepted is not sent again (it would be refused as already
        received), so after an interruption pressing Finish again sends only what is missing.
        The first failure is raised; `profile.enrolled` changes only once every task went through,
        and keeps the modalities set up before (setting one up again sends only that one).
        """
        sent: dict[str, int] = {}
        for m in self.todo():
            st = self.tasks[m]
            if st.report is None or not st.report.ok:
                continue
            if not st.sent:
                windows = st.windows[: 64]
                self._send(st, windows)
                st.sent = len(windows)
                self.s.evidence.note_sent(windows)
            sent[m] = st.sent
        self.s.profile.enrolled = sorted(set(self.s.profile.enrolled) | set(sent))
        self.s.evidence.flush()
        self.s.save_profile()
        return sent

    def _send(self, st: TaskState, windows: list[FeatureWindow]) -> None:
        """Upload one task's windows; a replay refusal of the very windows sent before without an answer is success.

        The bank refuses a window it already holds (409 `evidence_replay`). When the last upload of
        exactly these windows got no answer (or this call's own earlier try got none: `in_doubt`),
        that refusal says the lost upload was stored, so the task counts as sent. Any other replay
        refusal (other windows, or none sent before without an answer) stays a refusal.
        """
        digests = frozenset(window_digest(w) for w in windows)
        try:
            self.s.api.enrol(windows)
        except ApiError as exc:
            if exc.status == 409 and exc.code == "evidence_replay" and (exc.in_doubt or digests == st.unanswered):
                log.info("%s set-up upload refused as already received after an upload without an answer: "
                         "the bank stored it", st.modality)
                st.unanswered = frozenset()
                return
            if exc.answer_unknown:
                st.unanswered = digests
            raise
        st.unanswered = frozenset()
