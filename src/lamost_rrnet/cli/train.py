"""``lamost-rrnet train``: prepared dataset → deep-ensemble model directory.

Every option can also come from an environment variable ``LAMOST_RRNET_TRAIN_<OPTION>``
(e.g. ``LAMOST_RRNET_TRAIN_BATCH_SIZE``) or from a ``--config`` YAML file of ``option: value``
pairs; the precedence is command line > environment > config file > default.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from lamost_rrnet.cli.common import (
    Overwrite,
    Resume,
    Seed,
    check_resume_overwrite,
    option,
    options,
    output_option,
)
from lamost_rrnet.names import BUILTIN_GROUPS, GROUPS_PAPER, GROUPS_SINGLE

logger = logging.getLogger(__name__)

#: Click reads each option's ``LAMOST_RRNET_TRAIN_<NAME>`` (app.py registers the command so).
CONTEXT_SETTINGS = {"auto_envvar_prefix": "LAMOST_RRNET_TRAIN"}

#: Options of the networks' training that ``--arch cannon`` refuses when given.
CANNON_REFUSES = (
    "members",
    "recipe",
    "epochs",
    "batch_size",
    "lr",
    "noise_prob",
    "noise_from_epoch",
    "seed",
    "resume",
    "devices",
    "max_minutes",
    "nr",
    "ns",
    "mode",
    "dropout",
)


def _load_config(ctx: typer.Context, value: Path | None) -> Path | None:
    """Eager: the YAML file's values become the defaults of the other options, so that the
    command line and the environment still override them."""
    if value is not None:
        from lamost_rrnet.training.config import read_config

        known = {p.name for p in ctx.command.params} - {"config", "dataset"}
        ctx.default_map = {**(ctx.default_map or {}), **read_config(value, known)}
    return value


def _check_groups(value: str) -> str:
    if value not in BUILTIN_GROUPS and not Path(value).is_file():
        raise typer.BadParameter(f"{value!r}: use {', '.join(BUILTIN_GROUPS)} or a YAML file")
    return value


def _check_positive(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value}: must be positive")
    return value


def _given(ctx: typer.Context, names) -> list[str]:
    """The flags (``--members``) of the options in ``names`` that the command line, the
    environment or --config set; an option left at its default is not given."""
    # By name: typer vendors its own click, whose ParameterSource is not click's.
    sources = {name: ctx.get_parameter_source(name) for name in names}
    return [
        "--" + name.replace("_", "-")
        for name, source in sources.items()
        if source is not None and source.name != "DEFAULT"
    ]


def _arch_kwargs(nr: str | None, ns: int | None, mode: str | None, dropout: float | None) -> dict:
    """The architecture's keyword arguments that the options give."""
    kwargs: dict = {}
    if nr is not None:
        try:
            kwargs["Nr"] = [int(v) for v in nr.split(",") if v.strip()]
        except ValueError:
            raise typer.BadParameter(
                f"{nr!r}: use integers separated by commas", param_hint="--nr"
            ) from None
    for key, value in (("Ns", ns), ("mode", mode), ("dropout", dropout)):
        if value is not None:
            kwargs[key] = value
    return kwargs


def _device_list(devices: str | None) -> list[str] | None:
    """``cuda:0,cuda:1`` → each device, checked; None when not given."""
    from lamost_rrnet.devices import select_device

    if not devices:
        return None
    names = [d.strip() for d in devices.split(",") if d.strip()]
    for name in names:
        try:
            select_device(name)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--devices") from exc
    return names


def _fit_cannon(
    ctx: typer.Context, dataset: Path, output: Path, groups: str, overwrite: bool, name: str | None
) -> None:
    """``--arch cannon``: refuse the networks' options, then fit; by default one group."""
    from lamost_rrnet.training.cannon import train_cannon

    given = _given(ctx, CANNON_REFUSES)
    if given:
        raise typer.BadParameter(
            f"{', '.join(given)}: not for the Cannon, which is fitted, not trained",
            param_hint="--arch cannon",
        )
    groups = groups if _given(ctx, ["groups"]) else GROUPS_SINGLE
    progress = not options(ctx).quiet
    train_cannon(dataset, output, groups, overwrite=overwrite, name=name, progress=progress)


Dataset = Annotated[
    Path, typer.Argument(exists=True, dir_okay=False, help="Dataset (.h5) written by prepare.")
]
Output = Annotated[Path, output_option("Model directory.", file_okay=False)]
Members = Annotated[int, option("--members", min=1, help="Members per label group.")]
TrainBatchSize = Annotated[
    int | None,
    option(
        "--batch-size",
        min=1,
        help="Spectra per optimizer step (default: the recipe's, 32 for default, 256 for paper).",
    ),
]
Arch = Annotated[
    str,
    option(
        "--arch",
        help="rrnet, resnet, starnet, starnet-r, or cannon (a quadratic Cannon, fitted, not "
        "trained: no --members, --epochs or other training options).",
    ),
]
Groups = Annotated[
    str,
    option(
        "--groups",
        callback=_check_groups,
        help="paper (SP: Teff, log g, [Fe/H]; CA: the rest), single, or a YAML file.",
    ),
]
RecipeName = Annotated[
    str,
    option(
        "--recipe",
        help="default (early stopping, weight decay, noise from each spectrum's ivar, "
        "augmentation) or paper (the published recipe).",
    ),
]
Epochs = Annotated[int, option("--epochs", min=1, help="At most this many epochs.")]
LearningRate = Annotated[
    float | None, option("--lr", help="Learning rate (default: the recipe's).")
]
NoiseProb = Annotated[
    float | None,
    option(
        "--noise-prob",
        min=0.0,
        max=1.0,
        help="paper: probability that a z-scored pixel gets N(0,1) noise; default: that a "
        "spectrum is degraded to a lower S/N (default: the recipe's).",
    ),
]
NoiseFromEpoch = Annotated[
    int | None,
    option("--noise-from-epoch", min=1, help="First noisy epoch (default: the recipe's)."),
]
Devices = Annotated[
    str | None,
    option("--devices", help="Spread each group's members over devices, e.g. cuda:0,cuda:1."),
]
MaxMinutes = Annotated[
    float | None,
    option(
        "--max-minutes",
        callback=_check_positive,
        help="Stop after the epoch that would overrun this budget (resume later).",
    ),
]
Nr = Annotated[str | None, option("--nr", help="RRNet residual channels, e.g. 4,8,16.")]
Ns = Annotated[int | None, option("--ns", min=1, help="Sub-bands of the recurrent layer.")]
Mode = Annotated[str | None, option("--mode", help="RRNet mode: post-RNN, pre-RNN or raw.")]
Dropout = Annotated[float | None, option("--dropout", min=0.0, max=0.95)]
Name = Annotated[str | None, option("--name", help="Model name (default: the directory name).")]
Config = Annotated[
    Path | None,
    option(
        "--config",
        exists=True,
        dir_okay=False,
        is_eager=True,
        callback=_load_config,
        allow_from_autoenv=False,
        help="YAML file of option: value defaults.",
    ),
]


def train_command(
    ctx: typer.Context,
    dataset: Dataset,
    output: Output,
    members: Members = 6,
    arch: Arch = "rrnet",
    groups: Groups = GROUPS_PAPER,
    recipe: RecipeName = "default",
    epochs: Epochs = 30,
    batch_size: TrainBatchSize = None,
    lr: LearningRate = None,
    noise_prob: NoiseProb = None,
    noise_from_epoch: NoiseFromEpoch = None,
    seed: Seed = 0,
    resume: Resume = False,
    overwrite: Overwrite = False,
    devices: Devices = None,
    max_minutes: MaxMinutes = None,
    nr: Nr = None,
    ns: Ns = None,
    mode: Mode = None,
    dropout: Dropout = None,
    name: Name = None,
    config: Config = None,
) -> None:
    """Train a deep ensemble (the default recipe, or --recipe paper), or fit a Cannon
    (--arch cannon), and write a model directory.

    Options may also come from LAMOST_RRNET_TRAIN_<OPTION> environment variables or a
    --config YAML file; the command line wins, then the environment, then the file.
    """
    from lamost_rrnet.training import train_ensemble

    check_resume_overwrite(resume, overwrite)
    opts = options(ctx)
    if arch == "cannon":
        _fit_cannon(ctx, dataset, output, groups, overwrite, name)
    else:
        train_ensemble(
            dataset,
            output,
            members=members,
            arch=arch,
            groups=groups,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            noise_prob=noise_prob,
            noise_from_epoch=noise_from_epoch,
            seed=seed,
            device=opts.device,
            resume=resume,
            devices=_device_list(devices),
            arch_kwargs=_arch_kwargs(nr, ns, mode, dropout),
            max_minutes=max_minutes,
            overwrite=overwrite,
            name=name,
            progress=not opts.quiet,
            recipe=recipe,
        )
    logger.info(f"predict with: lamost-rrnet predict SPECTRA --model {output}")
