"""``lamost-rrnet prepare``: reference table + FITS files -> training dataset (HDF5)."""

from __future__ import annotations

from pathlib import Path

import typer

from lamost_rrnet.cli.common import MAX_FILE_MB, info, options


def parse_split(text: str) -> tuple[float, float, float]:
    """``7:1:2`` -> (0.7, 0.1, 0.2); :class:`typer.BadParameter` otherwise."""
    parts = text.split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise typer.BadParameter(
            f"{text!r}: use three non-negative parts TRAIN:VALID:TEST, e.g. 7:1:2",
            param_hint="--split",
        )
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total


def load_spec(value: str):
    """``rrnet2022``, or a YAML/JSON file holding a spec (or a model.yaml with one)."""
    import yaml

    from lamost_rrnet.errors import RRNetError
    from lamost_rrnet.spectra.preprocess import RRNET2022, PreprocessSpec

    if value == RRNET2022.name:
        return RRNET2022
    path = Path(value)
    if not path.is_file():
        raise typer.BadParameter(
            f"{value!r}: use rrnet2022 or an existing spec file", param_hint="--preprocessing"
        )
    try:
        data = yaml.safe_load(path.read_text())
        data = data.get("preprocessing", data)
        return PreprocessSpec.from_dict(data)
    except (OSError, yaml.YAMLError, AttributeError, TypeError) as exc:
        raise RRNetError(f"{path}: not a preprocessing spec ({exc})") from exc


def prepare_command(
    ctx: typer.Context,
    reference: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="Reference table written by crossmatch."
    ),
    output: Path = typer.Option(..., "-o", "--output", dir_okay=False, help="Dataset (.h5)."),
    spectra_root: Path | None = typer.Option(
        None,
        "--spectra-root",
        exists=True,
        file_okay=False,
        help="Directory the table's file names are relative to (default: current directory).",
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Worker processes."),
    split: str = typer.Option("7:1:2", "--split", help="Train:valid:test by star."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split by star."),
    max_outliers: int = typer.Option(
        100, "--max-outliers", min=0, help="Reject spectra with more outlier pixels."
    ),
    max_outlier_run: int = typer.Option(
        30, "--max-outlier-run", min=0, help="Reject spectra with a longer run of outliers."
    ),
    preprocessing: str = typer.Option(
        "rrnet2022", "--preprocessing", help="rrnet2022, or a YAML/JSON spec (or model.yaml)."
    ),
    max_file_mb: float = typer.Option(
        MAX_FILE_MB,
        "--max-file-mb",
        min=1,
        help="Most a spectrum file may hold decompressed, in MB; a larger file is rejected.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again from scratch."),
) -> None:
    """Read, RV-correct, resample and normalize every spectrum of the table into a dataset."""
    from lamost_rrnet.prepare import Thresholds, prepare_dataset

    if resume and overwrite:
        raise typer.BadParameter("give --resume or --overwrite, not both", param_hint="--resume")
    fractions = parse_split(split)
    spec = load_spec(preprocessing)
    opts = options(ctx)
    result = prepare_dataset(
        reference,
        output,
        spectra_root=spectra_root,
        workers=workers,
        fractions=fractions,
        seed=seed,
        thresholds=Thresholds(max_outliers, max_outlier_run, int(max_file_mb * 2**20)),
        spec=spec,
        resume=resume,
        overwrite=overwrite,
        progress=not opts.quiet,
    )
    if result.n_resumed:
        info(ctx, f"resumed: {result.n_resumed:,} spectra were already done")
    info(
        ctx,
        f"dataset: {result.n_accepted:,} spectra in {output}; "
        f"{result.n_rejected:,} rejected (see {result.rejects_path})",
    )
    for kind, n in result.reasons.most_common():
        info(ctx, f"  rejected, {kind}: {n:,}")
