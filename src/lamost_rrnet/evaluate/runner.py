"""``evaluate`` on a prepared dataset: run each model through the same
:class:`~lamost_rrnet.ensemble.Ensemble` code as ``predict``, then write the metrics, the
figures and the report."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lamost_rrnet.errors import DatasetError, ModelError
from lamost_rrnet.evaluate import plots
from lamost_rrnet.evaluate.metrics import (
    SNR_BIN_NAMES,
    compute_metrics,
    repeat_scatter,
    spectrum_snr,
    z_scores,
)
from lamost_rrnet.evaluate.report import (
    Heading,
    Image,
    Paragraph,
    Report,
    Table,
    format_metric,
    wide_table,
    write_report_files,
)
from lamost_rrnet.labels import CATALOGUE_LABELS, pretty
from lamost_rrnet.model_resolution import load_ensemble
from lamost_rrnet.names import DEFAULT_MODEL

if TYPE_CHECKING:
    import torch

    from lamost_rrnet.dataset import Dataset
    from lamost_rrnet.ensemble import Ensemble

#: Spectra per Teff range that the saliency averages over (a random, seeded subset).
SALIENCY_SPECTRA = 256
#: Labels whose saliency is drawn (paper Fig. 4) where they are evaluated; else the first three.
SALIENCY_LABELS = ("Teff[K]", "Logg", "FeH")
#: True labels against which z is binned.
CALIBRATION_BY = ("Teff[K]", "Logg", "FeH")


@dataclass
class ModelRun:
    """One evaluated model: its name in the report, where it came from, and its predictions."""

    name: str
    source: str
    ensemble: Ensemble
    labels: list[str]
    pred: np.ndarray = field(repr=False)
    #: The model's calibrated σ, as ``predict`` writes it, and its uncalibrated σ.
    sigma: np.ndarray = field(repr=False)
    raw_sigma: np.ndarray = field(repr=False)
    #: Dataset labels the model does not predict (so not evaluated).
    not_predicted: list[str] = field(default_factory=list)


@dataclass
class EvaluationResult:
    """What ``evaluate`` wrote and computed."""

    out_dir: Path
    metrics: pd.DataFrame
    files: list[Path]


def slug(name: str) -> str:
    """A file-name-safe form of a model name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def model_names(sources: Sequence[str | os.PathLike[str] | Ensemble]) -> list[str]:
    """Report names: the directory or registry name as given, made unique with -2, -3, ..."""
    names: list[str] = []
    for source in sources:
        if isinstance(source, str | os.PathLike):
            base = Path(str(source).rstrip("/\\")).name or str(source)
        else:
            base = source.name
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def ordered_labels(names: Sequence[str]) -> list[str]:
    """Catalogue (paper Table 3) order first, then any other labels in their given order."""
    known = [lb for lb in CATALOGUE_LABELS if lb in names]
    return known + [lb for lb in names if lb not in CATALOGUE_LABELS]


def _spec_difference(a, b) -> str:
    da, db = a.to_dict(), b.to_dict()
    keys = [k for k in da if k not in ("clip", "extra") and da.get(k) != db.get(k)]
    return ", ".join(f"{k} {da.get(k)!r} vs {db.get(k)!r}" for k in keys)


def check_compatible(ds: Dataset, ens: Ensemble, source: str) -> None:
    """Stop with a DatasetError when the dataset's inputs were made unlike the model's."""
    if not ens.preprocessing.compatible(ds.preprocessing):
        raise DatasetError(
            f"{ds.path}: its preprocessing ({ds.preprocessing.name}) does not match model "
            f"{source} ({ens.preprocessing.name}): "
            f"{_spec_difference(ds.preprocessing, ens.preprocessing)}; "
            "prepare the dataset again with the model's preprocessing"
        )


def select_labels(
    ds: Dataset, ens: Ensemble, source: str, wanted: Sequence[str] | None
) -> list[str]:
    """The labels to evaluate for one model: the ones asked for (each must exist in both), or
    every dataset label the model predicts."""
    if wanted:
        absent = [lb for lb in wanted if lb not in ds.label_names]
        if absent:
            raise DatasetError(
                f"{ds.path}: has no label {', '.join(absent)} (it has: {', '.join(ds.label_names)})"
            )
        lacking = [lb for lb in wanted if lb not in ens.labels]
        if lacking:
            raise ModelError(
                f"{source}: the model does not predict {', '.join(lacking)} "
                f"(it predicts: {', '.join(ens.labels)})"
            )
        return ordered_labels(wanted)
    common = [lb for lb in ds.label_names if lb in ens.labels]
    if not common:
        raise DatasetError(
            f"{ds.path}: none of its labels ({', '.join(ds.label_names)}) is predicted by "
            f"model {source} ({', '.join(ens.labels)})"
        )
    return ordered_labels(common)


def predict_dataset(
    ds: Dataset,
    indices: np.ndarray,
    runs: Sequence[ModelRun],
    batch_size: int = 256,
    *,
    progress: bool = False,
) -> None:
    """Fill each run's pred, sigma and raw_sigma, reading the flux once per batch for all
    models and running each model once (the calibrated σ is the raw σ times its scales)."""
    from lamost_rrnet.progress import make_progress

    columns = [[r.ensemble.labels.index(lb) for lb in r.labels] for r in runs]
    with make_progress(progress) as bar:
        task = bar.add_task("evaluating", total=int(indices.size))
        done = 0
        for batch_idx, flux, _ in ds.iter_batches(indices, batch_size):
            k = batch_idx.size
            for run, cols in zip(runs, columns, strict=True):
                mu, raw = run.ensemble.predict(flux, batch_size=batch_size, raw_sigma=True)
                run.pred[done : done + k] = mu[:, cols]
                run.raw_sigma[done : done + k] = raw[:, cols]
                run.sigma[done : done + k] = raw[:, cols] * run.ensemble.sigma_scales[cols]
            done += k
            bar.advance(task, k)


def _figures_for_model(
    out: Path,
    run: ModelRun,
    true: np.ndarray,
    snr: np.ndarray,
    sigma_obs: pd.DataFrame | None,
    calibration_by: dict[str, np.ndarray],
) -> list[tuple[str, Path]]:
    """Draw one model's figures; return (caption, path) pairs."""
    s = slug(run.name)
    figures = []

    def path(kind: str) -> Path:
        return out / f"{kind}_{s}.png"

    plots.plot_residuals(
        path("residuals"), run.pred, run.sigma, true, run.labels, f"{run.name}: residuals"
    )
    figures.append(("residuals, predicted − true (Fig. 2)", path("residuals")))
    plots.plot_sigma_vs_snr(
        path("sigma_snr"), run.sigma, snr, run.labels, sigma_obs, f"{run.name}: σ against S/N"
    )
    figures.append(
        ("predicted σ and repeat-observation σ_obs against S/N (Fig. 7)", path("sigma_snr"))
    )
    z = z_scores(run.pred, run.sigma, true)
    plots.plot_coverage(path("coverage"), z, run.labels, f"{run.name}: calibration curve")
    figures.append(("calibration: expected against observed coverage", path("coverage")))
    for by_label, values in calibration_by.items():
        kind = "z_" + slug(by_label).split("_")[0].lower()
        plots.plot_z_by_bins(
            path(kind),
            z,
            values,
            by_label,
            run.labels,
            f"{run.name}: z in bins of true {pretty(by_label)}",
        )
        figures.append((f"z by true {pretty(by_label)}", path(kind)))
    if "Teff[K]" in run.labels and "Logg" in run.labels:
        plots.plot_kiel(path("kiel"), run.pred, true, run.labels, f"{run.name}: Kiel diagram")
        figures.append(("Kiel diagram and one-to-one comparisons (Fig. 5)", path("kiel")))
    return figures


def _saliency_figure(
    out: Path,
    ds: Dataset,
    indices: np.ndarray,
    run: ModelRun,
    teff: np.ndarray,
    ranges: Sequence[tuple[float, float]],
    batch_size: int,
) -> tuple[Path | None, list[str]]:
    """Saliency of one model over each Teff range; returns the figure and notes on empty ranges."""
    from lamost_rrnet.evaluate.saliency import range_name, saliency

    labels = [lb for lb in SALIENCY_LABELS if lb in run.labels] or run.labels[:3]
    rng = np.random.default_rng(0)
    maps: dict[str, np.ndarray] = {}
    notes = []
    for lo, hi in ranges:
        pick = indices[(teff >= lo) & (teff < hi)]
        if pick.size == 0:
            notes.append(f"no {ds.path.name} spectra with {lo:g} ≤ Teff < {hi:g} K")
            continue
        if pick.size > SALIENCY_SPECTRA:
            pick = np.sort(rng.choice(pick, SALIENCY_SPECTRA, replace=False))
        maps[range_name(lo, hi)] = saliency(
            run.ensemble, ds.flux(pick), labels, batch_size=min(batch_size, 64)
        )
    if not maps:
        return None, notes
    target = out / f"saliency_{slug(run.name)}.png"
    wavelength = run.ensemble.preprocessing.wavelength()
    n_blue = run.ensemble.preprocessing.grids()[0].size
    plots.plot_saliency(target, wavelength, maps, labels, n_blue, f"{run.name}: saliency")
    return target, notes


def _model_run(
    ds: Dataset,
    indices: np.ndarray,
    name: str,
    source: str | os.PathLike[str] | Ensemble,
    device: torch.device,
    labels: Sequence[str] | None,
    progress: bool,
) -> ModelRun:
    """One model loaded and checked against the dataset, with room for its predictions."""
    ens = load_ensemble(source, device, progress=progress)
    where = str(source) if isinstance(source, str | os.PathLike) else name
    check_compatible(ds, ens, where)
    chosen = select_labels(ds, ens, where, labels)
    shape = (indices.size, len(chosen))
    missing = [lb for lb in ds.label_names if lb not in ens.labels]
    return ModelRun(
        name, where, ens, chosen, np.empty(shape), np.empty(shape), np.empty(shape), missing
    )


def _run_figures(
    out: Path,
    ds: Dataset,
    indices: np.ndarray,
    run: ModelRun,
    true: np.ndarray,
    snr: np.ndarray,
    sigma_obs: pd.DataFrame | None,
    saliency_ranges: Sequence[tuple[float, float]],
    batch_size: int,
) -> list[tuple[str, Path | None]]:
    """One model's figures, then its saliency figure and the notes on empty Teff ranges."""
    calibration_by = {
        lb: ds.labels(indices, [lb])[:, 0].astype(np.float64)
        for lb in CALIBRATION_BY
        if lb in ds.label_names
    }
    drawn: list[tuple[str, Path | None]] = []
    drawn += _figures_for_model(out, run, true, snr, sigma_obs, calibration_by)
    if saliency_ranges:
        teff = ds.labels(indices, ["Teff[K]"])[:, 0]
        path, notes = _saliency_figure(out, ds, indices, run, teff, saliency_ranges, batch_size)
        if path is not None:
            drawn.append(("saliency, mean ∂μ/∂flux (Fig. 4)", path))
        drawn += [(note, None) for note in notes]
    return drawn


def _write_results(
    out: Path,
    dataset_info: dict,
    n_stars: int | None,
    runs: Sequence[ModelRun],
    metrics: pd.DataFrame,
    obs_parts: list[pd.DataFrame],
    drawn: dict[str, list[tuple[str, Path | None]]],
    labels: Sequence[str],
    figures: bool,
    html: bool,
) -> EvaluationResult:
    """The comparison figure, the report and the tables, written into ``out``."""
    sigma_obs = (
        pd.concat(obs_parts, ignore_index=True)[
            ["model", "label", "snr_bin", "n_stars", "sigma_obs"]
        ]
        if obs_parts
        else None
    )
    comparison = None
    if figures:
        comparison = out / "mae_comparison.png"
        plots.plot_mae_comparison(comparison, metrics, labels)
    report = build_dataset_report(
        dataset_info, n_stars, runs, metrics, sigma_obs, labels, drawn, comparison, out
    )
    info = {
        "dataset": dataset_info,
        "models": [
            {"name": r.name, "source": r.source, "version": str(r.ensemble.version)} for r in runs
        ],
    }
    files = write_report_files(out, report, metrics, info, sigma_obs, html_page=html)
    files += [p for pairs in drawn.values() for _, p in pairs if p is not None]
    if comparison is not None:
        files.append(comparison)
    return EvaluationResult(out, metrics, files)


def evaluate_dataset(
    dataset_path: str | os.PathLike[str],
    models: Sequence[str | os.PathLike[str] | Ensemble] = (DEFAULT_MODEL,),
    split: str = "test",
    out_dir: str | os.PathLike[str] = "report",
    *,
    labels: Sequence[str] | None = None,
    batch_size: int = 256,
    device: str = "auto",
    saliency_ranges: Sequence[tuple[float, float]] = (),
    figures: bool = True,
    html: bool = False,
    progress: bool = False,
) -> EvaluationResult:
    """Evaluate models on one split of a prepared dataset and write the report into ``out_dir``.

    ``models`` are registry names, model directories or loaded ensembles. Each must have been
    made with the dataset's preprocessing (else :class:`DatasetError`). ``labels`` restricts
    the evaluation; by default every dataset label a model predicts is evaluated.
    ``saliency_ranges`` are (lo, hi) true-Teff ranges for the saliency figure; ``figures``
    False writes only the tables. ``progress`` shows a bar while the models predict.
    """
    import h5py

    from lamost_rrnet.dataset import open_dataset
    from lamost_rrnet.devices import select_device

    dataset_path = Path(dataset_path)
    if dataset_path.is_file() and not h5py.is_hdf5(dataset_path):
        raise DatasetError(
            f"{dataset_path}: not an HDF5 dataset (to compare two catalogues, give --reference)"
        )
    out = Path(out_dir)
    torch_device = select_device(device)
    with open_dataset(dataset_path) as ds:
        indices = ds.indices(split)
        if saliency_ranges and figures and "Teff[K]" not in ds.label_names:
            raise DatasetError(f"{ds.path}: has no Teff[K] label to select saliency ranges")
        runs = [
            _model_run(ds, indices, name, source, torch_device, labels, progress)
            for name, source in zip(model_names(models), models, strict=True)
        ]
        all_labels = ordered_labels(list(dict.fromkeys(lb for r in runs for lb in r.labels)))
        predict_dataset(ds, indices, runs, batch_size, progress=progress)
        snr = spectrum_snr(ds.meta("snr_blue", indices), ds.meta("snr_red", indices))
        star_id = ds.meta("star_id", indices) if "star_id" in ds.meta_columns else None
        metrics_parts, obs_parts, drawn = [], [], {}
        out.mkdir(parents=True, exist_ok=True)
        for run in runs:
            true = ds.labels(indices, run.labels).astype(np.float64)
            metrics_parts.append(
                compute_metrics(
                    run.pred,
                    run.sigma,
                    true,
                    snr,
                    run.labels,
                    model=run.name,
                    split=split,
                    raw_sigma=run.raw_sigma,
                )
            )
            sigma_obs = None
            if star_id is not None:
                sigma_obs = repeat_scatter(run.pred, star_id, snr, run.labels)
                obs_parts.append(sigma_obs.assign(model=run.name))
            if figures:
                drawn[run.name] = _run_figures(
                    out, ds, indices, run, true, snr, sigma_obs, saliency_ranges, batch_size
                )
        n_stars = len(np.unique(star_id)) if star_id is not None else None
        dataset_info = {"path": str(ds.path), "split": split, "n_spectra": int(indices.size)}
    metrics = pd.concat(metrics_parts, ignore_index=True)
    return _write_results(
        out, dataset_info, n_stars, runs, metrics, obs_parts, drawn, all_labels, figures, html
    )


def build_dataset_report(
    dataset_info: dict,
    n_stars: int | None,
    runs: Sequence[ModelRun],
    metrics: pd.DataFrame,
    sigma_obs: pd.DataFrame | None,
    labels: Sequence[str],
    figures: dict[str, list[tuple[str, Path | None]]],
    comparison: Path | None,
    out: Path,
) -> Report:
    """The report's blocks for a dataset evaluation."""
    split = dataset_info["split"]
    report = Report(f"Evaluation on {Path(dataset_info['path']).name} ({split} split)")
    stars = f" of {n_stars} stars" if n_stars is not None else ""
    report.add(
        Paragraph(
            f"Dataset `{dataset_info['path']}`, split `{split}`: "
            f"{dataset_info['n_spectra']} spectra{stars}. "
            "S/N is min(snr_blue, snr_red); the bins are [10, 20), [20, 40), [40, 60) and ≥ 60, "
            "and 'all' also holds the spectra below S/N 10. "
            "bias μ_r = mean(pred − true), scatter σ_r = std(pred − true), "
            "z = (pred − true)/σ_pred. The full table is metrics.csv (metrics.json)."
        ),
        Table(
            ["model", "source", "version", "members per group"],
            [
                [
                    r.name,
                    f"`{r.source}`",
                    str(r.ensemble.version),
                    ", ".join(f"{g.name}: {len(g.members)}" for g in r.ensemble.groups),
                ]
                for r in runs
            ],
        ),
    )
    for r in runs:
        if r.not_predicted:
            report.add(
                Paragraph(f"{r.name} does not predict {', '.join(r.not_predicted)}: not evaluated.")
            )
    report.add(Heading("Accuracy (all S/N)"))
    for metric in ("n", "mae", "bias", "scatter", "mean_sigma"):
        report.add(wide_table(metrics, metric, labels, caption=_caption(metric)))
    if comparison is not None:
        report.add(Heading("Model comparison"), Image(_rel(comparison, out), "MAE per model"))
    report.add(Heading("By S/N"))
    for metric in ("n", "mae", "bias", "scatter", "mean_sigma"):
        report.add(wide_table(metrics, metric, labels, by_snr=True, caption=_caption(metric)))
    if sigma_obs is not None:
        report.add(
            Heading("Repeat observations", 3),
            Paragraph(
                "σ_obs: the standard deviation of one star's predictions over its spectra, for "
                "stars with at least 3 spectra, averaged over the stars in each S/N bin (a "
                "star's bin is that of its median S/N). Compare with the mean predicted σ."
            ),
            _sigma_obs_table(sigma_obs, labels),
        )
    report.add(
        Heading("Calibration"),
        Paragraph(
            "For calibrated Gaussian uncertainties: mean z 0, std z 1, "
            "0.683 within 1σ and 0.954 within 2σ."
        ),
    )
    for metric in ("z_mean", "z_std", "frac_1sigma", "frac_2sigma"):
        report.add(wide_table(metrics, metric, labels, caption=_caption(metric)))
    report.add(
        Heading("Calibration before and after", 3),
        Paragraph(
            "Before: with the ensemble's own σ (`predict --raw-sigma`). After: with σ times the "
            "model's per-label scale, which `predict` writes by default (docs/models.md, "
            '"Calibration"). All S/N; metrics.csv holds every bin (z_std_raw, frac_1sigma_raw).'
        ),
        *[Paragraph(_calibration_source(r)) for r in runs],
        _calibration_table(runs, metrics, labels),
    )
    for run in runs:
        report.add(Heading(f"Figures: {run.name}"))
        for caption, path in figures.get(run.name, []):
            if path is None:
                report.add(Paragraph(f"Saliency: {caption}."))
            else:
                report.add(Paragraph(caption), Image(_rel(path, out), caption))
    return report


def _calibration_source(run: ModelRun) -> str:
    cal = run.ensemble.calibration
    if cal is None:
        return f"{run.name}: not calibrated (scale 1 for every label: before = after)."
    return (
        f"{run.name}: scales fitted on the {cal.split} split of `{cal.dataset}` "
        f"({cal.n_spectra} spectra)."
    )


def _calibration_table(runs: Sequence[ModelRun], metrics: pd.DataFrame, labels) -> Table:
    """Per label and model: the σ scale, std z and the fraction within 1σ, before and after."""
    cells = metrics[metrics["snr_bin"] == "all"].set_index(["label", "model"])
    header = ["label"]
    for r in runs:
        header += [f"{r.name} {h}" for h in ("scale", "std z before", "std z after")]
        header += [f"{r.name} {h}" for h in ("within 1σ before", "within 1σ after")]
    rows = []
    for label in labels:
        row = [plots.short_name(label)]
        for r in runs:
            if label not in r.labels:
                row += ["–"] * 5
                continue
            scale = r.ensemble.sigma_scales[r.ensemble.labels.index(label)]
            row.append(f"{scale:.3f}")
            for metric in ("z_std_raw", "z_std", "frac_1sigma_raw", "frac_1sigma"):
                row.append(format_metric(metric, label, cells.loc[(label, r.name), metric]))
        rows.append(row)
    return Table(header, rows, "calibration before and after (all S/N)")


def _caption(metric: str) -> str:
    from lamost_rrnet.evaluate.report import METRIC_TITLES

    return METRIC_TITLES[metric]


def _rel(path: Path, out: Path) -> str:
    return os.path.relpath(path, out)


def _sigma_obs_table(sigma_obs: pd.DataFrame, labels: Sequence[str]) -> Table:
    from lamost_rrnet.evaluate.plots import fmt

    models = list(dict.fromkeys(sigma_obs["model"]))
    bins = [b for b in SNR_BIN_NAMES if b != "all"]
    cells = sigma_obs.set_index(["label", "model", "snr_bin"])
    header = ["label"] + [f"{m} S/N {b}" for m in models for b in bins]
    rows = []
    for label in labels:
        row = [pretty(label)]
        for m in models:
            for b in bins:
                key = (label, m, b)
                if key in cells.index and cells.loc[key, "n_stars"] > 0:
                    row.append(
                        f"{fmt(label, cells.loc[key, 'sigma_obs'])} ({cells.loc[key, 'n_stars']})"
                    )
                else:
                    row.append("–")
        rows.append(row)
    return Table(header, rows, "σ_obs (number of stars)")
