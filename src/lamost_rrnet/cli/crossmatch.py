"""``lamost-rrnet crossmatch``: LAMOST catalogue × label catalogue -> reference table."""

from __future__ import annotations

from pathlib import Path

import typer

from lamost_rrnet.cli.common import detail, info, options


def crossmatch_command(
    ctx: typer.Context,
    catalogue: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="LAMOST MRS catalogue (CSV, FITS, Parquet, ECSV)."
    ),
    output: Path = typer.Option(
        ...,
        "-o",
        "--output",
        dir_okay=False,
        help="Reference table (.fits, .csv, .ecsv, .parquet).",
    ),
    labels: str = typer.Option(
        "apogee-payne",
        "--labels",
        help="Named label catalogue fetched from VizieR (cached): apogee-payne.",
    ),
    labels_file: Path | None = typer.Option(
        None,
        "--labels-file",
        exists=True,
        dir_okay=False,
        help="A local label catalogue instead (names as simulate's labels.csv).",
    ),
    column: list[str] = typer.Option(
        [], "--column", help="Rename a LAMOST column: NAME=SOURCE (repeatable)."
    ),
    map_file: Path | None = typer.Option(
        None,
        "--map",
        exists=True,
        dir_okay=False,
        help="YAML map NAME: SOURCE (flat, or 'lamost:'/'labels:' sections).",
    ),
    label_names: str | None = typer.Option(
        None, "--label-names", help="Comma-separated labels to keep (default: all 17)."
    ),
    radius: float = typer.Option(3.0, "--radius", help="Match radius, arcsec (> 0)."),
    snr_min: float = typer.Option(
        10.0, "--snr-min", min=0, help="Minimum S/N in both arms (0: no cut)."
    ),
    teff: tuple[float, float] = typer.Option(
        (4000.0, 6500.0), "--teff", help="Teff range kept, K (MIN MAX)."
    ),
    no_teff_cut: bool = typer.Option(False, "--no-teff-cut", help="Keep every Teff."),
    quality_good: list[str] = typer.Option(
        ["good"], "--quality-good", help="Quality-flag value(s) that count as good."
    ),
    no_quality_cut: bool = typer.Option(False, "--no-quality-cut", help="Keep every quality flag."),
    keep_nan_labels: bool = typer.Option(
        False, "--keep-nan-labels", help="Keep rows with NaN labels."
    ),
    refresh: bool = typer.Option(
        False, "--refresh", help="Fetch the VizieR catalogue again instead of using the cache."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
) -> None:
    """Match LAMOST spectra to label stars on the sky, apply the cuts, write the reference table."""
    from rich.table import Table as RichTable

    from lamost_rrnet.crossmatch import (
        LAMOST_COLUMNS,
        Cuts,
        crossmatch,
        parse_column_pairs,
        write_reference,
    )
    from lamost_rrnet.labels import CATALOGUE_LABELS
    from lamost_rrnet.progress import stderr_console
    from lamost_rrnet.vizier import LABEL_SOURCES

    opts = options(ctx)
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
    unknown = sorted(set(columns) - set(LAMOST_COLUMNS))
    if unknown:
        raise typer.BadParameter(
            f"unknown column name(s) {', '.join(unknown)}: use {', '.join(LAMOST_COLUMNS)}",
            param_hint="--column",
        )
    names = list(CATALOGUE_LABELS)
    if label_names:
        names = [n.strip() for n in label_names.split(",") if n.strip()]
        unknown = [n for n in names if n not in CATALOGUE_LABELS]
        if unknown or not names:
            raise typer.BadParameter(
                f"unknown label(s) {', '.join(unknown)}: use {', '.join(CATALOGUE_LABELS)}",
                param_hint="--label-names",
            )
    if radius <= 0:
        raise typer.BadParameter(f"{radius:g}: must be above 0", param_hint="--radius")
    if not no_teff_cut and teff[0] >= teff[1]:
        raise typer.BadParameter(
            f"{teff[0]:g} {teff[1]:g}: MIN must be below MAX", param_hint="--teff"
        )
    if output.exists() and not overwrite:
        from lamost_rrnet.errors import OutputExistsError

        raise OutputExistsError(f"{output}: exists; use --overwrite")
    cuts = Cuts(
        snr_min=snr_min or None,
        teff_range=None if no_teff_cut else (float(teff[0]), float(teff[1])),
        quality_good=None if no_quality_cut else tuple(quality_good),
        drop_nan_labels=not keep_nan_labels,
    )
    if labels_file is None:
        info(ctx, f"label catalogue: {labels} (VizieR {LABEL_SOURCES[labels]}, cached)")
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
    for note in result.notes:
        info(ctx, note)
    for side, mapping in result.mapping.items():
        pairs = ", ".join(
            f"{k}←{v}" + (f" ({result.reasons[k]})" if k in result.reasons else "")
            for k, v in mapping.items()
        )
        detail(ctx, f"{side} columns: {pairs}")
    if opts.verbose and len(result.ambiguous):
        amb = result.ambiguous
        for row in amb[:20]:
            stderr_console.print(
                f"  ambiguous: obsid {row['obsid']} {row['filename']}: "
                f"{row['n_candidates']} stars, nearest {row['star_id']} "
                f'at {row["separation_arcsec"]:.2f}"'
            )
    if not opts.quiet:
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
    write_reference(result.table, output, overwrite=overwrite)
    info(ctx, f"reference table: {len(result.table):,} spectra written to {output}")
