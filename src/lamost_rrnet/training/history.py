"""What a training run logs: ``history.csv``, the loss-curve PNG and optional TensorBoard.

``history.csv`` has one row per (group, member, epoch) with the learning rate, the epoch's
wall time, the training loss (mean over the epoch's batches, with dropout and noise as
trained), the validation loss, and the MAE of every label of the group in physical units on
both splits (``train_mae_<label>``, ``valid_mae_<label>``; empty for other groups' labels).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lamost_rrnet.atomic import atomic_path, atomic_write_bytes

HISTORY_FILE = "history.csv"
LOSS_CURVE_FILE = "loss_curve.png"
TENSORBOARD_DIR = "tensorboard"
BASE_COLUMNS = ("group", "member", "epoch", "lr", "seconds", "train_loss", "valid_loss", "best")


def history_columns(labels: Sequence[str]) -> list[str]:
    return [
        *BASE_COLUMNS,
        *(f"train_mae_{label}" for label in labels),
        *(f"valid_mae_{label}" for label in labels),
    ]


def write_history(
    path: str | os.PathLike[str], rows: Sequence[dict], labels: Sequence[str]
) -> None:
    """Write ``history.csv`` atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, history_columns(labels), restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


def plot_loss_curves(path: str | os.PathLike[str], rows: Sequence[dict]) -> None:
    """Training and validation loss per epoch, mean ± 1σ over each group's members (the
    paper's Fig. 10), one panel per group; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = list(dict.fromkeys(r["group"] for r in rows))
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        mine = [r for r in rows if r["group"] == group]
        epochs = np.array(sorted({r["epoch"] for r in mine}))
        for key, colour, label in (
            ("train_loss", "C0", "training"),
            ("valid_loss", "C1", "validation"),
        ):
            values = np.array(
                [[r[key] for r in mine if r["epoch"] == e] for e in epochs], dtype=float
            )
            mean, std = values.mean(axis=1), values.std(axis=1)
            ax.plot(epochs, mean, color=colour, label=label, marker="o", ms=3)
            ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.25, lw=0)
        n = len({r["member"] for r in mine})
        ax.set_title(f"{group} ({n} member{'s' if n > 1 else ''}, mean ± 1σ)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("Gaussian NLL")
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


class TensorBoardLog:
    """Scalars to TensorBoard when it is installed; nothing at all otherwise."""

    def __init__(self, log_dir: str | os.PathLike[str]):
        self.writer = _summary_writer(Path(log_dir))

    def log(self, rows: Sequence[dict]) -> None:
        if self.writer is None:
            return
        for r in rows:
            tag = f"{r['group']}/member{r['member']}"
            for key, value in r.items():
                if key not in ("group", "member", "epoch", "best") and value != "":
                    self.writer.add_scalar(f"{tag}/{key}", float(value), int(r["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _summary_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: pip install lamost-rrnet[tensorboard]
        return None
    return SummaryWriter(log_dir=str(log_dir))
