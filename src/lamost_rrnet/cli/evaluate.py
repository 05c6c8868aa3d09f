"""``lamost-rrnet evaluate``: accuracy and uncertainty report of models on a dataset, or of a
catalogue against another survey's labels."""

from __future__ import annotations

from pathlib import Path

import typer


def evaluate_command(
    ctx: typer.Context,
    source: Path = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        metavar="DATASET_OR_CATALOGUE",
        help="A prepared dataset (.h5), or with --reference a catalogue (FITS, CSV, Parquet).",
    ),
    model: list[str] | None = typer.Option(
        None,
        "--model",
        "-m",
        metavar="MODEL",
        help="Registry name or model directory; repeat to compare models. Default: rrnet2022.",
    ),
    split: str | None = typer.Option(
        None, "--split", metavar="SPLIT", help="train, valid or test (default test)."
    ),
    out: Path = typer.Option(
        Path("report"), "--out", "-o", metavar="DIR", help="Report directory."
    ),
    label: list[str] | None = typer.Option(
        None,
        "--label",
        metavar="LABEL",
        help="Evaluate only this label (repeatable), e.g. Teff[K], FeH.",
    ),
    reference: Path | None = typer.Option(
        None,
        "--reference",
        exists=True,
        dir_okay=False,
        help="Compare the catalogue DATASET_OR_CATALOGUE with this one (Table 2 style).",
    ),
    match: str | None = typer.Option(
        None,
        "--match",
        metavar="obsid|sky",
        help="With --reference: match rows by obsid (default) or sky.",
    ),
    max_separation: float = typer.Option(
        3.0, "--max-separation", min=0.0, help="With --match sky: largest separation (arcsec)."
    ),
    saliency: str | None = typer.Option(
        None,
        "--saliency",
        metavar="LO:HI,...",
        help="True-Teff ranges LO:HI,... for the saliency figure, e.g. 4000:4300,6000:6300.",
    ),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Spectra per batch."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Write the tables only."),
    html: bool = typer.Option(False, "--html", help="Also write index.html."),
) -> None:
    """Write metrics.csv, metrics.json, index.md and figures into the report directory."""
    from lamost_rrnet.cli.common import info, options
    from lamost_rrnet.dataset import SPLITS
    from lamost_rrnet.evaluate.compare import MATCH_MODES

    if match is not None and match not in MATCH_MODES:
        raise typer.BadParameter(f"{match!r}: use obsid or sky", param_hint="--match")
    if split is not None and split not in SPLITS:
        raise typer.BadParameter(f"{split!r}: use train, valid or test", param_hint="--split")
    if reference is not None:
        given = [
            name
            for name, value in (
                ("--model", model),
                ("--split", split),
                ("--saliency", saliency),
                ("--label", label),
            )
            if value
        ]
        if given:
            raise typer.BadParameter(
                f"{', '.join(given)} cannot be used with --reference (catalogues hold predictions)"
            )
        from lamost_rrnet.evaluate.compare import evaluate_catalogue

        result = evaluate_catalogue(
            source,
            reference,
            out,
            match=match or "obsid",
            max_separation_arcsec=max_separation,
            figures=not no_plots,
            html=html,
        )
        info(ctx, f"report written to {result.out_dir / 'index.md'}")
        return
    if match is not None:
        raise typer.BadParameter("--match needs --reference", param_hint="--match")
    if saliency is not None and no_plots:
        raise typer.BadParameter("--saliency draws a figure: drop --no-plots")
    ranges = []
    if saliency is not None:
        from lamost_rrnet.evaluate.saliency import parse_ranges

        try:
            ranges = parse_ranges(saliency)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--saliency") from exc
    from lamost_rrnet.evaluate.runner import evaluate_dataset

    opts = options(ctx)
    result = evaluate_dataset(
        source,
        model or ["rrnet2022"],
        split or "test",
        out,
        labels=label,
        batch_size=batch_size,
        device=opts.device,
        saliency_ranges=ranges,
        figures=not no_plots,
        html=html,
        progress=not opts.quiet,
    )
    info(ctx, f"report written to {result.out_dir / 'index.md'}")
