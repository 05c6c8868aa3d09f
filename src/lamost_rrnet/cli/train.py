"""``lamost-rrnet train``: prepared dataset → deep-ensemble model directory.

Every option can also come from an environment variable ``LAMOST_RRNET_TRAIN_<OPTION>``
(e.g. ``LAMOST_RRNET_TRAIN_BATCH_SIZE``) or from a ``--config`` YAML file of ``option: value``
pairs; the precedence is command line > environment > config file > default.
"""

from __future__ import annotations

from pathlib import Path

import typer

from lamost_rrnet.cli.common import info, options

ENV_PREFIX = "LAMOST_RRNET_TRAIN_"


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _option(default, *flags: str, **kwargs):
    """A typer option that also reads ``LAMOST_RRNET_TRAIN_<NAME>``, named from its long flag."""
    name = next(f for f in flags if f.startswith("--"))[2:].replace("-", "_")
    return typer.Option(default, *flags, envvar=_env(name), show_envvar=False, **kwargs)


def _load_config(ctx: typer.Context, param, value: Path | None) -> Path | None:
    """Eager: the YAML file's values become the defaults of the other options, so that the
    command line and the environment still override them."""
    if value is None:
        return value
    import yaml

    try:
        data = yaml.safe_load(value.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"{value}: cannot read it ({exc})", param_hint="--config") from exc
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{value}: must map option names to values", param_hint="--config")
    known = {p.name for p in ctx.command.params} - {"config", "dataset"}
    defaults = {}
    for key, item in data.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in known:
            raise typer.BadParameter(
                f"{value}: unknown option {key!r} (known: {', '.join(sorted(known))})",
                param_hint="--config",
            )
        if isinstance(item, list):
            item = ",".join(str(v) for v in item)
        defaults[name] = item
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _int_list(text: str, hint: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: use integers separated by commas", param_hint=hint
        ) from None


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


def train_command(
    ctx: typer.Context,
    dataset: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="Dataset (.h5) written by prepare."
    ),
    output: Path = _option(..., "-o", "--output", file_okay=False, help="Model directory."),
    members: int = _option(6, "--members", min=1, help="Members per label group."),
    arch: str = _option(
        "rrnet",
        "--arch",
        help="rrnet, resnet, starnet, starnet-r, or cannon (a quadratic Cannon, fitted, not "
        "trained: no --members, --epochs or other training options).",
    ),
    groups: str = _option(
        "paper",
        "--groups",
        help="paper (SP: Teff, log g, [Fe/H]; CA: the rest), single, or a YAML file.",
    ),
    recipe: str = _option(
        "default",
        "--recipe",
        help="default (early stopping, weight decay, noise from each spectrum's ivar, "
        "augmentation) or paper (the published recipe).",
    ),
    epochs: int = _option(30, "--epochs", min=1, help="At most this many epochs."),
    batch_size: int = _option(256, "--batch-size", min=1),
    lr: float | None = _option(None, "--lr", help="Learning rate (default: the recipe's)."),
    noise_prob: float | None = _option(
        None,
        "--noise-prob",
        min=0.0,
        max=1.0,
        help="paper: probability that a z-scored pixel gets N(0,1) noise; default: that a "
        "spectrum is degraded to a lower S/N (default: the recipe's).",
    ),
    noise_from_epoch: int | None = _option(
        None, "--noise-from-epoch", min=1, help="First noisy epoch (default: the recipe's)."
    ),
    seed: int = _option(0, "--seed"),
    resume: bool = _option(False, "--resume", help="Continue a run from its checkpoint."),
    overwrite: bool = _option(False, "--overwrite", help="Start again over an earlier run."),
    devices: str | None = _option(
        None, "--devices", help="Spread each group's members over devices, e.g. cuda:0,cuda:1."
    ),
    max_minutes: float | None = _option(
        None,
        "--max-minutes",
        help="Stop after the epoch that would overrun this budget (resume later).",
    ),
    nr: str | None = _option(None, "--nr", help="RRNet residual channels, e.g. 4,8,16."),
    ns: int | None = _option(None, "--ns", min=1, help="Sub-bands of the recurrent layer."),
    mode: str | None = _option(None, "--mode", help="RRNet mode: post-RNN, pre-RNN or raw."),
    dropout: float | None = _option(None, "--dropout", min=0.0, max=0.95),
    name: str | None = _option(None, "--name", help="Model name (default: the directory name)."),
    config: Path | None = typer.Option(
        None,
        "--config",
        exists=True,
        dir_okay=False,
        is_eager=True,
        callback=_load_config,
        help="YAML file of option: value defaults.",
    ),
) -> None:
    """Train a deep ensemble (the default recipe, or --recipe paper), or fit a Cannon
    (--arch cannon), and write a model directory.

    Options may also come from LAMOST_RRNET_TRAIN_<OPTION> environment variables or a
    --config YAML file; the command line wins, then the environment, then the file.
    """
    from lamost_rrnet.devices import select_device
    from lamost_rrnet.models import create_model, list_models
    from lamost_rrnet.training import train_ensemble
    from lamost_rrnet.training.members import RECIPES

    if resume and overwrite:
        raise typer.BadParameter("give --resume or --overwrite, not both", param_hint="--resume")
    for value, hint in ((lr, "--lr"), (max_minutes, "--max-minutes")):
        if value is not None and not value > 0:
            raise typer.BadParameter(f"{value}: must be positive", param_hint=hint)
    if recipe not in RECIPES:
        raise typer.BadParameter(
            f"{recipe!r}: choose one of {', '.join(RECIPES)}", param_hint="--recipe"
        )
    if arch not in list_models():
        raise typer.BadParameter(
            f"{arch!r}: choose one of {', '.join(list_models())}", param_hint="--arch"
        )
    if arch == "cannon":
        given = _given(ctx, CANNON_REFUSES)
        if given:
            raise typer.BadParameter(
                f"{', '.join(given)}: not for the Cannon, which is fitted, not trained",
                param_hint="--arch cannon",
            )
    if groups not in ("paper", "single") and not Path(groups).is_file():
        raise typer.BadParameter(
            f"{groups!r}: use paper, single or an existing YAML file", param_hint="--groups"
        )
    arch_kwargs: dict = {}
    if nr is not None:
        arch_kwargs["Nr"] = _int_list(nr, "--nr")
    for key, value in (("Ns", ns), ("mode", mode), ("dropout", dropout)):
        if value is not None:
            arch_kwargs[key] = value
    try:
        create_model(arch, 1, **arch_kwargs)
    except (TypeError, ValueError) as exc:
        raise typer.BadParameter(f"{arch} {arch_kwargs}: {exc}", param_hint="--arch") from exc
    device_list = [d.strip() for d in devices.split(",") if d.strip()] if devices else None
    for device in device_list or []:
        try:
            select_device(device)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--devices") from exc

    opts = options(ctx)
    if arch == "cannon":
        from lamost_rrnet.training.cannon import train_cannon

        train_cannon(
            dataset,
            output,
            groups if _given(ctx, ["groups"]) else "single",
            overwrite=overwrite,
            name=name,
            progress=not opts.quiet,
        )
        info(ctx, f"predict with: lamost-rrnet predict SPECTRA --model {output}")
        return
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
        devices=device_list,
        arch_kwargs=arch_kwargs,
        max_minutes=max_minutes,
        overwrite=overwrite,
        name=name,
        progress=not opts.quiet,
        recipe=recipe,
    )
    info(ctx, f"predict with: lamost-rrnet predict SPECTRA --model {output}")
