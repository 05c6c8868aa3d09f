"""What every subcommand shares: the global options and stderr messages."""

from __future__ import annotations

from dataclasses import dataclass

import typer

from lamost_rrnet.progress import stderr_console

# spectra.io.MAX_BYTES in MB, written out so that --help does not import the reader
# (tests/test_cli.py keeps the two equal).
MAX_FILE_MB = 256


@dataclass(frozen=True)
class GlobalOptions:
    quiet: bool = False
    verbose: bool = False
    threads: int | None = None
    device: str = "auto"


def options(ctx: typer.Context) -> GlobalOptions:
    """The global options of this invocation, wherever on the command line they were given."""
    root = ctx.find_root()
    return root.obj if isinstance(root.obj, GlobalOptions) else GlobalOptions()


def info(ctx: typer.Context, message: str) -> None:
    """A message for the user on stderr, silenced by ``--quiet``."""
    if not options(ctx).quiet:
        stderr_console.print(message)


def detail(ctx: typer.Context, message: str) -> None:
    """A message shown only with ``--verbose``."""
    if options(ctx).verbose:
        stderr_console.print(message)
