"""Screen classes: Kivy properties the .kv files show, and handlers that call controllers.

No feature computation and no HTTP here: every handler delegates to a controller and copies
the result into properties. A controller call that may go to the server runs off Kivy's main
thread (`CadenceApp.run_in_background`); its result is applied back on the main thread, and
the button that started it is disabled, with a label saying what is going on, until then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from kivy.app import App
from kivy.clock import Clock
from kivy.properties import (
    BooleanProperty,
    DictProperty,
    ListProperty,
    NumericProperty,
    ObjectProperty,
    StringProperty,
)
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.screenmanager import Screen

from mobile_client.api import ApiError
from mobile_client.controllers import consent as consent_text
from mobile_client.controllers import enrolment as enrol_mod
from mobile_client.controllers.transaction import InputError, evidence_text
from mobile_client.profile import PURPOSES
from mobile_client.ui import theme
from mobile_client.ui.widgets import Card, ConsentCard, ReasonRow, StatusRow
from modalities.events import MODALITIES

log = logging.getLogger(__name__)


def _app() -> Any:
    return App.get_running_app()


def _busy_button(button: Any, busy: bool, text: str) -> None:
    """Disable `button` and say what it waits for; `busy=False` restores the text it had."""
    if busy:
        if not hasattr(button, "_idle_text"):
            button._idle_text = button.text
        button.text, button.disabled = text, True
    else:
        button.text = getattr(button, "_idle_text", button.text)
        button.disabled = False


def tries_left(n: int) -> str:
    return f"{n} {'try' if n == 1 else 'tries'} left"


#: after a payment got no answer the bank may have recorded it: never say nothing was paid
NO_ANSWER = ("We could not get an answer from your bank, so this payment may have gone through. Paying the same "
             "payee and amount again from this phone re-sends the same payment, so it cannot be paid twice; "
             "or check with your bank.")


def ago(t: float | None, now: float | None = None) -> str:
    if t is None:
        return "not yet"
    s = max(0, int((now or time.time()) - t))
    when = time.strftime("%H:%M", time.localtime(t))
    if s < 60:
        return f"{when} (just now)"
    if s < 3600:
        return f"{when} ({s // 60} min ago)"
    return f"{when} ({s // 3600} h ago)"


class WelcomeScreen(Screen):
    #: what the person must read of work done out of sight (`CadenceApp.show_notice`): an app not set
    #: up yet starts here, and a notice taken to be shown must be shown where the person is
    notice = StringProperty("")

    def on_pre_enter(self, *_: Any) -> None:
        self.notice = _app().notice


class ConsentScreen(Screen):
    can_continue = BooleanProperty(False)
    error = StringProperty("")
    busy = BooleanProperty(False)

    def on_pre_enter(self, *_: Any) -> None:
        box = self.ids.cards
        if box.children and _app().services.profile.onboarded:
            return
        # not set up (first start, or after "Delete my data" left a fresh app): the cards show
        # what the phone holds now, never the choices made before the reset
        box.clear_widgets()
        current = _app().consent.current()
        for m in MODALITIES:
            txt = consent_text.TEXT[m]
            card = ConsentCard(modality=m, title=txt.title, what=txt.what, icon=txt.icon,
                               icon_colour=list(theme.MODALITY_COLOUR[m]),
                               auth=current[m]["authentication"], fed=current[m]["federated_training"])
            card.bind(auth=self._changed, fed=self._changed)
            box.add_widget(card)
        self._changed()

    def cards(self) -> dict[str, ConsentCard]:
        return {c.modality: c for c in self.ids.cards.children}

    def _changed(self, *_: Any) -> None:
        cards = self.cards().values()
        for c in cards:
            if not c.auth:
                c.fed = False
        self.can_continue = any(c.auth for c in cards)
        self._show_texts([q for q in PURPOSES if any(c.auth and (q == "authentication" or c.fed) for c in cards)])

    def _show_texts(self, purposes: list[str]) -> None:
        """The full text of each purpose chosen: "Agree and continue" records the grants under these texts."""
        box = self.ids.texts
        if [t.purpose for t in reversed(box.children)] == purposes:
            return
        box.clear_widgets()
        for q in purposes:
            box.add_widget(policy_card(q, PolicyText))

    def agree(self) -> None:
        if self.busy:
            return
        choices = {m: {"authentication": c.auth, "federated_training": c.fed} for m, c in self.cards().items()}
        consent = _app().consent
        self.error = ""
        self.busy = True
        _busy_button(self.ids.agree, True, "Saving your choices...")
        _app().run_in_background(lambda: consent.apply(choices), self._agreed)

    def _agreed(self, _result: Any, exc: BaseException | None) -> None:
        self.busy = False
        _busy_button(self.ids.agree, False, "")
        self.ids.agree.disabled = not self.can_continue
        if isinstance(exc, ApiError):
            self.error = exc.user_message
        elif isinstance(exc, ValueError):
            self.error = str(exc)
        elif exc is not None:
            log.error("saving consents failed on this phone", exc_info=exc)
            self.error = "Something went wrong on this phone. Please try again."
        else:
            _app().go("enrol")


class EnrolScreen(Screen):
    step = StringProperty("keystroke")
    passphrase = StringProperty(enrol_mod.PASSPHRASE)
    prompt = StringProperty(enrol_mod.FREE_TEXT_PROMPT)
    repeats_done = NumericProperty(0)
    repeats_needed = NumericProperty(enrol_mod.PASSPHRASE_REPEATS)
    swipes_needed = NumericProperty(enrol_mod.SWIPES_NEEDED)
    swipes_done = NumericProperty(0)
    progress = DictProperty({"keystroke": 0.0, "touch": 0.0, "gait": 0.0})
    quality = DictProperty({})
    message = StringProperty("")
    walk_source = StringProperty("")
    walking = BooleanProperty(False)
    walk_left = NumericProperty(enrol_mod.WALK_SECONDS)
    done = BooleanProperty(False)
    busy = BooleanProperty(False)
    steps = ListProperty([])
    _tick = ObjectProperty(None, allownone=True)

    def on_pre_enter(self, *_: Any) -> None:
        self.steps = _app().enrolment.todo()
        self._forget(self.steps)
        if self.steps and self.step not in self.steps:
            self.step = self.steps[0]
        self.start_step(self.step)

    def _forget(self, steps: list[str]) -> None:
        """Drop what this screen showed for `steps` (still to do): no stale "OK" row or finished walk.

        Set-up again after a reset or a revoked modality starts those tasks afresh, as the
        controller does (`EnrolmentController.begin`).
        """
        self.quality = {m: q for m, q in self.quality.items() if m not in steps}
        self.progress = {m: 0.0 if m in steps else v for m, v in self.progress.items()}
        for m in steps:
            if f"q_{m}" in self.ids:
                self.ids[f"q_{m}"].info = {}
        if "gait" in steps and not self.walking:
            self.walk_left = enrol_mod.WALK_SECONDS
        if "keystroke" in steps:
            self.repeats_done = 0
        if "touch" in steps:
            self.swipes_done = 0
        self.done = False

    def on_step(self, _w: Any, value: str) -> None:
        if "steps" in self.ids and self.ids.steps.has_screen(value):
            self.ids.steps.current = value

    def start_step(self, step: str) -> None:
        self.step = step
        self.on_step(self, step)
        self.message = ""
        if step in MODALITIES:
            _app().enrolment.begin(step)
        if step == "touch" and self._tick is None:
            self._tick = Clock.schedule_interval(self._poll_swipes, 0.2)

    def passphrase_entered(self, field: Any) -> None:
        ok = _app().enrolment.submit_passphrase(field.text)
        self.repeats_done = _app().enrolment.typed_passphrases
        self.message = "" if ok else "That did not match the phrase: please try again"
        field.text = ""
        self._typing_progress()
        if self.repeats_done < self.repeats_needed:
            Clock.schedule_once(lambda *_: setattr(field, "focus", True), 0)

    def free_text_changed(self, text: str) -> None:
        self._typing_progress(text)

    def _typing_progress(self, text: str | None = None) -> None:
        if text is None:
            text = self.ids.free_text.text if "free_text" in self.ids else ""
        p = dict(self.progress)
        p["keystroke"] = _app().enrolment.typing_progress(text)
        self.progress = p

    def _poll_swipes(self, _dt: float) -> None:
        if self.step != "touch":
            return
        p = dict(self.progress)
        p["touch"] = _app().enrolment.swipe_progress()
        self.progress = p
        self.swipes_done = round(p["touch"] * self.swipes_needed)

    def start_walk(self) -> None:
        # a walk (re)starts from here: an earlier stopped walk and the pause since do not count
        _app().enrolment.begin("gait")
        self.message = ""
        self.walking = True
        self.walk_source = _app().start_walk(on_done=self._walk_done)
        Clock.schedule_interval(self._poll_walk, 0.25)

    def _poll_walk(self, _dt: float) -> bool | None:
        p = dict(self.progress)
        p["gait"] = _app().enrolment.walk_progress()
        self.progress = p
        self.walk_left = max(0.0, enrol_mod.WALK_SECONDS * (1 - p["gait"]))
        return None if self.walking else False

    def _walk_done(self) -> None:
        self._poll_walk(0)
        self.walking = False
        if self.progress["gait"] < 1:
            self.message = (f"The walk stopped with {self.walk_left:.0f} s to go. "
                            "Tap Start walking to walk again.")

    def _reset_walk(self) -> None:
        """Back to before the walk: Start walking shows again and the next walk starts afresh."""
        app = _app()
        if app.walk_source is not None:
            app.walk_source.stop()
        self.walking = False
        app.enrolment.begin("gait")
        p = dict(self.progress)
        p["gait"] = 0.0
        self.progress = p
        self.walk_left = enrol_mod.WALK_SECONDS

    def check(self) -> None:
        """Quality check of the current task; move on when it passed or cannot be done on this phone."""
        self._poll_swipes(0) if self.step == "touch" else None
        rep = _app().enrolment.check(self.step)
        q = dict(self.quality)
        q[self.step] = {"ok": rep.ok, "message": rep.message, "usable": rep.usable, "quality": rep.mean_quality}
        self.quality = q
        self.ids[f"q_{self.step}"].info = q[self.step]
        self.message = rep.message + ("" if rep.ok else ".")
        if not rep.ok and self.step == "gait":  # walking again is the only way on: offer it
            self._reset_walk()
        if rep.ok or rep.unavailable:  # unavailable on this phone: set-up goes on without it
            nxt = self.steps.index(self.step) + 1
            self.start_step(self.steps[nxt] if nxt < len(self.steps) else "review")

    def finish(self) -> None:
        if self.busy:
            return
        self.busy = True
        self.message = "Sending your set-up to your bank..."
        _busy_button(self.ids.finish, True, "Sending...")
        _app().run_in_background(_app().enrolment.finish, self._finished)

    def _finished(self, sent: Any, exc: BaseException | None) -> None:
        self.busy = False
        _busy_button(self.ids.finish, False, "")
        if isinstance(exc, ApiError):
            log.warning("set-up not finished: %s", exc)
            self.message = f"Could not finish set-up. {exc.user_message}"
            return
        if exc is not None:
            log.error("set-up failed on this phone", exc_info=exc)
            self.message = "Could not finish set-up: something went wrong on this phone. Please try again."
            return
        self.done = True
        self.message = "Set up: " + ", ".join(f"{consent_text.TEXT[m].title.lower()} ({n})" for m, n in sent.items())
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        _app().go("home")


class HomeScreen(Screen):
    greeting = StringProperty("")
    last_sync = StringProperty("")
    collecting = ListProperty([])
    #: a consent change the bank refused after it waited (`CadenceApp.show_notice`)
    notice = StringProperty("")

    def on_pre_enter(self, *_: Any) -> None:
        self.refresh()

    def refresh(self) -> None:
        app = _app()
        p = app.services.profile
        hour = time.localtime().tm_hour
        part = "morning" if hour < 12 else "afternoon" if hour < 18 else "evening"
        self.greeting = f"Good {part}, {p.display_name}"
        self.last_sync = ago(p.last_sync or app.services.api.last_sync)
        self.notice = app.notice
        box = self.ids.status
        box.clear_widgets()
        for m in MODALITIES:
            on = p.consented(m)
            enrolled = m in p.enrolled
            detail = ("Active: only summaries leave this phone" if on and enrolled else
                      "Consented, not set up yet" if on else "Off: nothing is collected")
            box.add_widget(StatusRow(title=consent_text.TEXT[m].title, detail=detail, on=on,
                                     dot=list(theme.OK if on and enrolled else theme.WARN if on else theme.MUTED)))


class PayScreen(Screen):
    phase = StringProperty("form")  # form | checking | result
    outcome = StringProperty("")
    headline = StringProperty("")
    detail = StringProperty("")
    error = StringProperty("")
    code_hint = StringProperty("")
    evidence = StringProperty("")
    reasons = ListProperty([])
    risk = NumericProperty(0.0)
    transaction_id = StringProperty("")
    #: a payment went without an answer and may be recorded by the bank (Cancel reads "Back")
    unanswered = BooleanProperty(False)

    HEADLINES = {"approve": "Payment approved", "step_up": "One more check", "deny": "Payment blocked"}

    def on_phase(self, _w: Any, value: str) -> None:
        if "phases" in self.ids:
            self.ids.phases.current = "result" if value == "result" else "form"

    def pay(self) -> None:
        if self.phase == "checking":
            return
        self.error = ""
        self.phase = "checking"  # the kv disables the form and says "Checking it is you..."
        Clock.schedule_once(lambda *_: self._do_pay(), 0.05)

    def _do_pay(self) -> None:
        tc = _app().transaction
        amount, payee = self.ids.amount.text, self.ids.payee.text
        _app().run_in_background(lambda: tc.authorize(amount, payee), self._paid)

    def _paid(self, d: Any, exc: BaseException | None) -> None:
        tc = _app().transaction
        self.unanswered = isinstance(exc, ApiError) and exc.answer_unknown
        if exc is not None:
            self.phase = "form"
            if isinstance(exc, InputError):
                self.error = exc.message[0].upper() + exc.message[1:]
            elif isinstance(exc, ApiError):
                log.warning("payment not decided: %s", exc)
                # no answer (network, timeout, 5xx): the bank may have recorded it; a retry re-sends
                # the same payment (same idempotency key), so the bank answers with what it decided
                self.error = NO_ANSWER if exc.answer_unknown else exc.user_message
            else:  # a bug on this phone must not close the app mid-payment
                log.error("payment failed on this phone", exc_info=exc)
                self.error = ("Something went wrong on this phone. Check with your bank before paying again, "
                              "or tap Pay now to ask again.")
            return
        self.show(d.outcome, d.amount, d.currency, d.payee, tc.reasons_text(), d.risk, d.transaction_id)
        self.evidence = evidence_text(tc.evidence_summary)
        if d.outcome == "step_up" and tc.step_up is not None:
            self.code_hint = f"Enter the 6-digit code we sent to your phone.\n(Demo build: your code is {tc.step_up.code})"

    def show(self, outcome: str, amount: str, currency: str, payee: str, reasons: list[str], risk: float,
             transaction_id: str = "") -> None:
        symbol = {"GBP": "£", "EUR": "€", "USD": "$"}.get(currency, currency + " ")
        self.outcome = outcome
        self.headline = self.HEADLINES.get(outcome, outcome)
        self.detail = f"{symbol}{float(amount):,.2f} to {payee}"
        self.risk = risk
        self.transaction_id = transaction_id
        self.reasons = reasons
        box = self.ids.reasons
        box.clear_widgets()
        for r in reasons:
            box.add_widget(ReasonRow(text=r, colour=list(theme.OK if "matched" in r else theme.OUTCOME_COLOUR[outcome])))
        self.phase = "result"

    def verify(self) -> None:
        if self.ids.verify.disabled:
            return
        tc = _app().transaction
        code = self.ids.code.text
        _busy_button(self.ids.verify, True, "Checking the code...")
        _app().run_in_background(lambda: tc.verify_code(code), self._verified)

    def _verified(self, res: Any, exc: BaseException | None) -> None:
        tc = _app().transaction
        _busy_button(self.ids.verify, False, "")
        if isinstance(exc, InputError):
            self.error = exc.message[0].upper() + exc.message[1:]
            return
        if isinstance(exc, ApiError):
            log.warning("step-up not confirmed: %s", exc)
            if exc.code == "maybe_approved":  # the bank may have approved it: never "not approved"
                self.error = exc.user_message
            elif exc.answer_unknown:
                self.error = f"Not confirmed yet. {exc.user_message}"
            else:
                self.error = f"Not approved yet. {exc.user_message}"
            return
        if exc is not None:
            log.error("step-up failed on this phone", exc_info=exc)
            self.error = "Not approved yet: something went wrong on this phone. Please try again."
            return
        self.error = ""
        if res is True:
            self.outcome, self.headline = "approve", "Payment approved"
            self.code_hint = ""
        elif res is False:
            self.error = f"Wrong code: {tries_left(tc.step_up.attempts_left if tc.step_up else 0)}"
        else:
            self.outcome, self.headline, self.code_hint = "deny", "Payment blocked", ""
            self.error = "Too many wrong codes"

    def new_payment(self) -> None:
        """Cancel (form) or Done (result): an empty form for the next payment, then Home.

        While a payment is being decided nothing happens (the kv disables Cancel then too): its
        answer still has to be shown. After a payment got no answer, the bank may have recorded
        it, so Cancel is "Back" and does not forget it: paying the same payee and amount again
        re-sends that payment (same idempotency key), so it cannot go through twice.
        """
        if self.phase == "checking":
            return
        self.phase = "form"
        self.outcome = ""
        self.error = ""
        self.code_hint = ""
        self.ids.amount.text = ""
        self.ids.payee.text = ""
        self.ids.reference.text = ""
        self.unanswered = False
        _app().go("home")


class PendingSwitch:
    """The changes a switch sent that the bank has not answered yet, and the last one's value.

    A switch moved is compared with what the phone will hold once those are applied, not with
    what it holds now: switched back while one is in flight, the way back is sent too (after
    it) instead of being taken for "no change" and lost.
    """

    def __init__(self) -> None:
        self.in_flight = 0
        self.target = False

    def changed(self, value: bool, held: bool) -> bool:
        """Whether `value` differs from where the switch ends once the changes sent are applied."""
        return bool(value) != (self.target if self.in_flight else held)

    def start(self, value: bool) -> None:
        self.in_flight, self.target = self.in_flight + 1, bool(value)

    def finish(self) -> bool:
        """One change answered; True when none is left on its way."""
        self.in_flight -= 1
        return self.in_flight == 0

    def shown(self, held: bool) -> bool:
        """What the switch shows: where the person left it while a change is on its way, else what holds."""
        return self.target if self.in_flight else held


_TRAINING_PAUSED = ("This device takes no part in training until you have read the new text below and agreed to "
                    "it. If you do not agree, switch federated training off below.")
#: what the Privacy screen says above a consent text that changed since the person agreed to it, by the
#: version agreed to: (the first version the words no longer fit, the words); the newest fitting entry wins
CHANGED_NOTICE: dict[str, list[tuple[str, str]]] = {
    "federated_training": [
        # 2026-11-01 promised secure aggregation and noise that the system did not give then
        ("2026-12-06", "The text about helping improve the model has changed since you agreed to it: the earlier "
                       "one promised protections that Cadence did not give. " + _TRAINING_PAUSED),
        # 2026-12-06 and 2026-12-06b said the server reads each update; since 2026-12-06c it gets masked ones only
        ("2026-12-06c", "The text about helping improve the model has changed since you agreed to it: this device "
                        "now takes part only in training that combines updates with secure aggregation, and the "
                        "text says what that protects and what it relies on. " + _TRAINING_PAUSED),
    ],
}


def changed_notice(purpose: str, agreed: Iterable[str | None] = ()) -> str:
    """The plain words above a changed consent text, for the versions the person `agreed` to.

    The words must be true of what the person agreed to (an earlier text that promised less is
    not one "that promised protections Cadence does not give"): the oldest version agreed to picks
    them (`CHANGED_NOTICE`); a purpose without entries gets a general line.
    """
    what = consent_text.PURPOSE_TEXT.get(purpose, (purpose.replace("_", " "), ""))[0]
    oldest = min((v or "" for v in agreed), default="")
    for before, words in CHANGED_NOTICE.get(purpose, []):
        if oldest < before:
            return words
    return (f'The text about "{what}" has changed since you agreed to it: please read the new text below and '
            "agree to it again.")


def reflow(text: str) -> str:
    """A policy text as the label should wrap it: its files break lines at a fixed width (YAML `|`).

    Paragraphs (blank lines) and list items ("- ") keep their own lines; other breaks become spaces.
    """
    paragraphs = []
    for para in text.strip().split("\n\n"):
        lines: list[str] = []
        for line in para.splitlines():
            if lines and not line.lstrip().startswith("- "):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line.strip())
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


#: what the Privacy screen says above the training text when the switch turns training on
TRAINING_NOTICE = ("Read what you agree to before this device takes part in training. Nothing changes until you "
                   "agree; Cancel leaves federated training off.")
#: the training line while that text waits for an answer
TRAINING_ASKED = "Off until you agree to the text below"


class PolicyText(BoxLayout):
    """A consent text in full, as the person agrees to it: its title and text (theme.kv)."""

    purpose = StringProperty("")
    title = StringProperty("")
    body = StringProperty("")


class PolicyChange(Card):
    """A consent text to agree to before a grant is recorded under it (privacy.kv, with a `PolicyText`).

    Two uses, one card: a text that changed since the person agreed to it (agree again), and the
    text of a purpose being switched on (agree or cancel, `can_cancel`). Its buttons fire
    `on_agree` / `on_cancel`.
    """

    __events__ = ("on_agree", "on_cancel")
    purpose = StringProperty("")
    heading = StringProperty("A text you agreed to has changed")
    notice = StringProperty("")
    title = StringProperty("")
    body = StringProperty("")
    modalities = ListProperty([])
    can_cancel = BooleanProperty(False)

    def on_agree(self) -> None:
        pass

    def on_cancel(self) -> None:
        pass


def policy_card(purpose: str, widget: type[Any] = PolicyChange, **kw: Any) -> Any:
    """A `widget` (`PolicyChange`, `PolicyText`) holding the current text of `purpose` (`mobile_client.policy`)."""
    from mobile_client.policy import policy

    text = policy(purpose)
    return widget(purpose=purpose, title=text.title, body=reflow(text.text), **kw)


class PrivacyScreen(Screen):
    items = ListProperty([])
    federated = BooleanProperty(False)
    federated_status = StringProperty("")
    deleted = StringProperty("")
    confirm_delete = BooleanProperty(False)
    busy = BooleanProperty(False)
    #: a consent change the bank refused after it waited (`CadenceApp.show_notice`)
    notice = StringProperty("")

    def __init__(self, **kw: Any) -> None:
        #: federated-training changes on their way to the bank (set first: the kv rules may move the switch)
        self.federated_pending = PendingSwitch()
        super().__init__(**kw)

    def on_pre_enter(self, *_: Any) -> None:
        self.refresh()

    def on_leave(self, *_: Any) -> None:
        self.cancel_training_text()  # leaving without agreeing grants nothing

    def refresh(self, settle: bool = True) -> None:
        """Show what is stored (read on this phone only); an erasure that waits is settled by a worker job."""
        app = _app()
        if settle and app.privacy.erase_waiting():
            app.run_in_background(lambda: None, _logged("settling the erasure"))
        self.notice = app.notice  # a refused erasure's message among them (`settle_pending_erase`)
        # while a change is on its way the switch stays where the person put it (else moving it back
        # here would send a change of its own)
        self.federated = self.training_switch()
        if not (self.federated_pending.in_flight or self.asking_training()):
            self.federated_status = app.federation_status()
        self.show_changed_texts()
        self.show_stored()
        sw = self.ids.consents
        sw.clear_widgets()
        for m in MODALITIES:
            row = _consent_switch_row(m, app.services.profile.consented(m))
            sw.add_widget(row)

    def show_stored(self) -> None:
        """What is stored (read on this phone only)."""
        self.items = [(i.label, i.detail) for i in _app().privacy.stored()]
        box = self.ids.stored
        box.clear_widgets()
        for label, detail in self.items:
            box.add_widget(StatusRow(title=label, detail=detail, on=True, dot=list(theme.PRIMARY)))

    def show_refused(self) -> None:
        """A waiting consent change was refused and undone: the notice, the switches, what is stored, training.

        Rows are kept, not rebuilt: one whose change is still on its way is moved by its own answer.
        """
        self.notice = _app().notice
        profile = _app().services.profile
        for row in self.ids.consents.children:
            pending = row.__dict__.get("pending_switch")
            if "modality" in row.__dict__ and not (pending is not None and pending.in_flight):
                on = profile.consented(row.modality)
                row.hint = _consent_hint(on)
                row.switch.active = on  # where the phone already is: sends nothing (`_on_consent`)
        self.show_stored()
        self.show_federation()

    def show_federation(self) -> None:
        """The training switch and line as they now hold (a consent change may have stopped training)."""
        self.show_changed_texts()
        if self.federated_pending.in_flight or self.asking_training():  # their own answer updates them
            return
        self.federated = _app().privacy.federated_on()
        self.federated_status = _app().federation_status()

    def training_switch(self) -> bool:
        """Where the training switch stands: on while its text waits for an answer, else `PendingSwitch.shown`."""
        return self.asking_training() or self.federated_pending.shown(_app().privacy.federated_on())

    def asking_training(self) -> bool:
        """The training text is shown, waiting for agree or cancel (`ask_training_text`)."""
        return bool(self.ids.ask.children)

    def show_changed_texts(self) -> None:
        """A card for each consent text that changed since the person agreed to it: the new text, and agree.

        A grant of an earlier text does not cover what the current one says (federated training
        pauses, `CadenceApp.federation_allowed`); agreeing again grants under the current text.
        """
        box = self.ids.changed
        box.clear_widgets()
        for purpose in PURPOSES:
            modalities = _app().consent.outdated(purpose)
            if modalities:
                profile = _app().services.profile
                agreed = [profile.agreed_version(m, purpose) for m in modalities]
                card = policy_card(purpose, notice=changed_notice(purpose, agreed), modalities=modalities)
                card.bind(on_agree=self.reagree)
                box.add_widget(card)

    def reagree(self, card: Any) -> None:
        """The person read a changed text and agreed: grant again under it, sent to the bank like any grant."""
        purpose, modalities = card.purpose, list(card.modalities)
        _busy_button(card.ids.agree, True, "Saving...")
        consent = _app().consent

        def done(results: Any, exc: BaseException | None) -> None:
            _logged("agreeing to a changed text")(results, exc)
            self.show_federation()
            refused = [r for r in results or [] if not r.applied]
            if exc is not None or refused:  # the card stays, with why it did not go through
                self.federated_status = (refused[0].message if refused else
                                         "Not changed: something went wrong on this phone. Please try again.")

        _app().run_in_background(lambda: consent.reagree(purpose, modalities), done,
                                 intent=lambda doubt: consent.intend_reagree(purpose, modalities, in_doubt=doubt))

    def set_consent(self, modality: str, on: bool) -> None:
        consent = _app().consent

        def done(result: Any, exc: BaseException | None) -> None:
            _logged("consent change")(result, exc)
            self.show_federation()

        _app().run_in_background(lambda: consent.set(modality, "authentication", on), done,
                                 intent=lambda doubt: consent.intend(modality, "authentication", on, in_doubt=doubt))

    def set_federated(self, on: bool) -> None:
        """The federated-training switch moved: off is sent at once; on shows the training text first.

        A grant is recorded as agreement to the current text, so it is sent only once the person
        read that text and agreed (`ask_training_text`). Changes go after any still on their way
        (`PendingSwitch`).
        """
        if not on:
            self.cancel_training_text()
        if not self.federated_pending.changed(on, _app().privacy.federated_on()):
            return
        if on:
            self.ask_training_text()
        else:
            self._send_federated(False)

    def ask_training_text(self) -> None:
        """Show the federated-training text with agree / cancel; the switch stays on until the answer."""
        self.federated = True
        self.federated_status = TRAINING_ASKED
        if self.asking_training():
            return
        card = policy_card("federated_training", heading="Before you switch training on", notice=TRAINING_NOTICE,
                           can_cancel=True)
        card.bind(on_agree=lambda _card: self._agreed_to_training(), on_cancel=lambda _card: self.cancel_training_text())
        self.ids.ask.add_widget(card)

    def cancel_training_text(self) -> None:
        """Close the training text without agreeing: nothing is sent and the switch shows what holds."""
        if not self.asking_training():
            return
        self.ids.ask.clear_widgets()
        self.federated = self.training_switch()
        if not self.federated_pending.in_flight:
            self.federated_status = _app().federation_status()

    def _agreed_to_training(self) -> None:
        self.ids.ask.clear_widgets()
        self._send_federated(True)

    def _send_federated(self, on: bool) -> None:
        """Send a federated-training change to the bank (a grant only after its text was agreed to)."""
        self.federated_pending.start(on)
        self.federated = on
        self.federated_status = "Saving..."
        _app().show_notice("")  # the person chose again: a refusal's notice has been answered
        privacy = _app().privacy
        _app().run_in_background(lambda: privacy.set_federated(on), self._federated_set,
                                 intent=lambda doubt: [_app().consent.intend(m, "federated_training", on, in_doubt=doubt)
                                                       for m in _app().consent.active_modalities()] and None)

    def _federated_set(self, results: Any, exc: BaseException | None) -> None:
        if not self.federated_pending.finish():  # a later change is on its way: the switch stays as left
            return
        self.show_changed_texts()
        if self.asking_training():  # switched on again meanwhile: its text waits for an answer
            return
        self.federated = _app().privacy.federated_on()
        self.federated_status = _app().federation_status()
        if exc is not None:
            log.error("federated training switch failed on this phone", exc_info=exc)
            self.federated_status = "Not changed: something went wrong on this phone. Please try again."
            return
        refused = [r for r in results or [] if not r.applied]
        if refused:  # the bank said no (for one modality or more): say why, with what holds now
            self.federated_status = refused[0].message

    def delete(self) -> None:
        if self.busy:
            return
        if not self.confirm_delete:
            self.confirm_delete = True
            return
        self.busy = True
        _busy_button(self.ids.delete, True, "Deleting...")
        _app().run_in_background(_app().privacy.delete_my_data, self._deleted, intent=lambda _doubt: _app().privacy.intend_delete())

    def _deleted(self, text: Any, exc: BaseException | None) -> None:
        self.busy = False
        _busy_button(self.ids.delete, False, "")
        self.confirm_delete = False
        if exc is not None:
            log.error("deleting data failed on this phone", exc_info=exc)
            self.deleted = "Something went wrong on this phone while deleting. Please try again."
        else:
            self.deleted = str(text)
        self.refresh()


def _consent_hint(on: bool) -> str:
    """A Privacy consent switch's line when its change simply went through (or nothing is on its way)."""
    return "Used to confirm it's you" if on else "Off: not collected"


def _consent_switch_row(modality: str, on: bool) -> Any:
    from kivy.factory import Factory

    row = Factory.SwitchRow(label=consent_text.TEXT[modality].title,
                            hint=_consent_hint(on))
    sw = Factory.PillSwitch(active=on, pos_hint={"center_y": 0.5})
    sw.bind(active=lambda w, v, m=modality: _on_consent(m, v, row, w))
    row.add_widget(sw)
    row.modality, row.switch = modality, sw  # `PrivacyScreen.show_refused` puts it where the phone is
    return row


def _on_consent(modality: str, value: bool, row: Any, switch: Any = None) -> None:
    """A Privacy consent switch moved: send the change; the switch shows what holds afterwards.

    A switch put back (a refused change, or by hand to where it was) sends nothing. The hint
    says what happened unless it simply went through: waiting for the bank, refused and why,
    or on but to be set up again first. "Where it was" is what the phone will hold once the
    changes already sent are applied: switched back while one is in flight, the way back is
    sent too (after it), not taken for "no change".
    """
    profile = _app().services.profile
    pending = row.__dict__.setdefault("pending_switch", PendingSwitch())  # one per row, made on its first move
    if not pending.changed(value, profile.consented(modality)):
        return
    row.hint = "Saving..."
    consent = _app().consent
    pending.start(value)
    _app().show_notice("")  # the person chose again: a refusal's notice has been answered

    def done(result: Any, exc: BaseException | None) -> None:
        _logged("consent change")(None, exc)
        sm = _app().sm
        if sm is not None and sm.has_screen("privacy"):  # revoking also revokes training: show what holds
            sm.get_screen("privacy").show_federation()
        p = _app().services.profile
        if pending.finish() and switch is not None:
            # what the phone holds once every change asked for was applied (or refused); putting the
            # switch there sends nothing (see above), even after a quick off-then-on
            switch.active = p.consented(modality)
        if exc is not None:  # a bug on this phone: the switch shows what the phone holds
            row.hint = "Not changed: something went wrong on this phone. Please try again."
            return
        on = bool(result.consents["authentication"])
        if result.state != "saved" or result.dropped_payment or (on and modality not in p.enrolled):
            row.hint = result.message
        else:
            row.hint = _consent_hint(on)

    _app().run_in_background(lambda: consent.set(modality, "authentication", value), done,
                             intent=lambda doubt: consent.intend(modality, "authentication", value, in_doubt=doubt))


def _logged(what: str) -> Any:
    def done(_result: Any, exc: BaseException | None) -> None:
        if exc is not None:
            log.error("%s failed on this phone", what, exc_info=exc)
    return done
