"""The Kivy application: wires services, controllers, collectors and screens together."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kivy.app import App
from kivy.core.window import Window
from kivy.lang import Builder
from kivy.uix.screenmanager import FadeTransition, NoTransition, ScreenManager

from mobile_client.applog import after_kivy_import
from mobile_client.clock import Clock as ClockFn
from mobile_client.clock import monotonic
from mobile_client.collectors.accelerometer import SensorUnavailable, platform_accelerometer
from mobile_client.collectors.keyboard import KeyboardCollector
from mobile_client.collectors.replay import ReplaySource, recorded_walk
from mobile_client.collectors.touch import TouchCollector
from mobile_client.controllers.consent import TEXT as MODALITY_TEXT
from mobile_client.controllers.consent import ConsentController
from mobile_client.controllers.enrolment import REPLAY_WALK_S, WALK_SECONDS, EnrolmentController
from mobile_client.controllers.privacy import PrivacyController, delete_federated_files
from mobile_client.controllers.transaction import TransactionController
from mobile_client.services import AppServices
from mobile_client.ui import screens, theme

log = logging.getLogger(__name__)
after_kivy_import()  # Kivy, just imported, set the root logger to NOTSET: the app's own level holds

T = TypeVar("T")
#: what a background job hands back on the main thread: its result, or the exception it raised
Done = Callable[[Any, BaseException | None], None]

#: on close, how long the job then running may still take before the app goes on closing (seconds)
STOP_GRACE_S = 2.0
#: the Privacy screen's training line while a training grant is to an earlier text (`ConsentController.outdated`)
TEXT_CHANGED = ("Paused: the training text changed since you agreed to it. Nothing is trained until you "
                "have read the new text and agreed to it again")


@dataclass
class _Job:
    future: Future[Any]
    #: writes what the job was asked to do to disk (outbox, profile) if it never gets to run;
    #: called with True when an earlier job was still talking to the bank (its outcome unknown)
    intent: Callable[[bool], None] | None


KV_DIR = Path(__file__).parent / "kv"
SCREENS: dict[str, type] = {
    "welcome": screens.WelcomeScreen,
    "consent": screens.ConsentScreen,
    "enrol": screens.EnrolScreen,
    "home": screens.HomeScreen,
    "pay": screens.PayScreen,
    "privacy": screens.PrivacyScreen,
}


class CadenceApp(App):
    """One app per process (Kivy's rule); `services` decide where data and the server are."""

    title = "Cadence"

    def __init__(self, services: AppServices, *, clock: ClockFn = monotonic, animate: bool = True,
                 walk_speed: float = 1.0, data_dir_for_replay: str | None = None,
                 on_ready: Callable[[CadenceApp], None] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.services = services
        self.clock = clock
        services.evidence.clock = clock  # evidence recency is measured on the collectors' clock
        self.animate = animate
        self.walk_speed = walk_speed
        self.replay_data_dir = data_dir_for_replay
        self.on_ready = on_ready
        self.consent = ConsentController(services)
        self.enrolment = EnrolmentController(services)
        self.transaction = TransactionController(services)
        self.privacy = PrivacyController(services)
        self.collectors: list[Any] = []
        self.walk_source: ReplaySource | None = None
        #: replayed walks started in this run: each replays another stretch (`recorded_walk`'s attempt)
        self.walks_replayed = 0
        self.supernode: Any = None
        #: guards `supernode`: background jobs stop it when training is withdrawn or the data erased
        self._federation_lock = threading.Lock()
        #: why federated training could not start, in words for the Privacy screen (None: no problem)
        self.federation_error: str | None = None
        #: training was stopped during this run (a consent withdrawn, an erasure): it starts again next start
        self.federation_stopped = False
        #: whether the consents let this app train at the last look (`sync_federation`): becoming so starts it
        self._federation_was_allowed = False
        # an erasure stops training before it deletes the exported windows (`privacy.delete_federated_files`)
        services.reset_hook(self._stop_training)
        self.privacy.training_stops.append(self._stop_training)
        self.sm: ScreenManager | None = None
        #: network work runs here, one job at a time and in order, never on Kivy's main thread
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cadence-network")
        #: background jobs not finished yet (their `done` has not run)
        self.jobs_in_flight = 0
        self._jobs: list[_Job] = []
        self._stopped = False
        #: what the person must read of work done out of sight (a waiting consent change the bank
        #: refused, `AppServices.notices`): on Welcome, Home and Privacy until the person changes a consent again
        self.notice = ""

    # ------------------------------------------------------------------ background work
    def run_in_background(self, work: Callable[[], T], done: Done,
                          intent: Callable[[bool], None] | None = None) -> None:
        """Run `work` off the main thread; `done(result, error)` is then called on the main thread.

        Controllers block on HTTP (retries, timeouts): run on Kivy's thread they would freeze
        the UI. Jobs run one at a time in the order they were asked for, so requests reach the
        server in the order the person made them (what the offline queue also keeps). Each job
        first settles an erasure that waits for the bank (`_settle_erase`). `intent`, if given,
        saves what the job was asked to do (a consent change, an erasure) when the app closes
        before the job ran, so the person's choice is not lost with it.
        """
        from kivy.clock import Clock

        self.jobs_in_flight += 1

        def job() -> T:
            self._settle_erase()
            try:
                return work()
            finally:  # a consent withdrawn by this job (or the erasure settled) stops training before `done`
                self.sync_federation()
                self._deliver_notices()

        def finished(fut: Future[T]) -> None:
            if fut.cancelled():
                return
            exc = fut.exception()
            result = None if exc is not None else fut.result()

            def deliver(_dt: float) -> None:
                self.jobs_in_flight -= 1
                self._jobs = [j for j in self._jobs if j.future is not fut]
                done(result, exc)

            Clock.schedule_once(deliver, 0)

        fut = self._worker.submit(job)
        self._jobs.append(_Job(fut, intent))
        fut.add_done_callback(finished)

    def _deliver_notices(self) -> None:
        """On the worker: what a job's flush (or a run before) has to tell the person goes to the screens.

        Taken (and so removed from disk) on the main thread as it is shown: closed before, it is shown next start.
        """
        if len(self.services.notices):
            from kivy.clock import Clock

            Clock.schedule_once(lambda _dt: self._show_notices(), 0)

    def _show_notices(self) -> None:
        """On the main thread: the notices not shown yet, now shown (none left: a later job's took them)."""
        notices = self.services.take_notices()
        if notices:
            self.show_notice(" ".join(notices))

    def show_notice(self, text: str) -> None:
        """On the main thread: `text` on Welcome, Home and Privacy ("" clears it); the screen shown follows the consents."""
        self.notice = text
        for name in ("welcome", "home", "privacy"):
            if self.sm is not None and self.sm.has_screen(name):
                self.sm.get_screen(name).notice = text
        if not text or self.sm is None:
            return
        if self.sm.current == "home":
            self.sm.get_screen("home").refresh()
        elif self.sm.current == "privacy":
            self.sm.get_screen("privacy").show_refused()

    def _settle_erase(self) -> None:
        """On the worker: finish an erasure that waits for the bank, and show how it ended."""
        if not self.privacy.erase_waiting():
            return
        try:
            state = self.privacy.settle()
        except Exception:  # noqa: BLE001 - a bug here must not stop the job asked for
            log.exception("could not settle the waiting erasure")
            return
        if state in ("done", "failed"):
            from kivy.clock import Clock

            Clock.schedule_once(lambda _dt: self._erase_settled(state), 0)

    def _erase_settled(self, state: str) -> None:
        """On the main thread: a waiting erasure went through (fresh app) or was refused (say so)."""
        assert self.sm is not None
        if state == "done" and self.sm.has_screen("privacy"):  # a refusal is a notice (`settle_pending_erase`)
            self.sm.get_screen("privacy").deleted = self.privacy.erase_message
        if state == "done":
            log.info("the erasure that waited offline went through: the app is as new")
            if self.sm.current != "welcome":
                self.go("welcome")
        elif self.sm.current == "privacy":
            self.sm.get_screen("privacy").refresh(settle=False)

    # ------------------------------------------------------------------ building
    def build(self) -> ScreenManager:
        Window.clearcolor = theme.BG
        Builder.load_file(str(KV_DIR / "theme.kv"))
        self.sm = ScreenManager(transition=FadeTransition(duration=0.15) if self.animate else NoTransition())
        p = self.services.profile
        self.go("home" if p.onboarded and p.enrolled else "welcome")
        return self.sm

    def screen(self, name: str) -> Any:
        """The screen called `name`, loading its .kv file the first time (lazy, as in Kivy's showcase)."""
        assert self.sm is not None
        if not self.sm.has_screen(name):
            kv = KV_DIR / f"{name}.kv"
            if str(kv) not in Builder.files:
                Builder.load_file(str(kv))
            self.sm.add_widget(SCREENS[name](name=name))
        return self.sm.get_screen(name)

    def go(self, name: str) -> Any:
        scr = self.screen(name)
        assert self.sm is not None
        self.sm.current = name
        return scr

    # ------------------------------------------------------------------ collectors
    def on_start(self) -> None:
        sink = self.services.evidence.add
        self.collectors = [KeyboardCollector(Window, self.clock), TouchCollector(Window, self.clock)]
        try:
            self.collectors.append(platform_accelerometer(self.clock))
        except SensorUnavailable as exc:
            log.info("no live accelerometer: %s", exc)
        for c in self.collectors:
            try:
                c.start(sink)
            except SensorUnavailable as exc:
                log.warning("collector %s unavailable: %s", type(c).__name__, exc)
        self._federation_was_allowed = self.federation_allowed()
        self.start_federation()
        # consent changes and erase requests made offline: send them now the app is back
        from kivy.clock import Clock

        Clock.schedule_once(lambda *_: self.run_in_background(self._send_waiting, self._flushed), 0)
        if self.on_ready:
            self.on_ready(self)

    def _send_waiting(self) -> None:
        """Background job at start: send what waited offline (a waiting erasure is settled first)."""
        self.services.api.flush_queue()

    def _flushed(self, _result: Any, exc: BaseException | None) -> None:
        if exc is not None:  # e.g. a bug; the queue stays and is tried again before the next request
            log.warning("could not send what waited offline: %s", exc)

    def on_stop(self) -> None:
        """Close without blocking on the network.

        Jobs not started are cancelled; the one running gets `STOP_GRACE_S`. Then the intents are
        saved in the order the person asked: the running job's first if it is still running (its
        outcome unknown), then the cancelled jobs'. So the change made last (a consent switched
        on, then off again) is what stays on this phone and what the bank receives last. Then
        the client is closed: a job still running can no longer write the profile or the outbox
        (its intent holds what it was asked). Kivy may call this twice (`stop()`, `run()`'s end).
        """
        if self._stopped:
            return
        self._stopped = True
        for c in self.collectors:
            c.stop()
        if self.walk_source:
            self.walk_source.stop()
        self.stop_federation()
        self._worker.shutdown(wait=False, cancel_futures=True)
        running = [j.future for j in self._jobs if not j.future.done()]
        still: set[Future[Any]] = set()
        if running:
            _, still = wait_for(running, timeout=STOP_GRACE_S)
            if still:
                log.warning("closing while a request to the bank is still in flight")
        for j in self._jobs:
            if (j.future.cancelled() or j.future in still) and j.intent is not None:
                try:
                    j.intent(bool(still))
                except Exception:  # noqa: BLE001 - closing goes on; what failed is in the log
                    log.exception("could not save a change that was waiting to be sent")
        self.sync_federation()  # a withdrawal saved above: its exported windows go now
        self.services.close()

    def live_accelerometer(self) -> bool:
        return any(c.modality == "gait" and c.running for c in self.collectors)

    def start_walk(self, on_done: Callable[[], None]) -> str:
        """Begin the walking task: the phone's own sensor, or a replayed walk on desktop."""
        if self.live_accelerometer():
            from kivy.clock import Clock

            Clock.schedule_once(lambda *_: on_done(), WALK_SECONDS)
            return "Motion sensor (game rate)"
        # walking again after a failed check replays another stretch: the same one would fail again
        series, label = recorded_walk(self.replay_data_dir, REPLAY_WALK_S, attempt=self.walks_replayed)
        self.walks_replayed += 1
        self.walk_source = ReplaySource(series, clock=self.clock, speed=self.walk_speed, on_done=on_done)
        self.walk_source.start(self.services.evidence.add)
        return f"Desktop: {label}"

    # ------------------------------------------------------------------ federated
    def federation_allowed(self) -> bool:
        """The consents let this app train (on the one modality it trains, `TRAINED_MODALITY`), and no erasure waits.

        The training consent must be to the current text: a grant of an earlier one (what it said
        about the updates was corrected) does not cover training until the person agrees again.
        """
        from mobile_client.federation import TRAINED_MODALITY

        p = self.services.profile
        return bool(p.federated and p.agreed_to_current(TRAINED_MODALITY, "federated_training")
                    and p.consented(TRAINED_MODALITY, "authentication") and not self.privacy.erase_waiting())

    def federation_status(self) -> str:
        from mobile_client.federation import TRAINED_MODALITY, status_text

        p = self.services.profile
        if p.federated and self.federation_error:
            return self.federation_error
        stopped = None
        if p.federated and self.privacy.erase_waiting():
            stopped = "Paused: your data is being erased; nothing is trained until your bank has confirmed it"
        elif p.federated and self.consent.outdated("federated_training"):
            stopped = TEXT_CHANGED
        elif p.federated and not self.federation_allowed():
            stopped = (f"On, but this computer trains only on your "
                       f"{MODALITY_TEXT[TRAINED_MODALITY].title.lower()}, which is off for training: "
                       "not taking part now")
        elif self.federation_stopped:
            stopped = "On: training stopped when you changed your choices; it starts again the next time you open Cadence"
        return status_text(p.federated, self.supernode, stopped)

    def start_federation(self) -> None:
        """Join the bank's federated rounds as a SuperNode for this device's own data, if allowed.

        Needs the person's federated-training consent and an operator SuperLink address in
        ``CADENCE_SUPERLINK`` (desktop builds; Android has no Flower, see docs/mobile.md).
        Windows are cut one recording at a time (`recording_windows`): stored event times of
        different boots are on different clocks.
        """
        import os

        from mobile_client.federation import FOLDER, TRAINED_MODALITY, recording_windows, start_supernode
        from mobile_client.platform_info import can_run_flower

        superlink = os.environ.get("CADENCE_SUPERLINK")
        if not (superlink and self.federation_allowed() and can_run_flower()):
            return
        from federated.deployment import DeploymentError  # desktop only: Android builds leave `federated` out

        self.federation_error = None
        try:
            windows = recording_windows(self.services.store, TRAINED_MODALITY)
            node = start_supernode(superlink, self.services.data_dir / FOLDER, windows, TRAINED_MODALITY,
                                   int(os.environ.get("CADENCE_SUPERNODE_PORT", "9401")))
            with self._federation_lock:
                closing = self._stopped
                if not closing:
                    self.supernode = node
            if closing:  # started by a job while the app closed: it must not outlive the app
                node.stop()
            self.federation_stopped = False
        except ValueError as exc:  # e.g. no typing recorded yet, or a bad port number: try next start
            log.warning("federated training not started: %s", exc)
        except (DeploymentError, FileNotFoundError) as exc:  # `find_bin`: no `cadence` where the app looks
            log.warning("federated training not started: %s", exc)
            self.federation_error = "On: training could not start on this computer (its training program is missing)"
        except (RuntimeError, OSError) as exc:  # RawStoreError too: the store's key opens none of its typing
            log.warning("federated training not started: %s", exc)
            self.federation_error = "On: training could not start on this computer; it is tried again next start"

    def stop_federation(self) -> bool:
        """Stop the SuperNode (and wait for it); True when one was running. Safe from any thread."""
        with self._federation_lock:
            node, self.supernode = self.supernode, None
        if node is None:
            return False
        node.stop()
        return True

    def _stop_training(self) -> None:
        """An erasure or a withdrawal: stop training now (the caller deletes the exported windows)."""
        if self.stop_federation():
            log.info("federated training stopped: consent withdrawn or data erased")
            self.federation_stopped = True

    def sync_federation(self) -> None:
        """Training as the consents now say: withdrawn, the SuperNode stops and its exported windows go.

        Newly allowed (a grant of the current text went through: the Privacy switch, agreeing again
        to a changed text, onboarding), it starts now as `on_start` does, not at the next start.
        Called after every background job (consent changes, "Delete my data", a settled erasure)
        and on close, whichever controller changed the consents. Never raises.
        """
        allowed = self.federation_allowed()
        became_allowed, self._federation_was_allowed = allowed and not self._federation_was_allowed, allowed
        if allowed:
            if became_allowed and self.supernode is None and not self._stopped:
                try:
                    self.start_federation()
                except Exception:  # noqa: BLE001 - the job asked for must still deliver its result
                    log.exception("could not start federated training")
            return
        try:
            self._stop_training()
            delete_federated_files(self.services)
        except Exception:  # noqa: BLE001 - the job asked for must still deliver its result
            log.exception("could not stop federated training")
