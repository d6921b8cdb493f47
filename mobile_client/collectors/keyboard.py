"""Keyboard collector: key down/up times from the Kivy window, whatever widget has focus."""

from __future__ import annotations

from typing import Any

from mobile_client.clock import Clock, monotonic
from mobile_client.collectors import WindowCollector
from mobile_client.collectors.keys import KeyPairer


class KeyboardCollector(WindowCollector):
    """Binds the window's key events (before any widget sees them) and emits `KeyEvent`s."""

    modality = "keystroke"

    def __init__(self, window: Any, clock: Clock = monotonic) -> None:
        super().__init__(window)
        self.clock = clock
        self._pairer = KeyPairer()

    def _bindings(self) -> dict[str, Any]:
        return {"on_key_down": self._on_down, "on_key_up": self._on_up, "on_textinput": self._on_text}

    def _name(self, key: int) -> str:
        from kivy.core.window import Keyboard

        return Keyboard.keycode_to_string(None, key) or f"key{key}"

    def _on_down(self, _window: Any, key: int, *_args: Any, **_kw: Any) -> None:
        self._pairer.down(self._name(key), self.clock())

    def _on_up(self, _window: Any, key: int, *_args: Any, **_kw: Any) -> None:
        ev = self._pairer.up(self._name(key), self.clock())
        if ev is not None and self._sink is not None:
            self._sink(ev)

    def _on_text(self, _window: Any, text: str) -> None:
        for ev in self._pairer.text_commit(text, self.clock()):
            if self._sink is not None:
                self._sink(ev)
