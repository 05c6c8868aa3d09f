"""How long evaluate's own work takes beside the models: metrics and figures on N spectra.

Synthetic predictions for the 17 catalogue labels (no model runs), so the figures measure only
lamost_rrnet.evaluate. Usage: python benchmarks/bench_evaluate.py [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lamost_rrnet.evaluate import metrics, plots
from lamost_rrnet.labels import CATALOGUE_LABELS


def main(n: int) -> None:
    rng = np.random.default_rng(0)
    labels = list(CATALOGUE_LABELS)
    true = np.column_stack(
        [rng.uniform(4000, 6500, n), rng.uniform(0, 5, n)]
        + [rng.normal(-0.3, 0.3, n) for _ in labels[2:]]
    )
    scale = np.array([80.0, 0.1] + [0.05] * (len(labels) - 2))
    sigma = scale * rng.uniform(0.5, 1.5, true.shape)
    pred = true + rng.normal(size=true.shape) * sigma
    snr = rng.uniform(5, 150, n)
    star = (np.arange(n) // 3).astype(str)
    timings = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - t0
        return out

    table = timed(
        "compute_metrics",
        lambda: metrics.compute_metrics(pred, sigma, true, snr, labels, model="m", split="test"),
    )
    obs = timed("repeat_scatter", lambda: metrics.repeat_scatter(pred, star, snr, labels))
    z = metrics.z_scores(pred, sigma, true)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        timed("import matplotlib", lambda: __import__("matplotlib.figure"))
        timed(
            "residuals.png",
            lambda: plots.plot_residuals(out / "r.png", pred, sigma, true, labels),
        )
        timed(
            "sigma_snr.png", lambda: plots.plot_sigma_vs_snr(out / "s.png", sigma, snr, labels, obs)
        )
        timed("coverage.png", lambda: plots.plot_coverage(out / "c.png", z, labels))
        timed(
            "z_teff.png",
            lambda: plots.plot_z_by_bins(out / "z.png", z, true[:, 0], "Teff[K]", labels),
        )
        timed("kiel.png", lambda: plots.plot_kiel(out / "k.png", pred, true, labels))
        timed("mae_comparison.png", lambda: plots.plot_mae_comparison(out / "m.png", table, labels))
        sizes = {p.name: p.stat().st_size for p in out.glob("*.png")}
    print(f"evaluate internals on {n:,} spectra x {len(labels)} labels")
    for name, seconds in timings.items():
        print(f"  {name:<20s} {seconds:7.2f} s")
    print("  PNG sizes: " + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in sorted(sizes.items())))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
