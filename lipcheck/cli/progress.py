"""The progress bar of `lipcheck audit`: on stderr, advanced by the audit's calls, gone when done."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from lipcheck.present import escape


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} samples/s" if speed else "- samples/s", style="progress.data.speed")


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr, advanced by `run`'s calls (samples done, samples in all)."""
    if not enabled:
        yield None
        return
    bar = Progress(
        TextColumn("auditing"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeRemainingColumn(),
        console=escape.console(stderr=True),
        transient=True,
    )
    task = bar.add_task("audit", total=None)

    def advance(done: int, total: int) -> None:
        bar.update(task, total=total, advance=done)

    with bar:
        yield advance
