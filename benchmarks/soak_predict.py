"""Kill-and-resume soak of ``lamost-rrnet predict``: SIGKILL at random moments, resume each time.

Writes a small simulated set and ``--n`` inputs (symbolic links to its files, in subdirectories,
so that base names repeat), saves a tiny model, and makes a reference catalogue in one
uninterrupted run. Then builds the same catalogue the hard way, in two phases:

1. a new output from the first half of the inputs, killed ``--kills`` times;
2. ``--resume`` on that finished output with all the inputs, killed ``--kills`` times (early
   kills land while the finished output's rows are copied into the journal, late ones in the
   assembly).

Each kill sends SIGKILL to the whole process group (main process and workers) at a moment drawn
uniformly over ``--window`` times the reference run's wall time (start-up, the copy, the
predictions, the assembly); after each, the command is run again with ``--resume``, until
``--kills`` kills have landed or a run ends by itself before its kill. The final catalogue
must hold exactly the reference's rows: the same (path, extname_blue, extname_red) keys, none
missing, none twice, every column equal (floats to 1e-5: a resumed run batches spectra
differently). It reports, for each kill, what it left (a journal, a finished output, scratch
files), and the result.

Run: ``python benchmarks/soak_predict.py [--n 400] [--kills 10] [--window 0.3] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np

from bench_predict_memory import tiny_ensemble  # this script's directory


def make_inputs(root: Path, n: int) -> Path:
    from lamost_rrnet.simulate import simulate_set

    simulate_set(root / "sim", n_stars=12, visits=2, seed=3, n_exposures=1)
    sources = sorted((root / "sim" / "spectra").glob("*.fits.gz"))
    inputs = root / "in"
    for i in range(n):
        target = inputs / f"d{i % 7}" / sources[i % len(sources)].name
        target = target.with_name(f"{i:05d}-{target.name}") if i >= 7 * len(sources) else target
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(sources[i % len(sources)])
    (inputs / "d0" / "broken.fits").write_bytes(b"SIMPLE  = not really")
    return inputs


def predict(args: list[str]) -> subprocess.Popen:
    code = "from lamost_rrnet.cli.app import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "predict", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the kill takes the workers too
    )


def finish(args: list[str]) -> float:
    started = time.perf_counter()
    proc = predict(args)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"predict failed ({proc.returncode}): {err.decode()}")
    return time.perf_counter() - started


def state(out: Path) -> str:
    parts = []
    if Path(f"{out}.journal").exists():
        parts.append("journal")
    if out.exists():
        parts.append("output")
    scratch = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    scratch = [p for p in scratch if p.name.endswith(".part")]
    if scratch:
        parts.append(f"{len(scratch)} scratch")
    return "+".join(parts) or "nothing"


def soak(args: list[str], out: Path, kills: int, window: float, rng) -> list[str]:
    """Kill a resumed run until ``kills`` kills landed or it finished; what each kill left."""
    seen: list[str] = []
    while len(seen) < kills:
        proc = predict([*args, "--resume"])
        moment = rng.uniform(0, window)
        time.sleep(moment)
        if proc.poll() is not None:
            proc.communicate()
            seen.append(f"finished before {moment:.1f} s")
            break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        seen.append(f"{moment:.1f} s: {state(out)}")
    finish([*args, "--resume"])
    return seen


def rows(path: Path) -> dict[tuple, dict]:
    import warnings

    from astropy.table import Table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = Table.read(path, character_as_bytes=False)
    keys = [(r["path"], r["extname_blue"], r["extname_red"]) for r in table]
    counts = Counter(keys)
    twice = [k for k, c in counts.items() if c > 1]
    if twice:
        raise SystemExit(f"{path}: {len(twice)} keys written more than once, e.g. {twice[0]}")
    return {k: dict(zip(table.colnames, r, strict=True)) for k, r in zip(keys, table, strict=True)}


def compare(reference: Path, soaked: Path) -> str:
    want, got = rows(reference), rows(soaked)
    missing, extra = set(want) - set(got), set(got) - set(want)
    if missing or extra:
        return f"FAIL: {len(missing)} rows missing, {len(extra)} extra"
    worst = 0.0
    for key, row in want.items():
        for name, value in row.items():
            other = got[key][name]
            if isinstance(value, (float, np.floating)):
                if np.isnan(value) != np.isnan(other):
                    return f"FAIL: {key} {name}: {value} against {other}"
                if not np.isnan(value):
                    worst = max(worst, abs(value - other) / max(abs(value), 1e-30))
            elif value != other:
                return f"FAIL: {key} {name}: {value!r} against {other!r}"
    verdict = "same rows" if worst <= 1e-5 else "FAIL: floats differ"
    return f"{verdict}: {len(want)} rows, none missing or twice, floats within {worst:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="inputs")
    parser.add_argument("--kills", type=int, default=10, help="kills in each of the two phases")
    parser.add_argument("--window", type=float, default=0.3, help="x the reference wall time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", default="fits", choices=("fits", "parquet"))
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    python = sys.version.split()[0]
    print(f"{date.today()} {platform.machine()}, {os.cpu_count()} cores, Python {python}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = make_inputs(root, args.n)
        tiny_ensemble().save(root / "model")
        common = ["--model", str(root / "model"), "--batch-size", "16", "--workers", "1"]
        common += ["--quiet"]
        dirs = sorted(str(d) for d in inputs.iterdir())
        reference = root / f"reference.{args.format}"
        wall = finish([*dirs, "-o", str(reference), *common])
        print(
            f"{args.n + 1} inputs; reference run {wall:.1f} s; "
            f"kills drawn over {args.window * wall:.1f} s"
        )
        out = root / f"soaked.{args.format}"
        window = args.window * wall
        first = soak([*dirs[:4], "-o", str(out), *common], out, args.kills, window, rng)
        print(f"phase 1 (new output, 4 of 7 directories), each kill and what it left: {first}")
        second = soak([*dirs, "-o", str(out), *common], out, args.kills, window, rng)
        print(f"phase 2 (--resume on the finished output, all inputs): {second}")
        print(compare(reference, out))


if __name__ == "__main__":
    main()
