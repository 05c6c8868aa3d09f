"""Peak memory of ``train --members M`` against the dataset size and the micro-batch.

For each dataset size N a synthetic dataset of the real layout is written (flux about 1 with
1 % noise, /ivar, 17 labels, split 70/10/20 by star), or ``--dataset`` gives a real one. Each
measurement runs :func:`lamost_rrnet.training.train_ensemble` in a child process at the
recipe's batch size (32 for ``default``, 256 for ``paper``) for one epoch cut to ``--steps``
batches per member stack, with the validation split cut to ``--valid`` rows: the whole
dataset is still loaded, every member stack trains as in a full run, and a step's
activations do not depend on how many steps follow. The resident memory of the child's
process tree is sampled every 0.1 s (bench_predict_memory.run); the peak is reported with
the seconds per step.

    python benchmarks/bench_train_memory.py --n 2000 20000 --micro-batch 32 16
    python benchmarks/bench_train_memory.py --dataset WORKDIR/dataset.h5 --recipe paper
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

from bench_predict_memory import run  # this script's directory


def synthetic_dataset(path: Path, n: int, seed: int = 0) -> Path:
    from lamost_rrnet.dataset import write_dataset
    from lamost_rrnet.labels import CATALOGUE_LABELS

    rng = np.random.default_rng(seed)
    flux = rng.normal(1.0, 0.01, (n, 7200)).astype(np.float32)
    ivar = np.full(flux.shape, 1e4, np.float32)
    labels = rng.normal(0.0, 1.0, (n, len(CATALOGUE_LABELS))).astype(np.float32)
    snr = rng.uniform(20, 150, n)
    meta = {"star_id": [f"s{i // 2}" for i in range(n)], "snr_blue": snr, "snr_red": snr}
    return write_dataset(path, flux, labels, list(CATALOGUE_LABELS), meta, ivar=ivar)


def child(args: argparse.Namespace) -> None:
    """One measured run (in its own process, so that its peak is its own)."""
    import lamost_rrnet.training.loop as loop
    from lamost_rrnet.training.data import SplitData
    from lamost_rrnet.training.members import RECIPES

    load = loop.load_training_data
    recipe = dataclasses.replace(RECIPES[args.recipe], micro_batch=args.micro_batch)

    def cut(*a, **k):
        data = load(*a, **k)
        for group in data.groups.values():
            for split, n in (("train", args.steps * recipe.batch_size), ("valid", args.valid)):
                s = group[split]
                group[split] = SplitData(s.rows[:n], s.labels[:n], s.dropped)
        return data

    loop.load_training_data = cut
    with tempfile.TemporaryDirectory() as out:
        loop.train_ensemble(
            args.child, Path(out) / "m", members=args.members, epochs=1, recipe=recipe,
            progress=False,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="*", default=[2000, 20000])
    parser.add_argument("--dataset", type=Path, help="measure this dataset instead")
    parser.add_argument("--members", type=int, default=6)
    parser.add_argument("--micro-batch", type=int, nargs="+", default=[16])
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--valid", type=int, default=256)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        args.micro_batch = args.micro_batch[0]
        return child(args)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {date.today()}")
    from lamost_rrnet.training.members import RECIPES

    batch = RECIPES[args.recipe].batch_size
    setup = f"--recipe {args.recipe}, batch {batch}, {args.steps} steps"
    print(f"train --members {args.members} {setup}")
    with tempfile.TemporaryDirectory() as tmp:
        datasets = (
            {"dataset": args.dataset}
            if args.dataset
            else {n: synthetic_dataset(Path(tmp) / f"d{n}.h5", n) for n in args.n}
        )
        for size, path in datasets.items():
            for micro in args.micro_batch:
                cmd = [sys.executable, __file__, "--child", str(path), "--steps", str(args.steps)]
                cmd += ["--members", str(args.members), "--micro-batch", str(micro)]
                cmd += ["--recipe", args.recipe, "--valid", str(args.valid)]
                peak, seconds, _ = run(cmd)
                row = {"spectra": size, "micro_batch": micro, "peak_rss_gb": peak / 1e9}
                row["seconds"] = round(seconds, 1)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
