"""``lamost-rrnet calibrate``: fit a model's σ scales on a labelled split of a prepared dataset.

The scales and what a model does with them are :mod:`lamost_rrnet.calibration`'s; here the
model is run over the dataset's spectra and the scales fitted on what it predicts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from lamost_rrnet.calibration import Calibrated, Calibration, fit_scales_with_counts

if TYPE_CHECKING:
    from lamost_rrnet.dataset import Dataset

_Model = TypeVar("_Model", bound=Calibrated)


@dataclass(frozen=True)
class SplitPredictions:
    """A model's uncalibrated predictions on one split of a dataset, with the true labels:
    (spectra, labels) arrays over the ``labels`` the model and the dataset share."""

    labels: list[str]
    mu: np.ndarray
    sigma: np.ndarray
    true: np.ndarray
    split: str
    dataset: str  # the dataset's resolved path


def predict_split(
    model: Calibrated,
    dataset: str | os.PathLike[str] | Dataset,
    split: str = "valid",
    batch_size: int = 256,
) -> SplitPredictions:
    """``model`` run over ``split`` of a prepared dataset with its raw σ
    (``predict(flux, batch_size=, raw_sigma=True)``).

    Raises :class:`DatasetError` for an empty split, a dataset made with other
    preprocessing, or no label in common.
    """
    from lamost_rrnet.dataset import Dataset, open_dataset
    from lamost_rrnet.errors import DatasetError
    from lamost_rrnet.evaluate.runner import check_compatible

    if not isinstance(dataset, Dataset):
        with open_dataset(dataset) as ds:
            return predict_split(model, ds, split, batch_size)
    ds = dataset
    check_compatible(ds, model, getattr(model, "name", "the model"))
    common = [label for label in model.labels if label in ds.label_names]
    if not common:
        raise DatasetError(
            f"{ds.path}: none of its labels ({', '.join(ds.label_names)}) is predicted by the "
            f"model ({', '.join(model.labels)}): nothing to calibrate"
        )
    indices = ds.indices(split)
    columns = [model.labels.index(label) for label in common]
    mu = np.empty((indices.size, len(common)))
    sigma = np.empty_like(mu)
    done = 0
    for batch, flux, _ in ds.iter_batches(indices, batch_size):
        m, s = model.predict(flux, batch_size=batch_size, raw_sigma=True)
        mu[done : done + batch.size] = m[:, columns]
        sigma[done : done + batch.size] = s[:, columns]
        done += batch.size
    true = ds.labels(indices, common).astype(np.float64)
    return SplitPredictions(common, mu, sigma, true, split, str(Path(ds.path).resolve()))


def calibration_from(model: Calibrated, predictions: SplitPredictions) -> Calibration:
    """The scales of ``model`` fitted on its ``predictions``; labels without predictions keep
    the scale 1 (``n`` 0)."""
    scales, counts = fit_scales_with_counts(predictions.mu, predictions.sigma, predictions.true)
    fitted = dict(zip(predictions.labels, scales.tolist(), strict=True))
    used = dict(zip(predictions.labels, counts, strict=True))
    return Calibration(
        {label: fitted.get(label, 1.0) for label in model.labels},
        predictions.split,
        int(predictions.mu.shape[0]),
        predictions.dataset,
        {label: used.get(label, 0) for label in model.labels},
    )


def fit_calibration(
    model: Calibrated,
    dataset: str | os.PathLike[str] | Dataset,
    split: str = "valid",
    batch_size: int = 256,
) -> Calibration:
    """The scales of ``model`` fitted on one split of a prepared dataset.

    ``model`` predicts its uncalibrated σ (a calibrated model is calibrated afresh, not on
    top of its old scales). Labels the dataset lacks keep the scale 1 (``n`` 0). Raises
    :class:`DatasetError` for an empty split, a dataset made with other preprocessing, or no
    label in common.
    """
    return calibration_from(model, predict_split(model, dataset, split, batch_size))


def calibrate(
    model: _Model,
    dataset: str | os.PathLike[str] | Dataset,
    split: str = "valid",
    batch_size: int = 256,
) -> _Model:
    """A copy of ``model`` carrying scales fitted on ``split`` of ``dataset``, with the
    calibrated version (see :func:`fit_calibration`)."""
    return model.with_calibration(fit_calibration(model, dataset, split, batch_size))


def calibrate_model(
    model: str | os.PathLike[str],
    dataset: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    split: str = "valid",
    batch_size: int = 256,
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = False,
):
    """Calibrate a model (registry name, model directory or published layout) on ``split`` of
    ``dataset`` and write it as the model directory ``output``; returns the calibrated model.

    ``output`` is written atomically: it appears complete or not at all. An existing
    ``output`` raises :class:`OutputExistsError` unless ``overwrite``; it may be the model's
    own directory, which is read whole before it is replaced. ``progress`` shows a bar while
    a registered model downloads.
    """
    from lamost_rrnet.atomic import atomic_directory
    from lamost_rrnet.errors import OutputExistsError
    from lamost_rrnet.locking import exclusive
    from lamost_rrnet.model_resolution import load_model

    output = Path(output)
    with exclusive(output):
        if (output.exists() or output.is_symlink()) and not overwrite:
            raise OutputExistsError(f"{output}: already exists: use --overwrite to replace it")
        calibrated = calibrate(
            load_model(os.fspath(model), device=device, progress=progress),
            dataset,
            split,
            batch_size,
        )
        with atomic_directory(output) as tmp:
            calibrated.save(tmp)
    return calibrated
