"""σ calibration on a small simulated reference set: std z and 1σ coverage before and after.

Simulates ``--stars`` stars with ``--visits`` spectra each at S/N uniform in 20-150 (the
simulator's in-memory API), splits them 7:1:2 by star, trains an ensemble (``train``, which
fits the σ scales on the valid split), and evaluates it on the held-out test split. Prints, per
label, the fitted scale and the test split's std z and fraction within 1σ with the raw and the
calibrated σ, then std z per S/N bin (bins with at least 50 spectra).

    python benchmarks/bench_calibration.py [--stars 1200] [--visits 2] [--members 2]
        [--epochs 10] [--max-minutes 20] [--seed 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def simulated_dataset(path: Path, stars: int, visits: int, seed: int) -> Path:
    from lamost_rrnet.dataset import assign_splits, write_dataset
    from lamost_rrnet.simulate import draw_labels, simulate_normalized

    rng = np.random.default_rng(seed)
    labels = draw_labels(stars, rng)
    rows = labels.loc[labels.index.repeat(visits)].reset_index(drop=True)
    snr = rng.uniform(20.0, 150.0, len(rows))
    flux = simulate_normalized(rows, snr, rng)
    names = [c for c in rows.columns if c != "star_id"]
    star_id = rows["star_id"].to_numpy().astype(str)
    meta = {
        "star_id": star_id,
        "snr_blue": snr,
        "snr_red": snr,
        "split": assign_splits(star_id, (0.7, 0.1, 0.2), seed),
    }
    return write_dataset(path, flux, rows[names].to_numpy(np.float32), names, meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stars", type=int, default=1200)
    parser.add_argument("--visits", type=int, default=2)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-minutes", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from lamost_rrnet.evaluate import evaluate_dataset
    from lamost_rrnet.training import train_ensemble

    out = args.out or Path(tempfile.mkdtemp(prefix="bench-calibration-"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dataset = simulated_dataset(out / "set.h5", args.stars, args.visits, args.seed)
    t1 = time.perf_counter()
    model = train_ensemble(
        dataset,
        out / "model",
        members=args.members,
        epochs=args.epochs,
        seed=args.seed,
        max_minutes=args.max_minutes,
        progress=False,
    )
    t2 = time.perf_counter()
    result = evaluate_dataset(
        dataset, [out / "model"], "test", out / "report", figures=False, progress=False
    )
    m = result.metrics
    rows = model.provenance["rows"]["SP"]
    print(
        f"{args.stars} stars x {args.visits} visits, S/N 20-150: train {rows['train']}, "
        f"valid {rows['valid']} spectra; test {int(m['n'].max())}; "
        f"{model.provenance['epochs_completed']} epochs x {args.members} members; "
        f"simulate {t1 - t0:.0f} s, train {t2 - t1:.0f} s"
    )
    print("| label | scale | std z raw | std z | within 1σ raw | within 1σ |")
    print("|---|---:|---:|---:|---:|---:|")
    every = m[m["snr_bin"] == "all"]
    for r in every.itertuples():
        scale = model.calibration.scales[r.label]
        print(
            f"| {r.label} | {scale:.3f} | {r.z_std_raw:.2f} | {r.z_std:.2f} | "
            f"{r.frac_1sigma_raw:.3f} | {r.frac_1sigma:.3f} |"
        )
    bins = m[(m["snr_bin"] != "all") & (m["n"] >= 50)]
    names = list(dict.fromkeys(bins["snr_bin"]))
    print("\nstd z (calibrated) by S/N bin, bins with >= 50 spectra")
    print("| label | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for label, part in bins.groupby("label", sort=False):
        cells = part.set_index("snr_bin")["z_std"]
        print(f"| {label} | " + " | ".join(f"{cells.get(b, np.nan):.2f}" for b in names) + " |")
    print(f"\nreport: {out / 'report' / 'index.md'}")


if __name__ == "__main__":
    main()
