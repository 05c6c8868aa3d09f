"""``lamost-rrnet prepare``: reference table + FITS files -> training dataset (HDF5)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from lamost_rrnet.cli.common import (
    MAX_FILE_MB,
    MaxFileMB,
    Overwrite,
    Resume,
    Seed,
    check_resume_overwrite,
    options,
    output_option,
)
from lamost_rrnet.spectra.preprocess import RRNET2022, load_spec

logger = logging.getLogger(__name__)


def parse_split(text: str) -> tuple[float, float, float]:
    """``7:1:2`` -> (0.7, 0.1, 0.2); :class:`typer.BadParameter` otherwise."""
    parts = text.split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise typer.BadParameter(
            f"{text!r}: use three non-negative parts TRAIN:VALID:TEST, e.g. 7:1:2",
            param_hint="--split",
        )
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total


Reference = Annotated[
    Path,
    typer.Argument(exists=True, dir_okay=False, help="Reference table written by crossmatch."),
]
Output = Annotated[Path, output_option("Dataset (.h5).", dir_okay=False)]
SpectraRoot = Annotated[
    Path | None,
    typer.Option(
        "--spectra-root",
        exists=True,
        file_okay=False,
        help="Directory the table's file names are relative to (default: current directory).",
    ),
]
Workers = Annotated[int, typer.Option("--workers", min=1, help="Worker processes.")]
Split = Annotated[str, typer.Option("--split", help="Train:valid:test by star.")]
MaxOutliers = Annotated[
    int, typer.Option("--max-outliers", min=0, help="Reject spectra with more outlier pixels.")
]
MaxOutlierRun = Annotated[
    int,
    typer.Option("--max-outlier-run", min=0, help="Reject spectra with a longer run of outliers."),
]
Preprocessing = Annotated[
    str,
    typer.Option("--preprocessing", help=f"{RRNET2022.name}, or a YAML/JSON spec (or model.yaml)."),
]


def prepare_command(
    ctx: typer.Context,
    reference: Reference,
    output: Output,
    spectra_root: SpectraRoot = None,
    workers: Workers = 2,
    split: Split = "7:1:2",
    seed: Seed = 0,
    max_outliers: MaxOutliers = 100,
    max_outlier_run: MaxOutlierRun = 30,
    preprocessing: Preprocessing = RRNET2022.name,
    max_file_mb: MaxFileMB = MAX_FILE_MB,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Read, RV-correct, resample and normalize every spectrum of the table into a dataset."""
    from lamost_rrnet.prepare import Thresholds, prepare_dataset

    check_resume_overwrite(resume, overwrite)
    opts = options(ctx)
    result = prepare_dataset(
        reference,
        output,
        spectra_root=spectra_root,
        workers=workers,
        fractions=parse_split(split),
        seed=seed,
        thresholds=Thresholds(max_outliers, max_outlier_run, int(max_file_mb * 2**20)),
        spec=load_spec(preprocessing),
        resume=resume,
        overwrite=overwrite,
        progress=not opts.quiet,
    )
    if result.n_resumed:
        logger.info(f"resumed: {result.n_resumed:,} spectra were already done")
    logger.info(
        f"dataset: {result.n_accepted:,} spectra in {output}; "
        f"{result.n_rejected:,} rejected (see {result.rejects_path})",
    )
    for kind, n in result.reasons.most_common():
        logger.info(f"  rejected, {kind}: {n:,}")
