"""The report's figures: no two tick labels of any figure print over each other."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lamost_rrnet.evaluate import plots

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LABELS = ["Teff[K]", "Logg", "FeH"]
MEAN = [5200.0, 3.5, -0.3]
STD = [600.0, 1.0, 0.3]


def tiny_model(directory: Path, seed: int, name: str) -> Path:
    """A saved 2-member ensemble of tiny RRNets with random weights."""
    import torch

    from lamost_rrnet.ensemble import Ensemble, LabelGroup, Normalization
    from lamost_rrnet.models import create_model

    torch.manual_seed(seed)
    members = [create_model("rrnet", len(LABELS), Nr=[2, 2, 2]) for _ in range(2)]
    norm = Normalization(np.ones(7200), np.full(7200, 0.1), LABELS, MEAN, STD)
    arch = {"name": "rrnet", "kwargs": {"Nr": [2, 2, 2]}}
    return Ensemble(name, "1", arch, [LabelGroup("G", LABELS, members)], norm).save(directory)


def drawn_tick_labels(axis) -> list:
    """The tick labels an axis draws: those of ticks inside its view, visible and not empty."""
    lo, hi = sorted(axis.get_view_interval())
    slack = 1e-9 * (hi - lo)
    out = []
    for locs, get_ticks in (
        (axis.get_majorticklocs(), axis.get_major_ticks),
        (axis.get_minorticklocs(), axis.get_minor_ticks),
    ):
        for loc, tick in zip(locs, get_ticks(len(locs)), strict=True):
            if lo - slack <= loc <= hi + slack:
                out += [t for t in (tick.label1, tick.label2) if t.get_visible() and t.get_text()]
    return out


def tick_label_clashes(fig) -> tuple[list[tuple[str, str]], int]:
    """Pairs of tick labels of one axis whose rendered extents overlap, and how many labels
    were compared; rendered with Agg at the resolution the report saves at."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(plots.DPI)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    clashes, compared = [], 0
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in drawn_tick_labels(axis)]
            compared += len(boxes)
            clashes += [
                (a, b)
                for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2)
                if box_a.overlaps(box_b)
            ]
    return clashes, compared


@pytest.fixture
def figures(monkeypatch):
    """Every figure the report saves, by file name."""
    kept = {}
    save = plots._save

    def keep(fig, path):
        save(fig, path)
        kept[Path(path).name] = fig

    monkeypatch.setattr(plots, "_save", keep)
    return kept


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """48 test spectra of 12 stars at S/N 20-150 (the issue's set, where the σ-S/N figure's
    log axis spans less than a decade), and a tiny model."""
    from lamost_rrnet.dataset import write_dataset

    root = tmp_path_factory.mktemp("figures")
    rng = np.random.default_rng(4)
    n = 48
    labels = rng.normal(MEAN, STD, (n, len(LABELS)))
    snr = np.repeat(rng.uniform(20, 150, n // 4), 4) * rng.uniform(0.95, 1.05, n)
    path = write_dataset(
        root / "survey.h5",
        rng.normal(1.0, 0.05, (n, 7200)),
        labels,
        LABELS,
        {
            "obsid": np.arange(n),
            "star_id": [f"s{i // 4}" for i in range(n)],
            "snr_blue": snr,
            "snr_red": snr * 1.2,
            "split": ["test"] * n,
        },
    )
    return {"dataset": path, "model": tiny_model(root / "net", 0, "net"), "root": root}


def test_no_tick_labels_overlap_in_any_report_figure(survey, figures, tmp_path):
    from lamost_rrnet.evaluate import evaluate_dataset

    evaluate_dataset(
        survey["dataset"],
        [survey["model"]],
        out_dir=tmp_path / "report",
        saliency_ranges=[(4000.0, 5000.0), (5000.0, 7000.0)],
        batch_size=16,
        device="cpu",
        progress=False,
    )
    kinds = ("residuals", "sigma_snr", "coverage", "z_teff", "z_logg", "z_feh", "kiel", "saliency")
    expected = {"mae_comparison.png"} | {f"{kind}_net.png" for kind in kinds}
    assert set(figures) == expected
    for name, fig in figures.items():
        clashes, compared = tick_label_clashes(fig)
        assert compared > 0, name
        assert not clashes, f"{name}: tick labels print over each other: {clashes}"


@pytest.mark.parametrize(
    ("snr_range", "expected"),
    [((20, 150), ["20", "50", "100"]), ((10, 60), None), ((2, 3000), None), ((60, 90), None)],
)
def test_sigma_snr_log_axis_has_plain_ticks_that_do_not_overlap(
    figures, tmp_path, snr_range, expected
):
    """The figure the issue found broken (S/N 20-150 on a log axis), and other spans."""
    rng = np.random.default_rng(0)
    snr = rng.uniform(*snr_range, 300)
    sigma = rng.uniform(10, 50, (300, 1))
    plots.plot_sigma_vs_snr(tmp_path / "s.png", sigma, snr, ["Teff[K]"])
    fig = figures["s.png"]
    clashes, _ = tick_label_clashes(fig)
    assert not clashes
    texts = [t.get_text() for t in drawn_tick_labels(fig.axes[0].xaxis)]
    assert len(texts) >= 2 and all("times" not in t for t in texts), texts
    if expected is not None:
        assert texts == expected


def test_catalogue_comparison_figure_tick_labels(figures, tmp_path):
    from lamost_rrnet.evaluate.compare import evaluate_catalogue

    rng = np.random.default_rng(1)
    n = 30
    true = rng.normal(MEAN, STD, (n, 3))
    cat = pd.DataFrame(true + rng.normal(0, 0.1, (n, 3)) * STD, columns=LABELS)
    for j, label in enumerate(LABELS):
        cat[f"{label}_err"] = 0.1 * STD[j]
    cat["obsid"] = np.arange(n)
    cat["snr_blue"] = cat["snr_red"] = rng.uniform(20, 150, n)
    ref = pd.DataFrame(true, columns=LABELS).assign(obsid=np.arange(n))
    cat.to_csv(tmp_path / "cat.csv", index=False)
    ref.to_csv(tmp_path / "ref.csv", index=False)
    evaluate_catalogue(tmp_path / "cat.csv", tmp_path / "ref.csv", tmp_path / "report")
    assert figures
    for name, fig in figures.items():
        clashes, compared = tick_label_clashes(fig)
        assert compared > 0 and not clashes, (name, clashes)


@pytest.mark.parametrize("n_models", [1, 2, 4])
@pytest.mark.parametrize("n_labels", [2, 5, 17])
def test_mae_comparison_tick_labels_for_any_number_of_models(figures, tmp_path, n_models, n_labels):
    from lamost_rrnet.labels import CATALOGUE_LABELS

    labels = list(CATALOGUE_LABELS[:n_labels])
    rows = [
        {"model": f"model{k}", "label": label, "snr_bin": "all", "mae": 0.1 + 0.01 * k}
        for k in range(n_models)
        for label in labels
    ]
    plots.plot_mae_comparison(tmp_path / "mae.png", pd.DataFrame(rows), labels)
    clashes, compared = tick_label_clashes(figures["mae.png"])
    assert compared > 0 and not clashes, clashes
