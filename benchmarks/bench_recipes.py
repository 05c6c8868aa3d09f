"""The training recipes on the issue-17 benchmark set: accuracy, calibration and σ against S/N.

The set (docs/training.md, "Recipes: the benchmark"), built once in WORKDIR:

    lamost-rrnet simulate sim --stars 1000 --visits 1-4 --snr 20 150 --seed 17
    lamost-rrnet crossmatch sim/lamost_catalogue.csv --labels-file sim/labels.csv \\
        -o reference.fits
    lamost-rrnet prepare reference.fits --spectra-root sim/spectra -o dataset.h5 --workers 2

Then for each recipe ``train dataset.h5 -o WORKDIR/cmp_<recipe> --recipe <recipe>`` (with
``--members`` and ``--max-minutes``; a model directory already there is reused) and one
``evaluate --split test`` of them all. Prints, from the report's metrics.csv: per-label test
MAE of each model and which is lower, the z-score std and 1σ coverage of each label, and each
label's mean σ in the S/N bins 20-40 and 60+.

    python benchmarks/bench_recipes.py WORKDIR [--recipes paper default] [--members 2]
        [--max-minutes 35] [--extra-model DIR ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def cli(*args: str) -> None:
    """Run a lamost-rrnet command in this process; stop on a non-zero exit."""
    from lamost_rrnet.cli.app import main

    try:
        main(list(args))
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise


def summarize(metrics: pd.DataFrame) -> str:
    test = metrics[metrics["split"] == "test"]
    models = list(dict.fromkeys(test["model"]))
    whole = test[test["snr_bin"] == "all"].pivot(index="label", columns="model")
    labels = list(dict.fromkeys(test["label"]))
    lines = ["| label | " + " | ".join(f"MAE {m}" for m in models) + " | lowest |"]
    lines.append("|---" * (len(models) + 2) + "|")
    wins = dict.fromkeys(models, 0)
    for label in labels:
        mae = whole.loc[label, "mae"][models]
        best = mae.idxmin()
        wins[best] += 1
        lines.append(f"| {label} | " + " | ".join(f"{v:.4g}" for v in mae) + f" | {best} |")
    lines.append("")
    lines.append("lowest MAE on: " + ", ".join(f"{m} {n}/{len(labels)}" for m, n in wins.items()))
    lines.append("")
    by_bin = test.pivot_table(index=["model", "label"], columns="snr_bin", values="mean_sigma")
    lines.append("| model | label | z std | 1σ coverage | mean σ 20-40 | mean σ 60+ | ratio |")
    lines.append("|---|---|---|---|---|---|---|")
    for model in models:
        for label in labels:
            z = whole.loc[label, "z_std"][model]
            cov = whole.loc[label, "frac_1sigma"][model]
            lo, hi = by_bin.loc[(model, label), "20-40"], by_bin.loc[(model, label), "60+"]
            lines.append(
                f"| {model} | {label} | {z:.2f} | {cov:.2f} | {lo:.4g} | {hi:.4g} | {lo / hi:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--recipes", nargs="+", default=["paper", "default"])
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--max-minutes", type=float, default=35.0)
    parser.add_argument("--extra-model", nargs="*", default=[], help="e.g. a Cannon model")
    args = parser.parse_args()
    work = args.workdir
    data = work / "dataset.h5"
    models = []
    for recipe in args.recipes:
        out = work / f"cmp_{recipe}"
        if not (out / "model.yaml").is_file():
            cli("train", str(data), "-o", str(out), "--recipe", recipe,
                "--members", str(args.members), "--max-minutes", str(args.max_minutes))  # fmt: skip
        models.append(str(out))
    report = work / "report_recipes"
    model_args = [a for m in models + args.extra_model for a in ("--model", m)]
    cli("evaluate", str(data), *model_args, "--split", "test", "-o", str(report))
    print(summarize(pd.read_csv(report / "metrics.csv")))


if __name__ == "__main__":
    main()
