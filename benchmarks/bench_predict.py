"""``predict`` throughput against the authors' method, measured in the same run.

Both start from the same .fits.gz files (coadds, with their exposure tables, as LAMOST ships
them) and end with a FITS catalogue, using a 12-member ensemble of the published size (6 SP +
6 CA RRNet members, Nr=[4,8,16], Ns=40, seeded weights: speed does not depend on the values).

- **lamost-rrnet**: ``predict_files`` with worker processes reading and preprocessing
  (batched normalization), the ensemble run on batches, the catalogue written atomically.
- **authors' method**: in one process, per spectrum: read, resample, the published
  per-spectrum continuum normalization (``normalize_reference``: median cleaning and the
  np.polyfit loop); then the 12 members one after another over all spectra (batches of 256),
  combined by paper eq. 3; then the catalogue. It reads with lamost-rrnet's reader, which is
  faster than the authors' astropy reading, and it is timed with one torch thread (and, with
  ``--baseline-threads 1 2``, also with two), the faster counting: the baseline is, if anything,
  flattered.

lamost-rrnet is timed before and after the baselines; on a shared machine the difference
between the two shows how much the load changed.

Run: ``python benchmarks/bench_predict.py [--n 1200] [--workers N] [--threads N]
[--device cpu|cuda]``.
Needs ../shared/data/lamost_mrs (the real spectra the inputs are made from).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from lamost_rrnet.catalogue import CatalogueSchema
from lamost_rrnet.devices import select_device
from lamost_rrnet.ensemble import Ensemble, LabelGroup, Normalization
from lamost_rrnet.labels import PAPER_GROUPS
from lamost_rrnet.models import create_model
from lamost_rrnet.predict import default_workers, predict_files
from lamost_rrnet.spectra.io import read_mrs, write_mrs
from lamost_rrnet.spectra.preprocess import RRNET2022, normalize_reference, resample

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lamost_mrs"


def published_size_ensemble(seed: int = 0) -> Ensemble:
    torch.manual_seed(seed)
    groups = [
        LabelGroup(name, list(labels), [create_model("rrnet", len(labels)) for _ in range(6)])
        for name, labels in PAPER_GROUPS.items()
    ]
    names = [label for labels in PAPER_GROUPS.values() for label in labels]
    mean = np.array([5000.0 if n.startswith("Teff") else 0.0 for n in names])
    std = np.array([500.0 if n.startswith("Teff") else 0.3 for n in names])
    norm = Normalization(
        np.ones(7200, np.float32), np.full(7200, 0.1, np.float32), names, mean, std
    )
    ranges = {n: (m - 4 * s, m + 4 * s) for n, m, s in zip(names, mean, std, strict=True)}
    arch = {"name": "rrnet", "kwargs": {"Nr": [4, 8, 16], "Ns": 40}}
    return Ensemble("bench", "0", arch, groups, norm, RRNET2022, ranges, {})


def make_inputs(directory: Path, n: int, seed: int = 0) -> Path:
    """``n`` .fits.gz files made from the three good real spectra (noise added, new names)."""
    rng = np.random.default_rng(seed)
    sources = [read_mrs(p) for p in sorted(SHARED.glob("med-*.fits*")) if "58268" not in p.name]
    rows = ["obsid,rv"]
    for i in range(n):
        mrs = sources[i % len(sources)]
        arms = []
        for arm in mrs.arms.values():
            noisy = arm.flux + rng.normal(0, 1, arm.flux.size).astype(np.float32)
            arms.append(
                type(arm)(
                    arm.extname,
                    arm.wavelength,
                    noisy,
                    arm.ivar,
                    arm.mask,
                    arm.snr,
                    arm.andmask,
                    arm.header,
                )
            )
        header = dict(mrs.header)
        header["OBSID"] = 10_000_000 + i
        write_mrs(directory / f"med-bench-{i:06d}.fits.gz", header, arms)
        rows.append(f"{10_000_000 + i},{rng.uniform(-60, 60):.2f}")
    catalogue = directory.parent / "rv.csv"
    catalogue.write_text("\n".join(rows) + "\n")
    return catalogue


def authors_method(files: list[Path], rvs: dict[int, float], ens: Ensemble, out: Path) -> None:
    """Per-spectrum preprocessing, then each member in turn, then the catalogue."""
    from astropy.table import Table

    device = next(ens.groups[0].members[0].parameters()).device
    flux, meta = [], []
    for path in files:
        mrs = read_mrs(path)
        spectrum = mrs.coadd()
        rv = rvs[mrs.obsid]
        flux.append(normalize_reference(resample(spectrum, rv, RRNET2022), RRNET2022))
        meta.append((mrs.obsid, path.name, mrs.ra, mrs.dec, spectrum.blue.snr, spectrum.red.snr))
    norm = ens.normalization
    x = (np.clip(np.stack(flux), -0.5, 2.5) - norm.flux_mean) / norm.flux_std
    x = torch.as_tensor(x, dtype=torch.float32, device=device)
    columns = {}
    names = list(norm.label_names)
    for group in ens.groups:
        mus, variances = [], []
        for member in group.members:  # one after another, as the authors' scripts do
            member.eval()
            outs = []
            with torch.no_grad():
                for start in range(0, len(x), 256):
                    outs.append([t.cpu().numpy() for t in member(x[start : start + 256])])
            mus.append(np.concatenate([o[0] for o in outs]))
            variances.append(np.concatenate([o[1] for o in outs]))
        mu = np.mean(mus, axis=0)
        sigma = np.sqrt(np.mean(np.array(variances) + np.array(mus) ** 2, axis=0) - mu**2)
        for j, label in enumerate(group.labels):
            k = names.index(label)
            columns[label] = mu[:, j] * norm.label_std[k] + norm.label_mean[k]
            columns[f"{label}_err"] = sigma[:, j] * norm.label_std[k]
    table = Table(rows=meta, names=("obsid", "filename", "ra", "dec", "snr_blue", "snr_red"))
    for name in CatalogueSchema.for_labels(ens.labels).names:
        if name in columns:
            table[name] = columns[name]
    table.write(out, overwrite=True)


def part_seconds(files: list[Path], rvs: dict[int, float], ens: Ensemble) -> dict[str, float]:
    """CPU seconds per spectrum of each part of the pipeline, one thread, in this process.

    The bound on a run's rate is cores / (the sum of these): what the parts' CPU time allows
    if every core is kept busy and nothing else costs anything.
    """
    from lamost_rrnet.spectra.io import COADD_BLUE, COADD_RED
    from lamost_rrnet.spectra.preprocess import normalize, outlier_stats

    spent = dict.fromkeys(("read coadds", "outlier stats", "resample", "normalize"), 0.0)
    spectra, flux = [], []
    for path in files:
        t0 = time.process_time()
        mrs = read_mrs(path, [COADD_BLUE, COADD_RED])
        spectra.append((mrs.coadd(), rvs[mrs.obsid]))
        spent["read coadds"] += time.process_time() - t0
    t0 = time.process_time()
    for spectrum, rv in spectra:
        outlier_stats(spectrum, rv, RRNET2022)
    spent["outlier stats"] = time.process_time() - t0
    t0 = time.process_time()
    for spectrum, rv in spectra:
        flux.append(resample(spectrum, rv, RRNET2022))
    spent["resample"] = time.process_time() - t0
    t0 = time.process_time()
    with threadpool_limits(1):  # as in the workers: idle BLAS threads would spin on our CPU time
        normalized = [
            normalize(np.stack(flux[a : a + 32]), RRNET2022) for a in range(0, len(flux), 32)
        ]
    spent["normalize"] = time.process_time() - t0
    torch.set_num_threads(1)
    ens.predict(normalized[0][:8])
    for batch in (32, 256):  # the chunk of a worker, and a large batch: the cheaper counts
        t0 = time.process_time()
        ens.predict(np.concatenate(normalized), batch_size=batch)
        spent[f"ensemble B={batch}"] = time.process_time() - t0
    return {part: seconds / len(files) for part, seconds in spent.items()}


def cpu_flags() -> str:
    """The SIMD flags that change the picture (AVX2, AVX-512), from /proc/cpuinfo."""
    try:
        flags = next(
            line.split(":", 1)[1].split()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return "unknown"
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "amx_tile") if f in flags]
    return " ".join(shown) or "no AVX2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1200, help="spectra (files)")
    parser.add_argument("--workers", type=int, default=None, help="predict worker processes")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--threads", type=int, default=None, help="predict's torch threads")
    parser.add_argument(
        "--baseline-threads",
        type=int,
        nargs="+",
        default=[1],
        help="torch threads for the authors' method (each is timed; the faster counts)",
    )
    args = parser.parse_args()
    device = select_device(args.device)
    workers = default_workers(device.type) if args.workers is None else args.workers
    cores = os.cpu_count() or 1
    ens = published_size_ensemble()
    ens.to(device)
    with tempfile.TemporaryDirectory() as tmp:
        spectra = Path(tmp) / "spectra"
        spectra.mkdir()
        catalogue = make_inputs(spectra, args.n)
        files = sorted(spectra.glob("*.fits.gz"))
        rvs = {int(o): float(v) for o, v in np.loadtxt(catalogue, delimiter=",", skiprows=1)}

        def ours(name: str) -> float:
            t0 = time.perf_counter()
            predict_files(
                [spectra],
                model=ens,
                catalogue=catalogue,
                output=Path(tmp) / name,
                workers=workers,
                device=args.device,
                threads=args.threads,
            )
            return time.perf_counter() - t0

        def theirs(threads: int) -> float:
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            authors_method(files, rvs, ens, Path(tmp) / f"authors{threads}.fits")
            return time.perf_counter() - t0

        # Ours before and after the baselines, so that a change of load on a shared machine
        # shows up as a difference between the two. Of the baseline's thread counts, the
        # faster counts.
        ours_before = ours("ours1.fits")
        baseline = {threads: theirs(threads) for threads in sorted(set(args.baseline_threads))}
        ours_after = ours("ours2.fits")
        parts = part_seconds(files[: min(len(files), 600)], rvs, ens)

    flux = (1 + 0.05 * np.random.default_rng(0).normal(size=(256, 7200))).astype(np.float32)
    model_only = {}
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        ens.predict(flux[:8])
        t0 = time.perf_counter()
        ens.predict(flux, batch_size=256)
        model_only[threads] = time.perf_counter() - t0
    mean_ours = (ours_before + ours_after) / 2
    print(
        f"date {date.today()}  machine {platform.machine()}, {cores} cores ({cpu_flags()})  "
        f"device {device}  workers {workers}  load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{args.n} .fits.gz coadds -> FITS catalogue, 12-member published-size ensemble")
    print(
        f"lamost-rrnet predict  : {args.n / ours_before:6.1f} and {args.n / ours_after:.1f} "
        "spectra/s (before and after the baselines)"
    )
    for threads, seconds in baseline.items():
        print(
            f"authors' method       : {args.n / seconds:6.1f} spectra/s with {threads} torch "
            f"thread(s) ({seconds:.0f} s)"
        )
    print(f"speed-up              : {min(baseline.values()) / mean_ours:6.2f}x (vs the faster)")
    ensemble = min(v for k, v in parts.items() if k.startswith("ensemble"))
    per_spectrum = sum(v for k, v in parts.items() if not k.startswith("ensemble")) + ensemble
    bound = cores / per_spectrum
    for part, seconds in parts.items():
        print(f"CPU per spectrum      : {1e3 * seconds:6.2f} ms  {part}")
    best = args.n / min(ours_before, ours_after)
    print(
        f"bound                 : {bound:6.1f} spectra/s = {cores} cores / "
        f"{1e3 * per_spectrum:.2f} ms; lamost-rrnet at "
        f"{100 * args.n / mean_ours / bound:.0f} % of it on average, {100 * best / bound:.0f} % "
        "at best"
    )
    for threads, seconds in model_only.items():
        print(
            f"ensemble alone        : {256 / seconds:6.1f} spectra/s with {threads} torch "
            "thread(s), B=256"
        )


if __name__ == "__main__":
    main()
