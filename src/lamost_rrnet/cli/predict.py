"""``lamost-rrnet predict``: LAMOST MRS files in, the labelled catalogue out."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from lamost_rrnet.cli.common import (
    MAX_FILE_MB,
    BatchSize,
    MaxFileMB,
    Model,
    Overwrite,
    Resume,
    check_resume_overwrite,
    options,
    output_option,
)
from lamost_rrnet.names import DEFAULT_MODEL

logger = logging.getLogger(__name__)

_OUTPUT_HELP = (
    "Catalogue to write: .fits, .csv or .parquet; '-' writes CSV to stdout. Without it, CSV "
    "goes to stdout."
)


def _check_paths(paths: list[str]) -> None:
    for path in paths:
        if not any(c in path for c in "*?[") and not os.path.exists(path):
            raise typer.BadParameter(f"{path}: no such file or directory", param_hint="PATHS")


Paths = Annotated[
    list[str] | None,
    typer.Argument(
        help="MRS files, directories (searched for *.fits, *.fits.gz) or quoted glob patterns.",
        show_default=False,
    ),
]
ListFile = Annotated[
    Path | None,
    typer.Option(
        "--list",
        exists=True,
        dir_okay=False,
        help="A file with one input path per line (any bytes but newline; # comments).",
    ),
]
Output = Annotated[str, output_option(_OUTPUT_HELP)]
Catalogue = Annotated[
    Path | None,
    typer.Option(
        "--catalogue",
        exists=True,
        dir_okay=False,
        help="RV table (CSV/FITS/Parquet, such as the LAMOST catalogue), joined by obsid or "
        "file name.",
    ),
]
RvColumn = Annotated[
    str | None,
    typer.Option(
        "--rv-column",
        help="RV column of --catalogue (default: first of rv, rv_ku0, rv_br0, rv_lasp0).",
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=0,
        help=(
            "Worker processes; 0: all in this process (default: one per core for a CPU model, "
            "each running the whole pipeline; all cores but one, reading and preprocessing, "
            "for a GPU; none for runs of under 64 files)."
        ),
        show_default=False,
    ),
]
Dask = Annotated[
    str | None,
    typer.Option(
        "--dask",
        metavar="ADDRESS",
        help="Run on Dask: tcp://scheduler:8786, or local[:N] for N local worker processes.",
    ),
]
Exposures = Annotated[
    bool, typer.Option("--exposures", help="One row per single exposure instead of per coadd.")
]
RawSigma = Annotated[
    bool,
    typer.Option(
        "--raw-sigma",
        help="Write the ensemble's uncalibrated σ instead of the model's calibrated σ.",
    ),
]
InputShard = Annotated[
    str | None,
    typer.Option(
        "--shard",
        help=(
            "K/N: take only the inputs in shard K of N (blake2b-64 of each input's path, mod "
            "N), for job arrays; merge the parts with 'lamost-rrnet merge'. Needs a .fits or "
            ".parquet output."
        ),
        show_default=False,
    ),
]


def predict_command(
    ctx: typer.Context,
    paths: Paths = None,
    list_file: ListFile = None,
    output: Output = "-",
    catalogue: Catalogue = None,
    rv_column: RvColumn = None,
    model: Model = DEFAULT_MODEL,
    batch_size: BatchSize = 256,
    workers: Workers = None,
    dask: Dask = None,
    exposures: Exposures = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
    raw_sigma: RawSigma = False,
    shard: InputShard = None,
    max_file_mb: MaxFileMB = MAX_FILE_MB,
) -> None:
    """Estimate Teff, log g and 15 abundances for LAMOST MRS spectra; write the catalogue.

    With --resume, a .fits or .parquet output also takes inputs that it does not hold yet.
    """
    from lamost_rrnet.catalogue import output_format
    from lamost_rrnet.predict import predict_files

    paths = paths or []
    if not paths and list_file is None:
        raise typer.BadParameter("give input files, directories or --list FILE", param_hint="PATHS")
    _check_paths(paths)
    try:
        output_format(output)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--output") from exc
    check_resume_overwrite(resume, overwrite)
    opts = options(ctx)
    summary = predict_files(
        paths,
        model=model,
        catalogue=catalogue,
        rv_column=rv_column,
        output=output,
        exposures=exposures,
        batch_size=batch_size,
        workers=workers,
        resume=resume,
        overwrite=overwrite,
        progress=not opts.quiet,
        device=opts.device,
        list_file=list_file,
        threads=opts.threads,
        raw_sigma=raw_sigma,
        max_file_bytes=int(max_file_mb * 2**20),
        shard=shard,
        dask=dask,
    )
    logger.info(summary.text())
