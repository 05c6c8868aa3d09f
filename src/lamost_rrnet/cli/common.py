"""What every subcommand shares: the global options and the options that several commands
take. Messages for the user are logged (``logging.getLogger(__name__)`` in each command's
module) and shown by the handler of :mod:`lamost_rrnet.cli.log`.

The shared options are ``typing.Annotated`` aliases, as Typer recommends: a command declares
``batch_size: BatchSize = 256``, with its own default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import typer

from lamost_rrnet.names import DEFAULT_MODEL

# spectra.io.MAX_BYTES in MB, written out so that --help does not import the reader
# (tests/test_cli.py keeps the two equal).
MAX_FILE_MB = 256

MODEL_HELP = "Registry name, model directory or published-layout directory."


def option(*flags: str, **kwargs: Any) -> Any:
    """A ``typer.Option`` whose environment variable, where a command gives it one, --help
    leaves out: ``train`` names its LAMOST_RRNET_TRAIN_* variables once, in its description."""
    return typer.Option(*flags, show_envvar=False, **kwargs)


Model = Annotated[str, option("--model", "-m", metavar="MODEL", help=MODEL_HELP)]
Models = Annotated[
    list[str] | None,
    option(
        "--model",
        "-m",
        metavar="MODEL",
        help=f"{MODEL_HELP} Repeat to compare models. Default: {DEFAULT_MODEL}.",
    ),
]
ModelArgument = Annotated[str, typer.Argument(metavar="MODEL", help=MODEL_HELP)]
BatchSize = Annotated[int, option("--batch-size", min=1, help="Spectra per model batch.")]
Seed = Annotated[int, option("--seed", help="Random seed: the same seed, the same result.")]
Resume = Annotated[bool, option("--resume", help="Continue an interrupted run.")]
Overwrite = Annotated[
    bool, option("--overwrite", help="Replace an existing output or an earlier run.")
]
MaxFileMB = Annotated[
    float,
    option(
        "--max-file-mb",
        min=1,
        help="Most a spectrum file may hold decompressed, in MB; a larger file is not read.",
    ),
]


def output_option(help: str, **kwargs: Any) -> Any:
    """``-o``/``--output``: what it is differs from command to command, so each says."""
    return option("-o", "--output", help=help, **kwargs)


def check_split(value: str | None) -> str | None:
    """Callback of a dataset ``--split`` option: train, valid or test (or not given)."""
    if value is None:
        return value
    from lamost_rrnet.dataset import SPLITS

    if value not in SPLITS:
        raise typer.BadParameter(f"{value!r}: use {', '.join(SPLITS[:-1])} or {SPLITS[-1]}")
    return value


def check_resume_overwrite(resume: bool, overwrite: bool) -> None:
    """Refuse ``--resume`` with ``--overwrite``: the one keeps what the other replaces."""
    if resume and overwrite:
        raise typer.BadParameter("give --resume or --overwrite, not both", param_hint="--resume")


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
