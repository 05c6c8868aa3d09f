"""``lamost-rrnet inspect``: what is in an MRS file, and what the network will see of it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

logger = logging.getLogger(__name__)

SpectrumFile = Annotated[
    Path, typer.Argument(exists=True, dir_okay=False, help="A LAMOST MRS FITS file.")
]
Rv = Annotated[float, typer.Option("--rv", help="Radial velocity (km/s) for the rest frame.")]
Blue = Annotated[str, typer.Option("--blue", help="Blue extension to preprocess.")]
Red = Annotated[str, typer.Option("--red", help="Red extension to preprocess.")]
Plot = Annotated[
    Path | None, typer.Option("--plot", help="Write a PNG of raw and normalized flux.")
]
Save = Annotated[
    Path | None,
    typer.Option(
        "--save", help="Write the normalized spectrum (wavelength, flux) as .csv or .fits."
    ),
]


def inspect_command(
    path: SpectrumFile,
    rv: Rv = 0.0,
    blue: Blue = "COADD_B",
    red: Red = "COADD_R",
    plot: Plot = None,
    save: Save = None,
) -> None:
    """Summarize an MRS file on stdout; optionally plot or save its normalized spectrum."""
    from lamost_rrnet.spectra.io import read_mrs
    from lamost_rrnet.spectra.preprocess import RRNET2022, preprocess
    from lamost_rrnet.spectra.summary import summary_text

    if save is not None and save.suffix.lower() not in (".csv", ".fits", ".fit"):
        raise typer.BadParameter(f"{save}: use a .csv or .fits name", param_hint="--save")
    mrs = read_mrs(path)
    typer.echo(summary_text(mrs))
    if plot is None and save is None:
        return
    spectrum = mrs.spectrum(blue.upper(), red.upper())
    normalized = preprocess(spectrum, rv, RRNET2022)
    wavelength = RRNET2022.wavelength()
    if save is not None:
        from lamost_rrnet.spectra.tables import write_normalized

        write_normalized(save, wavelength, normalized, rv=rv, source=str(path))
        logger.info(f"normalized spectrum written to {save}")
    if plot is not None:
        from lamost_rrnet.spectra.plot import plot_spectrum

        plot_spectrum(spectrum, wavelength, normalized, plot, title=f"{mrs.filename}  RV {rv} km/s")
        logger.info(f"plot written to {plot}")
