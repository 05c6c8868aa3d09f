"""The Typer app, the global options and the one place where errors become exit codes.

Exit codes (docs/architecture.md, "Command line"): 0 the job ran; 1 the inputs or the
environment made it fail (every :class:`~lamost_rrnet.errors.RRNetError`); 2 the command
line itself is wrong (Typer's usage errors, and the library's
:class:`~lamost_rrnet.errors.UsageError`).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from typing import Annotated, NoReturn

import typer
from rich.markup import escape

from lamost_rrnet._version import __version__
from lamost_rrnet.cli.common import GlobalOptions
from lamost_rrnet.cli.log import message_level, show_messages
from lamost_rrnet.errors import RRNetError, UsageError
from lamost_rrnet.progress import stderr_console

app = typer.Typer(
    name="lamost-rrnet",
    help="Teff, log g and 15 abundances with uncertainties from LAMOST MRS spectra (RRNet).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Global options taken from anywhere on the command line: name -> takes a value.
GLOBAL_OPTIONS = {"--quiet": False, "--verbose": False, "--threads": True, "--device": True}


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"lamost-rrnet {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", help="Only warnings and errors on stderr: no messages or progress."
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="More detail, and tracebacks on errors.")
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, help="Threads for torch and the BLAS libraries."),
    ] = None,
    device: Annotated[
        str,
        typer.Option("--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."),
    ] = "auto",
) -> None:
    from lamost_rrnet.devices import set_threads

    if device.lower() not in ("auto", "cpu", "cuda", "mps") and not (
        device.lower().startswith("cuda:") and device[5:].isdigit()
    ):
        raise typer.BadParameter(
            f"{device!r}: use auto, cpu, cuda, cuda:N or mps", param_hint="--device"
        )
    ctx.obj = GlobalOptions(quiet=quiet, verbose=verbose, threads=threads, device=device)
    set_threads(threads)
    # Until the command ends: in-process callers (tests, scripts) keep their own logging.
    ctx.call_on_close(show_messages(message_level(quiet, verbose)))


def hoist_global_options(argv: Sequence[str]) -> list[str]:
    """Move the global options to the front, so they work after the subcommand too."""
    front: list[str] = []
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        name = arg.split("=", 1)[0]
        if name in GLOBAL_OPTIONS:
            front.append(arg)
            if GLOBAL_OPTIONS[name] and "=" not in arg and i + 1 < len(args):
                front.append(args[i + 1])
                i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the app and map errors to exit codes."""
    # Spinning OpenMP threads starve the worker processes and each other on small machines
    # (measured 2-5x slower inference); must be set before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = hoist_global_options(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args
    try:
        app(args=args, prog_name="lamost-rrnet")
    except UsageError as exc:
        _fail("usage error", str(exc), 2, verbose)
    except RRNetError as exc:
        _fail("error", str(exc), 1, verbose)
    except OSError as exc:
        # Unwritable outputs, full disks, vanished files: the environment, not the command line.
        reason = str(exc.strerror or exc)
        _fail("error", f"{exc.filename}: {reason}" if exc.filename else reason, 1, verbose)


def _fail(prefix: str, message: str, code: int, verbose: bool) -> NoReturn:
    """One line per line of ``message``, each with ``prefix``, then exit with ``code``.

    A message of several lines (merge's refusals: one per kind of problem) gets the prefix on
    each, so that every line stands alone in a log; the traceback only with --verbose.
    """
    if verbose:
        traceback.print_exc(file=sys.stderr)
    for line in message.splitlines() or [""]:
        stderr_console.print(
            f"[bold red]{prefix}:[/] {escape(line)}", highlight=False, soft_wrap=True
        )
    sys.exit(code)


def _register() -> None:
    from lamost_rrnet.cli import inspect

    app.command("inspect")(inspect.inspect_command)
    from lamost_rrnet.cli import models

    app.add_typer(models.app, name="models")
    from lamost_rrnet.cli import crossmatch, prepare

    app.command("crossmatch")(crossmatch.crossmatch_command)
    app.command("prepare")(prepare.prepare_command)
    from lamost_rrnet.cli import predict

    app.command("predict")(predict.predict_command)
    from lamost_rrnet.cli import merge

    app.command("merge")(merge.merge_command)
    from lamost_rrnet.cli import evaluate

    app.command("evaluate")(evaluate.evaluate_command)
    from lamost_rrnet.cli import train

    app.command("train", context_settings=train.CONTEXT_SETTINGS)(train.train_command)
    from lamost_rrnet.cli import calibrate

    app.command("calibrate")(calibrate.calibrate_command)
    from lamost_rrnet.cli import simulate

    app.command("simulate")(simulate.simulate_command)
    from lamost_rrnet.cli import demo

    app.command("demo")(demo.demo_command)


_register()
