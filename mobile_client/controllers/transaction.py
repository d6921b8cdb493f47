"""A payment: gather recent evidence, extract features on the device, ask the server, explain."""

from __future__ import annotations

import logging
import re
import secrets
import unicodedata
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from mobile_client import features
from mobile_client.api import ApiError, Decision
from mobile_client.services import AppServices
from modalities.events import FeatureWindow

log = logging.getLogger(__name__)
#: most windows of one modality a confirmed transaction adapts (`server.services.enrolment.ADAPT_MAX_WINDOWS`)
ADAPT_MAX_WINDOWS = 8

#: evidence a transaction sends: recent keys, swipes and walking, never any already sent
EVIDENCE_KEYS = 100
#: swipes per payment: what one decision reads (`modalities.touch.DECISION_WINDOWS`); fewer are not sent
EVIDENCE_SWIPES = features.decision_swipes()
EVIDENCE_WALK_S = 15.0
#: keys and swipes older than this (seconds before now) are not recent behaviour
EVIDENCE_MAX_AGE_S = 300.0

#: reason codes that say something about the whole request, not one modality
GENERAL_TEXT = {
    "no_evidence": "No recent behaviour could be checked on this phone",
    "locked": "Your account is now locked after several failed checks; please contact your bank",
}
#: "no_evidence" when the payment did carry samples: the server could use none of them (each
#: modality's own reason above says why: too little evidence, being updated, not set up)
NO_USABLE_EVIDENCE = "None of these samples could count this time, so your bank asks for one more check"
#: per-modality reason codes; exact codes first, then the first key contained in an unknown code
REASON_TEXT = {
    "strong_mismatch": "{m} did not match your usual pattern",
    "low_score": "{m} did not match your usual pattern",
    "mismatch": "{m} did not match your usual pattern",
    "strong_match": "{m} matched your usual pattern",
    "high_score": "{m} matched your usual pattern",
    "match": "{m} matched your usual pattern",
    "no_evidence": "No recent {m} evidence",
    "missing": "No recent {m} evidence",
    "low_quality": "Too little {m} evidence to be sure",
    "too_few_for_decision": "Too little recent {m} to check this time",
    "not_enrolled": "{m} is not set up yet",
    "reenrolment_required": "{m} needs setting up again before it can be used",
    "replay": "{m} evidence was seen before",
    "implausible": "{m} evidence looked automated",
    "uncorroborated": "{m} rested on one signal; this amount needs two that agree",
    "uncalibrated": "{m} is being updated and was not used this time",
    "locked": "Your account is now locked after several failed checks; please contact your bank",
}
#: what one evidence window of each modality is, in words (singular, plural)
EVIDENCE_NOUNS = {"keystroke": ("typing sample", "typing samples"), "touch": ("swipe", "swipes"),
                  "gait": ("walking sample", "walking samples")}


def evidence_text(summary: dict[str, int]) -> str:
    """'Checked on this phone: 2 typing samples, 3 swipes, 1 walking sample' (or that none was)."""
    parts = [f"{n} {EVIDENCE_NOUNS[m][n != 1]}" for m, n in summary.items() if n and m in EVIDENCE_NOUNS]
    return "Checked on this phone: " + ", ".join(parts) if parts else "No recent behaviour to check"


MODALITY_WORDS = {"keystroke": "Typing rhythm", "touch": "Swiping", "gait": "Walking pattern",
                  "fusion": "Overall evidence", "policy": "Payment rules", "amount": "The amount"}


class InputError(ValueError):
    """A form field is wrong; `field` names it for the screen."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_amount(text: str) -> str:
    """'1,250.5' -> '1250.50'; refuses anything that is not a positive amount in pounds."""
    cleaned = re.sub(r"[£$€,\s]", "", text or "")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        raise InputError("amount", "enter an amount like 250.00") from None
    if not value.is_finite() or value <= 0:
        raise InputError("amount", "must be more than zero")
    if value.as_tuple().exponent < -2:  # type: ignore[operator]
        raise InputError("amount", "at most two decimal places")
    if value > Decimal("1000000"):
        raise InputError("amount", "above this app's limit of 1,000,000")
    return f"{value:.2f}"


def parse_payee(text: str) -> str:
    """The payee as the bank takes it: spaces collapsed, NFC (a pasted "Cafe" + combining accent is "Café")."""
    payee = unicodedata.normalize("NFC", " ".join((text or "").split()))
    if not payee:
        raise InputError("payee", "who are you paying?")
    if len(payee) > 128:
        raise InputError("payee", "at most 128 characters")
    return payee


def explain(reason: Mapping[str, object], evidence_sent: bool = False) -> str:
    """A server reason code in words a customer understands (never a bare code or 'none').

    `evidence_sent`: the request carried samples. The server says "no_evidence" when no
    modality counted (fusion.policy.decide: each was low quality, uncalibrated, not set up or
    had no samples), which is not "nothing was checked" when samples were sent.
    """
    code = str(reason.get("code", ""))
    modality = str(reason.get("modality", ""))
    if modality in ("", "none"):
        if code == "no_evidence" and evidence_sent:
            return NO_USABLE_EVIDENCE
        return GENERAL_TEXT.get(code) or code.replace("_", " ").capitalize() or "No reason given"
    m = MODALITY_WORDS.get(modality, modality.replace("_", " ").capitalize())
    template = REASON_TEXT.get(code) or next((t for key, t in REASON_TEXT.items() if key in code), None)
    if template is None:
        return f"{m}: {code.replace('_', ' ')}"
    return template.format(m=m) if template.startswith("{m}") else template.format(m=m.lower())


@dataclass
class StepUp:
    """A one-time code the bank sent (simulated: in production it arrives by SMS or push)."""

    transaction_id: str
    code: str
    attempts_left: int = 3
    #: a report of the right code got no answer (lost, 5xx, unreadable): the bank may have approved it
    unanswered: bool = False


#: the live controllers, so a consent withdrawal reaches the windows they hold (`forget_modality`)
_CONTROLLERS: weakref.WeakSet[TransactionController] = weakref.WeakSet()


def forget_modality(services: AppServices, modality: str) -> int:
    """A consent to `modality` was withdrawn: the payment controllers of `services` drop its held windows.

    Returns how many windows were dropped (those a step-up waiting for its code would adapt with).
    """
    return sum(tc.forget_modality(modality) for tc in list(_CONTROLLERS) if tc.s is services)


class TransactionController:
    def __init__(self, services: AppServices) -> None:
        self.s = services
        self.last: Decision | None = None
        self.step_up: StepUp | None = None
        self.evidence_summary: dict[str, int] = {}
        #: the last authorize call's evidence, kept until it is confirmed (or the next call)
        self._sent: list[FeatureWindow] = []
        services.reset_hook(self.forget)
        _CONTROLLERS.add(self)

    def forget(self) -> None:
        """The app was reset ("Delete my data"): nothing of an earlier payment is kept."""
        self.last = None
        self.step_up = None
        self.evidence_summary = {}
        self._sent = []

    def forget_modality(self, modality: str) -> int:
        """Drop the held windows of `modality` (its consent was withdrawn): they are never sent again."""
        kept = [w for w in self._sent if w.modality != modality]
        dropped, self._sent = len(self._sent) - len(kept), kept
        return dropped

    def gather_evidence(self) -> list[FeatureWindow]:
        """Feature windows of recent behaviour of each consented, enrolled modality.

        Only behaviour newer than anything already sent (enrolment or an earlier payment) and
        recent by the collectors' clock: the server refuses a window twice. A modality whose
        events cannot be turned into features is left out (logged), never a failed payment.
        """
        ev = self.s.evidence
        sources: dict[str, Callable[[], list[FeatureWindow]]] = {
            "keystroke": lambda: features.keystroke_windows(ev.keys(EVIDENCE_KEYS, EVIDENCE_MAX_AGE_S),
                                                    n_keys=features.KEYS_PER_WINDOW, hop=features.KEYS_PER_WINDOW),
            "touch": lambda: features.recent_swipes(ev.touches(None, EVIDENCE_MAX_AGE_S), EVIDENCE_SWIPES),
            "gait": lambda: features.gait_windows(ev.accel(EVIDENCE_WALK_S)),
        }
        out: list[FeatureWindow] = []
        for m, make in sources.items():
            if m not in self.s.profile.enrolled or not self.s.profile.consented(m):
                continue
            try:
                out += features.usable(make())
            except (ValueError, ArithmeticError) as exc:
                log.warning("%s evidence left out of this payment: %s", m, exc)
        out = ev.unsent(out)
        self.evidence_summary = {m: sum(w.modality == m for w in out) for m in ("keystroke", "touch", "gait")}
        return out

    def authorize(self, amount_text: str, payee_text: str, currency: str = "GBP") -> Decision:
        """Ask the bank to decide one payment, with the recent behaviour gathered now.

        A retry of a payment whose answer was lost re-sends that payment's first body
        (`ApiClient.authorize`), so what the bank received is `Decision.evidence`, not what was
        gathered this time: those windows are the ones noted as sent, adapted with after an
        approval and counted on the screen. The windows gathered now stay unsent for later.
        """
        from mobile_client.controllers.privacy import erase_pending

        amount = parse_amount(amount_text)
        payee = parse_payee(payee_text)
        if erase_pending(self.s):
            raise InputError("erase", "your data is being erased, so payments from this phone are paused until "
                                      "your bank confirms it. Open Privacy to see how it stands.")
        windows = self.gather_evidence()
        held = self.s.api.held_payment(amount, currency, payee)
        try:
            d = self.s.api.authorize(amount, currency, payee, windows)
        except ApiError as exc:
            if exc.status == 409:  # the server has seen (some of) these windows: never offer them again
                self.s.evidence.note_sent(held.evidence if held is not None else windows)
            raise
        sent = list(d.evidence)
        self.s.evidence.note_sent(sent)
        self.evidence_summary = {m: sum(w.modality == m for w in sent) for m in ("keystroke", "touch", "gait")}
        self.last = d
        self._sent = sent
        self.step_up = StepUp(d.transaction_id, f"{secrets.randbelow(10**6):06d}") if d.outcome == "step_up" else None
        if d.outcome == "approve":
            self.adapt(d.transaction_id)
        self.s.evidence.flush()  # a full disk keeps the recordings in memory (logged), never raises
        try:
            self.s.save_profile()
        except OSError as exc:  # only its last-sync time: the bank's decision is shown all the same
            log.warning("the profile could not be saved after payment %s: %s", d.transaction_id, exc)
        return d

    def adapt(self, transaction_id: str) -> bool:
        """Re-send a confirmed transaction's evidence so the templates follow the user's drift.

        Controlled adaptation: the server accepts exactly the windows that approved call
        carried, once. A refusal (e.g. the bank has not yet confirmed a step-up) costs
        nothing but the adaptation, so it is logged, not raised. Only windows of modalities still
        consented as it sends go: a consent withdrawn while a step-up waited for its code drops its own.
        """
        windows, self._sent = self._sent, []
        # only a modality whose own evidence matched in the decision adapts, at most 8 windows of
        # it per transaction (the server refuses the rest: 409 not_matched_evidence, adaptation_limit)
        matched = {r.get("modality") for r in (self.last.reasons if self.last else [])
                   if r.get("code") in ("match", "strong_match") and self.s.profile.consented(str(r.get("modality")))}
        per: dict[str, list[FeatureWindow]] = {}
        for w in windows:
            if w.modality in matched:
                per.setdefault(w.modality, []).append(w)
        windows = [w for ws in per.values() for w in ws[:ADAPT_MAX_WINDOWS]]
        if not windows:
            return False
        try:
            self.s.api.enrol(windows, confirmed_transaction_id=transaction_id)
        except ApiError as exc:
            log.warning("template adaptation with transaction %s refused: %s", transaction_id, exc)
            return False
        return True

    def verify_code(self, code: str) -> bool | None:
        """True: the server approved the payment; False: wrong code, try again; None: denied.

        A right code counts as approved only once the server says so: when the report fails
        (unreachable, refused, no bank key on this build) this raises `ApiError` and the step-up
        stays pending, so the person can try again and is never told a refused payment went
        through. A retry refused as `not_pending` after a report that got no answer (the bank
        may have approved with that one) looks the transaction up (`ApiClient.transaction`): an
        approved record counts as approved; when it cannot be looked up, `ApiError` with the code
        `maybe_approved` says the payment may already be approved, never that it was not.
        """
        if self.step_up is None:
            raise InputError("code", "no extra check is pending")
        code = (code or "").strip()
        if not re.fullmatch(r"\d{6}", code):
            raise InputError("code", "the code has 6 digits")
        tx_id = self.step_up.transaction_id
        if not secrets.compare_digest(code, self.step_up.code):
            self.step_up.attempts_left -= 1
            if self.step_up.attempts_left > 0:
                return False
            self.step_up = None
            try:
                self.s.api.complete_step_up(tx_id, False)
            except ApiError as exc:  # blocked here either way; the bank's record stays pending
                log.warning("could not report the failed step-up of %s: %s", tx_id, exc)
            return None
        try:
            reply = self.s.api.complete_step_up(tx_id, True)
        except ApiError as exc:
            if exc.code == "not_pending" and (exc.in_doubt or self.step_up.unanswered):
                reply = self._look_up(tx_id)  # a report without an answer may have been the one that settled it
            else:
                if exc.answer_unknown:
                    self.step_up.unanswered = True
                raise
        if not (isinstance(reply, dict) and str(reply.get("status", "")).startswith("approved")):
            raise ApiError(f"step-up of {tx_id}: the server did not approve ({reply!r})", 409,
                           {"detail": "the bank did not confirm this payment", "code": "not_confirmed"})
        self.step_up = None
        self.adapt(tx_id)
        return True

    def _look_up(self, tx_id: str) -> Any:
        """The bank's record of a step-up whose report got no answer and which no longer waits for a code.

        Raises `ApiError` with the code `maybe_approved` when it cannot be looked up: the payment
        may have been approved, and the person is told to check, never that it was not approved.
        """
        try:
            record = self.s.api.transaction(tx_id)
        except ApiError as exc:
            log.warning("step-up of %s: its report got no answer and the transaction could not be looked up: %s",
                        tx_id, exc)
            raise ApiError(f"step-up of {tx_id}: no longer pending after a report without an answer", 409,
                           {"detail": "the payment may already be approved", "code": "maybe_approved"}) from exc
        if not isinstance(record, dict):
            raise ApiError(f"step-up of {tx_id}: unreadable transaction record", 409,
                           {"detail": "the payment may already be approved", "code": "maybe_approved"})
        log.info("step-up of %s: its report got no answer; the bank's record says %s", tx_id, record.get("status"))
        return record

    def reasons_text(self) -> list[str]:
        sent = any(self.evidence_summary.values())
        return [explain(r, sent) for r in (self.last.reasons if self.last else [])]
