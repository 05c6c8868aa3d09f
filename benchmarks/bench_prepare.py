"""Throughput of ``prepare`` (read + outliers + resample + batched normalize + HDF5 write).

Copies the three usable real LAMOST DR7 MRS files of ../shared (with all their exposure
extensions, gzipped as LAMOST ships them) N times into a temporary directory, then times

- the published-style path, one spectrum at a time in one process: read the whole file,
  resample, and the reference polyfit normalization (``normalize_reference``);
- ``prepare_dataset`` with 1 and with 2 worker processes, end to end (process start-up,
  reading, preprocessing, writing the dataset).

Usage: python benchmarks/bench_prepare.py [--n 3000] [--baseline-n 40]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.table import Table

from lamost_rrnet.crossmatch import write_reference
from lamost_rrnet.labels import CATALOGUE_LABELS
from lamost_rrnet.prepare import prepare_dataset
from lamost_rrnet.spectra.io import read_mrs
from lamost_rrnet.spectra.preprocess import RRNET2022, normalize_reference, resample
from lamost_rrnet.table_io import read_table

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lamost_mrs"
USABLE = (
    "med-58025-HIP9645901_sp02-051.fits.gz",
    "med-58408-TD230151N343645T01_sp01-015.fits",
    "med-58644-TD192102N424113K01_sp12-076.fits.gz",
)


def make_inputs(root: Path, n: int) -> Path:
    import gzip

    spectra = root / "spectra"
    spectra.mkdir()
    sources = []
    for name in USABLE:
        data = (SHARED / name).read_bytes()
        if not name.endswith(".gz"):
            data = gzip.compress(data, compresslevel=6)
            name += ".gz"
        (root / name).write_bytes(data)
        sources.append(root / name)
    rng = np.random.default_rng(0)
    table = Table()
    names = []
    for i in range(n):
        source = sources[i % len(sources)]
        target = f"{i:05d}-{source.name}"
        os.link(source, spectra / target)  # every file is read and gunzipped anew; no disk used
        names.append(target)
    table["obsid"] = np.arange(n)
    table["filename"] = names
    table["extname_blue"] = ["COADD_B"] * n
    table["extname_red"] = ["COADD_R"] * n
    table["snr_blue"] = np.full(n, 50.0)
    table["snr_red"] = np.full(n, 50.0)
    table["rv"] = rng.uniform(-30, 30, n)
    table["star_id"] = [f"s{i // 3}" for i in range(n)]
    for label in CATALOGUE_LABELS:
        table[label] = rng.normal(0, 1, n)
        table[f"{label}_err"] = np.full(n, 0.1)
    return write_reference(table, root / "ref.fits")


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the worker processes)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def published_style(root: Path, ref: Table, k: int) -> tuple[float, float]:
    """(spectra/s, CPU ms per spectrum) of the one-at-a-time published-style path."""
    from threadpoolctl import threadpool_limits

    cpu = _cpu_seconds()
    start = time.perf_counter()
    with threadpool_limits(1):  # one core, like each prepare worker
        for row in ref[:k]:
            spectrum = read_mrs(root / "spectra" / row["filename"]).coadd()
            normalize_reference(resample(spectrum, float(row["rv"]), RRNET2022))
    return k / (time.perf_counter() - start), (_cpu_seconds() - cpu) / k * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="spectra for prepare")
    parser.add_argument("--baseline-n", type=int, default=40, help="spectra for the baseline")
    args = parser.parse_args()
    if not all((SHARED / n).exists() for n in USABLE):
        print(f"needs the real spectra in {SHARED}", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        ref_path = make_inputs(root, args.n)
        ref = read_table(ref_path)
        baseline, baseline_cpu = published_style(root, ref, args.baseline_n)
        rates, cpu = {}, {}
        for workers in (1, 2):
            cpu_start = _cpu_seconds()
            start = time.perf_counter()
            result = prepare_dataset(
                ref_path,
                root / f"d{workers}.h5",
                spectra_root=root / "spectra",
                workers=workers,
                progress=False,
            )
            rates[workers] = result.n_rows / (time.perf_counter() - start)
            cpu[workers] = (_cpu_seconds() - cpu_start) / result.n_rows * 1e3
            accepted = result.n_accepted
        print(f"spectra: {args.n} real DR7 .fits.gz (3 files repeated), {accepted} accepted")
        print(f"published-style, 1 process, per spectrum : {baseline:7.1f} spectra/s")
        print(f"prepare, 1 worker (in-process)            : {rates[1]:7.1f} spectra/s")
        print(f"prepare, 2 workers                        : {rates[2]:7.1f} spectra/s")
        per = f"{baseline_cpu:.1f} / {cpu[1]:.1f} / {cpu[2]:.1f}"
        print(f"CPU ms per spectrum, published / 1 / 2    : {per}")
        print(f"load average (1 min) after the runs       : {os.getloadavg()[0]:7.1f}")
        print(f"speed-up, 2 workers vs published-style    : {rates[2] / baseline:7.1f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
