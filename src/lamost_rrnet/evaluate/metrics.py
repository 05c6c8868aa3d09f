"""Accuracy and calibration metrics on plain arrays (docs/architecture.md, "Evaluation metrics").

Every function here takes arrays with the batch dimension first, one column per label, and
returns numbers or a pandas table: nothing reads files or runs models.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

#: The long layout of ``metrics.csv``, in this order.
METRIC_COLUMNS = (
    "model",
    "label",
    "split",
    "snr_bin",
    "n",
    "mae",
    "bias",
    "scatter",
    "mean_sigma",
    "z_mean",
    "z_std",
    "frac_1sigma",
    "frac_2sigma",
    "z_std_raw",
    "frac_1sigma_raw",
)
#: Computed with the model's uncalibrated σ: calibration before (these) and after (z_std,
#: frac_1sigma). NaN where there is no raw σ (a catalogue).
RAW_METRICS = {"z_std_raw": "z_std", "frac_1sigma_raw": "frac_1sigma"}

#: S/N bins (name, lower edge inclusive, upper edge exclusive); "all" holds every spectrum,
#: including those below S/N 10, which fall in no bin.
SNR_BINS: tuple[tuple[str, float, float], ...] = (
    ("10-20", 10.0, 20.0),
    ("20-40", 20.0, 40.0),
    ("40-60", 40.0, 60.0),
    ("60+", 60.0, np.inf),
)
SNR_BIN_NAMES = ("all", *(name for name, _, _ in SNR_BINS))


def spectrum_snr(snr_blue: np.ndarray, snr_red: np.ndarray) -> np.ndarray:
    """The S/N the metrics are binned by: min(snr_blue, snr_red) (NaN where either is NaN)."""
    return np.minimum(np.asarray(snr_blue, np.float64), np.asarray(snr_red, np.float64))


def snr_bin_masks(snr: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks for ``all`` and each S/N bin; edges are [lo, hi)."""
    snr = np.asarray(snr, np.float64)
    masks = {"all": np.ones(snr.shape, bool)}
    with np.errstate(invalid="ignore"):
        for name, lo, hi in SNR_BINS:
            masks[name] = (snr >= lo) & (snr < hi)
    return masks


def label_metrics(pred: np.ndarray, sigma: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """The metrics of one label on 1-D arrays: rows where pred or true is not finite are dropped.

    z statistics use only rows whose σ is finite and positive (a catalogue may lack errors).
    """
    pred = np.asarray(pred, np.float64)
    true = np.asarray(true, np.float64)
    sigma = np.asarray(sigma, np.float64)
    ok = np.isfinite(pred) & np.isfinite(true)
    residual = pred[ok] - true[ok]
    sig = sigma[ok]
    out = {"n": int(residual.size)}
    nan = float("nan")
    if residual.size == 0:
        out.update(dict.fromkeys(METRIC_COLUMNS[5 : -len(RAW_METRICS)], nan))
        return out
    out["mae"] = float(np.mean(np.abs(residual)))
    out["bias"] = float(np.mean(residual))
    out["scatter"] = float(np.std(residual))
    with_sigma = np.isfinite(sig) & (sig > 0)
    out["mean_sigma"] = float(np.mean(sig[with_sigma])) if with_sigma.any() else nan
    if with_sigma.any():
        z = residual[with_sigma] / sig[with_sigma]
        out["z_mean"] = float(np.mean(z))
        out["z_std"] = float(np.std(z))
        out["frac_1sigma"] = float(np.mean(np.abs(z) <= 1.0))
        out["frac_2sigma"] = float(np.mean(np.abs(z) <= 2.0))
    else:
        out.update({k: nan for k in ("z_mean", "z_std", "frac_1sigma", "frac_2sigma")})
    return out


def compute_metrics(
    pred: np.ndarray,
    sigma: np.ndarray,
    true: np.ndarray,
    snr: np.ndarray,
    labels: Sequence[str],
    *,
    model: str,
    split: str,
    raw_sigma: np.ndarray | None = None,
) -> pd.DataFrame:
    """The long metrics table of one model: a row per (label, S/N bin), in SNR_BIN_NAMES order.

    ``pred``, ``sigma`` and ``true`` are (N, L) in physical units, ``snr`` is (N,) (see
    :func:`spectrum_snr`). ``raw_sigma`` (N, L), the uncalibrated σ, gives the
    :data:`RAW_METRICS`. A bin with no spectra has n = 0 and NaN metrics.
    """
    pred, sigma, true = (np.atleast_2d(np.asarray(a, np.float64)) for a in (pred, sigma, true))
    if not (pred.shape == sigma.shape == true.shape and pred.shape[1] == len(labels)):
        raise ValueError(
            f"pred {pred.shape}, sigma {sigma.shape} and true {true.shape} must all be "
            f"(N, {len(labels)})"
        )
    raw = np.full_like(sigma, np.nan) if raw_sigma is None else np.asarray(raw_sigma, np.float64)
    if raw.shape != sigma.shape:
        raise ValueError(f"raw_sigma {raw.shape} must be shaped like sigma {sigma.shape}")
    masks = snr_bin_masks(snr)
    rows = []
    for j, label in enumerate(labels):
        for bin_name in SNR_BIN_NAMES:
            m = masks[bin_name]
            stats = label_metrics(pred[m, j], sigma[m, j], true[m, j])
            before = label_metrics(pred[m, j], raw[m, j], true[m, j])
            stats.update({name: before[kind] for name, kind in RAW_METRICS.items()})
            rows.append(
                {"model": model, "label": label, "split": split, "snr_bin": bin_name, **stats}
            )
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS))


def z_scores(pred: np.ndarray, sigma: np.ndarray, true: np.ndarray) -> np.ndarray:
    """z = (pred − true)/σ_pred, NaN where any input is missing or σ is not positive."""
    pred, sigma, true = (np.asarray(a, np.float64) for a in (pred, sigma, true))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (pred - true) / sigma
    z[~(np.isfinite(z) & (sigma > 0))] = np.nan
    return z


def coverage_curve(z: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Observed coverage of central Gaussian intervals: for each expected probability p,
    the fraction of finite z with |z| ≤ Φ⁻¹((1 + p)/2). NaN when no z is finite."""
    from scipy.special import ndtri

    z = np.asarray(z, np.float64)
    z = np.abs(z[np.isfinite(z)])
    half_width = ndtri((1.0 + np.asarray(levels, np.float64)) / 2.0)
    if z.size == 0:
        return np.full(half_width.shape, np.nan)
    return np.mean(z[:, None] <= half_width[None, :], axis=0)


def repeat_scatter(
    pred: np.ndarray,
    star_id: np.ndarray,
    snr: np.ndarray,
    labels: Sequence[str],
    min_spectra: int = 3,
) -> pd.DataFrame:
    """σ_obs: the scatter of one star's predictions over its spectra, averaged per S/N bin.

    Only stars with at least ``min_spectra`` spectra count. A star's σ_obs is the sample
    standard deviation (ddof 1) of its predictions; the star goes into the S/N bin of the
    median S/N of its spectra. Columns: label, snr_bin, n_stars, sigma_obs.
    """
    pred = np.atleast_2d(np.asarray(pred, np.float64))
    star_id = np.asarray(star_id).astype(str)
    frame = pd.DataFrame(pred, columns=list(labels))
    frame["_star"] = star_id
    frame["_snr"] = np.asarray(snr, np.float64)
    counts = frame.groupby("_star")["_snr"].transform("size")
    repeated = frame[counts >= min_spectra]
    grouped = repeated.groupby("_star")
    star_snr = grouped["_snr"].median()
    star_std = grouped[list(labels)].std(ddof=1)
    masks = snr_bin_masks(star_snr.to_numpy())
    rows = []
    for label in labels:
        for bin_name in SNR_BIN_NAMES:
            values = star_std[label].to_numpy()[masks[bin_name]]
            values = values[np.isfinite(values)]
            rows.append(
                {
                    "label": label,
                    "snr_bin": bin_name,
                    "n_stars": int(values.size),
                    "sigma_obs": float(values.mean()) if values.size else float("nan"),
                }
            )
    return pd.DataFrame(rows, columns=["label", "snr_bin", "n_stars", "sigma_obs"])
