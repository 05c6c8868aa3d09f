"""``lamost-rrnet calibrate``: a model and a labelled dataset in, the calibrated model out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from lamost_rrnet.cli.common import (
    BatchSize,
    ModelArgument,
    Overwrite,
    check_split,
    options,
    output_option,
)

logger = logging.getLogger(__name__)

Dataset = Annotated[
    Path,
    typer.Argument(
        exists=True,
        dir_okay=False,
        metavar="DATASET",
        help="Labelled dataset (.h5) written by prepare.",
    ),
]
Output = Annotated[
    Path, output_option("Directory for the calibrated model (a new model directory).")
]
Split = Annotated[
    str,
    typer.Option("--split", callback=check_split, help="Split to fit on: train, valid or test."),
]


def calibrate_command(
    ctx: typer.Context,
    model: ModelArgument,
    dataset: Dataset,
    output: Output,
    split: Split = "valid",
    batch_size: BatchSize = 256,
    overwrite: Overwrite = False,
) -> None:
    """Fit one σ scale per label so that z = (pred − true)/σ has std 1 on the dataset's split,
    and write the model with these scales as a new model directory (a new version)."""

    from lamost_rrnet.calibrate import calibrate_model
    from lamost_rrnet.calibration import describe

    opts = options(ctx)
    calibrated = calibrate_model(
        model,
        dataset,
        output,
        split=split,
        batch_size=batch_size,
        overwrite=overwrite,
        device=opts.device,
        progress=not opts.quiet,
    )
    logger.info(describe(calibrated.calibration, calibrated.labels))
    identity = f"{calibrated.name}@{calibrated.version}"
    logger.info(f"calibrated model {identity} written to {output}")
