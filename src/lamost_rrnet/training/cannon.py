"""``train --arch cannon``: fit a quadratic Cannon (Ness et al. 2015) and write a model directory.

The training step is one weighted least-squares per pixel: for pixel p,
(Xᵀ W_p X + λ_p I') θ_p = Xᵀ W_p f_p, with X the quadratic design matrix of the standardized
training labels (:func:`lamost_rrnet.models.cannon.design_matrix`) and W_p = diag(ivar of
pixel p in each spectrum). Pixels with the same weights in every spectrum share their normal
matrix Xᵀ W_p X, so it is built and inverted once per distinct weight column: a dataset
without per-pixel ``/ivar`` has one per arm (each spectrum weighs all pixels of an arm by its
S/N²), and the fit takes seconds. With per-pixel ivar every pixel has its own normal matrix,
built for blocks of pixels as one matrix product of the weights with the rows' outer products
x xᵀ (upper triangle, float64): N·P·T²/2 multiply-adds.

Intrinsic scatter, as the reference implementation ``thecannon`` (Casey et al. 2016) does it:
θ is fitted with the inverse variances alone, then each pixel's s²_p maximizes its Gaussian
likelihood with the adjusted weights ivar/(1 + ivar s²) (the root of the score equation, by
bisection). Ness et al. 2015 fit θ and s² jointly; refitting θ with the adjusted weights
would make every weight column distinct and cost the per-pixel price above for no gain that
the benchmark shows (docs/training.md, "Classical baseline: The Cannon"). The test step uses
s² (:mod:`lamost_rrnet.models.cannon`).

The ridge λ_p = ``ridge`` × the mean weight of pixel p, on every coefficient but the constant,
is a Gaussian prior so weak (1e-3 of one spectrum's weight, against some thousand spectra)
that it changes no fit measurably; it only keeps pixels with few usable spectra solvable.
A pixel without any weight gets θ = 0 and s² = ∞: it carries no weight at test time.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from lamost_rrnet._version import __version__
from lamost_rrnet.calibrate import calibration_from, predict_split
from lamost_rrnet.calibration import describe
from lamost_rrnet.dataset import open_dataset
from lamost_rrnet.ensemble import Ensemble, LabelGroup, Normalization
from lamost_rrnet.errors import DatasetError
from lamost_rrnet.locking import exclusive
from lamost_rrnet.models.cannon import Cannon, design_matrix
from lamost_rrnet.names import GROUPS_SINGLE
from lamost_rrnet.progress import make_progress
from lamost_rrnet.training.groups import GroupSpec, resolve_groups
from lamost_rrnet.training.loop import _prepare_output

logger = logging.getLogger(__name__)

DEFAULT_RIDGE = 1e-3
#: Pixels whose normal matrices are built together: 512 × 171 × 172 / 2 float64 is 60 MB.
_PIXELS = 512
#: Training rows per product: their outer products (rows × 14,706 float64) stay under 100 MB.
_ROWS = 768
_BISECTIONS = 32


@dataclass
class CannonFit:
    """A fitted Cannon: coefficients (P, T) and intrinsic scatter s² (P,), float64."""

    theta: np.ndarray
    scatter2: np.ndarray


def _solve_columns(
    design: np.ndarray, columns: np.ndarray, which: np.ndarray, rhs: np.ndarray, ridge: float
) -> tuple[np.ndarray, np.ndarray]:
    """θ (P, T) of every pixel and whether it has any weight.

    ``columns`` (N, U) are the distinct weight columns, ``which`` (P,) the column of each
    pixel and ``rhs`` (P, T) each pixel's Xᵀ W_p f_p. A column without weight solves to 0.
    """
    n, t = design.shape
    upper = np.triu_indices(t)
    diagonal = np.arange(1, t)
    order = np.argsort(which, kind="stable")
    bounds = np.searchsorted(which[order], np.arange(columns.shape[1] + 1))
    theta = np.zeros_like(rhs)
    for start in range(0, columns.shape[1], _PIXELS):
        cols = slice(start, min(start + _PIXELS, columns.shape[1]))
        normal = np.zeros((cols.stop - cols.start, upper[0].size))
        for first in range(0, n, _ROWS):
            rows = slice(first, min(first + _ROWS, n))
            x = design[rows]
            normal += columns[rows, cols].T @ (x[:, upper[0]] * x[:, upper[1]])
        full = np.empty((normal.shape[0], t, t))
        full[:, upper[0], upper[1]] = normal
        full[:, upper[1], upper[0]] = normal
        total = columns[:, cols].sum(axis=0)
        full[:, diagonal, diagonal] += (ridge * total / n)[:, None]
        full[~(total > 0)] = np.eye(t)  # no weight: its Xᵀ W f is 0, and so is its θ
        counts = np.diff(bounds[cols.start : cols.stop + 1])
        # Thousands of small systems: one BLAS thread each is several times faster than
        # OpenBLAS's threads, which spin on every 171 x 171 solve.
        with threadpool_limits(1, "blas"):
            if (counts == 1).all():  # per-pixel weights: each pixel has its own system
                pixels = order[bounds[cols.start : cols.stop]]
                theta[pixels] = np.linalg.solve(full, rhs[pixels][..., None])[..., 0]
            else:  # pixels that share weights share a system
                for k, u in enumerate(range(cols.start, cols.stop)):
                    pixels = order[bounds[u] : bounds[u + 1]]
                    theta[pixels] = np.linalg.solve(full[k], rhs[pixels].T).T
    return theta, columns.sum(axis=0)[which] > 0


def _fit_scatter(r2: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per pixel (column), the s² ≥ 0 that maximizes Σ ln N(r; 0, 1/w + s²) over the rows.

    The score Σ (r² w'² − w') with w' = w/(1 + w s²) is ≤ 0 at s² = max r², so the root
    lies in (0, max r²] when the score at 0 is positive; bisection in log s² finds it.
    """

    def score(s2: np.ndarray) -> np.ndarray:
        adjusted = w / (1.0 + w * s2)
        return (r2 * adjusted**2 - adjusted).sum(axis=0)

    positive = score(np.zeros(r2.shape[1])) > 0
    hi = np.log(np.maximum(r2.max(axis=0, initial=0.0), 1e-300))
    lo = hi - 40.0
    for _ in range(_BISECTIONS):
        mid = (lo + hi) / 2
        up = score(np.exp(mid)) > 0
        lo, hi = np.where(up, mid, lo), np.where(up, hi, mid)
    return np.where(positive, np.exp((lo + hi) / 2), 0.0)


def fit_cannon(
    flux: np.ndarray, ivar: np.ndarray, labels: np.ndarray, ridge: float = DEFAULT_RIDGE
) -> CannonFit:
    """Fit a quadratic Cannon to normalized ``flux`` (N, P) with inverse variance ``ivar``
    (N, P) and standardized ``labels`` (N, L), all finite labels; see the module docstring.

    Non-finite flux counts as ivar 0.
    """
    flux = np.asarray(flux, np.float32)
    ivar = np.asarray(ivar, np.float32)
    labels = np.asarray(labels, np.float64)
    if flux.shape != ivar.shape or labels.ndim != 2 or labels.shape[0] != flux.shape[0]:
        raise ValueError(
            f"flux {flux.shape}, ivar {ivar.shape} and labels {labels.shape} do not match"
        )
    if not np.isfinite(labels).all():
        raise ValueError("labels must be finite")
    good = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)
    flux = np.where(good, flux, 0.0).astype(np.float32)
    ivar = np.where(good, ivar, 0.0).astype(np.float32)
    design = design_matrix(labels)
    columns, which = np.unique(ivar.T, axis=0, return_inverse=True)
    which = which.reshape(-1)
    rhs = (ivar * flux).T.astype(np.float64) @ design  # (P, T)
    theta, alive = _solve_columns(design, columns.T.astype(np.float64), which, rhs, ridge)
    scatter2 = np.empty(flux.shape[1])
    for start in range(0, flux.shape[1], _PIXELS):
        pixels = slice(start, min(start + _PIXELS, flux.shape[1]))
        r2 = (flux[:, pixels] - design @ theta[pixels].T) ** 2
        scatter2[pixels] = _fit_scatter(r2, ivar[:, pixels].astype(np.float64))
    return CannonFit(theta, np.where(alive, scatter2, np.inf))


def _mae_line(mu: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> str:
    mae = np.nanmean(np.abs(mu - labels), axis=0)
    return ", ".join(f"{n} {m:.4g}" for n, m in zip(names, mae, strict=True))


def _fit_groups(
    specs: Sequence[GroupSpec],
    names: list[str],
    flux: np.ndarray,
    ivar: np.ndarray,
    z: np.ndarray,
    arms: list[int],
    ridge: float,
    dataset_path: Path,
    progress: bool,
) -> tuple[list[LabelGroup], dict[str, dict[str, int]]]:
    """A Cannon per label group, fitted on the rows with all of its labels (``z``, the
    standardized labels of ``names``); returns the groups and the rows each used."""
    label_groups, rows_used = [], {}
    with make_progress(progress) as bar:
        task = bar.add_task("fitting", total=len(specs))
        for spec in specs:
            cols = [names.index(label) for label in spec.labels]
            rows = np.isfinite(z[:, cols]).all(axis=1)
            if not rows.any():
                raise DatasetError(
                    f"{dataset_path}: group {spec.name} has no training row with all of "
                    f"{', '.join(spec.labels)}"
                )
            fit = fit_cannon(flux[rows], ivar[rows], z[np.ix_(rows, cols)], ridge)
            member = Cannon(len(cols), arms=arms).set_fit(fit.theta, fit.scatter2)
            label_groups.append(LabelGroup(spec.name, list(spec.labels), [member]))
            rows_used[spec.name] = {"train": int(rows.sum()), "dropped": int((~rows).sum())}
            bar.advance(task)
    return label_groups, rows_used


def train_cannon(
    dataset_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    groups: str | os.PathLike[str] | Mapping[str, Sequence[str]] = GROUPS_SINGLE,
    *,
    ridge: float = DEFAULT_RIDGE,
    overwrite: bool = False,
    name: str | None = None,
    progress: bool = False,
) -> Ensemble:
    """Fit a quadratic Cannon per label group (by default one of every label) on the
    training split of ``dataset_path`` and save it as the model directory ``out_dir``.

    Training rows with a NaN label of the group or non-finite flux are left out. The flux
    normalization of the model is the identity (the Cannon models normalized flux); the label
    normalization is the training split's mean and std, as for the networks. The fit's time
    and validation MAE are logged at INFO; ``progress`` shows a bar of the groups fitted.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    dataset_path = Path(dataset_path)
    with exclusive(out_dir):
        _prepare_output(out_dir, False, overwrite)
        with open_dataset(dataset_path) as ds:
            specs = resolve_groups(groups, ds.label_names, dataset_path)
            names = list(dict.fromkeys(label for g in specs for label in g.labels))
            train = ds.indices("train")
            ds.indices("valid")  # a dataset without a validation split fails before the fit
            flux, ivar = ds.flux(train), ds.ivar(train)
            labels = ds.labels(train, names).astype(np.float64)
            preprocessing = ds.preprocessing
        usable = np.isfinite(flux).any(axis=1)
        known = np.where(usable[:, None], labels, np.nan)
        for j, label in enumerate(names):
            if not np.isfinite(known[:, j]).any():
                raise DatasetError(f"{dataset_path}: label {label} is NaN in every training row")
        label_mean = np.nanmean(known, axis=0)
        label_std = np.nanstd(known, axis=0)
        label_std[~(label_std > 0)] = 1.0
        z = (known - label_mean) / label_std
        fit_start = time.perf_counter()
        arms = [grid.size for grid in preprocessing.grids()]
        label_groups, rows_used = _fit_groups(
            specs, names, flux, ivar, z, arms, ridge, dataset_path, progress
        )
        fit_seconds = time.perf_counter() - fit_start
        n_pixels = preprocessing.n_pixels
        normalization = Normalization(
            np.zeros(n_pixels), np.ones(n_pixels), names, label_mean, label_std
        )
        ranges = {
            n: (float(np.nanmin(known[:, j])), float(np.nanmax(known[:, j])))
            for j, n in enumerate(names)
        }
        provenance = {
            "dataset": str(dataset_path.resolve()),
            "trained_with": f"lamost-rrnet {__version__}, numpy {np.__version__}",
            "method": "quadratic Cannon (Ness et al. 2015), weighted by per-pixel ivar",
            "ridge": ridge,
            "rows": rows_used,
            "fit_seconds": round(fit_seconds, 2),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        ensemble = Ensemble(
            name or out_dir.resolve().name,
            "1",
            {"name": "cannon", "kwargs": {"arms": arms}},
            label_groups,
            normalization,
            preprocessing,
            ranges,
            provenance,
        )
        # One labelling of the validation split gives its MAE and the σ scales: the label-fit
        # covariance alone is too narrow (it knows no model error), so σ is calibrated there,
        # as for the networks (docs/training.md, "Calibration").
        valid = predict_split(ensemble, dataset_path, "valid")
        mae = _mae_line(valid.mu, valid.true, valid.labels)
        logger.info(f"fitted in {fit_seconds:.1f} s; validation MAE: {mae}")
        ensemble = ensemble.with_calibration(calibration_from(ensemble, valid))
        logger.info(describe(ensemble.calibration, ensemble.labels))
        ensemble.save(out_dir)
        logger.info(f"model written to {out_dir} ({time.perf_counter() - started:.1f} s in all)")
        return ensemble
