"""Peak memory of ``lamost-rrnet predict`` against the number of input files.

Makes a few .fits.gz coadd files from the real spectra, then N inputs as symbolic links to
them (distinct names, in subdirectories of 1,000), and runs the command line on the directory
as a subprocess, writing a catalogue. The resident memory of the whole process tree (the main
process and its workers) is sampled from /proc every 0.1 s; the peak of the sum is reported,
for each N. Memory that stays flat as N grows is memory bounded independently of N.

With ``--real-fraction f`` only every (1/f)-th input is a real spectrum and the others are
empty files, which become "unreadable" rows: every input still goes through the paths, the
tasks, the rows, the journal and the assembly, in a fraction of the time. The flux in flight,
bounded by the batch, is what the all-real runs measure.

Run: ``python benchmarks/bench_predict_memory.py [--n 1000 10000 100000] [--model published]``.
``--model published`` uses a 12-member published-size ensemble (seeded), ``tiny`` a small one
(Nr=[2,2,2], 2 members per group) when only the pipeline's memory is of interest.
Linux only (/proc). Needs ../shared/data/lamost_mrs.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np

from bench_predict import SHARED, published_size_ensemble  # this script's directory
from lamost_rrnet.spectra.io import read_mrs, write_mrs


def tiny_ensemble():
    import torch

    from lamost_rrnet.ensemble import Ensemble, LabelGroup, Normalization
    from lamost_rrnet.labels import PAPER_GROUPS
    from lamost_rrnet.models import create_model
    from lamost_rrnet.spectra.preprocess import RRNET2022

    torch.manual_seed(0)
    groups = [
        LabelGroup(n, list(ls), [create_model("rrnet", len(ls), Nr=[2, 2, 2]) for _ in range(2)])
        for n, ls in PAPER_GROUPS.items()
    ]
    names = [label for labels in PAPER_GROUPS.values() for label in labels]
    norm = Normalization(
        np.ones(7200, np.float32),
        np.full(7200, 0.1, np.float32),
        names,
        np.zeros(len(names)),
        np.ones(len(names)),
    )
    arch = {"name": "rrnet", "kwargs": {"Nr": [2, 2, 2]}}
    return Ensemble("tiny", "0", arch, groups, norm, RRNET2022, {}, {})


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    stack.extend(int(c) for c in fh.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def run(cmd: list[str]) -> tuple[float, float, str]:
    """(peak tree RSS in bytes, seconds, stderr tail) of a command."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    t0 = time.perf_counter()
    sampler.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - t0
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"predict failed ({proc.returncode}):\n{err}")
    return peak[0], seconds, err.strip().splitlines()[0] if err.strip() else ""


def read_rows(path: Path) -> int:
    from astropy.table import Table

    return len(Table.read(path)) if path.suffix != ".fits" else fits_rows(path)


def fits_rows(path: Path) -> int:
    from astropy.io import fits

    return int(fits.getheader(path, 1)["NAXIS2"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--model", choices=("published", "tiny"), default="published")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--format", default="fits", choices=("fits", "csv", "parquet"))
    parser.add_argument(
        "--real-fraction",
        type=float,
        default=1.0,
        help="fraction of inputs that are real spectra; the others are empty (unreadable) files",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ens = published_size_ensemble() if args.model == "published" else tiny_ensemble()
        ens.save(tmp / "model")
        sources = []
        for i, path in enumerate(p for p in sorted(SHARED.glob("med-*")) if "58268" not in p.name):
            mrs = read_mrs(path, ["COADD_B", "COADD_R"])
            sources.append(write_mrs(tmp / f"source{i}.fits.gz", mrs.header, mrs.arms.values()))
        print(
            f"date {date.today()}  machine {platform.machine()}, {os.cpu_count()} cores  "
            f"model {args.model}  output .{args.format}"
        )
        every = max(1, round(1 / args.real_fraction))
        empty = tmp / "empty.fits.gz"  # an unreadable input: a row with status "unreadable"
        empty.write_bytes(b"")
        for n in args.n:
            inputs = tmp / f"in{n}"
            for i in range(n):
                sub = inputs / f"d{i // 1000:04d}"
                if i % 1000 == 0:
                    sub.mkdir(parents=True)
                real = i % every == 0
                target = sources[(i // every) % len(sources)] if real else empty
                (sub / f"med-{i:07d}.fits.gz").symlink_to(target)
            # RVs from a catalogue with one row per input, joined by file name.
            catalogue = tmp / f"rv{n}.csv"
            with open(catalogue, "w") as fh:
                fh.write("filename,rv\n")
                fh.writelines(f"med-{i:07d}.fits.gz,{(i % 100) - 50}\n" for i in range(n))
            cmd = [
                sys.executable,
                "-c",
                "from lamost_rrnet.cli.app import main; main()",
                "predict",
                str(inputs),
                "-o",
                str(tmp / f"cat{n}.{args.format}"),
                "--model",
                str(tmp / "model"),
                "--catalogue",
                str(catalogue),
                "--quiet",
            ]
            if args.workers is not None:
                cmd += ["--workers", str(args.workers)]
            peak, seconds, _ = run(cmd)
            rows = read_rows(tmp / f"cat{n}.{args.format}")
            print(
                f"{n:>8} files ({rows} rows, {-(-n // every)} real): "
                f"peak RSS {peak / 2**20:6.0f} MiB (main + workers)   "
                f"{n / seconds:7.1f} spectra/s   {seconds:7.0f} s"
            )


if __name__ == "__main__":
    main()
