"""Pairing key-down and key-up into `KeyEvent`s (pure; the Kivy binding is in `keyboard`).

Why apart: the pairing rules (auto-repeat, a release never seen, text committed by a soft
keyboard without key events) are what decide whether hold and flight times are faithful, so
they are tested without a window.
"""

from __future__ import annotations

from modalities.events import KeyEvent

#: Kivy key names -> the names the keystroke features use
KIVY_KEY_NAMES: dict[str, str] = {
    "spacebar": "space", " ": "space", ".": "period", ",": "comma", "enter": "enter",
    "lshift": "shift", "rshift": "shift", "backspace": "backspace", "tab": "tab",
}
#: a key held longer than this is dropped (stuck key, or the release was lost)
MAX_HOLD_S = 5.0


def canonical_key(name: str) -> str:
    """One name per physical key: lower case, Kivy's spellings mapped to ours."""
    low = str(name).lower()
    return KIVY_KEY_NAMES.get(low, low)


class KeyPairer:
    """Turns a stream of down/up notifications into complete key presses."""

    def __init__(self) -> None:
        self._down: dict[str, float] = {}
        #: keys whose down expired (`_expire`): their auto-repeat and their up are ignored until that up
        self._lost: set[str] = set()
        self._last_text_t: float | None = None

    def down(self, key: str, t: float) -> None:
        """A key went down; auto-repeat (down again before up) keeps the first time."""
        self._expire(t)
        k = canonical_key(key)
        if k not in self._lost:
            self._down.setdefault(k, t)

    def _expire(self, t: float) -> None:
        """Let go of key-downs older than `MAX_HOLD_S` at `t` (a stuck key, or its key-up was lost).

        Such a press could never be paired (`up` drops it), and left waiting it would block every
        soft-keyboard commit for the rest of the run. The key is remembered as lost until its next
        up, so that an auto-repeat of a key still held is not taken for a new, shorter press.
        """
        for k in [k for k, press in self._down.items() if t - press > MAX_HOLD_S]:
            del self._down[k]
            self._lost.add(k)

    def up(self, key: str, t: float) -> KeyEvent | None:
        """A key went up: the completed press, or None for an up without a down."""
        k = canonical_key(key)
        if k in self._lost:
            self._lost.discard(k)
            return None
        press = self._down.pop(k, None)
        if press is None or t < press or t - press > MAX_HOLD_S:
            return None
        return KeyEvent(k, press, t)

    def text_commit(self, text: str, t: float) -> list[KeyEvent]:
        """Text from a soft keyboard that sent no key events (Android IMEs do this).

        Each character becomes a press with zero hold, all of them at the commit time `t`. So
        such keys carry no typing rhythm: every hold is zero, and the down-down times within one
        commit are zero too (a keyboard that commits a word at a time gives word-by-word times
        only; a paste is a burst of keys at one instant). The features' quality does NOT show
        this, and the server's keystroke models would read such windows as matching anyone, so
        `features.keystroke_windows` drops every window in which most keys have no real hold:
        text typed on such a keyboard is kept on the phone but never sent, for set-up or as a
        payment's evidence (logged once). Nothing is committed while a hardware key is down (its
        own down/up pair is the real event); a key-down older than `MAX_HOLD_S` no longer counts
        as down (its key-up was lost).
        """
        self._expire(t)
        if self._down:
            return []  # a hardware key is down: its down/up pair is the real event
        out = [KeyEvent(canonical_key(ch), t, t) for ch in text if ch.strip() or ch == " "]
        self._last_text_t = t
        return out
