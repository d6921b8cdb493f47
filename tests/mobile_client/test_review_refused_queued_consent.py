"""A queued consent change the bank refuses is undone on the phone, and the person is told.

A change made offline (or while the bank answered 5xx/429) counts on the phone at once and
waits in the outbox. When the outbox is later sent and the bank refuses the change (4xx), the
bank keeps what it had: the phone must hold that again (what it shows, what it collects, what
is set up), whatever request's flush sent it, and say which change was refused and why. With
several changes of one consent queued, the phone ends on what the bank accepted last; a
change still waiting stays (it is the person's latest choice). The exception is a withdrawal:
refused, it still stands on the phone (nothing is collected again against the person's latest
choice) and the person is told the bank still holds the consent. Controllers against
test_controllers' fake bank.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from evaluation.synthetic import SyntheticPerson
from mobile_client.clock import VirtualClock
from mobile_client.controllers.consent import ConsentController
from mobile_client.profile import Profile
from mobile_client.services import AppServices
from tests.mobile_client.scenes import run_script
from tests.mobile_client.test_controllers import FakeBank, _play, _services

REFUSAL = {"detail": "this change is no longer allowed", "code": "invalid_consent"}


class RefusingBank(FakeBank):
    """FakeBank whose consent posts are answered one by one from `answers` (a status), then accepted.

    422 carries `REFUSAL`; 503 is "cannot take it yet" (the change stays queued).
    """

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[int] = []
        self.consent_posts: list[dict[str, Any]] = []

    def handle(self, req: httpx.Request) -> httpx.Response:
        if self.up and req.url.path.endswith("/consents") and self.answers:
            body = json.loads(req.content)
            status = self.answers.pop(0)
            if status >= 400:
                self.consent_posts.append({**body, "answer": status})
                return httpx.Response(status, json=REFUSAL if status < 500 else {"detail": "busy"})
            self.consent_posts.append({**body, "answer": status})
        return super().handle(req)


def _set_up(tmp_path: Path, on: dict[str, bool]) -> tuple[RefusingBank, AppServices]:
    """Consents as `on` says (authentication only), on record with the bank; those on are set up."""
    bank = RefusingBank()
    s = _services(tmp_path, bank, VirtualClock(1000.0))
    ConsentController(s).apply({m: {"authentication": v, "federated_training": False} for m, v in on.items()})
    s.profile.enrolled = [m for m, v in on.items() if v]
    s.save_profile()
    return bank, s


def _offline(s: AppServices, bank: FakeBank, *changes: tuple[str, str, bool]) -> None:
    bank.up = False
    cc = ConsentController(s)
    for m, q, g in changes:
        assert cc.set(m, q, g).state == "queued"
    bank.up = True


def test_a_queued_withdrawal_the_bank_refuses_still_stands_here_and_is_said(tmp_path: Path) -> None:
    """Collecting again what the person switched off would override their choice: the phone stays off."""
    bank, s = _set_up(tmp_path, {"touch": True})
    _offline(s, bank, ("touch", "authentication", False))
    assert not s.profile.consented("touch") and not s.evidence.allowed("touch")  # counted at once
    bank.answers = [422]
    s.api.health()  # any request sends what waited first
    assert len(s.api.queue) == 0
    assert not s.profile.consented("touch") and not s.evidence.allowed("touch"), "collects what was switched off"
    assert not Profile.load(s.profile_path).consented("touch")  # saved
    [notice] = s.take_notices()
    assert "Touch and swipes" in notice and "switched off" in notice and REFUSAL["detail"] in notice
    assert "still does not collect it, but your bank still holds your consent" in notice
    assert notice.endswith("or contact your bank.")
    assert s.take_notices() == []  # each shown once


def test_a_queued_grant_the_bank_refuses_is_off_again_and_its_recordings_go(tmp_path: Path) -> None:
    bank, s = _set_up(tmp_path, {"keystroke": True, "touch": False})
    _offline(s, bank, ("touch", "authentication", True))
    assert s.profile.consented("touch")
    clock = s.evidence.clock
    assert isinstance(clock, VirtualClock)
    _play(s, clock, SyntheticPerson(4).touch(6, 1))  # collected while the phone counted the grant
    s.evidence.flush()
    assert s.store.summary().counts["touch"] > 0
    bank.answers = [422]
    s.api.flush_queue()
    assert not s.profile.consented("touch") and not s.evidence.allowed("touch"), "collects without the bank's consent"
    assert s.store.summary().counts["touch"] == 0
    assert s.profile.consented("keystroke")  # the other consents are left alone
    [notice] = s.take_notices()
    assert "Touch and swipes" in notice and "switched on" in notice and notice.endswith("now off, as your bank holds it.")


def test_a_refused_withdrawal_cascade_keeps_what_the_bank_accepted(tmp_path: Path) -> None:
    """Withdrawing authentication also withdraws training (sent first): the bank takes that, refuses the other."""
    bank = RefusingBank()
    s = _services(tmp_path, bank, VirtualClock(1000.0))
    ConsentController(s).apply({"keystroke": {"authentication": True, "federated_training": True}})
    _offline(s, bank, ("keystroke", "authentication", False))
    assert [i["body"]["purpose"] for i in s.api.queue.items()] == ["federated_training", "authentication"]
    bank.answers = [201, 422]
    s.api.flush_queue()
    assert not s.profile.consented("keystroke", "authentication")  # the person's withdrawal stands here
    assert not s.profile.consented("keystroke", "federated_training") and not s.profile.federated
    [notice] = s.take_notices()
    assert "your bank still holds your consent" in notice


# (off, on, off) or (off, on) queued for one consent first on; True: the bank refuses that change
@pytest.mark.parametrize(("wanted", "refused"),
                         [((False, True, False), r) for r in itertools.product([False, True], repeat=3)]
                         + [((False, True), r) for r in itertools.product([False, True], repeat=2)])
def test_after_several_queued_changes_the_phone_holds_what_the_bank_accepted_last(
        tmp_path: Path, wanted: tuple[bool, ...], refused: tuple[bool, ...]) -> None:
    bank, s = _set_up(tmp_path, {"gait": True})
    _offline(s, bank, *[("gait", "authentication", g) for g in wanted])
    bank.answers = [422 if r else 201 for r in refused]
    s.api.flush_queue()
    accepted = [g for g, r in zip(wanted, refused, strict=True) if not r]
    bank_holds = accepted[-1] if accepted else True  # nothing accepted: the bank still holds the grant
    expected = bank_holds and wanted[-1]  # a last change that withdraws stands here, refused or not
    assert s.profile.consented("gait") is expected
    assert s.evidence.allowed("gait") is expected
    assert len(s.take_notices()) == sum(refused)


def test_a_refusal_before_a_change_still_waiting_keeps_it_and_what_the_bank_holds(tmp_path: Path) -> None:
    """Off refused, then on waits (503): on stays; refused later too, the phone holds what the bank held first."""
    bank, s = _set_up(tmp_path, {"touch": True})
    _offline(s, bank, ("touch", "authentication", False), ("touch", "authentication", True))
    bank.answers = [422, 503]
    s.api.flush_queue()
    assert [i["body"]["granted"] for i in s.api.queue.items()] == [True]
    assert s.profile.consented("touch")  # the person's latest choice, still on its way
    [notice] = s.take_notices()
    assert "still waiting" in notice
    bank.answers = [422]
    s.api.flush_queue()
    assert s.profile.consented("touch"), "the bank refused the withdrawal: it still holds the grant"
    assert "touch" in s.profile.enrolled


def test_a_refusal_heard_by_another_requests_flush_is_undone_before_the_next_change(tmp_path: Path) -> None:
    """The outbox goes before any request: a change made now is recorded on top of what the bank holds."""
    bank, s = _set_up(tmp_path, {"gait": False, "touch": True})
    _offline(s, bank, ("gait", "authentication", True))
    bank.answers = [422, 201]  # the waiting grant of gait refused; touch's withdrawal taken
    res = ConsentController(s).set("touch", "authentication", False)
    assert res.state == "saved"
    assert not s.profile.consented("gait") and not s.profile.consented("touch")
    assert len(s.take_notices()) == 1


def test_a_refused_agreement_to_a_new_text_leaves_the_older_one_agreed(tmp_path: Path) -> None:
    bank, s = _set_up(tmp_path, {"keystroke": True})
    s.profile.consent_versions["keystroke"]["authentication"] = "2020-01-01"  # agreed to an older text
    cc = ConsentController(s)
    assert cc.outdated("authentication") == ["keystroke"]
    bank.up = False
    assert [r.state for r in cc.reagree("authentication")] == ["queued"]
    assert cc.outdated("authentication") == []
    bank.up = True
    bank.answers = [422]
    s.api.flush_queue()
    assert s.profile.agreed_version("keystroke", "authentication") == "2020-01-01"
    assert cc.outdated("authentication") == ["keystroke"]  # asked to agree again
    [notice] = s.take_notices()
    assert "agreed again to its new text" in notice


def test_a_change_the_bank_cannot_take_yet_stays_as_chosen_without_a_notice(tmp_path: Path) -> None:
    bank, s = _set_up(tmp_path, {"touch": True})
    _offline(s, bank, ("touch", "authentication", False))
    bank.answers = [503]
    s.api.flush_queue()
    assert not s.profile.consented("touch") and len(s.api.queue) == 1
    assert s.take_notices() == []


def test_a_refused_change_queued_by_an_older_build_is_undone_too(tmp_path: Path) -> None:
    """Its line has no note of what the bank held: a refused grant is taken as never granted."""
    bank, s = _set_up(tmp_path, {"touch": False, "keystroke": True})
    body = {"modality": "touch", "purpose": "authentication", "granted": True, "policy_version": "x"}
    s.api.queue.push("POST", f"/v1/users/{s.profile.user_id}/consents", body)
    s.profile.record_consent("touch", "authentication", True, "x")
    bank.answers = [422]
    s.api.flush_queue()
    assert not s.profile.consented("touch")
    assert len(s.take_notices()) == 1


# -- the app tells the person and its screens follow ------------------------------------------------
DRIVER = r"""
import json, sys
from pathlib import Path
from mobile_client import headless
headless.prepare(420, 880)
import httpx
from mobile_client.controllers.consent import ConsentController
from mobile_client.policy import policy
from mobile_client.services import build_services
from mobile_client.ui.app import CadenceApp
from tests.mobile_client.scenes import settle

data = Path(sys.argv[1])
res = {}
bank = {"up": True, "refuse": False}


def handle(req):
    if not bank["up"]:
        raise httpx.ConnectError("offline")
    if bank["refuse"] and req.url.path.endswith("/consents"):
        return httpx.Response(422, json={"detail": "this change is no longer allowed", "code": "invalid_consent"})
    return httpx.Response(201, json={})


s = build_services(data, "http://bank.test", retries=0)
s.api._http = httpx.Client(base_url="http://bank.test", transport=httpx.MockTransport(handle))
ConsentController(s).apply({"keystroke": {"authentication": True, "federated_training": False},
                            "gait": {"authentication": True, "federated_training": False},
                            "touch": {"authentication": False, "federated_training": False}})
s.profile.enrolled = ["keystroke", "gait"]
bank["up"] = False
ConsentController(s).set("gait", "authentication", False)  # made offline, before this start
bank.update(up=True, refuse=True)  # sent at start: refused


def switches(pr):
    return {row.label: (row.children[0].active, row.hint) for row in pr.ids.consents.children}


def scene(app):
    yield from settle(app)
    home = app.sm.get_screen("home")
    res["home"] = {"screen": app.sm.current, "notice": home.notice,
                   "rows": [(r.title, r.detail) for r in home.ids.status.children]}
    pr = app.go("privacy")
    yield from settle(app)
    res["privacy_at_start"] = {"notice": pr.notice, "switches": switches(pr)}
    bank["up"] = False  # on the Privacy screen: touch on, offline
    row = next(r for r in pr.ids.consents.children if r.label == "Touch and swipes")
    row.children[0].active = True
    yield from settle(app)
    res["queued"] = {"notice": pr.notice, "switches": switches(pr), "consented": s.profile.consented("touch")}
    bank["up"] = True
    app.run_in_background(lambda: s.api.health(), lambda *_: None)  # any job: the outbox goes first
    yield from settle(app)
    res["refused"] = {"notice": pr.notice, "switches": switches(pr), "consented": s.profile.consented("touch")}


def ready(app):
    from tests.mobile_client.scenes import drive
    drive(app, scene(app), res)


CadenceApp(s, animate=False, on_ready=ready).run()
print("RESULT " + json.dumps(res), flush=True)
"""


@pytest.mark.ui
def test_the_app_says_which_waiting_change_was_refused_and_its_switches_follow(gl_env: dict[str, str],
                                                                             tmp_path: Path) -> None:
    res: dict[str, Any] = run_script(DRIVER, str(tmp_path / "app"), env=gl_env)
    # refused at start: Home says so; the withdrawal still stands here (walking is not collected)
    home = res["home"]
    assert home["screen"] == "home" and "Walking pattern" in home["notice"], home
    assert REFUSAL["detail"] in home["notice"] and "your bank still holds your consent" in home["notice"], home
    assert ["Walking pattern", "Off: nothing is collected"] in home["rows"], home["rows"]
    start = res["privacy_at_start"]
    assert start["notice"] == home["notice"] and start["switches"]["Walking pattern"][0] is False, start
    # a change made on the Privacy screen answers the notice; a grant refused in turn, the switch goes back
    assert res["queued"]["notice"] == "" and res["queued"]["consented"] is True, res["queued"]
    refused = res["refused"]
    assert refused["consented"] is False and refused["switches"]["Touch and swipes"] == [False, "Off: not collected"]
    assert "Touch and swipes" in refused["notice"] and "Walking" not in refused["notice"], refused
    assert refused["notice"].endswith("now off, as your bank holds it."), refused


def test_a_change_made_while_an_older_one_still_waits_goes_behind_it(tmp_path: Path) -> None:
    """Off waits (the bank answered 503), then on: sent at once, the older off went through after it.

    The bank then ended off while the phone showed on. Queued behind, the bank sees off, then on.
    """
    bank, s = _set_up(tmp_path, {"touch": True})
    _offline(s, bank, ("touch", "authentication", False))
    bank.answers = [503, 201, 201, 201]  # the flush before the new change: the waiting off is not taken yet
    res = ConsentController(s).set("touch", "authentication", True)
    assert res.state == "queued"
    assert [(p["granted"], p["answer"]) for p in bank.consent_posts] == [(False, 503)], "sent ahead of the older change"
    assert [i["body"]["granted"] for i in s.api.queue.items()] == [False, True]
    assert s.api.flush_queue().sent == 2
    assert [(p["granted"], p["answer"]) for p in bank.consent_posts] == [(False, 503), (False, 201), (True, 201)]
    assert s.profile.consented("touch") and s.take_notices() == []


class _Died(BaseException):
    """The app's process dying mid-flush: not an Exception, so nothing in the app catches it."""


def test_a_refusal_the_phone_died_before_undoing_is_undone_at_its_next_start(tmp_path: Path) -> None:
    """A refused change leaves the outbox only once the hooks have undone it and told the person.

    Removed before them, a phone that died in between kept the grant the bank refused, and the
    person never heard. Marked instead, it is reported refused again at the next start, without
    being sent again, and undone then.
    """
    bank, s = _set_up(tmp_path, {"keystroke": True, "touch": False})
    _offline(s, bank, ("touch", "authentication", True))
    assert s.profile.consented("touch")

    def die(report: Any) -> None:
        raise _Died()

    s.api.flush_hooks.insert(0, die)
    bank.answers = [422]
    with pytest.raises(_Died):
        s.api.flush_queue()
    assert [p["answer"] for p in bank.consent_posts] == [422]
    assert s.take_notices() == []  # the hooks never ran
    [kept] = s.api.queue.items()
    assert kept["refused"]["status"] == 422 and kept["refused"]["code"] == REFUSAL["code"]

    again = _services(tmp_path, bank, VirtualClock(2000.0))  # the next start, on the same files
    assert again.profile.consented("touch")  # as the phone last saved it
    report = again.api.flush_queue()
    assert [(o.state, o.status) for o in report] == [("refused", 422)]
    assert [p["answer"] for p in bank.consent_posts] == [422]  # not sent a second time
    assert not again.profile.consented("touch") and not again.evidence.allowed("touch")
    assert len(again.api.queue) == 0
    [notice] = again.take_notices()
    assert "Touch and swipes" in notice and REFUSAL["detail"] in notice


def test_a_request_a_hook_makes_does_not_hear_of_the_refusal_being_handled(tmp_path: Path) -> None:
    """A hook that itself sends (its request flushes the outbox first) is not handed the same refusal again."""
    bank, s = _set_up(tmp_path, {"keystroke": True, "touch": False})
    _offline(s, bank, ("touch", "authentication", True))
    heard: list[list[str]] = []

    def sends(report: Any) -> None:
        heard.append([o.state for o in report])
        s.api.health()  # a request of its own: the outbox is flushed first

    s.api.flush_hooks.insert(0, sends)
    bank.answers = [422]
    s.api.flush_queue()
    assert heard == [["refused"]]
    assert not s.profile.consented("touch") and len(s.api.queue) == 0
    assert len(s.take_notices()) == 1
