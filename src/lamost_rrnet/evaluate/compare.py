"""``evaluate CATALOGUE --reference OTHER``: compare a catalogue with another survey's labels
(the paper's Table 2), matched by obsid or on the sky."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from lamost_rrnet.errors import CatalogueError
from lamost_rrnet.evaluate import plots
from lamost_rrnet.evaluate.metrics import compute_metrics, spectrum_snr
from lamost_rrnet.evaluate.report import (
    Image,
    Paragraph,
    Report,
    Table,
    format_metric,
    write_report_files,
)
from lamost_rrnet.evaluate.runner import EvaluationResult, ordered_labels
from lamost_rrnet.labels import CATALOGUE_LABELS, pretty

MATCH_MODES = ("obsid", "sky")
#: The split name written into metrics.csv for a catalogue comparison.
MATCHED = "matched"


def read_frame(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A table file (any format :func:`~lamost_rrnet.table_io.read_table` reads) as a DataFrame
    of its 1-D columns."""
    from lamost_rrnet.table_io import read_table

    table = read_table(path)
    return table[[n for n in table.colnames if table[n].ndim == 1]].to_pandas()


def pair_rows(
    cat: pd.DataFrame,
    ref: pd.DataFrame,
    match: str,
    max_separation_arcsec: float = 3.0,
    names: tuple[str, str] = ("catalogue", "reference"),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of ``cat`` and ``ref`` that belong together, aligned: by equal ``obsid``, or by the
    nearest reference position within ``max_separation_arcsec``."""
    if match not in MATCH_MODES:
        raise ValueError(f"match must be one of {MATCH_MODES}, got {match!r}")
    needed = ("obsid",) if match == "obsid" else ("ra", "dec")
    for frame, name in ((cat, names[0]), (ref, names[1])):
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise CatalogueError(f"{name}: no column {', '.join(missing)} to match by {match}")
    if match == "obsid":
        ref_unique = ref.drop_duplicates("obsid")
        position = pd.Index(ref_unique["obsid"]).get_indexer(cat["obsid"])
        found = position >= 0
        return cat[found].reset_index(drop=True), ref_unique.iloc[position[found]].reset_index(
            drop=True
        )
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    cat_xy = SkyCoord(cat["ra"].to_numpy(float) * u.deg, cat["dec"].to_numpy(float) * u.deg)
    ref_xy = SkyCoord(ref["ra"].to_numpy(float) * u.deg, ref["dec"].to_numpy(float) * u.deg)
    nearest, separation, _ = cat_xy.match_to_catalog_sky(ref_xy)
    found = separation.arcsec <= max_separation_arcsec
    return cat[found].reset_index(drop=True), ref.iloc[nearest[found]].reset_index(drop=True)


def evaluate_catalogue(
    catalogue_path: str | os.PathLike[str],
    reference_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] = "report",
    *,
    match: str = "obsid",
    max_separation_arcsec: float = 3.0,
    figures: bool = True,
    html: bool = False,
) -> EvaluationResult:
    """μ_r and σ_r of ``catalogue − reference`` for every label column the two share.

    Residuals are catalogue minus reference; σ (and so z) comes from the catalogue's
    ``<label>_err`` columns where present; S/N bins from its snr_blue/snr_red where present.
    """
    catalogue_path, reference_path = Path(catalogue_path), Path(reference_path)
    cat = read_frame(catalogue_path)
    ref = read_frame(reference_path)
    common = ordered_labels([lb for lb in CATALOGUE_LABELS if lb in cat and lb in ref])
    if not common:
        raise CatalogueError(
            f"{catalogue_path} and {reference_path}: no label column in common "
            f"(label columns are named {', '.join(CATALOGUE_LABELS)})"
        )
    cat_m, ref_m = pair_rows(
        cat, ref, match, max_separation_arcsec, (str(catalogue_path), str(reference_path))
    )
    if cat_m.empty:
        raise CatalogueError(
            f"{catalogue_path}: no row matches {reference_path} by {match}"
            + (f" within {max_separation_arcsec:g} arcsec" if match == "sky" else "")
        )

    def column(frame: pd.DataFrame, name: str) -> np.ndarray:
        if name not in frame:
            return np.full(len(frame), np.nan)
        return pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64)

    pred = np.column_stack([column(cat_m, lb) for lb in common])
    true = np.column_stack([column(ref_m, lb) for lb in common])
    sigma = np.column_stack([column(cat_m, f"{lb}_err") for lb in common])
    snr = spectrum_snr(column(cat_m, "snr_blue"), column(cat_m, "snr_red"))
    name = catalogue_path.name.split(".")[0]
    metrics = compute_metrics(pred, sigma, true, snr, common, model=name, split=MATCHED)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    drawn = []
    if figures:
        drawn.append(out / "residuals.png")
        plots.plot_residuals(drawn[0], pred, sigma, true, common, f"{name} − {reference_path.name}")
    report = Report(f"{catalogue_path.name} against {reference_path.name}")
    sep = f" within {max_separation_arcsec:g} arcsec" if match == "sky" else ""
    report.add(
        Paragraph(
            f"{len(cat_m)} of {len(cat)} rows of `{catalogue_path}` matched `{reference_path}` "
            f"by {match}{sep}. Residual = catalogue − reference; μ_r is its mean and σ_r its "
            "standard deviation (as in the paper's Table 2). The full table, with S/N bins "
            "where the catalogue has S/N, is metrics.csv."
        ),
        _table2(metrics, common),
    )
    if drawn:
        report.add(Paragraph("Residual distributions:"), Image("residuals.png", "residuals"))
    info = {
        "catalogue": str(catalogue_path),
        "reference": str(reference_path),
        "match": match,
        "n_matched": len(cat_m),
    }
    if match == "sky":
        info["max_separation_arcsec"] = max_separation_arcsec
    files = write_report_files(out, report, metrics, info, html_page=html)
    return EvaluationResult(out, metrics, [*files, *drawn])


def _table2(metrics: pd.DataFrame, labels: list[str]) -> Table:
    overall = metrics[metrics["snr_bin"] == "all"].set_index("label")
    rows = []
    for lb in labels:
        r = overall.loc[lb]
        rows.append(
            [pretty(lb)]
            + [format_metric(m, lb, r[m]) for m in ("n", "bias", "scatter", "mae", "mean_sigma")]
        )
    return Table(["label", "n", "μ_r", "σ_r", "MAE", "mean catalogue σ"], rows)
