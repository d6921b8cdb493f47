"""Environment for a headless Kivy window; must run before the first `import kivy`."""

from __future__ import annotations

import atexit
import logging
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
    logging.getLogger("kivy").addFilter(no_cutbuffer)
    window_size(width, height)


def no_cutbuffer(record: logging.LogRecord) -> bool:
    """Drop Kivy's CRITICAL that no X selection tool (xclip, xsel) is installed, and its two tracebacks.

    Why: an offscreen window has no X selection to copy from, so the message says nothing, yet
    it printed a CRITICAL line and two tracebacks on every successful headless run.
    """
    return not str(record.msg).startswith("Cutbuffer: Unable to find any valuable Cutbuffer provider")


def window_size(width: int, height: int) -> None:
    from kivy.config import Config

    Config.set("graphics", "width", str(width))
    Config.set("graphics", "height", str(height))
    Config.set("graphics", "resizable", "0")
    Config.set("input", "mouse", "mouse,disable_multitouch")
    Config.set("kivy", "exit_on_escape", "0")
