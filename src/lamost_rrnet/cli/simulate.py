"""``lamost-rrnet simulate``: a synthetic LAMOST MRS set with LAMOST and label catalogues."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import typer

from lamost_rrnet.cli.common import Overwrite, Resume, Seed, check_resume_overwrite, options

logger = logging.getLogger(__name__)


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


Out = Annotated[Path, typer.Argument(file_okay=False, metavar="OUT", help="Output directory.")]
Stars = Annotated[int, typer.Option("--stars", min=1, help="Number of stars.")]
Visits = Annotated[str, typer.Option("--visits", help="Visits (files) per star: N or LOW-HIGH.")]
Snr = Annotated[
    tuple[float, float],
    typer.Option("--snr", help="Coadd S/N range (blue arm), drawn log-uniformly: LOW HIGH."),
]
Layout = Annotated[str, typer.Option("--layout", help="dr7 (LOGLAM) or dr9 (WAVELENGTH).")]
NExposures = Annotated[
    str, typer.Option("--n-exposures", help="Single exposures per file: N or LOW-HIGH.")
]
NoCompress = Annotated[bool, typer.Option("--no-compress", help="Write .fits, not .fits.gz.")]
CosmicRate = Annotated[
    float,
    typer.Option("--cosmic-rate", min=0.0, help="Cosmic-ray hits per pixel and exposure."),
]
BadPixelRate = Annotated[
    float,
    typer.Option("--bad-pixel-rate", min=0.0, help="Bad-pixel runs per pixel (masked, IVAR = 0)."),
]


def simulate_command(
    ctx: typer.Context,
    out: Out,
    stars: Stars = 2000,
    visits: Visits = "1-4",
    snr: Snr = (10.0, 150.0),
    seed: Seed = 1,
    layout: Layout = "dr7",
    n_exposures: NExposures = "2-4",
    no_compress: NoCompress = False,
    cosmic_rate: CosmicRate = 5e-4,
    bad_pixel_rate: BadPixelRate = 2e-4,
    overwrite: Overwrite = False,
    resume: Resume = False,
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
    check_resume_overwrite(resume, overwrite)
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
    logger.info(
        f"{len(result.catalogue)} observations of {stars} stars in {out} "
        f"({result.n_written} written, {result.n_written / max(elapsed, 1e-9):.1f} files/s)",
    )
