"""The app trains only under the person's agreement to the CURRENT federated-training text.

The federated-training consent text was corrected (the 2026-11-01 text promised secure
aggregation and noise "before anyone sees" the updates; the deployed system does neither).
A grant now records the policy version it was given under (`Profile.consent_versions`); a
profile written before versions were recorded holds grants to the texts that app showed
(`profile.UNVERSIONED_POLICY`). Training needs a grant of the current text: an older one
pauses it (a running SuperNode stops, as on withdrawal) and the Privacy screen says the text
changed and asks the person to read it and agree again, which is sent to the bank like any
grant. Authentication grants are compared the same way, with their own policy's version.

Controllers run against test_controllers' fake bank; the app runs in its own process (one Kivy
App per process) with a stand-in SuperNode.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from mobile_client.clock import VirtualClock
from mobile_client.controllers.consent import ConsentController
from mobile_client.policy import policy
from mobile_client.profile import UNVERSIONED_POLICY, Profile
from tests.mobile_client.scenes import run_script
from tests.mobile_client.test_controllers import FakeBank, _services


def _current(purpose: str = "federated_training") -> str:
    return policy(purpose).version  # never hard-coded: the text may be corrected again


def _old_profile(path: Path, **extra: Any) -> Path:
    """A profile.json as the app wrote it before it recorded consent versions (typing: pay and train)."""
    off = {"authentication": False, "federated_training": False}
    data = {"user_id": "user-old", "device_id": "dev-old", "display_name": "Alex", "registered": True,
            "enrolled": ["keystroke"], "federated": True, "last_sync": None, "onboarded": True,
            "consents": {"keystroke": {"authentication": True, "federated_training": True},
                         "touch": dict(off), "gait": dict(off)}}
    data.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _consent_posts(bank: FakeBank) -> list[dict[str, Any]]:
    return bank.sent("/consents")


def test_the_notice_above_a_changed_text_fits_the_version_agreed_to() -> None:
    """Only the 2026-11-01 text promised what Cadence did not give; 2026-12-06(b) promised less than the new one."""
    from mobile_client.ui.screens import changed_notice

    assert "promised protections that Cadence did not give" in changed_notice("federated_training", ["2026-11-01"])
    for version in ("2026-12-06", "2026-12-06b"):
        words = changed_notice("federated_training", [version])
        assert "secure aggregation" in words and "did not give" not in words
    assert "did not give" in changed_notice("federated_training", ["2026-12-06b", "2026-11-01"])  # the oldest
    later = changed_notice("federated_training", [_current()])  # a text corrected again after this one
    assert "please read the new text" in later and "secure aggregation" not in later
    assert "please read the new text" in changed_notice("authentication", ["2026-11-01"])


# -- 1: an old profile's training grant is to the older text -------------------------------------------
def test_the_old_training_text_is_not_the_current_one() -> None:
    """The premise of this file: grants given before versions were recorded are to another text."""
    assert UNVERSIONED_POLICY["federated_training"] != _current()


def test_an_old_profile_files_training_grant_is_to_an_older_text(tmp_path: Path) -> None:
    p = Profile.load(_old_profile(tmp_path / "profile.json"))
    assert p.consented("keystroke", "federated_training")  # still what the bank holds: not silently dropped
    assert p.agreed_version("keystroke", "federated_training") == UNVERSIONED_POLICY["federated_training"]
    assert not p.agreed_to_current("keystroke", "federated_training")
    # the authentication text did not change: that grant stands
    assert p.agreed_to_current("keystroke", "authentication")
    assert p.agreed_version("touch", "federated_training") is None  # not granted: no version


def test_the_controller_lists_the_grants_to_an_older_text(tmp_path: Path) -> None:
    _old_profile(tmp_path / "app" / "profile.json")
    cc = ConsentController(_services(tmp_path, FakeBank(), VirtualClock(1000.0)))
    assert cc.outdated("federated_training") == ["keystroke"]
    assert cc.outdated("authentication") == []


# -- 2: agreeing again grants under the current text, on the bank too ---------------------------------
def test_agreeing_again_records_the_current_version_here_and_with_the_bank(tmp_path: Path) -> None:
    _old_profile(tmp_path / "app" / "profile.json")
    bank = FakeBank()
    s = _services(tmp_path, bank, VirtualClock(1000.0))
    cc = ConsentController(s)
    results = cc.reagree("federated_training")
    assert [(r.modality, r.state) for r in results] == [("keystroke", "saved")]
    sent = _consent_posts(bank)
    assert sent == [{"modality": "keystroke", "purpose": "federated_training", "granted": True,
                     "policy_version": _current()}]
    assert cc.outdated("federated_training") == []
    again = Profile.load(tmp_path / "app" / "profile.json")  # saved
    assert again.agreed_version("keystroke", "federated_training") == _current()
    assert again.agreed_to_current("keystroke", "federated_training")


def test_agreeing_again_while_the_app_closes_waits_in_the_outbox_with_the_current_version(tmp_path: Path) -> None:
    _old_profile(tmp_path / "app" / "profile.json")
    s = _services(tmp_path, FakeBank(), VirtualClock(1000.0))
    cc = ConsentController(s)
    cc.intend("keystroke", "federated_training", True)  # already granted, but to the older text: not "no change"
    queued = [i["body"] for i in s.api.queue.items()]
    assert [(b["purpose"], b["granted"], b["policy_version"]) for b in queued] == [
        ("federated_training", True, _current())]
    assert s.profile.agreed_to_current("keystroke", "federated_training")


def test_every_grant_records_its_policy_version_and_a_withdrawal_drops_it(tmp_path: Path) -> None:
    bank = FakeBank()
    s = _services(tmp_path, bank, VirtualClock(1000.0))
    cc = ConsentController(s)
    cc.apply({"keystroke": {"authentication": True, "federated_training": True},
              "touch": {"authentication": True, "federated_training": False}})
    p = Profile.load(tmp_path / "app" / "profile.json")
    assert p.agreed_version("keystroke", "federated_training") == _current()
    assert p.agreed_version("keystroke", "authentication") == _current("authentication")
    assert p.agreed_version("touch", "federated_training") is None
    assert all(b["policy_version"] == _current(b["purpose"]) for b in _consent_posts(bank))
    cc.set("keystroke", "federated_training", False)
    assert s.profile.agreed_version("keystroke", "federated_training") is None
    assert "federated_training" not in s.profile.consent_versions.get("keystroke", {})


def test_a_profile_agreed_to_the_current_text_stays_agreed(tmp_path: Path) -> None:
    path = _old_profile(tmp_path / "profile.json", consent_versions={
        "keystroke": {"authentication": _current("authentication"), "federated_training": _current()}})
    p = Profile.load(path)
    assert p.agreed_to_current("keystroke", "federated_training") and p.agreed_to_current("keystroke")


def test_a_grant_with_no_version_in_a_versioned_profile_is_not_taken_for_the_current_text(tmp_path: Path) -> None:
    path = _old_profile(tmp_path / "profile.json", consent_versions={"keystroke": {}})
    assert not Profile.load(path).agreed_to_current("keystroke", "federated_training")


# -- 3: a damaged versions field is handled like any other damaged field --------------------------------
@pytest.mark.parametrize("versions", [["2026-12-06"], "2026-12-06", {"keystroke": "2026-12-06"},
                                      {"keystroke": {"federated_training": 3}},
                                      {"keystroke": {"federated_training": None}}])
def test_a_damaged_versions_field_is_moved_aside_with_a_clear_reason(tmp_path: Path, versions: Any,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = _old_profile(tmp_path / "profile.json", consent_versions=versions)
    with caplog.at_level(logging.WARNING, logger="mobile_client.profile"):
        p = Profile.load(path)
    assert "consent_versions: expected {modality: {purpose: version}}" in caplog.text
    assert [f.name.startswith("profile.json.bad-") for f in tmp_path.iterdir()] == [True]
    # as for any damaged field: a new set-up, with the ids that could still be read
    assert (p.user_id, p.device_id, p.onboarded) == ("user-old", "dev-old", False)
    assert not p.consented("keystroke", "federated_training")


# -- 4: the app: paused under an older text, the Privacy screen asks, agreeing again resumes -----------
DRIVER = r"""
import json, os, sys, time
from dataclasses import replace
from pathlib import Path
from mobile_client import headless
headless.prepare(420, 880)
import httpx
from kivy.clock import Clock
from evaluation.synthetic import SyntheticPerson
from mobile_client import federation, platform_info
import mobile_client.policy as pol
platform_info.can_run_flower = federation.can_run_flower = lambda: True
from mobile_client.services import build_services
from mobile_client.ui.app import CadenceApp

scenario, data = sys.argv[1], Path(sys.argv[2])
res = {"posts": []}


from tests.mobile_client.scenes import fake_supernodes, services_with_a_bank, settle

NODES = fake_supernodes()
s = services_with_a_bank(data, res)




def labels(widget):
    return [w.text for w in widget.walk(restrict=True) if hasattr(w, "text") and isinstance(w.text, str)]


def shown(app, pr, key):
    res[key] = {"allowed": app.federation_allowed(), "status": app.federation_status(),
                "screen_status": pr.federated_status, "switch": pr.federated,
                "texts": labels(pr.ids.changed), "node_running": bool(NODES) and NODES[-1].running,
                "left_files": sorted(p.name for p in (data / "federated").rglob("*") if p.is_file())}


def scene(app):
    res["started"] = bool(NODES)
    pr = app.go("privacy")
    yield from settle(app)
    if scenario == "running":
        # the training text is corrected again while training runs (the person agreed to the one before)
        real = pol.policy
        pol.policy = lambda p: replace(real(p), version=real(p).version + "-next") if p == "federated_training" else real(p)
        app.run_in_background(lambda: None, lambda *_: None)  # any job: training follows the consents after it
        yield from settle(app)
        pr.refresh(); yield 2
    shown(app, pr, "before")
    buttons = [w for w in pr.ids.changed.walk(restrict=True) if type(w).__name__ == "RoundButton"]
    res["buttons"] = len(buttons)
    if buttons:
        buttons[0].dispatch("on_release")
        yield from settle(app)
        shown(app, pr, "after")
    res["policy"] = {"version": pol.policy("federated_training").version, "title": pol.policy("federated_training").title,
                     "text": pol.policy("federated_training").text}


def ready(app):
    from tests.mobile_client.scenes import drive
    drive(app, scene(app), res)


CadenceApp(s, animate=False, on_ready=ready).run()
res["saved"] = json.loads((data / "profile.json").read_text()).get("consent_versions")
print("RESULT " + json.dumps(res), flush=True)
"""


def _drive(env: dict[str, str], tmp_path: Path, scenario: str) -> dict[str, Any]:
    data = tmp_path / "app"
    versions = None if scenario == "old" else {
        "keystroke": {"authentication": _current("authentication"), "federated_training": _current()}}
    _old_profile(data / "profile.json", **({} if versions is None else {"consent_versions": versions}))
    res: dict[str, Any] = run_script(DRIVER, scenario, str(data), env=env)
    return res


def _asks_to_agree_again(shown: dict[str, Any], policy_: dict[str, str]) -> None:
    assert not shown["allowed"] and not shown["node_running"] and shown["left_files"] == [], shown
    assert "text changed" in shown["status"], shown["status"]
    assert shown["screen_status"] == shown["status"] and shown["switch"], shown
    # the new text itself is on the screen, with a plain notice that it changed
    words = " ".join(policy_["text"].split())  # as the file words it; the screen re-wraps its lines
    assert policy_["title"] in shown["texts"] and words in [" ".join(t.split()) for t in shown["texts"]]
    assert any("changed" in t for t in shown["texts"]), shown["texts"]


def _agreed_again(res: dict[str, Any]) -> None:
    after, version = res["after"], res["policy"]["version"]
    assert after["allowed"] and after["texts"] == [] and "text changed" not in after["status"], after
    assert [(b["purpose"], b["granted"], b["policy_version"]) for b in res["posts"]] == [
        ("federated_training", True, version)]
    assert res["saved"]["keystroke"]["federated_training"] == version
    # training starts as soon as the grant is recorded, not at the next start
    assert after["node_running"] and "taking part in training now" in after["status"], after


@pytest.mark.ui
def test_an_old_profile_does_not_train_until_the_person_agrees_to_the_new_text(gl_env: dict[str, str],
                                                                               tmp_path: Path) -> None:
    res = _drive(gl_env, tmp_path, "old")
    assert not res["started"], "a SuperNode started under a grant of the corrected text"
    _asks_to_agree_again(res["before"], res["policy"])
    assert any("promised protections that Cadence did not give" in t for t in res["before"]["texts"])
    assert res["buttons"] == 1
    _agreed_again(res)


@pytest.mark.ui
def test_training_under_the_current_text_runs_and_stops_when_the_text_changes(gl_env: dict[str, str],
                                                                             tmp_path: Path) -> None:
    res = _drive(gl_env, tmp_path, "running")
    assert res["started"], "a grant of the current text did not start training"
    _asks_to_agree_again(res["before"], res["policy"])  # stopped like a withdrawal: node and exported files
    _agreed_again(res)
