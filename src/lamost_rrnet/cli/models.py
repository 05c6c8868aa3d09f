"""``lamost-rrnet models list|download|path|verify``: the named models and their cache."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

logger = logging.getLogger(__name__)

app = typer.Typer(
    name="models",
    help="The named models: list them, pre-fetch them, locate and verify their cache.",
    no_args_is_help=True,
)


def _known(name: str) -> str:
    from lamost_rrnet.hub import downloadable_models

    names = downloadable_models()
    if name not in names:
        raise typer.BadParameter(f"{name!r}: known models are {', '.join(names)}")
    return name


Name = Annotated[
    str, typer.Argument(callback=_known, help="A model name from `lamost-rrnet models list`.")
]


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


@app.command("list")
def list_command() -> None:
    """Names, download sizes and whether each model is cached, on stdout."""
    from lamost_rrnet.hub import cached_files, downloadable_models

    rows = [("NAME", "SIZE", "CACHED", "DESCRIPTION")]
    for name, entry in downloadable_models().items():
        have = cached_files(name)
        cached = "yes" if have == len(entry.files) else f"{have}/{len(entry.files)} files"
        size = f"~{_size(entry.approx_bytes)}" if entry.approx_bytes else "?"
        rows.append((name, size, "no" if have == 0 else cached, entry.description))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        typer.echo(
            "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True))
            + "  "
            + row[3]
        )


@app.command("download")
def download_command(ctx: typer.Context, name: Name) -> None:
    """Fetch and verify a model into the cache now (for compute nodes without internet)."""
    from lamost_rrnet.cli.common import options
    from lamost_rrnet.download import fetch
    from lamost_rrnet.hub import get_entry

    root = fetch(name, progress=not options(ctx).quiet)
    logger.info(f"{name}: {len(get_entry(name).files)} files verified in {root}")


@app.command("path")
def path_command(name: Name) -> None:
    """Print the cache directory of a model (where its files are, or will be)."""
    from lamost_rrnet.hub import model_cache_dir

    typer.echo(str(model_cache_dir(name)))


@app.command("verify")
def verify_command(name: Name) -> None:
    """Re-hash a model's cached files; exit 1 unless all are ok.

    One line per file on stdout: ok, missing or mismatch, a tab, the path.
    """
    from lamost_rrnet.errors import ModelError
    from lamost_rrnet.hub import verify

    statuses = verify(name)
    for status in statuses:
        typer.echo(f"{status.status}\t{status.path}")
    bad = [s for s in statuses if s.status != "ok"]
    if bad:
        raise ModelError(
            f"{name}: {len(bad)} of {len(statuses)} files missing or corrupt; "
            f"run `lamost-rrnet models download {name}`"
        )
    logger.info(f"{name}: all {len(statuses)} files verified")
