"""Consent per modality and purpose, in plain language, revocable at any time."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mobile_client.api import ROUTES, ApiError, FlushReport, Outcome, Queued
from mobile_client.controllers.transaction import forget_modality
from mobile_client.profile import PURPOSES, Profile
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
                       "Summaries leave this phone when you set up, when you pay, and to keep your "
                       "pattern up to date after an approved payment."),
    # what the consent text says (compliance/policies/federated_training.yaml): no privacy promise beyond it
    "federated_training": ("Help improve the model",
                           "Your device trains on your own data and sends the bank its updated model and a summary "
                           "of your measurements; never your recordings."),
}


@dataclass(frozen=True)
class ConsentResult:
    """What became of one consent change, in words for the screen.

    `state`: "saved" (the bank recorded it), "queued" (kept on this phone and sent when the
    bank can be reached: offline, 5xx, 429) or "refused" (the bank said no: nothing changed
    here either). `consents` is what this phone now holds for the modality.
    """

    modality: str
    purpose: str
    granted: bool
    state: str
    message: str
    consents: dict[str, bool]
    #: a payment held without an answer carried this modality's samples and was let go
    dropped_payment: bool = False

    @property
    def applied(self) -> bool:
        return self.state != "refused"


class ConsentRefused(ApiError):
    """Onboarding could not put every chosen consent on record with the bank."""

    @property
    def user_message(self) -> str:
        return str(self.args[0])


class ConsentController:
    """Reads and changes consents; a change counts here only once the bank took it (or it waits).

    The phone and the bank must agree on what was consented to: the local switch changes only
    when the server recorded the change, or when it is queued because the server could not be
    reached or could not take it yet (network error, 5xx, 429: sent before any later request).
    A refusal (4xx) changes nothing and says why; a queued change the bank refuses when it is
    sent is undone here then (`undo_refused`), and the app says which and why (`AppServices.notices`).
    """

    def __init__(self, services: AppServices) -> None:
        self.s = services

    def current(self) -> dict[str, dict[str, bool]]:
        return {m: dict(self.s.profile.consents[m]) for m in MODALITIES}

    def set(self, modality: str, purpose: str, granted: bool) -> ConsentResult:
        """Change one consent; revoking authentication also revokes federated training.

        Federated training trains on the windows this phone collects for authentication, so
        without that consent there is nothing to train on: the app revokes both, and sends both
        changes (federated training first), so the bank's record says what the phone does.
        Revoking authentication removes the modality from `profile.enrolled` (the server deletes
        its templates): switching it on again needs that modality's set-up task. It also stops its
        collection and deletes its raw events on this phone, in memory and stored
        (`forget_recordings`), once the change is recorded or queued (a refusal deletes nothing).
        """
        if modality not in MODALITIES:
            raise ValueError(f"modality: unknown {modality!r}")
        if purpose not in PURPOSES:
            raise ValueError(f"purpose: unknown {purpose!r}")
        granted = bool(granted)
        changes = [(modality, purpose, granted)]
        if purpose == "authentication" and not granted and self.s.profile.consented(modality, "federated_training"):
            changes.insert(0, (modality, "federated_training", False))
        states: list[str] = []
        for m, p, g in changes:
            try:
                states.append(self._send(m, p, g, queue=True))
            except ApiError as exc:
                log.warning("consent change refused by server: %s", exc)
                self._save()
                return ConsentResult(modality, purpose, granted, "refused",
                                     f"Not changed. {exc.user_message}", dict(self.s.profile.consents[modality]))
        self._save()
        state = "queued" if "queued" in states else "saved"
        message = self._message(modality, purpose, granted, state)
        dropped = []
        if purpose == "authentication" and not granted:
            message += " Its recordings on this phone were deleted."
            # a held payment re-sends its samples, and a step-up's code adapts with them: none of a
            # modality the person has withdrawn
            forget_modality(self.s, modality)
            dropped = self.s.api.drop_held_payments(modality)
            if dropped:
                log.info("%d held payment(s) with %s samples let go: consent revoked", len(dropped), modality)
                message += (" A payment that got no answer from your bank used these samples and will not be "
                            "sent again: check with your bank whether it went through before paying again.")
        return ConsentResult(modality, purpose, granted, state, message, dict(self.s.profile.consents[modality]),
                             bool(dropped))

    def outdated(self, purpose: str) -> list[str]:
        """The modalities whose `purpose` consent was given under an earlier text than the current one.

        Such a grant does not cover what the current text describes: the app asks to agree again.
        """
        p = self.s.profile
        return [m for m in MODALITIES if p.consented(m, purpose) and not p.agreed_to_current(m, purpose)]

    def reagree(self, purpose: str, modalities: list[str] | None = None) -> list[ConsentResult]:
        """Grant again, under the current text, the `purpose` consents given under an earlier one.

        Sent to the bank like any grant. `modalities`: those the person was shown (default: all);
        one withdrawn since is not granted again.
        """
        return [self.set(m, purpose, True) for m in self._to_reagree(purpose, modalities)]

    def intend_reagree(self, purpose: str, modalities: list[str] | None = None, *, in_doubt: bool = False) -> None:
        """`reagree` for a job the app closed before it ran (see `intend`)."""
        for m in self._to_reagree(purpose, modalities):
            self.intend(m, purpose, True, in_doubt=in_doubt)

    def _to_reagree(self, purpose: str, modalities: list[str] | None) -> list[str]:
        return [m for m in self.outdated(purpose) if modalities is None or m in modalities]

    def _message(self, modality: str, purpose: str, granted: bool, state: str) -> str:
        if state == "queued":
            return ("Changed on this phone. Your bank has not received this change yet: it is sent "
                    "as soon as your bank can be reached.")
        if purpose == "authentication" and granted and modality not in self.s.profile.enrolled:
            return "On. Set it up again from Home before it can confirm payments."
        return "Saved with your bank."

    def intend(self, modality: str, purpose: str, granted: bool, *, in_doubt: bool = False) -> None:
        """Keep a change the app closed before sending: it waits in the outbox and counts here.

        The app calls this for a consent job that never ran (closed first); the outbox is sent at
        the next start before anything else, so a revocation is not lost with the job. With
        `in_doubt` (an earlier job was still talking to the bank, so what the bank and this phone
        hold may still change) the change is queued even where the phone already holds it: the
        person's last choice is then the last one the bank receives.
        """
        if not in_doubt and self.s.profile.consented(modality, purpose) == bool(granted) and (
                not granted or self.s.profile.agreed_to_current(modality, purpose)):  # agreeing again is a change
            return
        changes = [(modality, purpose, bool(granted))]
        if purpose == "authentication" and not granted and (
                in_doubt or self.s.profile.consented(modality, "federated_training")):
            changes.insert(0, (modality, "federated_training", False))
        for m, q, g in changes:
            self._send(m, q, g, queue=True, offline=True)
        if purpose == "authentication" and not granted:
            forget_modality(self.s, modality)
            self.s.api.drop_held_payments(modality)
        self._save()

    def _send(self, modality: str, purpose: str, granted: bool, *, queue: bool, offline: bool = False) -> str:
        """Record one change with the bank, then here; "saved" or "queued" (raises ApiError on refusal).

        With `queue`, a change the bank could not take yet (no connection, 5xx, 429) waits in
        the offline queue and counts here at once; without it, it raises like a refusal. With
        `offline`, it goes to the queue without trying (the app is closing).
        """
        from mobile_client.policy import policy

        version = policy(purpose).version
        if self.s.profile.registered:
            path = ROUTES["consent"].format(user_id=self.s.profile.user_id)
            body = {"modality": modality, "purpose": purpose, "granted": granted, "policy_version": version}

            def before() -> dict[str, Any]:  # what the bank holds before this change, were it refused
                return {"was": consent_state(self.s.profile, modality, purpose)}

            if offline:
                self.s.api.queue.push("POST", path, body, before())
                state = "queued"
            elif queue:
                sent = self.s.api.send_or_queue("POST", path, body, before)
                state = "queued" if isinstance(sent, Queued) else "saved"
            else:
                self.s.api.request("POST", path, body, needs_body=False)
                state = "saved"
        else:
            state = "saved"
        self.s.profile.record_consent(modality, purpose, granted, version)
        if purpose == "authentication" and not granted:  # collection of it stopped with the line above
            forget_recordings(self.s, modality)
        if purpose == "authentication" and not granted and modality in self.s.profile.enrolled:
            self.s.profile.enrolled = [m for m in self.s.profile.enrolled if m != modality]
        self.s.profile.federated = self.s.profile.federated_consented()
        return state

    def _save(self) -> None:
        self.s.save_profile()

    def apply(self, choices: dict[str, dict[str, bool]]) -> None:
        """Save the onboarding choices (registering the device first).

        Every choice must be on record with the bank before set-up goes on (enrolment needs
        it): a change that fails, even for lack of a connection, raises `ConsentRefused` and
        the person stays on the consent screen. What went through stays recorded on both sides.
        """
        if not any(c.get("authentication") for c in choices.values()):
            raise ValueError("consents: choose at least one way to confirm it's you")
        self.ensure_registered()
        try:
            for m, per in choices.items():
                auth = bool(per.get("authentication"))
                fed = bool(per.get("federated_training")) and auth  # nothing to train on without it
                if not fed:  # revoke training before authentication, grant it after
                    self._send(m, "federated_training", False, queue=False)
                self._send(m, "authentication", auth, queue=False)
                if fed:
                    self._send(m, "federated_training", True, queue=False)
        except ApiError as exc:
            self._save()
            what = ("Your choices could not be recorded with your bank, so set-up cannot go on yet. "
                    + exc.user_message)
            raise ConsentRefused(what, exc.status, {"detail": what}) from exc
        self.s.profile.onboarded = True
        self._save()

    def ensure_registered(self) -> None:
        from mobile_client.controllers.privacy import erase_pending, settle_pending_erase

        settle_pending_erase(self.s)
        if erase_pending(self.s):
            raise ApiError("an erasure waits for the bank", None,
                           {"detail": "Your data is still being erased: set-up can start again once your bank "
                                      "has confirmed it.", "code": "erase_pending"})
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


def consent_state(p: Profile, modality: str, purpose: str) -> dict[str, Any]:
    """One consent as this phone holds it: granted, under which text, and (authentication) set up."""
    return {"granted": p.consented(modality, purpose), "version": p.agreed_version(modality, purpose),
            "enrolled": modality in p.enrolled}


def watch_queue(s: AppServices) -> None:
    """Undo on this phone each queued consent change the bank refuses, whichever request's flush sent it."""
    s.api.flush_hooks.append(lambda report: undo_refused(s, report))


Key = tuple[str, str]


def undo_refused(s: AppServices, report: FlushReport) -> list[str]:
    """After a flush: each consent whose queued change the bank refused goes back to what the bank holds.

    A queued change counted here at once; refused (4xx), the bank kept what it had, so the phone
    (what it shows, what it collects) must too. What the bank holds is followed along the report
    in queue order: a change sent sets it, a refused one leaves it, starting from what the phone
    held before the first (the note `_send` queued with it). A consent with a later change still
    queued keeps that change here (it is the person's latest choice), and that change's note is
    set to what the bank holds now. One exception, for privacy: when the person's latest change
    was a withdrawal, the phone stays off although the bank refused it (it never collects again
    what the person switched off; the notice says the bank still holds the consent).
    Returns, and keeps for the person (`s.add_notices`: on disk until shown), one message per refusal.
    """
    path = ROUTES["consent"].format(user_id=s.profile.user_id)
    held: dict[Key, dict[str, Any]] = {}
    last: dict[Key, bool] = {}  # the person's latest choice of each consent in this report
    refused: list[tuple[Outcome, Key, bool, dict[str, Any]]] = []
    for o in report:
        change = _consent_change(o.item, path)
        if change is None or o.state == "waiting":
            continue
        key, granted, version = change
        before = held.get(key) or _noted_before(o.item, granted)
        last[key] = granted
        if o.state == "sent":
            held[key] = _after_grant(before, key[1], granted, version)
        else:
            held[key] = before
            refused.append((o, key, granted, before))
    if not refused:
        return []
    queued = _rebase_queued(s, path, {key: held[key] for _, key, _, _ in refused})
    # a withdrawal stands on this phone even when the bank refused to record it: collecting again
    # what the person last switched off would override their choice (the notice says the bank's side)
    kept_off = {key for key in held if not last[key] and held[key]["granted"]} - queued
    messages = [_refusal_text(o, key, granted, before,
                              None if key in queued else "kept_off" if key in kept_off else held[key])
                for o, key, granted, before in refused]
    for key in {key for _, key, _, _ in refused} - queued - kept_off:
        _restore(s, key, held[key])
    s.add_notices(messages)  # before the profile; the refused changes leave the outbox after this hook
    s.save_profile()
    return messages


def _consent_change(item: dict[str, Any], path: str) -> tuple[Key, bool, str | None] | None:
    """A queued consent change of this user as ((modality, purpose), granted, policy version); None if not one."""
    body = item.get("body")
    if item.get("method") != "POST" or item.get("path") != path or not isinstance(body, dict):
        return None
    m, q, g = body.get("modality"), body.get("purpose"), body.get("granted")
    if m not in MODALITIES or q not in PURPOSES or not isinstance(g, bool):
        return None
    v = body.get("policy_version")
    return (m, q), g, v if isinstance(v, str) else None


def _noted_before(item: dict[str, Any], granted: bool) -> dict[str, Any]:
    """What the bank held before a queued change: its note, or (an older build queued none) the opposite of it.

    Without a note a refused grant is taken as never granted, a refused withdrawal as granted under
    no known text and not set up: the app then asks to agree and set up again rather than assume.
    """
    was = item.get("local", {}).get("was") if isinstance(item.get("local"), dict) else None
    if isinstance(was, dict) and isinstance(was.get("granted"), bool):
        return {"granted": was["granted"], "version": was.get("version"), "enrolled": bool(was.get("enrolled"))}
    return {"granted": not granted, "version": None, "enrolled": False}


def _after_grant(before: dict[str, Any], purpose: str, granted: bool, version: str | None) -> dict[str, Any]:
    """What the bank holds once it recorded a change: a withdrawal of authentication deletes its templates."""
    enrolled = bool(before["enrolled"]) and (granted or purpose != "authentication")
    return {"granted": granted, "version": version if granted else None, "enrolled": enrolled}


def _rebase_queued(s: AppServices, path: str, held: dict[Key, dict[str, Any]]) -> set[Key]:
    """The consents of `held` with a change still queued; the first such change's note becomes what the bank holds."""
    queued: set[Key] = set()
    for item in s.api.queue.items():
        change = _consent_change(item, path)
        if item.get("refused") is not None:  # refused already, kept only until this hook has heard of it
            continue
        if change is None or change[0] not in held or change[0] in queued:
            continue
        queued.add(change[0])
        if item.get("id"):
            s.api.queue.annotate(str(item["id"]), {**(item.get("local") or {}), "was": held[change[0]]})
    return queued


def _restore(s: AppServices, key: Key, state: dict[str, Any]) -> None:
    """Hold one consent here as the bank does (`state`): collection follows at once."""
    (m, q), p = key, s.profile
    if (p.consented(m, q), p.agreed_version(m, q)) != (state["granted"], state["version"]):
        log.warning("%s %s consent back to %s on this phone: the bank refused the change that waited",
                    m, q, "granted" if state["granted"] else "not granted")
        p.record_consent(m, q, bool(state["granted"]), str(state["version"] or ""))
        if state["granted"] and not state["version"]:
            p.consent_versions.get(m, {}).pop(q, None)  # granted under a text this phone does not know
    if q == "authentication" and state["granted"]:
        if state["enrolled"] and m not in p.enrolled:
            p.enrolled = [*p.enrolled, m]  # the bank kept its templates: the withdrawal never happened
    elif q == "authentication":  # not granted with the bank: nothing of it is kept or sent
        forget_recordings(s, m)
        forget_modality(s, m)
        s.api.drop_held_payments(m)
        p.enrolled = [e for e in p.enrolled if e != m]
    p.federated = p.federated_consented()


def _refusal_text(o: Outcome, key: Key, granted: bool, before: dict[str, Any],
                  now: dict[str, Any] | str | None) -> str:
    """Which change the bank refused, its reason, and what holds now.

    `now`: the consent as the phone holds it again; None: a later change still waits; "kept_off":
    the person's withdrawal stands on this phone while the bank still holds the consent.
    """
    m, q = key
    asked = "switched off" if not granted else "agreed again to its new text" if before["granted"] else "switched on"
    reason = (o.reason or "Your bank refused it.").rstrip()
    head = (f'Your bank did not accept a change made on this phone: {TEXT[m].title} for "{PURPOSE_TEXT[q][0]}" '
            f'{asked}. {reason if reason.endswith((".", "!", "?")) else reason + "."}')
    if now is None:
        return f"{head} A later change of it is still waiting to be sent."
    if isinstance(now, str):  # "kept_off"
        return (f"{head} This phone still does not collect it, but your bank still holds your consent: "
                "switch it on and off again to send the withdrawal again, or contact your bank.")
    return f"{head} On this phone it is now {'on' if now['granted'] else 'off'}, as your bank holds it."


def forget_recordings(s: AppServices, modality: str) -> int:
    """"Confirm it's me" was withdrawn for `modality`: delete its raw events on this phone; returns events dropped.

    Those in memory (waiting to be written included, so closing the app writes none of them) and
    every stored batch of it. Collection already stopped (the buffer reads the consents).
    """
    n = s.evidence.forget(modality)
    files = s.store.delete_modality(modality)
    if n or files:
        log.info("%s consent withdrawn: its recordings on this phone deleted (%d in memory, %d file(s))",
                 modality, n, files)
    return n


def _android() -> bool:
    from mobile_client.platform_info import is_android

    return is_android()
