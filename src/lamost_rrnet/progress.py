"""Rich progress bars, always on stderr so that stdout carries only data.

The library's convention: a function that can show a bar takes ``progress: bool = False``
(keyword-only) and shows one only when it is True; the CLI passes ``progress=not quiet``.
Messages are not printed here but logged (``logging.getLogger("lamost_rrnet")``); the CLI
shows them on the same console, above the bars.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

stderr_console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second, for spectra, files or samples."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("  ?/s" if speed is None else f"{speed:,.1f}/s", style="progress.data.speed")


def make_progress(enabled: bool, *, transient: bool = False) -> Progress:
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


def make_download_progress(enabled: bool) -> Progress:
    """Bars for downloads, in bytes with transfer speed, on stderr; silent when not enabled."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr_console,
        disable=not enabled,
    )
