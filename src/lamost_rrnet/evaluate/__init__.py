"""Evaluate models on a prepared dataset, or a catalogue against another survey's labels.

- :mod:`~lamost_rrnet.evaluate.metrics`: the metrics on plain arrays (MAE, bias, scatter,
  z statistics, S/N bins, repeat-observation scatter, coverage);
- :mod:`~lamost_rrnet.evaluate.plots`: the figures;
- :mod:`~lamost_rrnet.evaluate.report`: metrics.csv, metrics.json, index.md and index.html;
- :mod:`~lamost_rrnet.evaluate.saliency`: ∂μ/∂flux through an ensemble's members;
- :mod:`~lamost_rrnet.evaluate.runner` and :mod:`~lamost_rrnet.evaluate.compare`: the two jobs.
"""

from lamost_rrnet.evaluate.compare import evaluate_catalogue, pair_rows
from lamost_rrnet.evaluate.metrics import (
    METRIC_COLUMNS,
    SNR_BINS,
    compute_metrics,
    coverage_curve,
    label_metrics,
    repeat_scatter,
    spectrum_snr,
    z_scores,
)
from lamost_rrnet.evaluate.runner import EvaluationResult, evaluate_dataset
from lamost_rrnet.evaluate.saliency import parse_ranges, saliency

__all__ = [
    "METRIC_COLUMNS",
    "SNR_BINS",
    "EvaluationResult",
    "compute_metrics",
    "coverage_curve",
    "evaluate_catalogue",
    "evaluate_dataset",
    "label_metrics",
    "pair_rows",
    "parse_ranges",
    "repeat_scatter",
    "saliency",
    "spectrum_snr",
    "z_scores",
]
