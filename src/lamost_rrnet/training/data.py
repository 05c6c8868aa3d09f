"""The training and validation data in memory: z-scored flux and each group's z-scored labels.

The normalization (per-pixel flux mean/std, per-label mean/std) comes from the training split
only. Training does not clip the flux (docs/preprocessing.md step 5: the clip is for inference).
Flux is read in blocks, so the only large allocation is the z-scored float32 array itself
(28.8 kB per spectrum: 2.3 GB for the paper's 80,000 training spectra).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lamost_rrnet.dataset import open_dataset
from lamost_rrnet.ensemble import Normalization
from lamost_rrnet.errors import DatasetError
from lamost_rrnet.spectra.preprocess import PreprocessSpec
from lamost_rrnet.training.augment import PixelNoise, low_snr, pixel_sigma
from lamost_rrnet.training.groups import GroupSpec

_BLOCK = 2048  # rows per read: 59 MB of flux


@dataclass
class SplitData:
    """One split's rows for one group: indices into the split's flux and z-scored labels."""

    rows: np.ndarray  # int64 (n,), rows of TrainingData.flux[split]
    labels: np.ndarray  # float32 (n, L), z-scored
    dropped: int  # rows left out because a label of the group is NaN


@dataclass
class TrainingData:
    """Everything the loop needs from the dataset."""

    path: Path
    flux: dict[str, np.ndarray]  # split → float32 (n_split, n_pixels), z-scored
    groups: dict[str, dict[str, SplitData]]  # group name → split → its rows
    normalization: Normalization
    preprocessing: PreprocessSpec
    label_ranges: dict[str, tuple[float, float]]
    n_rows: dict[str, int]
    noise: PixelNoise | None = None  # the training rows' per-pixel noise, when asked for


def _read_flux(ds, idx: np.ndarray) -> np.ndarray:
    out = np.empty((idx.size, ds.preprocessing.n_pixels), np.float32)
    for start in range(0, idx.size, _BLOCK):
        out[start : start + _BLOCK] = ds.flux(idx[start : start + _BLOCK])
    return out


def _pixel_stats(flux: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and std (ddof 0) in float64, accumulated in blocks."""
    total = np.zeros(flux.shape[1])
    for start in range(0, flux.shape[0], _BLOCK):
        total += flux[start : start + _BLOCK].sum(axis=0, dtype=np.float64)
    mean = total / flux.shape[0]
    squares = np.zeros(flux.shape[1])
    for start in range(0, flux.shape[0], _BLOCK):
        squares += ((flux[start : start + _BLOCK] - mean) ** 2).sum(axis=0)
    std = np.sqrt(squares / flux.shape[0])
    # A constant pixel carries no information; a std of 1 keeps it finite and zero.
    std[~(std > 0)] = 1.0
    return mean, std


def _read_noise(ds, idx: np.ndarray, flux_std: np.ndarray) -> PixelNoise:
    """The training rows' σ and S/N from the dataset's ivar, in blocks (float64 is big)."""
    sigma = np.empty((idx.size, ds.preprocessing.n_pixels), np.float16)
    snr = np.empty(idx.size, np.float32)
    for start in range(0, idx.size, _BLOCK):
        block = slice(start, start + _BLOCK)
        sigma[block], snr[block] = pixel_sigma(ds.ivar(idx[block]), flux_std)
    return PixelNoise(sigma, snr, low_snr(snr))


def load_training_data(
    path: str | os.PathLike[str],
    groups: Sequence[GroupSpec],
    batch_size: int,
    with_noise: bool = False,
) -> TrainingData:
    """Read the train and valid splits, normalize them and split them into the groups' rows.

    ``with_noise`` also reads the training rows' per-pixel noise (their ``/ivar``, or each
    arm's S/N for a dataset without it), for :class:`~.augment.BatchAugmenter`.

    Raises :class:`DatasetError` for a missing split, a missing or all-NaN label, a group
    without usable rows, and a batch larger than a group's training rows.
    """
    path = Path(path)
    names = list(dict.fromkeys(label for g in groups for label in g.labels))
    with open_dataset(path) as ds:
        idx = {split: ds.indices(split) for split in ("train", "valid")}
        labels = {split: ds.labels(i, names).astype(np.float64) for split, i in idx.items()}
        flux = {split: _read_flux(ds, i) for split, i in idx.items()}
        preprocessing = ds.preprocessing
        bad_flux = {split: ~np.isfinite(f).all(axis=1) for split, f in flux.items()}
        train_ok = ~bad_flux["train"]
        if not train_ok.any():
            raise DatasetError(f"{path}: every training spectrum has non-finite flux")

        for j, name in enumerate(names):
            if not np.isfinite(labels["train"][train_ok, j]).any():
                raise DatasetError(f"{path}: label {name} is NaN in every training row")
        # Indexing copies: skip it when every row is usable.
        usable = flux["train"] if train_ok.all() else flux["train"][train_ok]
        flux_mean, flux_std = _pixel_stats(usable)
        noise = _read_noise(ds, idx["train"], flux_std) if with_noise else None
    train_labels = np.where(train_ok[:, None], labels["train"], np.nan)
    label_mean = np.nanmean(train_labels, axis=0)
    label_std = np.nanstd(train_labels, axis=0)
    label_std[~(label_std > 0)] = 1.0
    label_ranges = {
        n: (float(np.nanmin(train_labels[:, j])), float(np.nanmax(train_labels[:, j])))
        for j, n in enumerate(names)
    }
    for f in flux.values():
        # z-score in place, in float32 like the published training and our inference.
        f -= flux_mean.astype(np.float32)
        f /= flux_std.astype(np.float32)

    group_data: dict[str, dict[str, SplitData]] = {}
    for group in groups:
        cols = [names.index(label) for label in group.labels]
        per_split = {}
        for split in ("train", "valid"):
            values = labels[split][:, cols]
            ok = np.isfinite(values).all(axis=1) & ~bad_flux[split]
            if not ok.any():
                raise DatasetError(
                    f"{path}: group {group.name} has no {split} row with all of "
                    f"{', '.join(group.labels)}"
                )
            z = (values[ok] - label_mean[cols]) / label_std[cols]
            per_split[split] = SplitData(
                np.flatnonzero(ok), z.astype(np.float32), int(ok.size - ok.sum())
            )
        n_train = per_split["train"].rows.size
        if batch_size > n_train:
            raise DatasetError(
                f"{path}: batch size {batch_size} is larger than the {n_train} training rows "
                f"of group {group.name}"
            )
        group_data[group.name] = per_split

    normalization = Normalization(flux_mean, flux_std, names, label_mean, label_std)
    return TrainingData(
        path,
        flux,
        group_data,
        normalization,
        preprocessing,
        label_ranges,
        {split: int(i.size) for split, i in idx.items()},
        noise,
    )
