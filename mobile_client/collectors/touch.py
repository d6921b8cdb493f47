"""Touch collector: every down/move/up the window sees, with pressure and size if reported.

Kivy's SDL2 window (the desktop, and Android builds) gives touches no contact shape, so their size
is `UNKNOWN_SIZE`. They are recorded as they are, but `features` cuts no window from a stroke
without a contact size (the server's touch models would read its zero sizes as matching anyone):
such a phone gives no touch evidence until a platform listener supplies sizes. Event times are
the collector's `clock` at dispatch (the app's one clock, `mobile_client.clock`), never a
timestamp Kivy gives in another clock's seconds.
"""

from __future__ import annotations

from typing import Any

from mobile_client.clock import Clock, monotonic
from mobile_client.collectors import WindowCollector
from modalities.events import TouchAction, TouchEvent

#: contact size recorded when the platform gives none (pixels); marks the field as unknown, and a
#: stroke carrying it gives no touch window (`features.has_contact_size`)
UNKNOWN_SIZE = 0.0


def touch_event(*, t: float, x: float, y: float, window_height: float, window_width: float, action: TouchAction,
                pointer_id: int, pressure: float | None, size: tuple[float, float] | None) -> TouchEvent:
    """Kivy coordinates (origin bottom-left) -> an Android-style `TouchEvent` (origin top-left)."""
    major, minor = size if size else (UNKNOWN_SIZE, UNKNOWN_SIZE)
    return TouchEvent(time=t, x=x, y=window_height - y, pressure=max(pressure or 0.0, 0.0),
                      touch_major=max(major, minor), touch_minor=min(major, minor), action=action,
                      pointer_id=pointer_id, screen_width=window_width, screen_height=window_height)


class TouchCollector(WindowCollector):
    """Binds the window's touch events; pointer ids are small integers as on Android."""

    modality = "touch"

    def __init__(self, window: Any, clock: Clock = monotonic) -> None:
        super().__init__(window)
        self.clock = clock
        self._pointers: dict[Any, int] = {}

    def _bindings(self) -> dict[str, Any]:
        return {"on_touch_down": self._down, "on_touch_move": self._move, "on_touch_up": self._up}

    def _on_stop(self) -> None:
        self._pointers.clear()

    def _emit(self, touch: Any, action: TouchAction, pid: int) -> None:
        if self._sink is None:
            return
        pressure = float(touch.pressure) if "pressure" in getattr(touch, "profile", ()) else None
        size = None
        shape = getattr(touch, "shape", None)
        if shape is not None and hasattr(shape, "width"):
            size = (float(shape.width), float(shape.height))
        w, h = self.window.size
        first = len(self._pointers) <= 1
        if action == TouchAction.DOWN and not first:
            action = TouchAction.POINTER_DOWN
        elif action == TouchAction.UP and not first:
            action = TouchAction.POINTER_UP
        self._sink(touch_event(t=self.clock(), x=float(touch.x), y=float(touch.y), window_height=float(h),
                               window_width=float(w), action=action, pointer_id=pid, pressure=pressure, size=size))

    def _down(self, _w: Any, touch: Any) -> None:
        used = set(self._pointers.values())
        pid = next(i for i in range(len(used) + 1) if i not in used)
        self._pointers[touch.uid] = pid
        self._emit(touch, TouchAction.DOWN, pid)

    def _move(self, _w: Any, touch: Any) -> None:
        pid = self._pointers.get(touch.uid)
        if pid is not None:
            self._emit(touch, TouchAction.MOVE, pid)

    def _up(self, _w: Any, touch: Any) -> None:
        pid = self._pointers.get(touch.uid)
        if pid is None:
            return
        self._emit(touch, TouchAction.UP, pid)
        del self._pointers[touch.uid]
