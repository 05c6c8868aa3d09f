"""Wall time of ``lamost-rrnet predict`` on one file: what a reduction chain that calls it per
file pays each time (interpreter, imports, model loading, one spectrum with its RV from a
catalogue, the FITS catalogue).

Compares source trees back to back on the same machine, runs alternating, so a change of load
hits both: ``python benchmarks/bench_startup.py [--runs 10] [--src OLD/src] [--src NEW/src]``
(default: this checkout's src). A 12-member published-size model directory is saved once.
Needs ../shared/data/lamost_mrs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_predict import published_size_ensemble  # this script's directory

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lamost_mrs"
CODE = "import sys; from lamost_rrnet.cli.app import main; main(sys.argv[1:])"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--src", action="append", default=None, help="a source tree's src/")
    args = parser.parse_args()
    trees = args.src or [str(Path(__file__).resolve().parents[1] / "src")]
    spectrum = next(p for p in sorted(SHARED.glob("med-*.fits*")) if "58268" not in p.name)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        published_size_ensemble().save(model)
        catalogue = Path(tmp) / "rv.csv"  # a reduction chain knows the RV
        catalogue.write_text(f"filename,rv\n{spectrum.name},10.0\n")
        times: dict[str, list[float]] = {tree: [] for tree in trees}
        for _ in range(args.runs):
            for tree in trees:
                env = dict(os.environ, PYTHONPATH=tree)
                command = [sys.executable, "-c", CODE, "predict", str(spectrum), "--model"]
                command += [str(model), "--catalogue", str(catalogue)]
                command += ["-o", str(Path(tmp) / "one.fits"), "--overwrite"]
                t0 = time.perf_counter()
                done = subprocess.run([*command, "--quiet"], env=env, capture_output=True)
                times[tree].append(time.perf_counter() - t0)
                if done.returncode:
                    sys.exit(f"{tree}: {done.stderr.decode()}")
    print(f"one-file predict, {args.runs} runs each, alternating; load {os.getloadavg()[0]:.1f}")
    for tree, runs in times.items():
        print(
            f"{tree}: median {statistics.median(runs):.2f} s, "
            f"min {min(runs):.2f} s, max {max(runs):.2f} s"
        )


if __name__ == "__main__":
    main()
