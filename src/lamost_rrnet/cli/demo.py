"""``lamost-rrnet demo``: simulate, prepare, train, predict and evaluate on built-in data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lamost_rrnet.cli.common import Overwrite, Seed, options
from lamost_rrnet.names import DEFAULT_MODEL

NEXT_STEPS = f"""\
Next, on real LAMOST MRS spectra:
  lamost-rrnet predict their/*.fits -o catalogue.fits
      runs the published RRNet ensemble ({DEFAULT_MODEL}), downloaded once into the user cache
  retraining on your own reference set:
      lamost-rrnet crossmatch lamost_catalogue.csv --labels apogee-payne -o reference.fits
      lamost-rrnet prepare reference.fits --spectra-root spectra/ -o dataset.h5
      lamost-rrnet train dataset.h5 -o mymodel/ --members 6
      lamost-rrnet evaluate dataset.h5 --model mymodel/ --split test -o report/"""


Out = Annotated[Path, typer.Option("--out", "-o", help="Folder for everything.")]
Stars = Annotated[
    int | None,
    typer.Option("--stars", min=50, help="Simulated stars (default 1200, 300 with --quick)."),
]
Quick = Annotated[bool, typer.Option("--quick", help="A smaller run: under a minute.")]


def demo_command(
    ctx: typer.Context,
    out: Out = Path("demo"),
    stars: Stars = None,
    quick: Quick = False,
    seed: Seed = 1,
    overwrite: Overwrite = False,
) -> None:
    """Run the whole job offline on built-in simulated data, and show where the results are.

    --overwrite replaces only the products of an earlier demo in --out.
    """
    from rich.console import Console
    from rich.table import Table

    from lamost_rrnet.demo import DemoSettings, run_demo
    from lamost_rrnet.labels import unit

    opts = options(ctx)
    settings = DemoSettings.quick(stars) if quick else DemoSettings(stars=stars or 1200)
    result = run_demo(
        out,
        settings,
        seed=seed,
        device=opts.device,
        overwrite=overwrite,
        progress=not opts.quiet,
    )
    # The summary is the command's output: stdout, even with --quiet.
    console = Console(highlight=False)
    table = Table(title=f"Test-split MAE ({result.seconds:.0f} s in all)")
    table.add_column("label")
    table.add_column("RRNet", justify="right")
    table.add_column("training mean", justify="right")
    for label, mae in result.mae.items():
        digits = 0 if unit(label) == "K" else 3
        table.add_row(label, f"{mae:.{digits}f}", f"{result.baseline_mae[label]:.{digits}f}")
    console.print(table)
    console.print(
        f"catalogue  {result.catalogue_fits} and {result.catalogue_csv.name}: "
        "the paper's Table 3 columns for the held-out files\n"
        f"report     {result.report}: metrics and figures of the model on the test split\n"
        f"model      {result.model}/: the trained ensemble, usable with --model\n",
        markup=False,
    )
    console.print(NEXT_STEPS, markup=False)
