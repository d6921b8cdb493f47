"""Input the phone cannot measure is never sent, and "recent" counts the time the phone slept.

1. Kivy/SDL2 touches carry no contact shape (size 0): the server's touch models, standardised on
   BB-MAS sizes, score such swipes as the strongest match for anyone. No touch window is cut
   from them, for set-up or as a payment's evidence, and the log says so once.
2. A soft keyboard's committed text has zero holds (and zero down-down times within one commit):
   the keystroke models score such windows as genuine for anyone, and a paste is a 0-second
   window. Windows of mostly committed keys are not sent; hardware typing is unchanged.
3. The collectors' clock is CLOCK_BOOTTIME where there is one: CLOCK_MONOTONIC stops while the
   phone is suspended, so behaviour from before a sleep looked recent after it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from evaluation.synthetic import SyntheticPerson
from mobile_client import clock as clock_mod
from mobile_client import features
from mobile_client.clock import VirtualClock
from mobile_client.collectors.accelerometer import AndroidAccelerometer
from mobile_client.collectors.keys import KeyPairer
from mobile_client.collectors.touch import TouchCollector
from mobile_client.controllers.consent import ConsentController
from mobile_client.controllers.enrolment import EnrolmentController
from mobile_client.controllers.transaction import EVIDENCE_MAX_AGE_S, EVIDENCE_WALK_S, TransactionController
from mobile_client.evidence import EvidenceBuffer
from modalities.events import KeyEvent, TouchAction, TouchEvent, TouchStream
from modalities.keystroke.features import windows_for_subject
from modalities.touch import stroke_windows
from tests.mobile_client.test_controllers import FakeBank, _enrolled, _services

TEXT = "the quick brown fox jumps over the lazy dog and then the cat sat on the mat near the door " * 2


# -- 1: touches without a contact size -------------------------------------------------------
class _Window:
    size = (1080, 1920)

    def bind(self, **_k: Any) -> None:
        pass

    def unbind(self, **_k: Any) -> None:
        pass


def _swipe_through_collector(sink: Any, clock: VirtualClock, person: SyntheticPerson, n: int, seed: int,
                             sized: bool) -> None:
    """`n` of the person's swipes as Kivy touches reach `TouchCollector`: SDL2's (no shape) or with a shape."""
    col = TouchCollector(_Window(), clock)
    col.start(sink)
    stream = person.touch(n, seed)
    base = clock() + 0.5
    for k, stroke in enumerate(features.split_strokes(stream.to_events())):
        t0 = stroke[0].time
        touch = SimpleNamespace(uid=k, profile=("pos", "pressure", "shape") if sized else ("pos", "pressure"),
                                pressure=0.5, shape=None)
        for ev in stroke:
            clock.set(max(clock(), base + ev.time - t0))
            touch.x, touch.y, touch.pressure = ev.x, 1920 - ev.y, ev.pressure
            if sized:
                touch.shape = SimpleNamespace(width=ev.touch_major, height=ev.touch_minor)
            {TouchAction.DOWN: col._down, TouchAction.UP: col._up}.get(ev.action, col._move)(None, touch)
        base = clock() + 0.6
    col.stop()
    clock.advance(0.5)


def test_touches_without_a_contact_size_give_no_touch_windows() -> None:
    events = SyntheticPerson(3).touch(12, 1).to_events()
    sizeless = [replace(e, touch_major=0.0, touch_minor=0.0) for e in events]
    assert features.touch_windows(sizeless) == []  # HEAD: 12 windows whose size features read as anyone's
    assert features.windows_for("touch", sizeless) == [] and features.recent_swipes(sizeless) == []
    # real sizes (BB-MAS, the replayed recordings): the batch's windows, unchanged
    phone, batch = features.touch_windows(events), stroke_windows(TouchStream.from_events(events, device=features.APP_DEVICE))
    assert len(phone) == len(batch) == 12
    assert all(np.array_equal(a.values, b.values) and a.start == b.start for a, b in zip(phone, batch))


def test_touches_without_a_contact_size_are_said_once_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    sizeless = [replace(e, touch_major=0.0, touch_minor=0.0) for e in SyntheticPerson(3).touch(8, 1).to_events()]
    with caplog.at_level(logging.WARNING, logger="mobile_client.features"):
        for _ in range(3):
            features.touch_windows(sizeless)
            features.recent_swipes(sizeless)
    said = [r for r in caplog.records if "contact size" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]


def _setting_up(tmp_path: Path, modality: str) -> tuple[FakeBank, VirtualClock, Any, EnrolmentController]:
    """A registered app with `modality`'s consent given, its set-up task begun."""
    bank, clock = FakeBank(), VirtualClock(1000.0)
    s = _services(tmp_path, bank, clock)
    ConsentController(s).apply({modality: {"authentication": True, "federated_training": False}})
    ec = EnrolmentController(s)
    ec.begin(modality)
    return bank, clock, s, ec


def test_a_phone_without_touch_size_gets_no_swipe_set_up(tmp_path: Path) -> None:
    bank, clock, s, ec = _setting_up(tmp_path, "touch")
    _swipe_through_collector(s.evidence.add, clock, SyntheticPerson(5), 14, 1, sized=False)
    assert ec.swipe_progress() == 1.0  # the swipes were made ...
    rep = ec.check("touch")  # ... but cannot be measured here: HEAD passed it with 14 zero-size windows
    assert not rep.ok and rep.unavailable and rep.usable == 0
    assert rep.message == features.UNAVAILABLE_TEXT["touch"]
    assert ec.ready()  # set-up goes on without it
    assert ec.finish() == {} and bank.sent("/enrolment") == [] and "touch" not in s.profile.enrolled


def test_payment_sends_no_swipes_without_a_contact_size(tmp_path: Path) -> None:
    bank, clock = FakeBank(), VirtualClock(1000.0)
    person = SyntheticPerson(11)
    s = _enrolled(tmp_path, bank, person, clock)  # swipes set up from a recording with real sizes
    tc = TransactionController(s)
    _swipe_through_collector(s.evidence.add, clock, person, 8, 2, sized=False)
    tc.authorize("12.00", "Jordan Lee")
    assert [w for w in bank.sent("/authorize")[0]["evidence"] if w["modality"] == "touch"] == []
    assert tc.evidence_summary["touch"] == 0
    _swipe_through_collector(s.evidence.add, clock, person, 8, 3, sized=True)  # a listener that gives sizes
    tc.authorize("13.00", "Jordan Lee")
    assert sum(w["modality"] == "touch" for w in bank.sent("/authorize")[1]["evidence"]) == features.decision_swipes()


# -- 2: soft-keyboard commits ----------------------------------------------------------------
def _commits(chunks: list[str], t0: float = 10.0, gap: float = 0.2) -> list[KeyEvent]:
    p, out = KeyPairer(), []
    for i, chunk in enumerate(chunks):
        out += p.text_commit(chunk, t0 + gap * i)
    return out


def test_committed_text_gives_no_keystroke_windows() -> None:
    per_char = _commits(list(TEXT))
    per_word = _commits([w + " " for w in TEXT.split(" ")], gap=1.0)
    typed = _commits(list("please pay the rent for march "), gap=0.25)
    paste = typed + KeyPairer().text_commit("GB33BUKB20201555555555 invoice 2026-0113 thanks for the delivery "
                                            "of the new kitchen chairs and table", 120.0)
    for name, evs in (("per character", per_char), ("per word", per_word), ("paste", paste)):
        assert features.keystroke_windows(evs) == [], name  # HEAD: windows of zero holds, scored as anyone's
        assert features.keystroke_windows(evs[-100:], 100, 100) == [], name
        assert features.windows_for("keystroke", evs) == [], name


def test_hardware_typing_windows_are_unchanged() -> None:
    seq = SyntheticPerson(2).keystrokes(260, 0)
    phone, batch = features.keystroke_windows(seq.to_events()), windows_for_subject(seq, 100, 25)
    assert len(phone) == len(batch) > 1
    assert all(np.array_equal(a.values, b.values) for a, b in zip(phone, batch))
    # a few committed characters among real presses (an IME's suggestion) still count
    evs = list(seq.to_events())[:100]
    mixed = evs[:70] + [KeyEvent("a", evs[69].press + 0.01 * i, evs[69].press + 0.01 * i) for i in range(1, 31)]
    assert len(features.keystroke_windows(mixed)) == 1


def test_committed_text_is_said_once_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mobile_client.features"):
        for k in range(3):
            features.keystroke_windows(_commits(list(TEXT), t0=10.0 + 100 * k))
    assert len([r for r in caplog.records if "soft keyboard" in r.getMessage()]) == 1


def test_soft_keyboard_typing_is_neither_set_up_nor_sent_with_a_payment(tmp_path: Path) -> None:
    bank, clock, s, ec = _setting_up(tmp_path, "keystroke")
    s.evidence.extend(_commits(list(TEXT) * 2, t0=clock(), gap=0.2))
    clock.advance(80.0)
    rep = ec.check("keystroke")
    assert not rep.ok and rep.unavailable and rep.message == features.UNAVAILABLE_TEXT["keystroke"]
    assert ec.finish() == {} and bank.sent("/enrolment") == []

    bank2 = FakeBank()
    s2 = _enrolled(tmp_path / "b", bank2, SyntheticPerson(11), clock)  # set up on a hardware keyboard
    clock.advance(30.0)
    s2.evidence.extend(_commits(list(TEXT[:120]), t0=clock(), gap=0.2))
    clock.advance(30.0)
    tc = TransactionController(s2)
    tc.authorize("20.00", "Corner Coffee")  # HEAD: a 100-key window of zero holds went as evidence
    assert [w for w in bank2.sent("/authorize")[0]["evidence"] if w["modality"] == "keystroke"] == []
    assert tc.evidence_summary["keystroke"] == 0


# -- 3: the collectors' clock counts suspend ---------------------------------------------------
BOOTTIME = 7


def _fake_time(clocks: dict[str, float], boottime: bool = True, fails: bool = False) -> SimpleNamespace:
    def clock_gettime(c: int) -> float:
        if fails:
            raise OSError(22, "Invalid argument")
        assert c == BOOTTIME
        return clocks["boot"]

    fake = SimpleNamespace(monotonic=lambda: clocks["mono"], clock_gettime=clock_gettime)
    if boottime:
        fake.CLOCK_BOOTTIME = BOOTTIME
    return fake


def test_recent_evidence_counts_the_time_the_phone_slept(monkeypatch: pytest.MonkeyPatch) -> None:
    clocks = {"mono": 1_000.0, "boot": 5_000.0}  # CLOCK_MONOTONIC and CLOCK_BOOTTIME
    monkeypatch.setattr(clock_mod, "time", _fake_time(clocks))
    monkeypatch.setattr(clock_mod, "_no_boottime", False, raising=False)

    def awake(dt: float) -> None:
        clocks["mono"] += dt
        clocks["boot"] += dt

    now = clock_mod.monotonic
    buf = EvidenceBuffer(None, clock=now)
    p = KeyPairer()
    for ch in TEXT[:150]:  # the owner types ...
        p.down(ch, now())
        awake(0.09)
        buf.add(p.up(ch, now()))  # type: ignore[arg-type]
        awake(0.12)
    acc = object.__new__(AndroidAccelerometer)  # ... and walks (the listener's stamps, mapped onto the clock)
    acc._lock, acc._sink, acc._clock = threading.Lock(), buf.add, now
    walk = SyntheticPerson(3).walk(20.0, 50.0, rng=5)
    start = clocks["boot"]
    for t, xyz in zip(walk.t, walk.xyz):
        awake(start + float(t) + 0.004 - clocks["boot"])
        acc._push(start + float(t), *map(float, xyz))  # SensorEvent.timestamp counts on CLOCK_BOOTTIME
    awake(0.5)
    assert len(buf.keys(100, EVIDENCE_MAX_AGE_S)) == 100 and len(buf.accel(EVIDENCE_WALK_S)) > 500
    clocks["boot"] += 7_200.0  # two hours suspended: CLOCK_MONOTONIC stood still
    awake(0.5)
    assert buf.keys(100, EVIDENCE_MAX_AGE_S) == []  # HEAD: 100 keys "recent"
    assert buf.accel(EVIDENCE_WALK_S) == []  # HEAD: the walk of two hours ago as "the last 15 s"


def test_collectors_clock_falls_back_to_monotonic_without_boottime(monkeypatch: pytest.MonkeyPatch) -> None:
    clocks = {"mono": 10.0, "boot": 99.0}
    monkeypatch.setattr(clock_mod, "_no_boottime", False, raising=False)
    monkeypatch.setattr(clock_mod, "time", _fake_time(clocks, boottime=False))
    assert clock_mod.monotonic() == 10.0  # no CLOCK_BOOTTIME (macOS, Windows)
    monkeypatch.setattr(clock_mod, "time", _fake_time(clocks, fails=True))
    assert clock_mod.monotonic() == 10.0  # a kernel without it: EINVAL
    monkeypatch.setattr(clock_mod, "time", _fake_time(clocks))
    assert clock_mod.monotonic() == 10.0  # and the run stays on that one clock
    monkeypatch.setattr(clock_mod, "_no_boottime", False, raising=False)
    assert clock_mod.monotonic() == 99.0


def test_a_swipe_after_a_rotation_is_read_against_its_own_screen() -> None:
    """The stream took its screen size from its first event: a landscape swipe after a portrait one was scaled wrong."""
    from modalities.touch.features import IDX

    def swipe(t0: float, x0: float, y0: float, dx: float, w: float, h: float) -> list[TouchEvent]:
        actions = [TouchAction.DOWN, *[TouchAction.MOVE] * 4, TouchAction.UP]
        return [TouchEvent(t0 + 0.01 * i, x0 + dx * i / 5, y0, 0.5, 10, 8, a, 0, w, h) for i, a in enumerate(actions)]

    landscape = swipe(10.0, 400, 500, 600, 1920, 1080)
    alone = features.touch_windows(landscape)[-1].values
    after_portrait = features.touch_windows(swipe(0.0, 200, 900, 500, 1080, 1920) + landscape)[-1].values
    for name in ("start_x", "end_x", "log_e2e_length", "log_speed_p50"):
        assert after_portrait[IDX[name]] == pytest.approx(alone[IDX[name]]), name
