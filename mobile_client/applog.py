"""The app's log level, and keeping it once Kivy is imported.

Importing Kivy in its default log mode (``KIVY_LOG_MODE=KIVY``) adds its handlers (console,
log file) to the root logger and sets the root logger's level to NOTSET, so every library's
DEBUG lines (httpcore's connection chatter among them) would reach Kivy's log file. The app
logs INFO and up: `configure_logging` sets it, and `after_kivy_import` (called by
`mobile_client.ui.app` once Kivy is imported, and by `__main__.main`) sets it again. Neither
changes anything in a process that did not call `configure_logging` (tests, the tour).
"""

from __future__ import annotations

import logging

#: the app's level (logcat on Android, Kivy's log file on the desktop)
APP_LEVEL = logging.INFO
_configured = False


def configure_logging() -> None:
    """The app's log: INFO and up, and no request URLs, which carry the user id.

    httpx logs every request's full URL at INFO; the client logs routes without identifiers
    (`api.route_shape`) instead.
    """
    global _configured
    logging.basicConfig(level=APP_LEVEL, format="%(levelname)s %(name)s: %(message)s")
    _configured = True
    _hold_level()


def after_kivy_import() -> None:
    """Set the app's level again after Kivy was imported (it resets the root logger); no-op unless configured."""
    if _configured:
        _hold_level()


def _hold_level() -> None:
    logging.root.setLevel(APP_LEVEL)
    logging.getLogger("httpx").setLevel(logging.WARNING)
