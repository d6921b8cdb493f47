"""Driving a Kivy app scene by scene, in the subprocess a UI test runs (its script imports this)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any


class FakeNode:
    """Stands in for `cadence federated supernode` (no Flower process): running until stopped."""

    def __init__(self, data_dir: Any = None) -> None:
        self.data_dir = data_dir
        self.stopped = False

    @property
    def running(self) -> bool:
        return not self.stopped

    def stop(self) -> None:
        self.stopped = True


def fake_supernodes() -> list[FakeNode]:
    """Make the app start `FakeNode`s (after exporting the windows, as the real SuperNode's start does); the list fills as it does."""
    from mobile_client import federation

    nodes: list[FakeNode] = []

    def start(superlink: Any, data_dir: Any, windows: Any, modality: str, port: Any) -> FakeNode:
        federation.export_windows(data_dir, windows, modality)
        nodes.append(FakeNode())
        return nodes[-1]

    federation.start_supernode = start
    return nodes


def services_with_a_bank(data: Any, res: dict[str, Any]) -> Any:
    """The app's services with a bank that accepts every call and notes each consent posted in ``res["posts"]``.

    300 keystrokes of a synthetic person are recorded (what training exports), and a SuperLink is configured.
    """
    import json
    import os

    import httpx

    from evaluation.synthetic import SyntheticPerson
    from mobile_client.services import build_services

    def bank(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/consents"):
            res["posts"].append(json.loads(req.content))
        return httpx.Response(201, json={})

    s = build_services(data, "http://bank.test", retries=0)
    s.api._http = httpx.Client(base_url="http://bank.test", transport=httpx.MockTransport(bank))
    s.store.append(SyntheticPerson(4).keystrokes(300, 1).to_events())
    os.environ["CADENCE_SUPERLINK"] = "127.0.0.1:9"
    return s


def settle(app: Any, wait_s: float = 20.0) -> Iterator[None]:
    """Frames until the app's background jobs finished (at most `wait_s`), then five more to draw their results."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < wait_s and app.jobs_in_flight:
        yield
    for _ in range(5):
        yield


def drive(app: Any, scene: Iterator[Any], res: dict[str, Any]) -> None:
    """Advance `scene` one step per frame; an exception goes to ``res["exception"]``; then stop the app.

    Why one step per frame: each step's widget changes are laid out and drawn before the next
    step reads them, as a person's taps would be.
    """
    from kivy.clock import Clock

    def step(_dt: float) -> bool | None:
        try:
            next(scene)
            return None
        except StopIteration:
            pass
        except Exception:
            res["exception"] = traceback.format_exc()
        app.stop()
        return False

    Clock.schedule_interval(step, 0)


def run_script(script: str, *args: str, env: dict[str, str], timeout: float = 240) -> dict[str, Any]:
    """Run a UI test's app script in a subprocess; its `RESULT {...}` line, with no exception in it.

    The script prints `RESULT ` and a JSON object last (`drive` records an exception in it).
    """
    p = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                       timeout=timeout)
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    assert p.returncode == 0 and lines, p.stderr[-3000:]
    res: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
    assert "exception" not in res, res["exception"]
    return res
