"""``lamost-rrnet inspect``: what is in an MRS file, and what the network will see of it."""

from __future__ import annotations

from pathlib import Path

import typer


def inspect_command(
    ctx: typer.Context,
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="A LAMOST MRS FITS file."),
    rv: float = typer.Option(0.0, "--rv", help="Radial velocity (km/s) for the rest frame."),
    blue: str = typer.Option("COADD_B", "--blue", help="Blue extension to preprocess."),
    red: str = typer.Option("COADD_R", "--red", help="Red extension to preprocess."),
    plot: Path | None = typer.Option(
        None, "--plot", help="Write a PNG of raw and normalized flux."
    ),
    save: Path | None = typer.Option(
        None, "--save", help="Write the normalized spectrum (wavelength, flux) as .csv or .fits."
    ),
) -> None:
    """Summarize an MRS file on stdout; optionally plot or save its normalized spectrum."""
    from lamost_rrnet.cli.common import info
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
        info(ctx, f"normalized spectrum written to {save}")
    if plot is not None:
        from lamost_rrnet.spectra.plot import plot_spectrum

        plot_spectrum(spectrum, wavelength, normalized, plot, title=f"{mrs.filename}  RV {rv} km/s")
        info(ctx, f"plot written to {plot}")
