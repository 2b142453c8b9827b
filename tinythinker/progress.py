"""The progress bar of every long command: one layout, built in one place (rich)."""

from __future__ import annotations

from typing import Callable

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text


class _ProgressWithFooter(Progress):
    """A rich Progress with one more line under the bars, read again at every refresh."""

    def __init__(self, *columns, footer: Callable[[], str], **kwargs):
        self._footer = footer  # before Progress.__init__, which renders once
        super().__init__(*columns, **kwargs)

    def get_renderables(self):
        yield from super().get_renderables()
        footer = self._footer()
        if footer:
            yield Text(footer, style="dim")


def progress_bar(*fields: ProgressColumn, console=None, enabled: bool = True, transient: bool = False,
                 footer: Callable[[], str] | None = None) -> Progress:
    """Description, bar, done/total, then ``fields`` (e.g. ``TextColumn("{task.fields[info]}")``),
    elapsed and remaining time. Disabled, it shows nothing and costs nothing; ``transient`` clears it
    when it stops; ``footer`` gives a line under the bars (teach: the rate limits in force)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *fields, TimeElapsedColumn(),
               TimeRemainingColumn())
    if footer is not None:
        return _ProgressWithFooter(*columns, footer=footer, console=console, disable=not enabled, transient=transient)
    return Progress(*columns, console=console, disable=not enabled, transient=transient)
