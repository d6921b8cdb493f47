"""A notice of a refused queued consent change outlives the app run that heard it, until shown.

The refused change has left the outbox when the notice is made: the notice is then the only
way the person learns that the bank still holds a consent they withdrew. Closing (or killing)
the app before it was shown must not lose it; a damaged notices file must not stop start-up.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from mobile_client.clock import VirtualClock
from mobile_client.notices import NOTICES_FILE
from mobile_client.services import AppServices
from tests.mobile_client.scenes import run_script
from tests.mobile_client.test_controllers import _services
from tests.mobile_client.test_review_refused_queued_consent import REFUSAL, RefusingBank, _offline, _set_up


def _refusal_heard(tmp_path: Path) -> tuple[RefusingBank, AppServices]:
    """A withdrawal made offline, refused by the bank when the outbox went: heard, not shown yet."""
    bank, s = _set_up(tmp_path, {"keystroke": True, "touch": True})  # typing stays set up: the app opens on Home
    _offline(s, bank, ("touch", "authentication", False))
    bank.answers = [422]
    s.api.flush_queue()
    assert len(s.api.queue) == 0  # the refused change is gone from the outbox: only the notice says it
    return bank, s


def test_a_notice_not_shown_is_shown_after_a_restart_and_only_once(tmp_path: Path) -> None:
    bank, s = _refusal_heard(tmp_path)
    s.close()  # closed before the notice was shown
    again = _services(tmp_path, bank, VirtualClock(2000.0))
    [notice] = again.take_notices()
    assert "Touch and swipes" in notice and REFUSAL["detail"] in notice and "still holds your consent" in notice
    assert again.take_notices() == []
    assert not (tmp_path / "app" / NOTICES_FILE).exists()  # shown: gone from disk too
    assert _services(tmp_path, bank, VirtualClock(3000.0)).take_notices() == []  # not shown twice


def test_a_notice_is_on_disk_as_soon_as_it_is_heard(tmp_path: Path) -> None:
    """Killed without `close` (nothing flushed or saved at the end): the notice is there at the next start."""
    bank, _killed = _refusal_heard(tmp_path)
    [notice] = _services(tmp_path, bank, VirtualClock(2000.0)).take_notices()
    assert "still holds your consent" in notice


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b'{"a": 1}', b'["ok", 3]'])
def test_an_unreadable_notices_file_is_set_aside_and_start_up_goes_on(
        tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "app"
    data.mkdir()
    (data / NOTICES_FILE).write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="mobile_client.notices"):
        s = _services(tmp_path, RefusingBank(), VirtualClock(1000.0))
    assert s.take_notices() == []
    [bad] = [p for p in data.iterdir() if p.name.startswith(NOTICES_FILE + ".bad-")]
    assert bad.read_bytes() == content  # kept aside as it was, neither shown half-read nor overwritten
    assert not (data / NOTICES_FILE).exists()
    assert "cannot be read" in caplog.text
    s.add_notices(["later"])  # the app keeps working with a new file
    assert json.loads((data / NOTICES_FILE).read_text()) == ["later"]


DRIVER = r"""
import json, sys
from pathlib import Path
from mobile_client import headless
headless.prepare(420, 880)
import httpx
from mobile_client.services import build_services
from mobile_client.ui.app import CadenceApp
from tests.mobile_client.scenes import settle

data = Path(sys.argv[1])
res = {}
s = build_services(data, "http://bank.test", retries=0)
s.api._http = httpx.Client(base_url="http://bank.test",
                           transport=httpx.MockTransport(lambda req: httpx.Response(201, json={})))


def scene(app):
    yield from settle(app)
    res["screen"] = app.sm.current
    res["notice"] = app.sm.get_screen("home").notice if app.sm.has_screen("home") else None
    if app.sm.has_screen("welcome"):  # screens are built as they are first shown
        welcome = app.sm.get_screen("welcome")
        res["welcome_shown"] = welcome.ids.notice.text if welcome.ids.notice.opacity else ""
    res["file_left"] = (data / "notices.json").exists()


def ready(app):
    from tests.mobile_client.scenes import drive
    drive(app, scene(app), res)


CadenceApp(s, animate=False, on_ready=ready).run()
print("RESULT " + json.dumps(res), flush=True)
"""


@pytest.mark.ui
def test_the_app_shows_at_start_a_notice_heard_in_an_earlier_run(gl_env: dict[str, str], tmp_path: Path) -> None:
    _bank, s = _refusal_heard(tmp_path)
    s.close()
    res: dict[str, Any] = run_script(DRIVER, str(tmp_path / "app"), env=gl_env)
    assert res["screen"] == "home", res
    assert "Touch and swipes" in res["notice"] and "still holds your consent" in res["notice"], res
    assert res["file_left"] is False, "shown, yet still kept to be shown again"


def test_delete_my_data_deletes_the_notices_too(tmp_path: Path) -> None:
    """They tell of the erased set-up's consents: not left on the phone, nor shown after the reset."""
    from mobile_client.controllers.privacy import PrivacyController

    bank, s = _refusal_heard(tmp_path)
    assert (tmp_path / "app" / NOTICES_FILE).exists()
    PrivacyController(s).delete_my_data()
    assert not (tmp_path / "app" / NOTICES_FILE).exists()
    assert s.take_notices() == []
    s.close()
    assert _services(tmp_path, bank, VirtualClock(2000.0)).take_notices() == []


def test_a_notice_heard_again_while_it_waits_is_kept_once(tmp_path: Path) -> None:
    """A flush cut short by the app dying hears of the same refusal again at the next start."""
    from mobile_client.notices import NoticeBook

    book = NoticeBook(tmp_path / "notices.json")
    book.add(["the bank refused: touch"])
    again = NoticeBook(tmp_path / "notices.json")
    again.add(["the bank refused: touch", "the bank refused: gait"])
    assert again.take() == ["the bank refused: touch", "the bank refused: gait"]
    again.add(["the bank refused: touch"])  # shown already: a new hearing is a new notice
    assert again.take() == ["the bank refused: touch"]



@pytest.mark.ui
def test_an_app_not_set_up_shows_a_waiting_notice_on_welcome(gl_env: dict[str, str], tmp_path: Path) -> None:
    """Taken from disk to be shown, a notice must be on the screen the person sees: here, Welcome."""
    from mobile_client.notices import NoticeBook

    data = tmp_path / "app"
    data.mkdir()
    NoticeBook(data / NOTICES_FILE).add(["Your bank refused a change that waited: gait stays off."])
    res: dict[str, Any] = run_script(DRIVER, str(data), env=gl_env)
    assert res["screen"] == "welcome", res
    assert res["welcome_shown"] == "Your bank refused a change that waited: gait stays off.", res
    assert res["file_left"] is False
