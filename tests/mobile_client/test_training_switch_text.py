"""Switching federated training on from the Privacy screen shows the text first, and training starts then.

A grant is recorded as agreement to the current federated-training text (`policy_version`), so
the switch must show that text (title and full text, `mobile_client.policy`) with an explicit
agree / cancel: only "agree" grants (sent to the bank like any grant); cancel leaves the switch
off and sends nothing. Once a grant lets this app train, its SuperNode starts at once, as at
start-up, not at the next start (a re-agreement likewise: test_consent_versions).

The app runs in its own process (one Kivy App per process) with a stand-in SuperNode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.mobile_client.scenes import run_script
from tests.mobile_client.test_consent_versions import _current, _old_profile

DRIVER = r"""
import json, os, sys
from pathlib import Path
from mobile_client import headless
headless.prepare(420, 880)
import httpx
from evaluation.synthetic import SyntheticPerson
from mobile_client import federation, platform_info
platform_info.can_run_flower = federation.can_run_flower = lambda: True
from mobile_client.policy import policy
from mobile_client.services import build_services
from mobile_client.ui.app import CadenceApp
from tests.mobile_client.scenes import drive, fake_supernodes, services_with_a_bank, settle

button, data = sys.argv[1], Path(sys.argv[2])
res = {"posts": []}
NODES = fake_supernodes()
s = services_with_a_bank(data, res)


def shown(app, pr, key):
    texts = [w.text for w in pr.walk(restrict=True) if isinstance(getattr(w, "text", None), str)]
    res[key] = {"posts": list(res["posts"]), "texts": [" ".join(t.split()) for t in texts],
                "switch": [pr.federated, pr.ids.fed.active], "allowed": app.federation_allowed(),
                "node_running": bool(NODES) and NODES[-1].running, "status": pr.federated_status,
                "cards": sum(type(w).__name__ == "PolicyChange" for w in pr.walk(restrict=True))}


def scene(app):
    pr = app.go("privacy")
    yield from settle(app)
    res["started"] = bool(NODES)
    pr.ids.fed.active = True  # the person switches training on
    yield from settle(app)
    shown(app, pr, "asked")
    cards = [w for w in pr.walk(restrict=True) if type(w).__name__ == "PolicyChange"]
    if cards and button in cards[0].ids:
        cards[0].ids[button].dispatch("on_release")
        yield from settle(app)
    shown(app, pr, "after")


CadenceApp(s, animate=False, on_ready=lambda app: drive(app, scene(app), res)).run()
res["saved"] = json.loads((data / "profile.json").read_text())
p = policy("federated_training")
res["policy"] = {"version": p.version, "title": p.title, "text": " ".join(p.text.split())}
print("RESULT " + json.dumps(res), flush=True)
"""


def _drive(env: dict[str, str], tmp_path: Path, button: str) -> dict[str, Any]:
    """Typing set up for paying only (training off, under the current texts); switch training on, press `button`."""
    data = tmp_path / "app"
    _old_profile(data / "profile.json", federated=False,
                 consents={"keystroke": {"authentication": True, "federated_training": False},
                           "touch": {"authentication": False, "federated_training": False},
                           "gait": {"authentication": False, "federated_training": False}},
                 consent_versions={"keystroke": {"authentication": _current("authentication")}})
    res: dict[str, Any] = run_script(DRIVER, button, str(data), env=env)
    assert not res["started"]
    return res


def _asked(res: dict[str, Any]) -> None:
    """Switched on: the full text is shown with agree / cancel, and nothing is granted yet."""
    asked, policy_ = res["asked"], res["policy"]
    assert asked["posts"] == [], "a training grant was sent before its text was shown"
    assert asked["cards"] == 1 and asked["switch"] == [True, True], asked
    assert policy_["title"] in asked["texts"] and policy_["text"] in asked["texts"], asked["texts"]
    assert not asked["allowed"] and not asked["node_running"], asked


@pytest.mark.ui
def test_switching_training_on_shows_the_text_and_agreeing_grants_it_and_starts_training(
        gl_env: dict[str, str], tmp_path: Path) -> None:
    res = _drive(gl_env, tmp_path, "agree")
    _asked(res)
    after, version = res["after"], res["policy"]["version"]
    assert [(b["modality"], b["purpose"], b["granted"], b["policy_version"]) for b in after["posts"]] == [
        ("keystroke", "federated_training", True, version)]
    assert res["saved"]["consent_versions"]["keystroke"]["federated_training"] == version
    assert after["cards"] == 0 and after["switch"] == [True, True] and after["allowed"], after
    # training starts now, not at the next start
    assert after["node_running"] and "taking part in training now" in after["status"], after


@pytest.mark.ui
def test_cancelling_the_training_text_grants_nothing_and_leaves_the_switch_off(gl_env: dict[str, str],
                                                                              tmp_path: Path) -> None:
    res = _drive(gl_env, tmp_path, "cancel")
    _asked(res)
    after = res["after"]
    assert after["posts"] == [] and after["cards"] == 0 and after["switch"] == [False, False], after
    assert not after["allowed"] and not after["node_running"], after
    assert not res["saved"]["consents"]["keystroke"]["federated_training"] and not res["saved"]["federated"]
    assert "federated_training" not in res["saved"]["consent_versions"].get("keystroke", {})


ONBOARDING = r"""
import json, sys
from pathlib import Path
from mobile_client import headless
headless.prepare(420, 880)
from mobile_client.policy import policy
from mobile_client.services import build_services
from mobile_client.ui.app import CadenceApp
from tests.mobile_client.scenes import drive, settle

res = {}
s = build_services(Path(sys.argv[1]), "http://127.0.0.1:9", retries=0)


def texts(scr):
    return [" ".join(w.text.split()) for w in scr.walk(restrict=True) if isinstance(getattr(w, "text", None), str)]


def scene(app):
    scr = app.go("consent")
    yield from settle(app)
    cards = scr.cards()
    cards["keystroke"].auth = True
    yield 2
    res["auth_only"] = texts(scr)
    cards["keystroke"].fed = True
    yield 2
    res["with_training"] = texts(scr)


CadenceApp(s, animate=False, on_ready=lambda app: drive(app, scene(app), res)).run()
res["policy"] = {q: [policy(q).title, " ".join(policy(q).text.split())] for q in ("authentication", "federated_training")}
print("RESULT " + json.dumps(res), flush=True)
"""


@pytest.mark.ui
def test_the_set_up_consent_screen_shows_the_texts_its_choices_agree_to(gl_env: dict[str, str],
                                                                        tmp_path: Path) -> None:
    """Onboarding records its grants under the current texts too: it shows each chosen purpose's text."""
    res = run_script(ONBOARDING, str(tmp_path / "app"), env=gl_env)
    auth, training = res["policy"]["authentication"], res["policy"]["federated_training"]
    assert all(t in res["auth_only"] for t in auth) and training[1] not in res["auth_only"]
    assert all(t in res["with_training"] for t in auth + training)
