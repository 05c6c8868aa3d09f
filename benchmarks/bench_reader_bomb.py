"""Peak memory of ``lamost-rrnet predict`` over decompression bombs mixed with good files.

Inputs, in one directory:
- ``--good`` real coadds (rewritten from ../shared/data/lamost_mrs);
- ``--bombs`` links to a ~1.2 MB .fits.gz whose extension before the coadds declares 1.2 GB
  of zeros (the coadds after it are good: the reader must stream past the zeros);
- ``--bombs`` links to a file whose COADD_B header declares 1 GB (over the 256 MB limit:
  a ``too_large`` row, or ``unreadable`` where predict does not yet tell them apart);
- ``--near`` links to a file whose two coadds each have MAX_PIXELS pixels, the most an arm
  may have (16 MB each in DR7): the most preprocessing and the RV fit get to work on;
- ``--near`` links to a file whose COADD_B holds 240 MB of pixels (15 million), under the
  256 MB limit but over MAX_PIXELS: ``too_large`` (without the pixel limit, the RV's continuum
  fit took the worker 1.8 GB).

The command line runs as a subprocess with its default workers; the resident memory of the
process tree is sampled from /proc every 0.1 s (see bench_predict_memory.py).

Run: ``nice -n 10 python benchmarks/bench_reader_bomb.py [--model published] [--no-rv]``.
``--no-rv`` leaves out the RV catalogue, so every spectrum gets a cross-correlation RV.
Linux only (/proc). Needs ../shared/data/lamost_mrs.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import sys
import tempfile
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_predict import SHARED, published_size_ensemble  # this script's directory
from bench_predict_memory import run, tiny_ensemble
from bomb_inputs import write_bomb  # tests/
from lamost_rrnet.spectra.io import MAX_PIXELS, Arm, encode_mrs, read_mrs, write_mrs


def _dense_arm(extname: str, span: tuple[float, float], n: int) -> Arm:
    wave = np.linspace(*span, n, dtype=np.float32)
    flux = (1000 + np.sin(np.arange(n, dtype=np.float32))).astype(np.float32)
    return Arm(extname, wave, flux, np.ones(n, np.float32), np.zeros(n, np.int32), 50.0)


def dense_file(path: Path, header: dict, blue: int, red: int | None, red_arm: Arm) -> Path:
    """Coadds of ``blue`` and ``red`` pixels (DR7: 16 bytes each) over the real ranges, gzip'd;
    ``red`` None takes ``red_arm``."""
    arms = [_dense_arm("COADD_B", (4900.0, 5400.0), blue)]
    arms.append(red_arm if red is None else _dense_arm("COADD_R", (6300.0, 6850.0), red))
    path.write_bytes(encode_mrs(header, arms, compresslevel=1))
    return path


def huge_coadd_header(path: Path, header: dict, arms: list[Arm]) -> Path:
    """A file whose COADD_B header declares 1 GB of rows that are not there."""
    raw = bytearray(encode_mrs(header, arms, compresslevel=None))
    card = raw.index(b"NAXIS2  =", 2880)
    raw[card : card + 80] = f"NAXIS2  = {2**30 // 16:>20}".ljust(80).encode()
    path.write_bytes(gzip.compress(bytes(raw), 1))
    return path


def statuses(path: Path) -> Counter:
    from astropy.io import fits

    return Counter(str(s).strip() or "ok" for s in fits.getdata(path, 1)["status"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("published", "tiny"), default="published")
    parser.add_argument("--good", type=int, default=60)
    parser.add_argument("--bombs", type=int, default=4)
    parser.add_argument("--near", type=int, default=2)
    parser.add_argument("--no-rv", action="store_true", help="no RV catalogue: CCF RVs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ens = published_size_ensemble() if args.model == "published" else tiny_ensemble()
        ens.save(tmp / "model")
        good = [p for p in sorted(SHARED.glob("med-*")) if "58268" not in p.name]
        mrs = read_mrs(good[0], ["COADD_B", "COADD_R"])
        coadds = list(mrs.arms.values())
        sources = {
            "bomb": write_bomb(tmp / "bomb.fits.gz", mrs.header, coadds, 1200 * 2**20),
            "huge": huge_coadd_header(tmp / "huge.fits.gz", mrs.header, coadds),
            "near": dense_file(tmp / "near.fits.gz", mrs.header, MAX_PIXELS, MAX_PIXELS, None),
            "dense": dense_file(tmp / "dense.fits.gz", mrs.header, 15 * 2**20, None, coadds[1]),
        }
        for i, path in enumerate(good):
            m = read_mrs(path, ["COADD_B", "COADD_R"])
            sources[f"good{i}"] = write_mrs(tmp / f"good{i}.fits.gz", m.header, m.arms.values())
        inputs = tmp / "in"
        inputs.mkdir()
        names = [f"good{i % len(good)}" for i in range(args.good)]
        names += ["bomb"] * args.bombs + ["huge"] * args.bombs + ["near", "dense"] * args.near
        # Bombs spread among the good files, so that they meet the worker mid-run.
        order = np.random.default_rng(0).permutation(len(names))
        for k, j in enumerate(order):
            (inputs / f"med-{k:05d}-{names[j]}.fits.gz").symlink_to(sources[names[j]])
        cmd = [sys.executable, "-c", "from lamost_rrnet.cli.app import main; main()",
               "predict", str(inputs), "-o", str(tmp / "cat.fits"), "--model", str(tmp / "model"),
               "--quiet"]  # fmt: skip
        if not args.no_rv:
            catalogue = tmp / "rv.csv"
            catalogue.write_text(
                "filename,rv\n" + "".join(f"{p.name},10\n" for p in sorted(inputs.iterdir()))
            )
            cmd += ["--catalogue", str(catalogue)]
        peak, seconds, _ = run(cmd)
        print(
            f"date {date.today()}  machine {platform.machine()}, {os.cpu_count()} cores  "
            f"model {args.model}  RVs {'CCF' if args.no_rv else 'catalogue'}"
        )
        sizes = {k: f"{sources[k].stat().st_size / 2**20:.1f} MB" for k in sources if k[0] != "g"}
        print(f"inputs: {args.good} good, {args.bombs} bombs, {args.bombs} huge, {args.near} near, "
              f"{args.near} dense files; on disk {sizes}")  # fmt: skip
        print(f"peak RSS {peak / 2**20:.0f} MiB (main + workers), {seconds:.0f} s")
        print(f"row statuses: {dict(statuses(tmp / 'cat.fits'))}")


if __name__ == "__main__":
    main()
