"""Headless tour of the app: drives every screen with synthetic behaviour and saves screenshots.

    python -m mobile_client.tour --screenshots OUT            # scripted demo bank (no server)
    python -m mobile_client.tour --server http://127.0.0.1:PORT --report flow.json

The same script is the end-to-end UI flow of the tests: it goes through consent, enrolment
(typing with synthetic key timings sent as real window key events, swipes as real touches, a
replayed walk) and transactions, and writes a JSON report of what each screen showed. Key and
touch times come from a `VirtualClock` the script advances, so the synthetic person's rhythm
reaches the collectors unchanged through Kivy's event path.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from mobile_client import headless

log = logging.getLogger("mobile_client.tour")

#: Kivy key codes of the key names the synthetic generator and the passphrase use
#: seconds of walking replayed before each payment (evidence must be new behaviour every time)
PAYMENT_WALK_S = 16.0
#: how long the tour waits for one thing to happen on screen (a server's answer included)
WAIT_S = 90.0
KEYCODES = {"space": (32, " "), "shift": (304, None), "backspace": (8, None), "period": (46, "."),
            "comma": (44, ","), "enter": (13, None)}


def keycode(name: str) -> tuple[int, str | None]:
    if name in KEYCODES:
        return KEYCODES[name]
    if len(name) == 1:
        return ord(name.lower()), name
    raise ValueError(f"key: no key code for {name!r}")


def _decided(pay: Any) -> bool:
    """The payment screen shows a decision or an error."""
    return bool(pay.phase == "result" or pay.error)


class Tour:
    """The scripted walk through the app (a generator stepped once per frame)."""

    def __init__(self, app: Any, clock: Any, out: Path | None, seed: int, payments: list[tuple[str, str]],
                 report: dict[str, Any]) -> None:
        import numpy as np

        from evaluation.synthetic import SyntheticPerson

        self.app = app
        self.clock = clock
        self.out = out
        self.person = SyntheticPerson(seed)
        self.rng = np.random.default_rng(seed)
        self.payments = payments
        self.report = report
        self.shots: list[str] = []

    # ------------------------------------------------------------------ primitives
    def shot(self, name: str) -> Iterator[int]:
        yield 4
        if self.out is None:
            return
        from kivy.core.window import Window

        path = Window.screenshot(name=str(self.out / f"{name}.png"))
        if path:
            Path(path).replace(self.out / f"{name}.png")
            self.shots.append(name)

    def tap(self, widget: Any) -> Iterator[int]:
        """Touch the middle of `widget` (scrolling it into view first), as a finger would."""
        from kivy.tests.common import UnitTestTouch
        from kivy.uix.scrollview import ScrollView

        parent = widget.parent
        while parent is not None and not isinstance(parent, ScrollView):
            parent = None if parent.parent is parent else parent.parent  # the Window is its own parent
        if parent is not None:
            parent.scroll_to(widget, padding=40, animate=False)
            yield 3
        x, y = widget.to_window(*widget.center)
        t = UnitTestTouch(x, y)
        self.clock.advance(0.3)
        t.touch_down()
        self.clock.advance(0.08)
        t.touch_up()
        yield 2

    def type_keys(self, keys: list[tuple[str, float, float]]) -> None:
        """Press keys with the given (name, press, release) times, as window key events."""
        from kivy.core.window import Window

        base = self.clock() + 0.5
        timeline: list[tuple[float, int, str]] = []
        for n, (_k, p, r) in enumerate(keys):
            timeline += [(p, 0, f"{n}"), (r, 1, f"{n}")]
        timeline.sort()
        for t, kind, idx in timeline:
            name = keys[int(idx)][0]
            code, text = keycode(name)
            self.clock.set(max(self.clock(), base + t))
            if kind == 0:
                Window.dispatch("on_key_down", code, 0, text, [])
                if text is not None:
                    Window.dispatch("on_textinput", text)
            else:
                Window.dispatch("on_key_up", code, 0)
        self.clock.advance(0.3)

    def person_keys(self, n: int) -> list[tuple[str, float, float]]:
        seq = self.person.keystrokes(n, self.rng)
        return [(str(k), float(p), float(r)) for k, p, r in zip(seq.keys, seq.press, seq.release)]

    def phrase_keys(self, phrase: str) -> list[tuple[str, float, float]]:
        """The phrase typed with this person's rhythm (timings of their own free typing)."""
        seq = self.person.keystrokes(len(phrase), self.rng)
        names = ["space" if c == " " else c for c in phrase]
        return [(k, float(p), float(r)) for k, p, r in zip(names, seq.press, seq.release)]

    def swipes(self, n: int, area: Any) -> Iterator[int]:
        """`n` of this person's swipes, scaled into `area`, as touches with pressure and size."""
        from kivy.core.window import Window
        from kivy.input.shape import ShapeRect
        from kivy.tests.common import UnitTestTouch

        from mobile_client.features import split_strokes

        stream = self.person.touch(n, self.rng)
        W, H = Window.size
        x0, y0 = area.to_window(area.x, area.y)
        for stroke in split_strokes(stream.to_events()):
            base = self.clock() + 0.6
            t_first = stroke[0].time

            def place(ev: Any) -> tuple[float, float]:
                # the stroke's own geometry, horizontal swipes mirrored onto the gallery
                return (x0 + area.width * (ev.x / stream.screen_width),
                        y0 + area.height * (1 - ev.y / stream.screen_height))

            touch = None
            for ev in stroke:
                x, y = place(ev)
                x, y = min(max(x, 1), W - 2), min(max(y, 1), H - 2)
                self.clock.set(max(self.clock(), base + ev.time - t_first))
                if touch is None:
                    touch = UnitTestTouch(x, y)
                    touch.profile = ["pos", "pressure", "shape"]
                    touch.pressure = ev.pressure
                    touch.shape = ShapeRect()
                    touch.shape.width, touch.shape.height = ev.touch_major, ev.touch_minor
                    touch.touch_down()
                elif int(ev.action) == 1:
                    touch.touch_up()
                else:
                    touch.pressure = ev.pressure
                    touch.touch_move(x, y)
                yield 1  # one sample per frame, so scroll views see sane speeds
            yield 3

    def catch_up_with_walk(self) -> None:
        """Move the session clock to the newest walking sample (a replayed walk runs ahead of it)."""
        samples = self.app.services.evidence.accel()
        if samples:
            self.clock.set(max(self.clock(), max(s.time for s in samples)))

    def walk(self, index: int, seconds: float = PAYMENT_WALK_S) -> None:
        """`seconds` of this person's walking not replayed before (the phone in a pocket on the way)."""
        from mobile_client.collectors.replay import ReplaySource, recorded_walk
        from mobile_client.controllers.enrolment import REPLAY_WALK_S
        from modalities.events import AccelSeries

        skip = REPLAY_WALK_S + index * seconds  # the enrolment walk, then one new stretch per payment
        # the stretch the last set-up walk replayed, continued (the same attempt starts at the same place)
        series, _ = recorded_walk(self.app.replay_data_dir, skip + seconds, attempt=max(self.app.walks_replayed - 1, 0))
        sel = series.t >= series.t[0] + skip
        if sel.sum() < 2:
            return  # a short recording: this payment goes without walking evidence
        ReplaySource(AccelSeries(series.t[sel], series.xyz[sel], series.device), clock=self.clock).play_all(
            self.app.services.evidence.add)
        self.catch_up_with_walk()

    def wait_for(self, cond: Callable[[], bool], what: str, seconds: float = WAIT_S) -> Iterator[int]:
        """Frames until `cond` holds; TimeoutError after `seconds` of wall time.

        Wall time, not frames: an offscreen window draws hundreds of frames a second, and a
        decision from a server on a loaded machine took longer than the 2,000 frames once allowed.
        """
        deadline = time.monotonic() + seconds
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited too long for: {what} ({seconds:g} s)")
            yield 1

    # ------------------------------------------------------------------ the tour
    def run(self) -> Iterator[int]:
        app = self.app
        r = self.report
        welcome = app.go("welcome")
        yield from self.shot("01-welcome")
        yield from self.tap(welcome.ids.start)

        consent = app.screen("consent")
        yield 3
        cards = consent.cards()
        for m in ("keystroke", "touch", "gait"):
            yield from self.tap(cards[m].ids.auth)
        yield from self.tap(cards["keystroke"].ids.fed)
        yield from self.shot("02-consent")
        r["consent_shown"] = {m: {"authentication": c.auth, "federated_training": c.fed} for m, c in cards.items()}
        yield from self.tap(consent.ids.agree)
        yield from self.wait_for(lambda: not consent.busy, "consents saved")  # network work runs off the UI thread
        if consent.error:
            raise RuntimeError(f"consent refused: {consent.error}")

        enrol = app.screen("enrol")
        yield 3
        for _ in range(int(enrol.repeats_needed)):
            enrol.ids.phrase.focus = True
            yield 2
            self.type_keys(self.phrase_keys(enrol.passphrase))
            enrol.ids.phrase.dispatch("on_text_validate")
            yield 2
        enrol.ids.free_text.focus = True
        yield 2
        self.type_keys(self.person_keys(160))
        yield 2
        enrol.ids.free_text.focus = False
        yield from self.shot("03-enrolment-typing")
        yield from self.tap(enrol.ids.check_typing)
        r.setdefault("enrolment", {})["keystroke"] = dict(enrol.quality.get("keystroke", {}))

        yield from self.wait_for(lambda: enrol.step == "touch", "swipe step")
        yield 3
        yield from self.swipes(14, enrol.ids.gallery)
        yield 8
        yield from self.shot("04-enrolment-swipe")
        yield from self.tap(enrol.ids.check_swipes)
        r["enrolment"]["touch"] = dict(enrol.quality.get("touch", {}))

        yield from self.wait_for(lambda: enrol.step == "gait", "walk step")
        yield from self.tap(enrol.ids.start_walk)
        yield from self.wait_for(lambda: enrol.progress["gait"] > 0.4, "half the walk")
        yield from self.shot("05-enrolment-walk")
        yield from self.wait_for(lambda: not enrol.walking, "walk to end")
        self.catch_up_with_walk()
        yield 3
        yield from self.tap(enrol.ids.check_walk)
        r["enrolment"]["gait"] = dict(enrol.quality.get("gait", {}))
        r["walk_source"] = enrol.walk_source

        yield from self.wait_for(lambda: enrol.step == "review", "quality review")
        yield from self.shot("06-enrolment-quality")
        yield from self.tap(enrol.ids.finish)
        yield from self.wait_for(lambda: app.sm.current == "home" or enrol.message.startswith("Could not"),
                                 "home after enrolment")
        if app.sm.current != "home":
            raise RuntimeError(enrol.message)
        r["enrolled"] = list(app.services.profile.enrolled)

        home = app.screen("home")
        yield from self.swipes(6, home.ids.offers)
        yield 20
        home.refresh()
        yield from self.shot("07-home")
        r["home"] = {"greeting": home.greeting, "last_sync": home.last_sync,
                     "status": [(w.title, w.detail) for w in reversed(home.ids.status.children)]}

        r["transactions"] = []
        for i, (amount, payee) in enumerate(self.payments):
            if i:
                yield from self.swipes(5, home.ids.offers)  # browsing before the next payment
                yield 20
            yield from self.tap(home.ids.send)
            pay = app.screen("pay")
            yield 3
            pay.ids.payee.focus = True
            yield 2
            self.type_keys(self.phrase_keys(payee.lower()))
            pay.ids.payee.text = payee
            pay.ids.amount.focus = True
            yield 2
            self.type_keys(self.phrase_keys(amount))
            pay.ids.amount.text = amount
            pay.ids.reference.focus = True
            yield 2
            self.type_keys(self.person_keys(110))
            pay.ids.reference.focus = False
            self.walk(i)  # paying on the move: recent walking evidence, new for every payment
            if i == 0:
                yield from self.shot("08-transaction")
            # a tap that missed the button (layout still settling on a loaded machine) is tapped
            # again until the payment is under way; each pay tap is counted in the report
            taps, deadline = 0, time.monotonic() + WAIT_S
            while pay.phase == "form" and not pay.error and time.monotonic() < deadline:
                yield from self.tap(pay.ids.pay)
                taps += 1
                for _ in range(30):
                    if pay.phase != "form" or pay.error:
                        break
                    yield 1
            r.setdefault("pay_taps", []).append(taps)
            if pay.phase == "form" and not pay.error:
                raise TimeoutError(f"the Pay button did not start the payment in {taps} taps ({WAIT_S:g} s)")
            yield from self.wait_for(partial(_decided, pay), "decision")
            if pay.phase != "result":
                raise RuntimeError(f"payment failed: {pay.error}")
            yield 3
            shown = {"transaction_id": pay.transaction_id, "outcome": pay.outcome, "headline": pay.headline,
                     "detail": pay.detail, "reasons": list(pay.reasons), "evidence": pay.evidence}
            yield from self.shot(f"{9 + i:02d}-transaction-{pay.outcome.replace('_', '-')}")
            if pay.outcome == "step_up" and app.transaction.step_up is not None:
                pay.ids.code.text = app.transaction.step_up.code
                yield from self.tap(pay.ids.verify)
                yield from self.wait_for(partial(lambda p: not p.ids.verify.disabled, pay), "code checked")
                shown["after_code"] = pay.outcome
                yield 3  # the result card lays itself out again without the code form
            r["transactions"].append(shown)
            # the next payment starts from an empty form: a missed tap (the result card still laying
            # itself out on a loaded machine) is tapped again, never passing the last result off as its own
            for _ in range(3):
                yield from self.tap(pay.ids.done)
                for _ in range(30):
                    if pay.phase == "form":
                        break
                    yield 1
                if pay.phase == "form":
                    break
            yield from self.wait_for(partial(lambda p: p.phase == "form", pay), "an empty payment form after Done",
                                     seconds=0)
            yield 3

        privacy = app.go("privacy")
        yield 4
        yield from self.shot(f"{9 + len(self.payments):02d}-privacy")
        r["privacy"] = [list(i) for i in privacy.items]
        r["federation"] = privacy.federated_status
        r["screenshots"] = list(self.shots)


def _server_arg(url: str) -> str:
    """--server checked before anything starts (`api.server_url`)."""
    from mobile_client.api import server_url

    try:
        return server_url(url)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mobile_client.tour", description=__doc__.splitlines()[0])
    ap.add_argument("--screenshots", type=Path, default=None, help="folder for one PNG per screen")
    ap.add_argument("--server", default=None, type=_server_arg, help="server URL (default: scripted demo bank in-process)")
    ap.add_argument("--app-data", type=Path, default=None, help="app data folder (default: a new temp folder)")
    ap.add_argument("--replay-data", default=None, help="datasets folder for the replayed walk (else synthetic)")
    ap.add_argument("--report", type=Path, default=None, help="write what the screens showed as JSON")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--bank-key", default=None, help="bank API key to complete step-ups (demo/test builds only)")
    ap.add_argument("--payment", action="append", default=None, help="AMOUNT:PAYEE (repeatable)")
    ap.add_argument("--timeout", type=float, default=240.0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    headless.prepare()
    logging.getLogger("kivy").setLevel(logging.WARNING)  # Kivy's start-up INFO lines are not the tour's output
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    # a folder of our own (device key, encrypted raw events) is removed at the end; --app-data stays
    data = args.app_data or Path(tempfile.mkdtemp(prefix="cadence-app-"))
    try:
        return _run(args, data)
    finally:
        if args.app_data is None:
            shutil.rmtree(data, ignore_errors=True)


def _failed(report: dict[str, Any], state: dict[str, Any], exc: BaseException) -> None:
    """Note a failure in the report (its traceback too, for debugging) and the exit status."""
    report["error"] = f"{type(exc).__name__}: {exc}"
    report["traceback"] = "".join(traceback.format_exception(exc))
    state["rc"] = 1


def _run(args: argparse.Namespace, data: Path) -> int:
    """The tour with app data in `data` (`main` owns the folder)."""
    from kivy.clock import Clock as KivyClock

    from federated.deployment import signals_deferred
    from mobile_client.clock import VirtualClock
    from mobile_client.services import build_services
    from mobile_client.ui.app import CadenceApp

    clock = VirtualClock(1000.0)
    bank = None
    if args.server:
        services = build_services(data, args.server, retries=2, bank_api_key=args.bank_key, clock=clock)
    else:
        from mobile_client.demo_bank import DemoBank

        bank = DemoBank()
        services = build_services(data, "http://demo-bank.invalid", bank_api_key="demo", clock=clock)
        services.api._http = __import__("httpx").Client(base_url="http://demo-bank.invalid", transport=bank.transport())
    payments = [tuple(p.split(":", 1)) for p in args.payment] if args.payment else (
        [("42.50", "Jordan Lee"), ("1250.00", "Harbour Lettings"), ("980.00", "Unknown Trader Ltd")] if bank
        else [("42.50", "Jordan Lee")])
    report: dict[str, Any] = {"server": args.server or "demo-bank (scripted)", "app_data": str(data),
                              "device_id": services.profile.device_id, "user_id": services.profile.user_id}
    state: dict[str, Any] = {"rc": 0}

    def ready(app: Any) -> None:
        tour = Tour(app, clock, args.screenshots, args.seed, payments, report)  # type: ignore[arg-type]
        gen = tour.run()
        waiting = {"n": 0}
        started = time.monotonic()

        def step(_dt: float) -> bool | None:
            if guard.received:  # SIGTERM, Ctrl-C, SIGHUP: the tour did not finish
                _stopped(report, state, guard.received[0], tour.shots)
                app.stop()
                return False
            if waiting["n"] > 0:
                waiting["n"] -= 1
                return None
            try:
                if time.monotonic() - started > args.timeout:
                    raise TimeoutError(f"tour took more than {args.timeout} s")
                waiting["n"] = max(0, next(gen) - 1)
                return None
            except StopIteration:
                pass
            except Exception as exc:  # noqa: BLE001 - report any failure, then stop the app
                _failed(report, state, exc)
            app.stop()
            return False

        KivyClock.schedule_interval(step, 0)

    app = CadenceApp(services, clock=clock, animate=False, walk_speed=8.0,
                     data_dir_for_replay=args.replay_data, on_ready=ready)
    # a signal is noted and stops the tour at its next frame, as one that did not finish: SDL's own
    # SIGTERM handler quit the app as if the tour were done (exit 0, its summary, a report of a whole tour)
    with signals_deferred() as guard:
        try:
            app.run()
        except Exception as exc:  # noqa: BLE001 - a screen's own callback failed: reported as a failed step is
            _failed(report, state, exc)
    if bank is not None:
        report["demo_bank"] = {"decisions": [d["decision"] for d in bank.decisions], "enrolled": bank.enrolled}
    if args.report:
        args.report.write_text(json.dumps(report, indent=1, default=str))
    where = f" (details in {args.report})" if args.report else ""
    if "stopped_by" in report:  # not a failure of the app's: no traceback to point to
        taken = len(report["screenshots_taken"])
        print(f"error: the tour was stopped ({report['stopped_by']}) before it finished"
              f"{f'; {taken} screenshot(s) taken' if args.screenshots else ''}{where}", file=sys.stderr)
    elif state["rc"]:  # one line; the traceback is for debugging, in the report (and the debug log)
        print(f"error: the tour stopped: {report.get('error')}{where}", file=sys.stderr)
        log.debug("the tour stopped:\n%s", report.get("traceback"))
    else:
        print(json.dumps({"screenshots": report.get("screenshots", []),
                          "decisions": [t["outcome"] for t in report.get("transactions", [])]}))
    return int(state["rc"])


def _stopped(report: dict[str, Any], state: dict[str, Any], signum: int, shots: list[str]) -> None:
    """Note in the report that a signal stopped the tour before its end, and the exit status (128 + signal)."""
    name = signal.Signals(signum).name
    report.update(error=f"stopped by {name} before the tour finished", stopped_by=name,
                  screenshots_taken=list(shots))
    state["rc"] = 128 + signum


if __name__ == "__main__":
    sys.exit(main())
