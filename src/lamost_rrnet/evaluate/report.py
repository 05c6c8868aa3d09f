"""The report files: metrics.csv (long), metrics.json, index.md (wide tables) and index.html.

The report is built as a list of blocks (headings, paragraphs, tables, images) and rendered
to Markdown and, on request, to a self-contained HTML page, so both carry the same content.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from lamost_rrnet._version import __version__
from lamost_rrnet.atomic import atomic_write_bytes
from lamost_rrnet.evaluate.metrics import METRIC_COLUMNS, SNR_BIN_NAMES
from lamost_rrnet.evaluate.plots import fmt, short_name
from lamost_rrnet.labels import pretty


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Code:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Image:
    path: str  # relative to the report directory
    alt: str


@dataclass
class Report:
    """The blocks of a report, in order."""

    title: str
    blocks: list = field(default_factory=list)

    def add(self, *blocks: Heading | Paragraph | Code | Table | Image) -> None:
        self.blocks.extend(blocks)


#: Metrics shown in the label's unit, and the rest with their number format.
UNIT_METRICS = ("mae", "bias", "scatter", "mean_sigma")
METRIC_TITLES = {
    "mae": "MAE",
    "bias": "bias μ_r",
    "scatter": "scatter σ_r",
    "mean_sigma": "mean predicted σ",
    "z_mean": "mean z",
    "z_std": "std z",
    "frac_1sigma": "fraction within 1σ",
    "frac_2sigma": "fraction within 2σ",
    "n": "spectra",
}


def format_metric(metric: str, label: str, value: float) -> str:
    """A metric's value as the report prints it (units of the label for the accuracy metrics)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if metric == "n":
        return str(int(value))
    if metric in UNIT_METRICS:
        return fmt(label, float(value))
    if metric.startswith("frac"):
        return f"{value:.3f}"
    return f"{value:.2f}"


def wide_table(
    metrics: pd.DataFrame,
    metric: str,
    labels: Sequence[str],
    by_snr: bool = False,
    caption: str = "",
) -> Table:
    """Rows are labels, columns are models (and S/N bins when ``by_snr``), as in the paper's
    Tables 1, 2 and 4; cells are one metric."""
    models = list(dict.fromkeys(metrics["model"]))
    bins = [b for b in SNR_BIN_NAMES if b != "all"] if by_snr else ["all"]
    columns = [(m, b) for m in models for b in bins]
    cells = metrics.set_index(["label", "model", "snr_bin"])[metric]
    header = ["label"] + [f"{m} S/N {b}" if by_snr else m for m, b in columns]
    rows = []
    for label in labels:
        # Units only where the numbers carry them (z and fractions are pure numbers).
        row = [pretty(label) if metric in UNIT_METRICS else short_name(label)]
        for m, b in columns:
            key = (label, m, b)
            row.append(format_metric(metric, label, cells[key]) if key in cells.index else "–")
        rows.append(row)
    return Table(header, rows, caption)


def to_markdown(report: Report) -> str:
    """The report as GitHub-flavoured Markdown."""
    out = [f"# {report.title}", ""]
    for block in report.blocks:
        if isinstance(block, Heading):
            out += [f"{'#' * block.level} {block.text}", ""]
        elif isinstance(block, Paragraph):
            out += [block.text, ""]
        elif isinstance(block, Code):
            out += ["```", block.text.rstrip("\n"), "```", ""]
        elif isinstance(block, Table):
            if block.caption:
                out += [f"*{block.caption}*", ""]
            out.append("| " + " | ".join(block.header) + " |")
            out.append("|" + "|".join(["---"] + ["---:"] * (len(block.header) - 1)) + "|")
            out += ["| " + " | ".join(row) + " |" for row in block.rows]
            out.append("")
        elif isinstance(block, Image):
            out += [f"![{block.alt}]({block.path})", ""]
    return "\n".join(out)


def _inline_code(text: str) -> str:
    """Markdown's `code` spans as <code> elements."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def to_html(report: Report) -> str:
    """The report as one self-contained HTML page (figures are linked, not embedded)."""
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(report.title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1300px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;margin:0.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style>",
        "</head><body>",
        f"<h1>{esc(report.title)}</h1>",
    ]
    for block in report.blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            out.append(f"<p>{_inline_code(esc(block.text))}</p>")
        elif isinstance(block, Code):
            out.append(f"<pre><code>{esc(block.text)}</code></pre>")
        elif isinstance(block, Table):
            out.append("<table>")
            if block.caption:
                out.append(f"<caption>{esc(block.caption)}</caption>")
            out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in block.header) + "</tr>")
            for row in block.rows:
                cells = "".join(f"<td>{_inline_code(esc(c))}</td>" for c in row)
                out.append(f"<tr>{cells}</tr>")
            out.append("</table>")
        elif isinstance(block, Image):
            out.append(f'<p><img src="{esc(block.path)}" alt="{esc(block.alt)}"></p>')
    out.append("</body></html>")
    return "\n".join(out)


def _json_safe(value):
    if isinstance(value, float | np.floating):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: _json_safe(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def write_report_files(
    out_dir: str | os.PathLike[str],
    report: Report,
    metrics: pd.DataFrame,
    info: dict,
    sigma_obs: pd.DataFrame | None = None,
    html_page: bool = False,
) -> list[Path]:
    """Write metrics.csv, metrics.json, index.md (and index.html) into ``out_dir``, atomically.

    ``info`` (inputs, models, split) goes into metrics.json beside the metrics.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    csv_text = metrics.loc[:, list(METRIC_COLUMNS)].to_csv(index=False)
    atomic_write_bytes(out / "metrics.csv", csv_text.encode())
    written.append(out / "metrics.csv")
    payload = {
        "lamost_rrnet_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **info,
        "columns": list(METRIC_COLUMNS),
        "metrics": _records(metrics.loc[:, list(METRIC_COLUMNS)]),
    }
    if sigma_obs is not None:
        payload["sigma_obs"] = _records(sigma_obs)
    atomic_write_bytes(out / "metrics.json", json.dumps(payload, indent=1).encode())
    written.append(out / "metrics.json")
    atomic_write_bytes(out / "index.md", to_markdown(report).encode())
    written.append(out / "index.md")
    if html_page:
        atomic_write_bytes(out / "index.html", to_html(report).encode())
        written.append(out / "index.html")
    return written
