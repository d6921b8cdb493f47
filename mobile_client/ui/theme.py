"""Colours and sizes of the app (one place, imported by every .kv file as `T`)."""

from __future__ import annotations

Colour = tuple[float, float, float, float]


def hex_colour(h: str, a: float = 1.0) -> Colour:
    h = h.lstrip("#")
    return (int(h[0:2], 16) / 255, int(h[2:4], 16) / 255, int(h[4:6], 16) / 255, a)


def darker(c: Colour, f: float = 0.85) -> Colour:
    return (c[0] * f, c[1] * f, c[2] * f, c[3])


PRIMARY = hex_colour("0B3D91")  # bank navy
PRIMARY_DARK = hex_colour("072A66")
ACCENT = hex_colour("00A38C")  # teal
BG = hex_colour("F2F4F8")
CARD = hex_colour("FFFFFF")
TEXT = hex_colour("1B2230")
MUTED = hex_colour("5E6675")
LINE = hex_colour("DDE2EA")
# text colours too: each reaches WCAG AA (4.5:1) on white, BG and its own SOFT_ tint, and white
# text on it does (tests/mobile_client/test_theme_contrast.py)
OK = hex_colour("157A45")
WARN = hex_colour("9A5500")  # deep amber: the bright #E8920C gave white text 2.5:1
DANGER = hex_colour("B8322A")
SOFT_PRIMARY = hex_colour("E3EBF8")
SOFT_OK = hex_colour("E2F4EA")
SOFT_WARN = hex_colour("FDF0DC")
SOFT_DANGER = hex_colour("FBE4E2")
WHITE: Colour = (1.0, 1.0, 1.0, 1.0)

OUTCOME_COLOUR = {"approve": OK, "step_up": WARN, "deny": DANGER, "": MUTED}
OUTCOME_SOFT = {"approve": SOFT_OK, "step_up": SOFT_WARN, "deny": SOFT_DANGER, "": BG}
#: background colours of the offer cards (white text on each reaches 4.5:1)
CARD_TEAL = hex_colour("007A69")
CARD_PURPLE = hex_colour("8A4FD8")
MODALITY_COLOUR = {"keystroke": hex_colour("3A6FD8"), "touch": CARD_PURPLE, "gait": CARD_TEAL}

#: phone-sized window for desktop runs and screenshots (logical pixels)
WINDOW_SIZE = (420, 880)
