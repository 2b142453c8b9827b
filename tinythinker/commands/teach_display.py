"""The live display of `tinythinker teach`: one rich progress line per teacher round (done / cached /
retried / failed, tokens and cost so far) with the rate limits in force under it. The round loop
(``tinythinker.data.teacher.teach``) drives it through its ``RoundDisplay`` protocol."""

from __future__ import annotations

from typing import Callable

from rich.progress import Progress, ProgressColumn
from rich.text import Text

from tinythinker.data.teacher.client import Stats
from tinythinker.progress import progress_bar


def _compact(count: int) -> str:
    """12,345 -> 12.3k; 15,135,561 -> 15.1M."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= limit:
            return f"{count / limit:.1f}{suffix}"
    return str(count)


class _StatsColumn(ProgressColumn):
    def __init__(self, text: Callable[[], str]):
        super().__init__()
        self._text = text

    def render(self, task) -> Text:
        return Text(self._text(), style="cyan")


class LiveProgress:
    """The rich progress line of a round: done / cached / retried / failed, tokens and cost so far,
    and under it the rate limits in force and where they come from."""

    def __init__(self, console=None, *, enabled: bool = True):
        self.console = console
        self.enabled = enabled  # off: no bar, the warnings still print
        self._progress: Progress | None = None
        self._task = None
        self._failed = 0

    def start(self, round_index: int, *, total: int, done: int, cached: int, stats: Callable[[], Stats], price,
              limits: Callable[[], str] | None = None) -> None:
        def text() -> str:
            current = stats()
            cost = "" if price is None else f" · ${price.cost(current.prompt_tokens, current.completion_tokens):,.2f}"
            return (f"cached {cached:,} · retried {current.retried:,} · failed {self._failed:,} · "
                    f"tokens {_compact(current.prompt_tokens)} in / {_compact(current.completion_tokens)} out{cost}")

        self._progress = progress_bar(_StatsColumn(text), console=self.console, enabled=self.enabled,
                                      footer=limits or (lambda: ""))
        self._task = self._progress.add_task(f"round {round_index}", total=total, completed=done)
        self._progress.start()

    def warn(self, message: str) -> None:
        """A line above the live display (it stays in the terminal's scrollback)."""
        from rich.markup import escape

        console = self._progress.console if self._progress is not None else self.console
        if console is not None:
            console.print(f"[yellow]Warning:[/] {escape(message)}")

    def advance(self, count: int = 1, *, failed: int = 0) -> None:
        self._failed += failed
        if self._progress is not None:
            self._progress.advance(self._task, count)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
