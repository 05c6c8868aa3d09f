"""``lamost-rrnet merge``: finished catalogues (the shards of a run) in, one catalogue out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from lamost_rrnet.cli.common import Overwrite, options, output_option

logger = logging.getLogger(__name__)

Parts = Annotated[
    list[Path],
    typer.Argument(
        exists=True,
        metavar="PARTS",
        help="Catalogues (.fits, .parquet) or directories of them (their *.fits, *.parquet).",
    ),
]
Output = Annotated[str, output_option("The merged catalogue: .fits, .csv or .parquet.")]
Shards = Annotated[
    int | None,
    typer.Option(
        "--shards",
        min=1,
        help="The run had N shards (predict --shard K/N): refuse unless each is there once.",
    ),
]


def merge_command(
    ctx: typer.Context,
    parts: Parts,
    output: Output,
    shards: Shards = None,
    overwrite: Overwrite = False,
) -> None:
    """Merge the finished catalogues of one run (its shards) into one catalogue; refuse mixed
    models or settings, unfinished parts, repeated rows and, with --shards, missing shards."""

    from lamost_rrnet.catalogue import output_format
    from lamost_rrnet.merge import merge_catalogues

    try:
        if output == "-":
            raise ValueError("merge writes an output file, not stdout")
        output_format(output)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--output") from exc
    summary = merge_catalogues(
        parts, output, shards=shards, overwrite=overwrite, progress=not options(ctx).quiet
    )
    logger.info(summary.text())
