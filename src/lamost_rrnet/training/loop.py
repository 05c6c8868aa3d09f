"""``train_ensemble``: a deep ensemble from a prepared dataset, resumable epoch by epoch.

Every label group has M members, split into shards: one per device (``devices``), or on a
CPU one per torch thread left over by the groups. A shard's members are one batched
computation (:mod:`lamost_rrnet.training.stacked`), and the shards of all groups run
concurrently in threads. Epochs run in step for every group, so a checkpoint, a time budget
and the history always cover whole epochs of all groups.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from lamost_rrnet._version import __version__
from lamost_rrnet.calibrate import calibrate
from lamost_rrnet.calibration import describe
from lamost_rrnet.dataset import open_dataset
from lamost_rrnet.devices import select_device, torch_threads
from lamost_rrnet.ensemble import Ensemble, LabelGroup
from lamost_rrnet.errors import OutputExistsError, RRNetError, UsageError
from lamost_rrnet.locking import exclusive
from lamost_rrnet.models import create_model, list_models
from lamost_rrnet.names import GROUPS_PAPER
from lamost_rrnet.progress import make_progress
from lamost_rrnet.training.augment import BatchAugmenter
from lamost_rrnet.training.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from lamost_rrnet.training.data import TrainingData, load_training_data
from lamost_rrnet.training.groups import GroupSpec, resolve_groups
from lamost_rrnet.training.history import (
    HISTORY_FILE,
    LOSS_CURVE_FILE,
    TENSORBOARD_DIR,
    TensorBoardLog,
    plot_loss_curves,
    write_history,
)
from lamost_rrnet.training.members import RECIPES, MemberEpoch, Recipe, Shard
from lamost_rrnet.training.stacked import StackedNet

#: Spectra per batch when the trained ensemble labels the validation split (calibration).
PREDICT_BATCH = 256

logger = logging.getLogger(__name__)

#: Called after each completed (and checkpointed) epoch with its number and history rows.
EpochCallback = Callable[[int, list[dict]], None]


@dataclass(frozen=True)
class Settings:
    """Everything that decides the trained weights; a resumed run must match all but epochs."""

    members: int
    arch: str
    arch_kwargs: dict
    groups: dict
    epochs: int
    seed: int
    recipe: Recipe

    def to_dict(self) -> dict:
        data = asdict(self)
        data["groups"] = {k: list(v) for k, v in self.groups.items()}
        return data


def _check_arguments(members: int, arch: str, epochs: int, recipe: Recipe) -> None:
    if recipe.noise not in ("paper", "ivar"):
        raise UsageError(f"unknown noise {recipe.noise!r}: use paper or ivar")
    if recipe.micro_batch < 1 or recipe.patience < 0 or recipe.weight_decay < 0:
        raise UsageError("micro_batch must be at least 1, patience and weight_decay not negative")
    if members < 1:
        raise UsageError(f"members must be at least 1, not {members}")
    if arch not in list_models():
        raise UsageError(
            f"unknown architecture {arch!r} (--arch): choose one of {', '.join(list_models())}"
        )
    if arch == "cannon":
        raise UsageError("the Cannon is fitted, not trained: use training.cannon.train_cannon")
    if epochs < 1:
        raise UsageError(f"epochs must be at least 1, not {epochs}")
    if recipe.batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, not {recipe.batch_size}")
    if not recipe.lr > 0:
        raise UsageError(f"lr must be positive, not {recipe.lr}")
    if not 0 <= recipe.noise_prob <= 1:
        raise UsageError(f"noise_prob must be within 0-1, not {recipe.noise_prob}")
    if recipe.noise_from_epoch < 1:
        raise UsageError(f"noise_from_epoch counts from 1, not {recipe.noise_from_epoch}")


def _layout(
    members: int, n_groups: int, device: str, devices: Sequence[str] | None
) -> tuple[list[torch.device], int, int]:
    """(the device of each shard of a group, concurrent workers, torch threads per worker).

    A group's members on one device are one stack, except on a CPU with more threads than
    groups: there the members are split so that every thread drives a stack of its own,
    which beats one stack on several threads (docs/training.md, "Speed").
    """
    threads = torch.get_num_threads()
    if devices:
        targets = [select_device(d) for d in devices]
    else:
        target = select_device(device)
        per_group = min(members, math.ceil(threads / n_groups)) if target.type == "cpu" else 1
        targets = [target] * per_group
    n_shards = min(len(targets), members) * n_groups
    if all(t.type == "cpu" for t in targets):
        workers = max(1, min(threads, n_shards))
        return targets, workers, max(1, threads // workers)
    return targets, n_shards, threads


def _split(indices: Sequence[int], parts: int) -> list[list[int]]:
    """Contiguous, near-equal parts of ``indices`` (no empty ones)."""
    bounds = np.linspace(0, len(indices), parts + 1).round().astype(int)
    return [list(indices[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _history_rows(group: GroupSpec, epoch: int, lr: float, seconds: float, results) -> list[dict]:
    rows = []
    for r in results:
        row = {
            "group": group.name,
            "member": r.member,
            "epoch": epoch,
            "lr": lr,
            "seconds": round(seconds, 3),
            "train_loss": r.train_loss,
            "valid_loss": r.valid_loss,
            "best": int(r.best),
        }
        for label, train_mae, valid_mae in zip(group.labels, r.train_mae, r.valid_mae, strict=True):
            row[f"train_mae_{label}"] = float(train_mae)
            row[f"valid_mae_{label}"] = float(valid_mae)
        rows.append(row)
    return rows


def _summary(epoch: int, epochs: int, lr: float, seconds: float, rows: list[dict]) -> str:
    parts = []
    for group in dict.fromkeys(r["group"] for r in rows):
        train = np.array([r["train_loss"] for r in rows if r["group"] == group])
        valid = np.array([r["valid_loss"] for r in rows if r["group"] == group])
        parts.append(f"{group}: train {train.mean():.4f}, valid {valid.mean():.4f}")
    return f"epoch {epoch}/{epochs}  lr {lr:.1e}  " + "; ".join(parts) + f"  ({seconds:.1f} s)"


class _Run:
    """The state of one training run: its groups' shards and its history."""

    def __init__(self, settings: Settings, groups: list[GroupSpec], data: TrainingData, layout):
        self.settings = settings
        self.groups = groups
        self.data = data
        targets, self.workers, self.threads = layout
        self.shards: dict[str, list[Shard]] = {}
        for group in groups:
            parts = _split(range(settings.members), min(len(targets), settings.members))
            self.shards[group.name] = [
                Shard(
                    group.name,
                    len(group.labels),
                    part,
                    settings.arch,
                    settings.arch_kwargs,
                    settings.seed,
                    target,
                    settings.recipe.weight_decay,
                )
                for part, target in zip(parts, targets, strict=False)
            ]
        self.augment = BatchAugmenter(
            settings.recipe, data.normalization, data.preprocessing, data.noise
        )
        if not all(isinstance(s.stack, StackedNet) for s in self.all_shards()):
            # Members without a stacked forward draw dropout from the global generator: one
            # worker keeps the draws in a fixed order.
            self.workers = 1
        self.history: list[dict] = []
        self.epoch = 0

    def all_shards(self) -> list[Shard]:
        return [s for shards in self.shards.values() for s in shards]

    def n_batches(self) -> int:
        size = self.settings.recipe.batch_size
        return sum(
            len(self.shards[g.name]) * math.ceil(self.data.groups[g.name]["train"].rows.size / size)
            for g in self.groups
        )

    def run_epoch(self, epoch: int, pool: ThreadPoolExecutor, advance) -> list[dict]:
        recipe = self.settings.recipe
        norm = self.data.normalization

        def work(item: tuple[GroupSpec, Shard]) -> tuple[GroupSpec, list[MemberEpoch], float]:
            group, shard = item
            start = time.perf_counter()
            results = shard.run_epoch(
                epoch,
                recipe,
                self.data.flux,
                self.data.groups[group.name],
                norm.label_std[norm.index(group.labels)],
                advance,
                self.augment,
            )
            return group, results, time.perf_counter() - start

        items = [(g, s) for g in self.groups for s in self.shards[g.name]]
        rows = []
        for group, results, seconds in pool.map(work, items):
            rows += _history_rows(group, epoch, recipe.lr_at(epoch), seconds, results)
        self.history += rows
        self.epoch = epoch
        return rows

    # -- checkpoints ---------------------------------------------------------------------

    def epochs_without_progress(self) -> int:
        """Epochs since the last better validation loss of any member of any group."""
        return self.epoch - max(b for s in self.all_shards() for b in s.best_epoch)

    def state(self) -> dict:
        norm = self.data.normalization
        return {
            "settings": self.settings.to_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "label_mean": torch.from_numpy(norm.label_mean.copy()),
            "flux_mean": torch.from_numpy(norm.flux_mean.copy()),
            "members": {
                name: [m for shard in shards for m in shard.export()]
                for name, shards in self.shards.items()
            },
            "torch_rng": torch.get_rng_state(),
        }

    def restore(self, state: dict, path: Path) -> None:
        old, new = dict(state["settings"]), self.settings.to_dict()
        old.pop("epochs", None)
        new.pop("epochs")
        for key in new:
            if old.get(key) != new[key]:
                raise RRNetError(
                    f"{path}: written with {key}={old.get(key)!r}, not {new[key]!r}; resume "
                    "with the same settings, or start again with --overwrite"
                )
        norm = self.data.normalization
        if not (
            np.array_equal(state["flux_mean"].numpy(), norm.flux_mean)
            and np.array_equal(state["label_mean"].numpy(), norm.label_mean)
        ):
            raise RRNetError(f"{path}: the dataset changed since this checkpoint was written")
        for name, shards in self.shards.items():
            members = {m["index"]: m for m in state["members"][name]}
            for shard in shards:
                shard.restore([members[i] for i in shard.indices])
        torch.set_rng_state(state["torch_rng"])
        self.history = list(state["history"])
        self.epoch = int(state["epoch"])

    # -- the model -----------------------------------------------------------------------

    def ensemble(self, name: str, provenance: dict) -> Ensemble:
        s = self.settings
        groups = []
        for group in self.groups:
            members = []
            for shard in self.shards[group.name]:
                for state in shard.best:
                    member = create_model(s.arch, len(group.labels), **s.arch_kwargs)
                    member.load_state_dict(state)
                    members.append(member)
            groups.append(LabelGroup(group.name, list(group.labels), members))
        labels = [label for g in self.groups for label in g.labels]
        return Ensemble(
            name,
            "1",
            {"name": s.arch, "kwargs": s.arch_kwargs},
            groups,
            self.data.normalization,
            self.data.preprocessing,
            {label: self.data.label_ranges[label] for label in labels},
            provenance,
        )


def _recipe(
    recipe: str | Recipe,
    batch_size: int | None,
    lr: float | None,
    noise_prob: float | None,
    noise_from_epoch: int | None,
) -> Recipe:
    """The named (or given) recipe with the explicit options put in."""
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise UsageError(
                f"unknown recipe {recipe!r} (--recipe): choose one of {', '.join(RECIPES)}"
            )
        recipe = RECIPES[recipe]
    changes = {}
    for key, value in (
        ("batch_size", batch_size),
        ("lr", lr),
        ("noise_prob", noise_prob),
        ("noise_from_epoch", noise_from_epoch),
    ):
        if value is not None:
            changes[key] = value
    return replace(recipe, **changes)


def _prepare_output(out_dir: Path, resume: bool, overwrite: bool) -> dict | None:
    """The checkpoint to resume from, if any; refuses to train over an earlier run."""
    checkpoint = out_dir / CHECKPOINT_FILE
    if resume and checkpoint.is_file():
        return load_checkpoint(checkpoint)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        if resume:
            raise OutputExistsError(
                f"{out_dir}: no {CHECKPOINT_FILE} to resume from; use --overwrite to start again"
            )
        raise OutputExistsError(
            f"{out_dir}: not empty; use --resume to continue a run or --overwrite to start again"
        )
    checkpoint.unlink(missing_ok=True)
    return None


def _plain_arch_kwargs(arch: str, arch_kwargs: Mapping | None) -> dict:
    """``arch_kwargs`` as plain JSON data (tuples become lists), as the checkpoint and
    model.yaml store it, checked by building one model: wrong ones fail here, not mid-run."""
    plain = json.loads(json.dumps(dict(arch_kwargs or {})))
    try:
        create_model(arch, 1, **plain)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"architecture {arch} with {plain}: {exc}") from exc
    return plain


def _log_dropped_rows(groups: list[GroupSpec], data: TrainingData) -> None:
    for group in groups:
        for split, rows in data.groups[group.name].items():
            if rows.dropped:
                logger.info(
                    f"group {group.name}: {rows.dropped} of {data.n_rows[split]} {split} rows "
                    "dropped (NaN labels or flux)"
                )


@dataclass
class _Outcome:
    """How the epochs ended: all of them, or early (converged or out of time)."""

    stopped_early: bool = False
    converged: bool = False


def _train_epochs(
    run: _Run,
    out_dir: Path,
    labels: list[str],
    started: float,
    max_minutes: float | None,
    callback: EpochCallback | None,
    progress: bool,
) -> _Outcome:
    """Run the epochs after the run's last one, checkpointing and logging each."""
    epochs, recipe = run.settings.epochs, run.settings.recipe
    outcome = _Outcome()
    board = TensorBoardLog(out_dir / TENSORBOARD_DIR)
    try:
        # Worker threads take torch's thread count when they first compute: set it first.
        with (
            torch_threads(run.threads),
            ThreadPoolExecutor(run.workers) as pool,
            make_progress(progress, transient=True) as bar,
        ):
            epochs_task = bar.add_task("epochs", total=epochs, completed=run.epoch)
            for epoch in range(run.epoch + 1, epochs + 1):
                t0 = time.perf_counter()
                batches = bar.add_task(f"epoch {epoch}", total=run.n_batches())
                rows = run.run_epoch(epoch, pool, functools.partial(bar.advance, batches))
                bar.remove_task(batches)
                save_checkpoint(out_dir / CHECKPOINT_FILE, run.state())
                write_history(out_dir / HISTORY_FILE, run.history, labels)
                board.log(rows)
                seconds = time.perf_counter() - t0
                bar.advance(epochs_task)
                logger.info(_summary(epoch, epochs, recipe.lr_at(epoch), seconds, rows))
                if callback is not None:
                    callback(epoch, rows)
                elapsed = time.perf_counter() - started
                if epoch < epochs and 0 < recipe.patience <= run.epochs_without_progress():
                    logger.info(
                        f"stopping after epoch {epoch}: no better validation loss for "
                        f"{recipe.patience} epochs; keeping each member's best"
                    )
                    outcome.converged = True
                    break
                if epoch < epochs and max_minutes is not None:
                    if elapsed + seconds > 60.0 * max_minutes:
                        logger.info(
                            f"stopping after epoch {epoch} of {epochs}: the next would pass "
                            f"{max_minutes:g} minutes; --resume continues the run"
                        )
                        outcome.stopped_early = True
                        break
    finally:
        board.close()
    return outcome


def _provenance(dataset_path: str | os.PathLike[str], run: _Run, outcome: _Outcome) -> dict:
    """What the model records of how it was trained."""
    return {
        "dataset": str(Path(dataset_path).resolve()),
        "trained_with": f"lamost-rrnet {__version__}, torch {torch.__version__}",
        "settings": run.settings.to_dict(),
        "epochs_completed": run.epoch,
        "stopped_early": outcome.stopped_early,
        "converged": outcome.converged,
        "best_epochs": {g: [b for s in sh for b in s.best_epoch] for g, sh in run.shards.items()},
        "rows": {
            g.name: {split: int(rows.rows.size) for split, rows in run.data.groups[g.name].items()}
            for g in run.groups
        },
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def train_ensemble(
    dataset_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    members: int = 6,
    arch: str = "rrnet",
    groups: str | os.PathLike[str] | Mapping[str, Sequence[str]] = GROUPS_PAPER,
    epochs: int = 30,
    batch_size: int | None = None,
    lr: float | None = None,
    noise_prob: float | None = None,
    noise_from_epoch: int | None = None,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    *,
    devices: Sequence[str] | None = None,
    arch_kwargs: Mapping | None = None,
    max_minutes: float | None = None,
    overwrite: bool = False,
    name: str | None = None,
    progress: bool = False,
    callback: EpochCallback | None = None,
    recipe: str | Recipe = "default",
) -> Ensemble:
    """Train a deep ensemble on ``dataset_path`` and save it as a model directory ``out_dir``.

    ``recipe`` is a name of :data:`~.members.RECIPES` or a :class:`~.members.Recipe`
    (docs/training.md, "Recipes"); ``lr``, ``noise_prob`` and ``noise_from_epoch`` override
    its values when given, and so does ``batch_size`` (the recipe's by default: 32 for
    ``default``, 256 for ``paper``). Both named recipes minimize a Gaussian NLL with a variance
    floor for at most ``epochs`` epochs and keep each member's weights of its best validation
    loss. ``paper`` is the published one: batches of 256, Adam with StepLR(10, 0.1), and from
    epoch 6 on N(0,1) noise on 25 % of the z-scored pixels. ``default`` takes batches of 32
    (eight times the optimizer steps on a small set), and adds weight decay, a smooth
    decay of the rate, noise drawn from each spectrum's own inverse variance, small RV shifts
    and continuum tilts, and stops when no member has improved for its ``patience``. ``groups`` is
    ``paper`` (SP: Teff, log g, [Fe/H]; CA: the other 14), ``single`` (every dataset label in
    one group), a YAML file or a mapping of group name → labels; each group gets ``members``
    members seeded from ``seed``. ``devices`` (e.g. ``["cuda:0", "cuda:1"]``) spreads each
    group's members over several devices; otherwise ``device`` is used.

    ``out_dir`` receives, after every epoch, ``checkpoint.pt`` and ``history.csv`` (and
    TensorBoard logs when TensorBoard is installed); at the end ``loss_curve.png`` and the
    model files, calibrated: each label's σ is scaled so that z has std 1 on the valid split
    (:mod:`lamost_rrnet.calibration`). ``resume=True`` continues from the checkpoint (or
    starts when ``out_dir`` is empty or absent) and gives the weights an uninterrupted run
    would have. ``max_minutes`` stops after the epoch that would otherwise overrun it, and
    saves the best weights so far. A line per epoch is logged at INFO; ``progress`` shows bars
    of the epochs and of the current epoch's batches.
    """
    started = time.perf_counter()
    recipe = _recipe(recipe, batch_size, lr, noise_prob, noise_from_epoch)
    _check_arguments(members, arch, epochs, recipe)
    arch_kwargs = _plain_arch_kwargs(arch, arch_kwargs)
    out_dir = Path(out_dir)
    with exclusive(out_dir):  # one run at a time in a directory
        checkpoint = _prepare_output(out_dir, resume, overwrite)
        with open_dataset(dataset_path) as ds:
            label_names = ds.label_names
        group_specs = resolve_groups(groups, label_names, dataset_path)
        data = load_training_data(
            dataset_path, group_specs, recipe.batch_size, with_noise=recipe.noise == "ivar"
        )
        _log_dropped_rows(group_specs, data)
        settings = Settings(
            members,
            arch,
            arch_kwargs,
            {g.name: list(g.labels) for g in group_specs},
            epochs,
            int(seed),
            recipe,
        )
        run = _Run(settings, group_specs, data, _layout(members, len(group_specs), device, devices))
        if checkpoint is not None:
            run.restore(checkpoint, out_dir / CHECKPOINT_FILE)
            logger.info(f"resuming {out_dir} after epoch {run.epoch}")
        else:
            torch.manual_seed(seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        labels = [label for g in group_specs for label in g.labels]
        outcome = _train_epochs(run, out_dir, labels, started, max_minutes, callback, progress)
        if run.history:
            plot_loss_curves(out_dir / LOSS_CURVE_FILE, run.history)
        ensemble = run.ensemble(
            name or out_dir.resolve().name, _provenance(dataset_path, run, outcome)
        )
        # σ scales from the validation split (docs/training.md, "Calibration").
        ensemble = calibrate(ensemble.to(device), dataset_path, "valid", PREDICT_BATCH).to("cpu")
        logger.info(describe(ensemble.calibration, ensemble.labels))
        ensemble.save(out_dir)
        logger.info(f"model written to {out_dir}")
        return ensemble
