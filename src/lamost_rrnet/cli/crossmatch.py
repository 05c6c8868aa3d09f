"""``lamost-rrnet crossmatch``: LAMOST catalogue × label catalogue -> reference table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lamost_rrnet.cli.common import Overwrite, output_option

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from lamost_rrnet.crossmatch import CrossmatchResult, Cuts


def _label_names(text: str | None) -> list[str]:
    """``--label-names Teff[K],FeH`` → the labels to keep (default: all of them)."""
    from lamost_rrnet.labels import CATALOGUE_LABELS

    if not text:
        return list(CATALOGUE_LABELS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CATALOGUE_LABELS]
    if unknown or not names:
        raise typer.BadParameter(
            f"unknown label(s) {', '.join(unknown)}: use {', '.join(CATALOGUE_LABELS)}",
            param_hint="--label-names",
        )
    return names


def _cuts(
    snr_min: float,
    teff: tuple[float, float] | None,
    quality_good: list[str] | None,
    keep_nan_labels: bool,
) -> Cuts:
    """The quality cuts of the options; ``teff`` or ``quality_good`` None switches that one off."""
    from lamost_rrnet.crossmatch import Cuts

    if teff is not None and teff[0] >= teff[1]:
        raise typer.BadParameter(
            f"{teff[0]:g} {teff[1]:g}: MIN must be below MAX", param_hint="--teff"
        )
    return Cuts(
        snr_min=snr_min or None,
        teff_range=None if teff is None else (float(teff[0]), float(teff[1])),
        quality_good=None if quality_good is None else tuple(quality_good),
        drop_nan_labels=not keep_nan_labels,
    )


def _report(result: CrossmatchResult) -> None:
    """On stderr: the notes, with --verbose the column mappings and the ambiguous matches,
    and the count of spectra and stars after each step."""
    from rich.table import Table as RichTable

    from lamost_rrnet.progress import stderr_console

    for note in result.notes:
        logger.info(note)
    for side, mapping in result.mapping.items():
        pairs = ", ".join(
            f"{k}←{v}" + (f" ({result.reasons[k]})" if k in result.reasons else "")
            for k, v in mapping.items()
        )
        logger.debug(f"{side} columns: {pairs}")
    for row in result.ambiguous[:20]:
        logger.debug(
            f"  ambiguous: obsid {row['obsid']} {row['filename']}: "
            f"{row['n_candidates']} stars, nearest {row['star_id']} "
            f'at {row["separation_arcsec"]:.2f}"',
        )
    # A table, not a line of text: printed on the console that shows the log.
    if logger.isEnabledFor(logging.INFO):
        summary = RichTable(title="crossmatch", title_justify="left")
        summary.add_column("step")
        summary.add_column("spectra", justify="right")
        summary.add_column("stars", justify="right")
        for step, n_spec, n_star in result.counts:
            summary.add_row(
                step,
                "–" if n_spec is None else f"{n_spec:,}",
                "–" if n_star is None else f"{n_star:,}",
            )
        stderr_console.print(summary)


Catalogue = Annotated[
    Path,
    typer.Argument(
        exists=True, dir_okay=False, help="LAMOST MRS catalogue (CSV, FITS, Parquet, ECSV)."
    ),
]
Output = Annotated[
    Path, output_option("Reference table (.fits, .csv, .ecsv, .parquet).", dir_okay=False)
]
Labels = Annotated[
    str,
    typer.Option(
        "--labels", help="Named label catalogue fetched from VizieR (cached): apogee-payne."
    ),
]
LabelsFile = Annotated[
    Path | None,
    typer.Option(
        "--labels-file",
        exists=True,
        dir_okay=False,
        help="A local label catalogue instead (names as simulate's labels.csv).",
    ),
]
Column = Annotated[
    list[str],
    typer.Option("--column", help="Rename a LAMOST column: NAME=SOURCE (repeatable)."),
]
MapFile = Annotated[
    Path | None,
    typer.Option(
        "--map",
        exists=True,
        dir_okay=False,
        help="YAML map NAME: SOURCE (flat, or 'lamost:'/'labels:' sections).",
    ),
]
LabelNames = Annotated[
    str | None,
    typer.Option("--label-names", help="Comma-separated labels to keep (default: all 17)."),
]
Radius = Annotated[float, typer.Option("--radius", help="Match radius, arcsec (> 0).")]
SnrMin = Annotated[
    float, typer.Option("--snr-min", min=0, help="Minimum S/N in both arms (0: no cut).")
]
Teff = Annotated[tuple[float, float], typer.Option("--teff", help="Teff range kept, K (MIN MAX).")]
NoTeffCut = Annotated[bool, typer.Option("--no-teff-cut", help="Keep every Teff.")]
QualityGood = Annotated[
    list[str], typer.Option("--quality-good", help="Quality-flag value(s) that count as good.")
]
NoQualityCut = Annotated[bool, typer.Option("--no-quality-cut", help="Keep every quality flag.")]
KeepNanLabels = Annotated[
    bool, typer.Option("--keep-nan-labels", help="Keep rows with NaN labels.")
]
Refresh = Annotated[
    bool,
    typer.Option("--refresh", help="Fetch the VizieR catalogue again instead of using the cache."),
]


def crossmatch_command(
    ctx: typer.Context,
    catalogue: Catalogue,
    output: Output,
    labels: Labels = "apogee-payne",
    labels_file: LabelsFile = None,
    column: Column = (),
    map_file: MapFile = None,
    label_names: LabelNames = None,
    radius: Radius = 3.0,
    snr_min: SnrMin = 10.0,
    teff: Teff = (4000.0, 6500.0),
    no_teff_cut: NoTeffCut = False,
    quality_good: QualityGood = ("good",),
    no_quality_cut: NoQualityCut = False,
    keep_nan_labels: KeepNanLabels = False,
    refresh: Refresh = False,
    overwrite: Overwrite = False,
) -> None:
    """Match LAMOST spectra to label stars on the sky, apply the cuts, write the reference table."""
    from lamost_rrnet.crossmatch import (
        check_reference_output,
        crossmatch,
        parse_column_pairs,
        write_reference,
    )
    from lamost_rrnet.vizier import LABEL_SOURCES

    if labels not in LABEL_SOURCES:
        raise typer.BadParameter(
            f"{labels!r}: use one of {', '.join(LABEL_SOURCES)}", param_hint="--labels"
        )
    if labels_file is not None and ctx.get_parameter_source("labels").name != "DEFAULT":
        raise typer.BadParameter("give --labels or --labels-file, not both", param_hint="--labels")
    try:
        columns = parse_column_pairs(column)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--column") from exc
    if radius <= 0:
        raise typer.BadParameter(f"{radius:g}: must be above 0", param_hint="--radius")
    names = _label_names(label_names)
    cuts = _cuts(
        snr_min,
        None if no_teff_cut else teff,
        None if no_quality_cut else quality_good,
        keep_nan_labels,
    )
    check_reference_output(output, overwrite=overwrite)
    if labels_file is None:
        logger.info(f"label catalogue: {labels} (VizieR {LABEL_SOURCES[labels]}, cached)")
    result = crossmatch(
        catalogue,
        labels=labels,
        labels_file=labels_file,
        columns=columns,
        map_file=map_file,
        label_names=names,
        radius_arcsec=radius,
        cuts=cuts,
        refresh=refresh,
    )
    _report(result)
    write_reference(result.table, output, overwrite=overwrite)
    logger.info(f"reference table: {len(result.table):,} spectra written to {output}")
