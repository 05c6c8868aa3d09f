"""``lamost-rrnet evaluate``: accuracy and uncertainty report of models on a dataset, or of a
catalogue against another survey's labels."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from lamost_rrnet.cli.common import BatchSize, Models, check_split, options
from lamost_rrnet.names import DEFAULT_MODEL

logger = logging.getLogger(__name__)


def _refuse_with_reference(**options_given: object) -> None:
    """With --reference the source is a catalogue, which holds its predictions already."""
    given = ["--" + name for name, value in options_given.items() if value]
    if given:
        raise typer.BadParameter(
            f"{', '.join(given)} cannot be used with --reference (catalogues hold predictions)"
        )


def _saliency_ranges(saliency: str | None, no_plots: bool) -> list[tuple[float, float]]:
    """The true-Teff ranges of ``--saliency LO:HI,...`` (none when not given)."""
    if saliency is None:
        return []
    if no_plots:
        raise typer.BadParameter("--saliency draws a figure: drop --no-plots")
    from lamost_rrnet.evaluate.saliency import parse_ranges

    try:
        return parse_ranges(saliency)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--saliency") from exc


def _check_match(value: str | None) -> str | None:
    if value is None:
        return value
    from lamost_rrnet.evaluate.compare import MATCH_MODES

    if value not in MATCH_MODES:
        raise typer.BadParameter(f"{value!r}: use {' or '.join(MATCH_MODES)}")
    return value


Source = Annotated[
    Path,
    typer.Argument(
        exists=True,
        dir_okay=False,
        metavar="DATASET_OR_CATALOGUE",
        help="A prepared dataset (.h5), or with --reference a catalogue (FITS, CSV, Parquet).",
    ),
]
Split = Annotated[
    str | None,
    typer.Option(
        "--split",
        metavar="SPLIT",
        callback=check_split,
        help="train, valid or test (default test).",
    ),
]
Out = Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Report directory.")]
Label = Annotated[
    list[str] | None,
    typer.Option(
        "--label",
        metavar="LABEL",
        help="Evaluate only this label (repeatable), e.g. Teff[K], FeH.",
    ),
]
Reference = Annotated[
    Path | None,
    typer.Option(
        "--reference",
        exists=True,
        dir_okay=False,
        help="Compare the catalogue DATASET_OR_CATALOGUE with this one (Table 2 style).",
    ),
]
Match = Annotated[
    str | None,
    typer.Option(
        "--match",
        metavar="obsid|sky",
        callback=_check_match,
        help="With --reference: match rows by obsid (default) or sky.",
    ),
]
MaxSeparation = Annotated[
    float,
    typer.Option(
        "--max-separation", min=0.0, help="With --match sky: largest separation (arcsec)."
    ),
]
Saliency = Annotated[
    str | None,
    typer.Option(
        "--saliency",
        metavar="LO:HI,...",
        help="True-Teff ranges LO:HI,... for the saliency figure, e.g. 4000:4300,6000:6300.",
    ),
]
NoPlots = Annotated[bool, typer.Option("--no-plots", help="Write the tables only.")]
Html = Annotated[bool, typer.Option("--html", help="Also write index.html.")]


def evaluate_command(
    ctx: typer.Context,
    source: Source,
    model: Models = None,
    split: Split = None,
    out: Out = Path("report"),
    label: Label = None,
    reference: Reference = None,
    match: Match = None,
    max_separation: MaxSeparation = 3.0,
    saliency: Saliency = None,
    batch_size: BatchSize = 256,
    no_plots: NoPlots = False,
    html: Html = False,
) -> None:
    """Write metrics.csv, metrics.json, index.md and figures into the report directory."""
    if reference is not None:
        from lamost_rrnet.evaluate.compare import evaluate_catalogue

        _refuse_with_reference(model=model, split=split, saliency=saliency, label=label)
        result = evaluate_catalogue(
            source,
            reference,
            out,
            match=match or "obsid",
            max_separation_arcsec=max_separation,
            figures=not no_plots,
            html=html,
        )
    else:
        from lamost_rrnet.evaluate.runner import evaluate_dataset

        if match is not None:
            raise typer.BadParameter("--match needs --reference", param_hint="--match")
        opts = options(ctx)
        result = evaluate_dataset(
            source,
            model or [DEFAULT_MODEL],
            split or "test",
            out,
            labels=label,
            batch_size=batch_size,
            device=opts.device,
            saliency_ranges=_saliency_ranges(saliency, no_plots),
            figures=not no_plots,
            html=html,
            progress=not opts.quiet,
        )
    logger.info(f"report written to {result.out_dir / 'index.md'}")
