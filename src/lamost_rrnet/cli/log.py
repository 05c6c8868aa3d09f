"""The command line's one log handler: the library's messages on the stderr console.

The library only logs (to children of the ``lamost_rrnet`` logger); for the length of a
command the CLI shows those records on stderr, at the level that ``--quiet`` and ``--verbose``
choose, and then takes its handler away again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from rich.logging import RichHandler
from rich.text import Text

from lamost_rrnet.progress import stderr_console


class ConsoleHandler(RichHandler):
    """Each record as one message on the stderr console, as ``Console.print`` writes text,
    so that it prints above a progress bar. Information and detail come without time, level
    or path; a warning or an error starts with its level (``warning: ...``) and is not
    wrapped, so that a path in it stays whole."""

    def __init__(self) -> None:
        super().__init__(
            console=stderr_console,
            show_time=False,
            show_level=False,
            show_path=False,
            markup=False,
        )

    def render_message(self, record: logging.LogRecord, message: str) -> Text:
        if record.levelno < logging.WARNING:
            return super().render_message(record, message)
        style = "bold red" if record.levelno >= logging.ERROR else "yellow"
        return Text.assemble((f"{record.levelname.lower()}:", style), " ", message)

    def emit(self, record: logging.LogRecord) -> None:
        # RichHandler lays a message out in a table as wide as the console, which pads every
        # line with spaces; printed as it is, a message looks as the console writes it.
        try:
            text = self.render_message(record, self.format(record))
            self.console.print(text, soft_wrap=record.levelno >= logging.WARNING)
        except Exception:
            self.handleError(record)


def message_level(quiet: bool, verbose: bool) -> int:
    """``--quiet``: warnings and errors only; ``--verbose``: every detail; else information."""
    if quiet:
        return logging.WARNING
    return logging.DEBUG if verbose else logging.INFO


def show_messages(level: int) -> Callable[[], None]:
    """Show the library's records of ``level`` and above on stderr; return what undoes it."""
    logger = logging.getLogger("lamost_rrnet")
    handler = ConsoleHandler()
    before = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)

    def undo() -> None:
        logger.removeHandler(handler)
        logger.setLevel(before)

    return undo
