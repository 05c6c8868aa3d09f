"""``lamost-rrnet simulate``: a synthetic LAMOST MRS set with LAMOST and label catalogues."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from lamost_rrnet.cli.common import info, options


def parse_range(text: str, name: str) -> tuple[int, int]:
    """``3`` -> (3, 3), ``1-4`` -> (1, 4); :class:`typer.BadParameter` otherwise."""
    parts = text.split("-")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or values[0] < 1 or values[1] < values[0]:
        raise typer.BadParameter(
            f"{text!r}: use N or LOW-HIGH with 1 <= LOW <= HIGH", param_hint=name
        )
    return values[0], values[1]


def simulate_command(
    ctx: typer.Context,
    out: Path = typer.Argument(..., file_okay=False, metavar="OUT", help="Output directory."),
    stars: int = typer.Option(2000, "--stars", min=1, help="Number of stars."),
    visits: str = typer.Option("1-4", "--visits", help="Visits (files) per star: N or LOW-HIGH."),
    snr: tuple[float, float] = typer.Option(
        (10.0, 150.0), "--snr", help="Coadd S/N range (blue arm), drawn log-uniformly: LOW HIGH."
    ),
    seed: int = typer.Option(1, "--seed", help="Random seed: the same seed gives the same files."),
    layout: str = typer.Option("dr7", "--layout", help="dr7 (LOGLAM) or dr9 (WAVELENGTH)."),
    n_exposures: str = typer.Option(
        "2-4", "--n-exposures", help="Single exposures per file: N or LOW-HIGH."
    ),
    no_compress: bool = typer.Option(False, "--no-compress", help="Write .fits, not .fits.gz."),
    cosmic_rate: float = typer.Option(
        5e-4, "--cosmic-rate", min=0.0, help="Cosmic-ray hits per pixel and exposure."
    ),
    bad_pixel_rate: float = typer.Option(
        2e-4, "--bad-pixel-rate", min=0.0, help="Bad-pixel runs per pixel (masked, IVAR = 0)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier set in OUT."),
    resume: bool = typer.Option(False, "--resume", help="Keep the files already in OUT."),
) -> None:
    """Write simulated MRS files to OUT/spectra, OUT/lamost_catalogue.csv and OUT/labels.csv."""
    from lamost_rrnet.progress import make_progress
    from lamost_rrnet.simulate import simulate_set

    visit_range = parse_range(visits, "--visits")
    exposure_range = parse_range(n_exposures, "--n-exposures")
    if not 0 < snr[0] <= snr[1]:
        raise typer.BadParameter(f"{snr[0]:g} {snr[1]:g}: use 0 < LOW <= HIGH", param_hint="--snr")
    layout = layout.lower()
    if layout not in ("dr7", "dr9"):
        raise typer.BadParameter(f"{layout!r}: use dr7 or dr9", param_hint="--layout")
    if overwrite and resume:
        raise typer.BadParameter("give --overwrite or --resume, not both", param_hint="--resume")
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} is a file", param_hint="OUT")
    if out.is_dir() and any(out.iterdir()) and not (overwrite or resume):
        raise typer.BadParameter(
            f"{out} is not empty: use --overwrite to replace it or --resume to continue",
            param_hint="OUT",
        )

    start = time.perf_counter()
    with make_progress(not options(ctx).quiet) as progress:
        task = progress.add_task("simulating", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        result = simulate_set(
            out,
            stars,
            visits=visit_range,
            snr=snr,
            seed=seed,
            layout=layout,
            n_exposures=exposure_range,
            compress=not no_compress,
            overwrite=overwrite,
            resume=resume,
            cosmic_rate=cosmic_rate,
            bad_pixel_rate=bad_pixel_rate,
            on_progress=advance,
        )
    elapsed = time.perf_counter() - start
    info(
        ctx,
        f"{len(result.catalogue)} observations of {stars} stars in {out} "
        f"({result.n_written} written, {result.n_written / max(elapsed, 1e-9):.1f} files/s)",
    )
