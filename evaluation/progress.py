"""One progress-bar helper for long loops (dataset parsing, per-user training)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def track(items: Sequence[T], label: str, show: bool = True) -> Iterator[T]:
    """Yield `items`, with a transient rich progress bar when `show` is true."""
    if not show:
        yield from items
        return
    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task(label, total=len(items))
        for item in items:
            yield item
            progress.advance(task)
