"""Text colours of the app's theme against the backgrounds they are drawn on (WCAG 2.x AA).

Each pair is one the .kv files draw: normal text needs 4.5:1, large text (at least 18.66 px
bold or 24 px) 3:1. A translucent text colour is blended over its background first.
"""

from __future__ import annotations

import pytest

from mobile_client.ui import theme as T

NORMAL, LARGE = 4.5, 3.0


def _linear(c: float) -> float:
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def _luminance(c: T.Colour) -> float:
    r, g, b = (_linear(x) for x in c[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(fg: T.Colour, bg: T.Colour) -> float:
    a = fg[3]
    over = (fg[0] * a + bg[0] * (1 - a), fg[1] * a + bg[1] * (1 - a), fg[2] * a + bg[2] * (1 - a), 1.0)
    hi, lo = sorted((_luminance(over), _luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def _w(alpha: float) -> T.Colour:
    return (1.0, 1.0, 1.0, alpha)


PAIRS: list[tuple[str, T.Colour, T.Colour, float]] = [
    ("body text", T.TEXT, T.BG, NORMAL),
    ("muted text on the page", T.MUTED, T.BG, NORMAL),
    ("muted text on a card", T.MUTED, T.CARD, NORMAL),
    ("top bar title", T.WHITE, T.PRIMARY, NORMAL),
    ("top bar subtitle", _w(0.75), T.PRIMARY, NORMAL),
    ("welcome text", _w(0.8), T.PRIMARY, NORMAL),
    ("welcome small print", _w(0.75), T.PRIMARY, NORMAL),
    ("balance card caption", _w(0.7), T.PRIMARY_DARK, NORMAL),
    ("primary button", T.WHITE, T.PRIMARY, NORMAL),
    ("ghost button", T.PRIMARY, T.SOFT_PRIMARY, NORMAL),
    ("Verify and pay button", T.WHITE, T.WARN, NORMAL),
    ("Delete my data button", T.WHITE, T.DANGER, NORMAL),
    ("set-up hint in warning colour", T.WARN, T.BG, NORMAL),
    ("warning text on a card", T.WARN, T.CARD, NORMAL),
    ("success text on a card", T.OK, T.CARD, NORMAL),
    ("error text on a card", T.DANGER, T.CARD, NORMAL),
    ("error text on the page", T.DANGER, T.BG, NORMAL),
    ("salary amount", T.OK, T.CARD, NORMAL),
    ("quality mark OK", T.WHITE, T.OK, NORMAL),
    ("quality mark !", T.WHITE, T.WARN, NORMAL),
    *[(f"{m} icon", T.WHITE, c, NORMAL) for m, c in T.MODALITY_COLOUR.items()],
    *[(f"offer card on {name}", T.WHITE, c, NORMAL)
      for name, c in (("primary", T.PRIMARY), ("teal", T.CARD_TEAL), ("purple", T.CARD_PURPLE), ("warn", T.WARN))],
    *[(f"{o} headline", T.OUTCOME_COLOUR[o], T.OUTCOME_SOFT[o], NORMAL) for o in ("approve", "step_up", "deny")],
    *[(f"{o} result small print", T.MUTED, T.OUTCOME_SOFT[o], NORMAL) for o in ("approve", "step_up", "deny")],
    *[(f"{o} result error", T.DANGER, T.OUTCOME_SOFT[o], NORMAL) for o in ("approve", "step_up", "deny")],
    *[(f"{o} reason dot text", T.TEXT, T.OUTCOME_SOFT[o], NORMAL) for o in ("approve", "step_up", "deny")],
    *[(f"{o} result glyph", T.WHITE, T.OUTCOME_COLOUR[o], LARGE) for o in ("approve", "step_up", "deny")],
]


@pytest.mark.parametrize(("what", "fg", "bg", "need"), PAIRS, ids=[p[0] for p in PAIRS])
def test_text_meets_wcag_aa(what: str, fg: T.Colour, bg: T.Colour, need: float) -> None:
    assert contrast(fg, bg) >= need, f"{what}: {contrast(fg, bg):.2f}:1, needs {need}:1"


def test_contrast_formula_matches_wcag_examples() -> None:
    assert contrast(T.WHITE, (0.0, 0.0, 0.0, 1.0)) == pytest.approx(21.0)
    assert contrast(T.WHITE, T.hex_colour("E8920C")) == pytest.approx(2.46, abs=0.01)  # the tester's figure
