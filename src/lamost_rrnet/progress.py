"""Rich progress bars and messages, always on stderr so that stdout carries only data."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

stderr_console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second, for spectra, files or samples."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("  ?/s" if speed is None else f"{speed:,.1f}/s", style="progress.data.speed")


def make_progress(enabled: bool = True, *, transient: bool = False) -> Progress:
    """A progress bar with count, rate and ETA on stderr; a silent one when not enabled."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr_console,
        disable=not enabled,
        transient=transient,
    )
