"""Environment for a headless Kivy window; must run before the first `import kivy`."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile


def prepare(width: int = 420, height: int = 880) -> None:
    """Offscreen SDL window, no argv parsing, a private KIVY_HOME, phone-sized window."""
    os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
    os.environ.setdefault("KIVY_NO_ARGS", "1")
    os.environ.setdefault("KIVY_NO_CONSOLELOG", "1")
    os.environ.setdefault("KIVY_LOG_MODE", "PYTHON")
    os.environ.setdefault("KIVY_CLIPBOARD", "dummy")
    if "KIVY_HOME" not in os.environ:
        home = tempfile.mkdtemp(prefix="cadence-kivy-")
        os.environ["KIVY_HOME"] = home
        atexit.register(shutil.rmtree, home, ignore_errors=True)  # our own: nothing left in /tmp
    window_size(width, height)


def window_size(width: int, height: int) -> None:
    from kivy.config import Config

    Config.set("graphics", "width", str(width))
    Config.set("graphics", "height", str(height))
    Config.set("graphics", "resizable", "0")
    Config.set("input", "mouse", "mouse,disable_multitouch")
    Config.set("kivy", "exit_on_escape", "0")
