"""The report's figures (PNG), drawn from plain arrays.

Figures are built on :class:`matplotlib.figure.Figure`, which renders with Agg without pyplot,
so a library call never switches the backend of a user's interactive session.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from lamost_rrnet.atomic import atomic_path
from lamost_rrnet.evaluate.metrics import SNR_BINS, coverage_curve, label_metrics
from lamost_rrnet.labels import pretty, unit

DPI = 80
NCOLS = 4
#: Scatter plots draw at most this many spectra (a seeded random subset): beyond it the
#: picture does not change, but the drawing time and the PNG size grow.
MAX_POINTS = 20_000
#: Above this many spectra, the Kiel and one-to-one panels are hexagonal bins, not points.
HEXBIN_ABOVE = 2_000


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


def _grid(fig, n: int, ncols: int = NCOLS) -> list:
    ncols = min(ncols, max(n, 1))
    nrows = -(-n // ncols)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]
    return axes


def _grid_figure(n: int, panel_w: float = 3.0, panel_h: float = 2.4, ncols: int = NCOLS):
    ncols = min(ncols, max(n, 1))
    nrows = -(-n // ncols)
    fig = _figure(panel_w * ncols, panel_h * nrows + 0.4)
    return fig, _grid(fig, n, ncols)


def shown(n: int, max_points: int = MAX_POINTS) -> np.ndarray:
    """Boolean mask of the rows a scatter plot draws: all, or a seeded subset of max_points."""
    mask = np.zeros(n, bool)
    if n <= max_points:
        mask[:] = True
    else:
        mask[np.random.default_rng(0).choice(n, max_points, replace=False)] = True
    return mask


def fmt(label: str, value: float) -> str:
    """A label's value at the precision the report uses: 0.1 K for Teff, 0.001 dex otherwise."""
    if not np.isfinite(value):
        return "–"
    return f"{value:.1f}" if unit(label) == "K" else f"{value:.3f}"


def short_name(label: str) -> str:
    """The paper's name without the unit, for titles and legends."""
    return pretty(label).rsplit(" (", 1)[0]


def plot_residuals(
    path: str | os.PathLike[str],
    pred: np.ndarray,
    sigma: np.ndarray,
    true: np.ndarray,
    labels: Sequence[str],
    title: str = "",
) -> None:
    """Residual (pred − true) histograms per label, with μ_r, σ_r and the mean σ (paper Fig. 2)."""
    fig, axes = _grid_figure(len(labels))
    for j, (ax, label) in enumerate(zip(axes, labels, strict=True)):
        ok = np.isfinite(pred[:, j]) & np.isfinite(true[:, j])
        residual = pred[ok, j] - true[ok, j]
        stats = label_metrics(pred[:, j], sigma[:, j], true[:, j])
        if residual.size:
            lo, hi = np.percentile(residual, [0.5, 99.5])
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            ax.hist(
                residual,
                bins=40,
                range=(lo, hi),
                histtype="stepfilled",
                color="tab:blue",
                alpha=0.75,
            )
        ax.axvline(0.0, color="0.3", lw=0.8, ls="--")
        legend = (
            f"μ_r = {fmt(label, stats['bias'])}\n"
            f"σ_r = {fmt(label, stats['scatter'])}\n"
            f"mean σ = {fmt(label, stats['mean_sigma'])}"
        )
        # Headroom above the bars keeps the legend off the histogram.
        ax.set_ylim(top=ax.get_ylim()[1] * 1.45)
        ax.text(
            0.03,
            0.96,
            legend,
            transform=ax.transAxes,
            va="top",
            fontsize=8,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
        )
        ax.set_xlabel(f"Δ {pretty(label)}")
        ax.set_ylabel("spectra")
    fig.suptitle(title or "residuals (predicted − true)")
    _save(fig, path)


def plot_sigma_vs_snr(
    path: str | os.PathLike[str],
    sigma: np.ndarray,
    snr: np.ndarray,
    labels: Sequence[str],
    sigma_obs: pd.DataFrame | None = None,
    title: str = "",
) -> None:
    """Predicted σ against S/N per label (paper Fig. 7): the spectra, the mean per S/N bin, and
    the repeat-observation scatter σ_obs as bars where stars have several spectra."""
    fig, axes = _grid_figure(len(labels))
    snr = np.asarray(snr, np.float64)
    centers = [np.sqrt(lo * hi) if np.isfinite(hi) else lo * 1.5 for _, lo, hi in SNR_BINS]
    widths = [(hi if np.isfinite(hi) else lo * 2) - lo for _, lo, hi in SNR_BINS]
    drawn = shown(snr.size)
    for j, (ax, label) in enumerate(zip(axes, labels, strict=True)):
        ok = np.isfinite(sigma[:, j]) & np.isfinite(snr) & (snr > 0)
        d = ok & drawn
        ax.scatter(snr[d], sigma[d, j], s=2, color="0.6", alpha=0.4, rasterized=True)
        means = []
        for _, lo, hi in SNR_BINS:
            m = ok & (snr >= lo) & (snr < hi)
            means.append(np.mean(sigma[m, j]) if m.any() else np.nan)
        ax.plot(centers, means, "o-", color="tab:blue", label="mean predicted σ")
        if sigma_obs is not None:
            rows = sigma_obs[sigma_obs["label"] == label].set_index("snr_bin")
            heights = [
                rows.loc[name, "sigma_obs"] if name in rows.index else np.nan
                for name, _, _ in SNR_BINS
            ]
            if np.isfinite(heights).any():
                lefts = [lo for _, lo, _ in SNR_BINS]
                ax.bar(
                    lefts,
                    heights,
                    width=widths,
                    align="edge",
                    color="tab:orange",
                    alpha=0.35,
                    zorder=0,
                    label="σ_obs (≥ 3 spectra)",
                )
        ax.set_xscale("log")
        log_ticks(ax.xaxis)
        ax.set_xlabel("S/N = min(blue, red)")
        ax.set_ylabel(f"σ {pretty(label)}")
    if axes:
        axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(title or "predicted uncertainty against S/N")
    _save(fig, path)


#: Tick values per decade of a log axis, densest first: the first choice that gives at most
#: MAX_LOG_TICKS ticks is taken.
LOG_TICK_STEPS = ((1, 2, 5), (1, 3), (1,))
MAX_LOG_TICKS = 5


def log_ticks(axis) -> None:
    """Plain-number major ticks (10, 20, 50, ...) on a log axis, and no minor tick labels.

    Matplotlib labels the minor ticks of a log axis that spans less than about two decades
    (2×10¹, 3×10¹, 4×10¹, ...): in a panel a few inches wide they print over each other.
    """
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter

    lo, hi = sorted(axis.get_view_interval())
    decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    for steps in LOG_TICK_STEPS:
        ticks = [m * 10.0**e for e in decades for m in steps if lo <= m * 10.0**e <= hi]
        if len(ticks) <= MAX_LOG_TICKS:
            break
    if len(ticks) < 2:
        # Less than a decade without two 1-2-5 values in it: label its ends instead.
        ticks = [lo, hi]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FixedFormatter([f"{t:.3g}" for t in ticks]))
    axis.set_minor_formatter(NullFormatter())


def quantile_bins(values: np.ndarray, n_bins: int = 5) -> np.ndarray:
    """Edges of ``n_bins`` equal-count bins of the finite values (fewer where values repeat)."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.array([])
    return np.unique(np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1)))


def plot_z_by_bins(
    path: str | os.PathLike[str],
    z: np.ndarray,
    by: np.ndarray,
    by_label: str,
    labels: Sequence[str],
    title: str = "",
    n_bins: int = 5,
) -> None:
    """Distributions of z per label in equal-count bins of ``by`` (true Teff, log g or [Fe/H]).

    Boxes span the 16th-84th percentiles (±1 for a calibrated model), whiskers the 2.5th-97.5th.
    """
    edges = quantile_bins(by, n_bins)
    fig, axes = _grid_figure(len(labels))
    edge = "{:.0f}" if unit(by_label) == "K" else "{:.2f}"
    names = [
        f"{edge.format(lo)}–{edge.format(hi)}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    ]
    for j, (ax, label) in enumerate(zip(axes, labels, strict=True)):
        stats = []
        for k in range(len(edges) - 1):
            last = k == len(edges) - 2
            m = (by >= edges[k]) & ((by <= edges[k + 1]) if last else (by < edges[k + 1]))
            v = z[m, j]
            v = v[np.isfinite(v)]
            if v.size:
                q = np.percentile(v, [2.5, 16, 50, 84, 97.5])
                stats.append(
                    {"whislo": q[0], "q1": q[1], "med": q[2], "q3": q[3], "whishi": q[4]}
                    | {"label": names[k], "fliers": []}
                )
        if stats:
            ax.bxp(stats, showfliers=False)
        for level in (-1.0, 1.0):
            ax.axhline(level, color="tab:red", lw=0.7, ls="--")
        ax.axhline(0.0, color="0.3", lw=0.7)
        ax.set_title(short_name(label), fontsize=9)
        ax.set_ylabel("z")
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.set_xlabel(f"true {pretty(by_label)}", fontsize=8)
    fig.suptitle(title or f"z = (pred − true)/σ in bins of {short_name(by_label)}")
    _save(fig, path)


def plot_coverage(
    path: str | os.PathLike[str], z: np.ndarray, labels: Sequence[str], title: str = ""
) -> None:
    """Observed against expected coverage of the Gaussian intervals, one line per label."""
    levels = np.linspace(0.0, 1.0, 41)[1:-1]
    fig = _figure(7.5, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.3", ls="--", lw=0.8, label="calibrated")
    colors = _label_colors(len(labels))
    for j, label in enumerate(labels):
        ax.plot(
            levels, coverage_curve(z[:, j], levels), color=colors[j], lw=1, label=short_name(label)
        )
    ax.set_xlabel("expected coverage (Gaussian interval)")
    ax.set_ylabel("observed coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set_title(title or "calibration curve")
    _save(fig, path)


def _label_colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def plot_mae_comparison(
    path: str | os.PathLike[str], metrics: pd.DataFrame, labels: Sequence[str]
) -> None:
    """MAE of every model per label, S/N bin "all" (paper Fig. 3): Teff on its own axis (K),
    the dex labels side by side."""
    table = metrics[metrics["snr_bin"] == "all"].pivot_table(
        index="label", columns="model", values="mae", sort=False
    )
    models = list(dict.fromkeys(metrics["model"]))
    kelvin = [lb for lb in labels if unit(lb) == "K"]
    dex = [lb for lb in labels if unit(lb) != "K"]
    groups = [g for g in (kelvin, dex) if g]
    # At least 0.6 inch per label, or with one model the slanted names run into each other.
    fig = _figure(2.0 + len(labels) * max(0.6, 0.225 * len(models)), 4.0)
    spec = fig.add_gridspec(1, len(groups), width_ratios=[max(1, len(g)) for g in groups])
    width = 0.8 / max(1, len(models))
    for g, group in enumerate(groups):
        ax = fig.add_subplot(spec[0, g])
        x = np.arange(len(group))
        for k, model in enumerate(models):
            values = [table.loc[lb, model] if lb in table.index else np.nan for lb in group]
            ax.bar(x + (k - (len(models) - 1) / 2) * width, values, width, label=model)
        ax.set_xticks(x, [short_name(lb) for lb in group], rotation=45 if len(group) > 3 else 0)
        ax.set_ylabel("MAE (K)" if group is kelvin else "MAE (dex)")
        if g == len(groups) - 1:
            ax.legend(fontsize=8)
    fig.suptitle("model comparison: mean absolute error")
    _save(fig, path)


def plot_kiel(
    path: str | os.PathLike[str],
    pred: np.ndarray,
    true: np.ndarray,
    labels: Sequence[str],
    title: str = "",
) -> None:
    """Kiel diagrams (Teff vs log g coloured by [Fe/H]) of the true and the predicted labels
    (paper Fig. 5), and true-vs-predicted one-to-one panels of Teff, log g and [Fe/H].

    Above HEXBIN_ABOVE spectra the panels are hexagonal bins: the Kiel diagrams coloured by
    the mean [Fe/H] in a bin, the one-to-one panels by the number of spectra."""
    idx = {lb: j for j, lb in enumerate(labels)}
    teff, logg, feh = idx["Teff[K]"], idx["Logg"], idx.get("FeH")
    dense = pred.shape[0] > HEXBIN_ABOVE
    fig = _figure(12.0, 7.5)
    rows = fig.add_gridspec(2, 1)
    top = rows[0].subgridspec(1, 3, width_ratios=[1.0, 1.0, 0.05])
    bottom = rows[1].subgridspec(1, 3)
    color_true = true[:, feh] if feh is not None else None
    color_pred = pred[:, feh] if feh is not None else None
    finite = [c[np.isfinite(c)] for c in (color_true, color_pred) if c is not None]
    vmin = min((np.percentile(c, 1) for c in finite if c.size), default=None)
    vmax = max((np.percentile(c, 99) for c in finite if c.size), default=None)
    mappable = None
    for col, (values, colour, name) in enumerate(
        ((true, color_true, "true"), (pred, color_pred, "predicted"))
    ):
        ax = fig.add_subplot(top[0, col])
        x, y = values[:, teff], values[:, logg]
        if dense:
            ok = (
                np.isfinite(x) & np.isfinite(y) & (np.isfinite(colour) if feh is not None else True)
            )
            mappable = ax.hexbin(
                x[ok],
                y[ok],
                C=colour[ok] if feh is not None else None,
                reduce_C_function=np.mean,
                gridsize=60,
                cmap="viridis",
                vmin=vmin,
                vmax=vmax,
                mincnt=1,
            )
        else:
            mappable = ax.scatter(x, y, c=colour, s=3, cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_xlabel(pretty("Teff[K]"))
        ax.set_ylabel(pretty("Logg"))
        ax.set_title(f"{name} labels")
        if col == 0:
            ax.invert_xaxis()
            ax.invert_yaxis()
            first = ax
        else:
            ax.sharex(first)
            ax.sharey(first)
    if feh is not None and mappable is not None:
        fig.colorbar(mappable, cax=fig.add_subplot(top[0, 2]), label=pretty("FeH"))
    for col, j in enumerate(j for j in (teff, logg, feh) if j is not None):
        ax = fig.add_subplot(bottom[0, col])
        ok = np.isfinite(true[:, j]) & np.isfinite(pred[:, j])
        if dense:
            ax.hexbin(true[ok, j], pred[ok, j], gridsize=60, bins="log", cmap="Blues", mincnt=1)
        else:
            ax.scatter(true[ok, j], pred[ok, j], s=2, color="tab:blue", alpha=0.4)
        if ok.any():
            lo = min(true[ok, j].min(), pred[ok, j].min())
            hi = max(true[ok, j].max(), pred[ok, j].max())
            ax.plot([lo, hi], [lo, hi], color="tab:red", lw=0.8)
        ax.set_xlabel(f"true {pretty(labels[j])}")
        ax.set_ylabel(f"predicted {pretty(labels[j])}")
    fig.suptitle(title or "Kiel diagram")
    _save(fig, path)


def plot_saliency(
    path: str | os.PathLike[str],
    wavelength: np.ndarray,
    saliency: Mapping[str, np.ndarray],
    labels: Sequence[str],
    n_blue: int,
    title: str = "",
) -> None:
    """Mean ∂μ/∂flux over wavelength, blue and red arm side by side (paper Fig. 4).

    ``saliency`` maps a Teff-range name to an array (len(labels), n_pixels).
    """
    fig = _figure(11.0, 2.0 * len(labels) + 0.6)
    spec = fig.add_gridspec(len(labels), 2)
    arms = (slice(0, n_blue), slice(n_blue, None))
    for i, label in enumerate(labels):
        for col, sl in enumerate(arms):
            ax = fig.add_subplot(spec[i, col])
            for name, grad in saliency.items():
                ax.plot(wavelength[sl], grad[i, sl], lw=0.6, label=f"Teff {name} K")
            ax.axhline(0.0, color="0.5", lw=0.5)
            ax.set_ylabel(f"∂{short_name(label)}/∂flux ({unit(label)})", fontsize=8)
            if i == len(labels) - 1:
                ax.set_xlabel("rest-frame vacuum wavelength (Å)")
            if i == 0:
                ax.set_title("blue arm" if col == 0 else "red arm")
                if col == 1:
                    ax.legend(fontsize=7)
    fig.suptitle(title or "saliency: mean gradient of the prediction with respect to the flux")
    _save(fig, path)
