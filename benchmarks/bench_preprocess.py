"""Throughput of reading + resampling .fits.gz coadds, and of the batched normalization.

Baselines, measured in the same run: the published per-spectrum normalization (median
cleaning + np.polyfit loop, one spectrum at a time: ``normalize_reference``).
Run: ``python benchmarks/bench_preprocess.py [--n 400]`` (one thread).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from lamost_rrnet.spectra.io import read_mrs
from lamost_rrnet.spectra.preprocess import (
    normalize,
    normalize_reference,
    resample,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lamost_mrs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=400, help="spectra per measurement")
    args = parser.parse_args()
    good = [p for p in sorted(SHARED.glob("*.fits.gz")) if "58268" not in p.name]
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(args.n):
            dst = Path(tmp) / f"s{i:05d}.fits.gz"
            shutil.copyfile(good[i % len(good)], dst)
            files.append(dst)
        t0 = time.perf_counter()
        flux = np.stack(
            [resample(read_mrs(f, ["COADD_B", "COADD_R"]).coadd(), 10.0) for f in files]
        )
        t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = np.concatenate([normalize(flux[i : i + 256]) for i in range(0, len(flux), 256)])
    t_batch = time.perf_counter() - t0
    n_ref = min(args.n, 100)
    t0 = time.perf_counter()
    reference = np.stack([normalize_reference(f) for f in flux[:n_ref]])
    t_ref = time.perf_counter() - t0
    diff = np.abs(batched[:n_ref] - reference).max()
    print(f"date {date.today()}  machine {platform.machine()} {os.cpu_count()} cores  one thread")
    print(f"read + resample .fits.gz coadds : {args.n / t_read:8.1f} spectra/s")
    print(f"batched normalization (B=256)   : {args.n / t_batch:8.1f} spectra/s")
    print(f"per-spectrum (published method) : {n_ref / t_ref:8.1f} spectra/s")
    print(f"speed-up of the batched path    : {(args.n / t_batch) / (n_ref / t_ref):8.1f}x")
    print(f"max |batched - per-spectrum|    : {diff:.2e}")


if __name__ == "__main__":
    main()
