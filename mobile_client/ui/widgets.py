"""Small reusable widgets drawn in `kv/theme.kv` (switch, progress bar)."""

from __future__ import annotations

from kivy.properties import BooleanProperty, DictProperty, ListProperty, NumericProperty, StringProperty
from kivy.uix.behaviors import ButtonBehavior
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.label import Label
from kivy.uix.widget import Widget

from mobile_client.ui import theme


class PillSwitch(ButtonBehavior, Widget):
    """An on/off switch that looks like the platform's (Kivy's own is dated)."""

    active = BooleanProperty(False)

    def on_release(self) -> None:
        if not self.disabled:
            self.active = not self.active


class Bar(Widget):
    """Rounded progress bar, value in [0, 1]."""

    value = NumericProperty(0.0)
    colour = ListProperty(list(theme.ACCENT))


class ConsentCard(BoxLayout):
    """One modality's consent: what is used, and a switch per purpose."""

    modality = StringProperty("")
    title = StringProperty("")
    what = StringProperty("")
    icon = StringProperty("")
    icon_colour = ListProperty(list(theme.PRIMARY))
    auth = BooleanProperty(False)
    fed = BooleanProperty(False)


class StatusRow(BoxLayout):
    """A modality's state on the home and privacy screens."""

    title = StringProperty("")
    detail = StringProperty("")
    on = BooleanProperty(False)
    dot = ListProperty(list(theme.MUTED))


class ReasonRow(BoxLayout):
    text = StringProperty("")
    colour = ListProperty(list(theme.MUTED))


class Card(BoxLayout):
    """White rounded panel (`bg` changes its colour)."""

    bg = ListProperty(list(theme.CARD))


class RoundButton(ButtonBehavior, Label):
    """Filled rounded button."""

    bg = ListProperty(list(theme.PRIMARY))
    fg = ListProperty(list(theme.WHITE))


class GhostButton(RoundButton):
    """Quiet secondary button."""

    bg = ListProperty(list(theme.SOFT_PRIMARY))
    fg = ListProperty(list(theme.PRIMARY))


class IconDot(Label):
    """A short glyph in a coloured circle."""

    bg = ListProperty(list(theme.PRIMARY))


class GalleryCard(BoxLayout):
    bg = ListProperty(list(theme.PRIMARY))
    title = StringProperty("")
    body = StringProperty("")


class ActivityRow(BoxLayout):
    what = StringProperty("")
    when = StringProperty("")
    amount = StringProperty("")
    amount_colour = ListProperty(list(theme.TEXT))


class QualityRow(BoxLayout):
    label = StringProperty("")
    info = DictProperty({})
