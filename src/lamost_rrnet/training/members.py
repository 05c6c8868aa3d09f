"""One shard of a label group: some of its members, on one device, trained as one stack.

A shard owns its members' stack, their Adam optimizer (over the stacked parameters, which is
one independent Adam per member), their random generators and their best weights so far.
Shards share nothing, so they run concurrently in threads: on several devices, or on the
cores of one CPU.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from lamost_rrnet.models import create_model
from lamost_rrnet.training.augment import BatchAugmenter
from lamost_rrnet.training.checkpoint import export_optimizer, import_optimizer
from lamost_rrnet.training.data import SplitData
from lamost_rrnet.training.stacked import load_member_states, member_states, stack_members


@dataclass(frozen=True)
class Recipe:
    """The optimization recipe (the paper's with the field defaults; :data:`RECIPES` has both
    named ones, docs/training.md)."""

    batch_size: int = 256
    lr: float = 5e-4
    lr_step: int = 10  # StepLR(10, 0.1): the rate falls tenfold every 10 epochs
    lr_gamma: float = 0.1
    noise_prob: float = 0.25
    noise_from_epoch: int = 6  # 1-based: epochs 6, 7, ... are trained on noisy flux
    var_floor: float = 1e-6
    name: str = "paper"
    noise: str = "paper"  # or "ivar" (lamost_rrnet.training.augment)
    weight_decay: float = 0.0  # decoupled (AdamW) when positive
    patience: int = 0  # stop after this many epochs without a better validation loss; 0: never
    rv_shift: float = 0.0  # km/s, σ of a random RV shift
    tilt: float = 0.0  # σ of a random continuum tilt, end to end of each arm
    # Spectra per forward/backward pass: a batch's gradient is summed over micro-batches, so
    # the activations held for the backward pass are those of micro_batch spectra per member.
    micro_batch: int = 16

    def lr_at(self, epoch: int) -> float:
        """The learning rate of 1-based ``epoch``."""
        return self.lr * self.lr_gamma ** ((epoch - 1) // self.lr_step)

    def noisy(self, epoch: int) -> bool:
        return self.noise_prob > 0 and epoch >= self.noise_from_epoch


#: The named recipes of ``train --recipe`` (docs/training.md, "Recipes").
RECIPES: dict[str, Recipe] = {
    "paper": Recipe(),
    "default": Recipe(
        name="default",
        batch_size=32,  # 8x the paper's optimizer steps: small sets need them (docs/training.md)
        lr=1e-3,
        lr_step=1,
        lr_gamma=0.9,  # about tenfold down in 22 epochs, smoothly
        noise="ivar",
        noise_prob=0.5,
        noise_from_epoch=1,
        weight_decay=1e-4,
        patience=6,
        rv_shift=2.0,
        tilt=0.02,
    ),
}


def member_seeds(seed: int, group: str, index: int) -> tuple[int, int, int]:
    """Seeds of a member's initial weights, batch order and noise/dropout streams.

    They depend only on the run's seed, the group name and the member's index, so a member
    trains the same way whatever shard or device it lands on.
    """
    sequence = np.random.SeedSequence([seed, zlib.crc32(group.encode("utf-8")), index])
    words = sequence.generate_state(6, np.uint32).astype(np.uint64)
    return tuple(int((words[2 * i] << np.uint64(31)) ^ words[2 * i + 1]) for i in range(3))


def gaussian_nll(
    mu: torch.Tensor, var: torch.Tensor, y: torch.Tensor, floor: float
) -> torch.Tensor:
    """Per-member mean of log(v)/2 + (y − μ)²/(2v), v = var + floor: shape (M,)."""
    v = var + floor
    return (0.5 * torch.log(v) + (y - mu) ** 2 / (2 * v)).mean(dim=(1, 2))


@dataclass
class MemberEpoch:
    """One member's figures for one epoch (losses in z units, MAE in physical units)."""

    member: int
    train_loss: float
    valid_loss: float
    train_mae: np.ndarray
    valid_mae: np.ndarray
    best: bool


class Shard:
    """Members ``indices`` of label group ``group`` (with ``n_labels`` outputs) on ``device``."""

    def __init__(
        self,
        group: str,
        n_labels: int,
        indices: list[int],
        arch: str,
        arch_kwargs: dict,
        seed: int,
        device: torch.device,
        weight_decay: float = 0.0,
    ):
        self.group = group
        self.indices = list(indices)
        self.device = device
        seeds = [member_seeds(seed, group, i) for i in self.indices]
        modules = []
        for init_seed, _, _ in seeds:
            # A private generator state, so that creating members leaves the global one alone.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                modules.append(create_model(arch, n_labels, **arch_kwargs))
        self.stack = stack_members(modules).to(device)
        params = self.stack.parameters()
        self.optimizer = (
            torch.optim.AdamW(params, weight_decay=weight_decay)
            if weight_decay > 0
            else torch.optim.Adam(params)
        )
        self.order = [torch.Generator().manual_seed(s) for _, s, _ in seeds]
        self.noise = [torch.Generator(device=device).manual_seed(s) for _, _, s in seeds]
        self.best_loss = [math.inf] * len(self.indices)
        self.best_epoch = [0] * len(self.indices)
        self.best = member_states(self.stack)

    def run_epoch(
        self,
        epoch: int,
        recipe: Recipe,
        flux: dict[str, np.ndarray],
        rows: dict[str, SplitData],
        label_std: np.ndarray,
        advance: Callable[[int], None],
        augment: BatchAugmenter,
    ) -> list[MemberEpoch]:
        """Train one epoch, validate, keep the best weights; ``advance(n)`` after each batch."""
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = recipe.lr_at(epoch)
        train_loss, train_abs = self._train(
            epoch, recipe, flux["train"], rows["train"], advance, augment
        )
        valid_loss, valid_abs = self._validate(recipe, flux["valid"], rows["valid"])
        scale = torch.as_tensor(label_std, dtype=torch.float64)
        results = []
        improved = []
        for j, member in enumerate(self.indices):
            loss = float(valid_loss[j])
            better = math.isfinite(loss) and loss < self.best_loss[j]
            if better:
                self.best_loss[j], self.best_epoch[j] = loss, epoch
                improved.append(j)
            results.append(
                MemberEpoch(
                    member,
                    float(train_loss[j]),
                    loss,
                    (train_abs[j] * scale).numpy(),
                    (valid_abs[j] * scale).numpy(),
                    better,
                )
            )
        if improved:
            states = member_states(self.stack)
            for j in improved:
                self.best[j] = states[j]
        return results

    def _train(
        self,
        epoch: int,
        recipe: Recipe,
        flux: np.ndarray,
        split: SplitData,
        advance: Callable[[int], None],
        augment: BatchAugmenter,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.stack.train()
        n = split.rows.size
        orders = [torch.randperm(n, generator=g).numpy() for g in self.order]
        # float32 sums on the device (MPS has no float64); a few hundred batches lose nothing.
        loss_sum = torch.zeros(len(self.indices), device=self.device)
        abs_sum = torch.zeros(len(self.indices), split.labels.shape[1], device=self.device)
        for start in range(0, n, recipe.batch_size):
            picks = [order[start : start + recipe.batch_size] for order in orders]
            x = torch.stack(
                [
                    augment(
                        torch.from_numpy(flux[split.rows[p]]).to(self.device),
                        split.rows[p],
                        epoch,
                        g,
                    )
                    for p, g in zip(picks, self.noise, strict=True)
                ]
            )
            y = torch.from_numpy(np.stack([split.labels[p] for p in picks])).to(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            size = x.shape[1]
            for part in range(0, size, recipe.micro_batch):
                xm = x[:, part : part + recipe.micro_batch]
                ym = y[:, part : part + recipe.micro_batch]
                mu, var = self.stack(xm, self.noise)
                losses = gaussian_nll(mu, var, ym, recipe.var_floor)
                # Each micro-batch's share of the batch mean: the summed gradient is the batch's.
                (losses.sum() * (xm.shape[1] / size)).backward()
                loss_sum += losses.detach() * xm.shape[1]
                abs_sum += (mu.detach() - ym).abs().sum(dim=1)
            self.optimizer.step()
            advance(1)
        return (loss_sum / n).cpu().double(), (abs_sum / n).cpu().double()

    @torch.no_grad()
    def _validate(
        self, recipe: Recipe, flux: np.ndarray, split: SplitData
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.stack.eval()
        k = len(self.indices)
        loss_sum = torch.zeros(k, device=self.device)
        abs_sum = torch.zeros(k, split.labels.shape[1], device=self.device)
        n = split.rows.size
        for start in range(0, n, recipe.batch_size):
            stop = start + recipe.batch_size
            x = torch.from_numpy(flux[split.rows[start:stop]]).to(self.device)
            y = torch.from_numpy(split.labels[start:stop]).to(self.device)
            x, y = x.expand(k, *x.shape), y.expand(k, *y.shape)
            mu, var = self.stack(x, self.noise)
            loss_sum += gaussian_nll(mu, var, y, recipe.var_floor) * x.shape[1]
            abs_sum += (mu - y).abs().sum(dim=1)
        return (loss_sum / n).cpu().double(), (abs_sum / n).cpu().double()

    # -- checkpoints ---------------------------------------------------------------------

    def export(self) -> list[dict]:
        """Each member's whole training state, for the checkpoint."""
        params = member_states(self.stack)
        adam = export_optimizer(self.stack, self.optimizer)
        return [
            {
                "index": member,
                "params": params[j],
                "adam": adam[j],
                "order_rng": self.order[j].get_state(),
                "noise_rng": self.noise[j].get_state(),
                "best_loss": self.best_loss[j],
                "best_epoch": self.best_epoch[j],
                "best": self.best[j],
            }
            for j, member in enumerate(self.indices)
        ]

    def restore(self, members: list[dict]) -> None:
        """The inverse of :meth:`export`, for this shard's members (in its order)."""
        load_member_states(self.stack, [m["params"] for m in members])
        import_optimizer(self.stack, self.optimizer, [m["adam"] for m in members])
        for j, m in enumerate(members):
            self.order[j].set_state(m["order_rng"])
            self.noise[j].set_state(m["noise_rng"])
            self.best_loss[j] = float(m["best_loss"])
            self.best_epoch[j] = int(m["best_epoch"])
            self.best[j] = m["best"]
