"""``lamost-rrnet predict``: LAMOST MRS files in, the labelled catalogue out."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from lamost_rrnet.cli.common import MAX_FILE_MB

_OUTPUT_HELP = (
    "Catalogue to write: .fits, .csv or .parquet; '-' writes CSV to stdout. Without it, CSV "
    "goes to stdout."
)


def _check_paths(paths: list[str]) -> None:
    for path in paths:
        if not any(c in path for c in "*?[") and not os.path.exists(path):
            raise typer.BadParameter(f"{path}: no such file or directory", param_hint="PATHS")


def predict_command(
    ctx: typer.Context,
    paths: list[str] = typer.Argument(
        None,
        help="MRS files, directories (searched for *.fits, *.fits.gz) or quoted glob patterns.",
        show_default=False,
    ),
    list_file: Path | None = typer.Option(
        None,
        "--list",
        exists=True,
        dir_okay=False,
        help="A file with one input path per line (any bytes but newline; # comments).",
    ),
    output: str = typer.Option("-", "-o", "--output", help=_OUTPUT_HELP),
    catalogue: Path | None = typer.Option(
        None,
        "--catalogue",
        exists=True,
        dir_okay=False,
        help="LAMOST catalogue (CSV/FITS/Parquet) with the RVs, joined by obsid or file name.",
    ),
    rv_column: str | None = typer.Option(
        None,
        "--rv-column",
        help="RV column of --catalogue (default: first of rv, rv_ku0, rv_br0, rv_lasp0).",
    ),
    model: str = typer.Option(
        "rrnet2022", "--model", help="Registry name, model directory or published-layout directory."
    ),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Spectra per model batch."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=0,
        help=(
            "Worker processes; 0: all in this process (default: one per core for a CPU model, "
            "each running the whole pipeline; all cores but one, reading and preprocessing, "
            "for a GPU; none for runs of under 64 files)."
        ),
        show_default=False,
    ),
    dask: str | None = typer.Option(
        None,
        "--dask",
        metavar="ADDRESS",
        help="Run on Dask: tcp://scheduler:8786, or local[:N] for N local worker processes.",
    ),
    exposures: bool = typer.Option(
        False, "--exposures", help="One row per single exposure instead of per coadd."
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue a killed run, or add new inputs to a .fits or .parquet output.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    raw_sigma: bool = typer.Option(
        False,
        "--raw-sigma",
        help="Write the ensemble's uncalibrated σ instead of the model's calibrated σ.",
    ),
    shard: str | None = typer.Option(
        None,
        "--shard",
        help=(
            "K/N: take only the inputs in shard K of N (blake2b-64 of each input's path, mod "
            "N), for job arrays; merge the parts with 'lamost-rrnet merge'. Needs a .fits or "
            ".parquet output."
        ),
        show_default=False,
    ),
    max_file_mb: float = typer.Option(
        MAX_FILE_MB,
        "--max-file-mb",
        min=1,
        help="Most a spectrum file may hold decompressed, in MB; a larger file is a too_large row.",
    ),
) -> None:
    """Estimate Teff, log g and 15 abundances for LAMOST MRS spectra; write the catalogue."""
    from lamost_rrnet.catalogue import output_format
    from lamost_rrnet.cli.common import info, options
    from lamost_rrnet.inputs import Shard
    from lamost_rrnet.predict import predict_files

    paths = paths or []
    if not paths and list_file is None:
        raise typer.BadParameter("give input files, directories or --list FILE", param_hint="PATHS")
    _check_paths(paths)
    try:
        output_format(output)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--output") from exc
    if resume and overwrite:
        raise typer.BadParameter("use either --resume or --overwrite", param_hint="--resume")
    if output == "-" and (resume or overwrite):
        raise typer.BadParameter("needs an output file, not stdout", param_hint="--resume")
    if shard is not None:
        shard = Shard.parse(shard)
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
    info(ctx, summary.text())
