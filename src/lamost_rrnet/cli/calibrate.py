"""``lamost-rrnet calibrate``: a model and a labelled dataset in, the calibrated model out."""

from __future__ import annotations

from pathlib import Path

import typer

from lamost_rrnet.cli.common import info, options


def calibrate_command(
    ctx: typer.Context,
    model: str = typer.Argument(
        ...,
        metavar="MODEL",
        help="Registry name, model directory or published-layout directory.",
    ),
    dataset: Path = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        metavar="DATASET",
        help="Labelled dataset (.h5) written by prepare.",
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Directory for the calibrated model (a new model directory)."
    ),
    split: str = typer.Option("valid", "--split", help="Split to fit on: train, valid or test."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Spectra per model batch."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
) -> None:
    """Fit one σ scale per label so that z = (pred − true)/σ has std 1 on the dataset's split,
    and write the model with these scales as a new model directory (a new version)."""
    from rich.markup import escape

    from lamost_rrnet.calibrate import calibrate_model
    from lamost_rrnet.calibration import describe
    from lamost_rrnet.dataset import SPLITS

    if split not in SPLITS:
        raise typer.BadParameter(f"{split!r}: use train, valid or test", param_hint="--split")
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
    info(ctx, escape(describe(calibrated.calibration, calibrated.labels)))
    identity = f"{calibrated.name}@{calibrated.version}"
    info(ctx, escape(f"calibrated model {identity} written to {output}"))
