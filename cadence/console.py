"""Where the CLI prints its tables and results: never cut when piped.

Why: rich sizes a console that is not a terminal at 80 columns, so a table piped to a file
or another program lost the end of every long value (`models list` showed "modal…",
"versi…"). Output that scripts read must be whole: off a terminal, and unless `COLUMNS`
says otherwise, the console is as wide as the widest line.
"""

from __future__ import annotations

import os

from rich.console import Console

#: wide enough for any row these commands print; a table still takes only the width it needs
PIPED_WIDTH = 1000


def out_console() -> Console:
    """A stdout console: the terminal's width, or `PIPED_WIDTH` when piped and `COLUMNS` is unset."""
    console = Console()
    if console.is_terminal or os.environ.get("COLUMNS", "").isdigit():
        return console
    return Console(width=PIPED_WIDTH)
