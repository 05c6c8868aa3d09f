"""Kill-and-resume soak: ``prepare`` and ``predict`` killed with SIGKILL at random moments.

On a simulated set (``lamost-rrnet simulate``), through the command line in subprocesses:

1. ``crossmatch`` the set, then an uninterrupted ``prepare`` (the reference dataset), a tiny
   ``train`` on it (the model ``predict`` uses: no network), and an uninterrupted ``predict``
   (the reference catalogue). Each reference run is timed: T.
2. For each command, attempts until ``--kills`` SIGKILLs have landed: an attempt starts the
   command (``--resume``, or ``--overwrite`` to begin a new build) and sends SIGKILL after a
   delay drawn uniformly from [0, T]. An attempt that ends before its kill has finished the
   output: it is compared with the reference and the next attempt begins a new build. After the
   last kill, one more ``--resume`` finishes, and is compared.
3. Comparison: ``prepare``, every array of the dataset (flux, labels, label errors, every meta
   column, split included) identical, and the rejects table the same set of rows;
   ``predict``, the same rows (no key missing or repeated) and every value identical.
4. After each kill, the killed command's child processes (workers) must end too: those alive
   10 s later are counted (and killed). Linux (/proc).

Usage: python benchmarks/soak_kill_resume.py [--stars 150] [--kills 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

CLI = [sys.executable, "-c", "from lamost_rrnet.cli.app import main; main()"]


def run(args: list[str], check: bool = True) -> float:
    start = time.perf_counter()
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        sys.exit(f"{' '.join(args[:1])} failed ({proc.returncode}):\n{proc.stderr}")
    return time.perf_counter() - start


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: [state, ppid, ...]; None once it has gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[1] == str(pid):
            kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def attempt(args: list[str], delay: float) -> tuple[bool, int]:
    """Run the command, SIGKILL it after ``delay`` s: (whether the kill landed, how many of its
    child processes outlived it by 10 s; those are then killed too)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=err)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            kids = _children(proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            deadline = time.monotonic() + 10
            while any(_alive(k) for k in kids) and time.monotonic() < deadline:
                time.sleep(0.05)
            left = [k for k in kids if _alive(k)]
            for pid in left:
                os.kill(pid, signal.SIGKILL)
            return True, len(left)
        if proc.returncode != 0:
            err.seek(0)
            sys.exit(f"{args[0]} failed ({proc.returncode}):\n{err.read().decode()}")
    return False, 0


def compare_datasets(a: Path, b: Path) -> int:
    from lamost_rrnet.dataset import open_dataset

    with open_dataset(a) as x, open_dataset(b) as y:
        assert x.n == y.n, (x.n, y.n)
        assert x.meta_columns == y.meta_columns
        rows = np.arange(x.n)
        assert np.array_equal(x.flux(rows), y.flux(rows))
        assert np.array_equal(x.labels(), y.labels(), equal_nan=True)
        assert np.array_equal(x.label_errors(), y.label_errors(), equal_nan=True)
        for column in x.meta_columns:
            assert np.array_equal(x.meta(column), y.meta(column)), column
        n = x.n
    rejects = [p.with_name(f"{p.stem}_rejects.csv") for p in (a, b)]
    sets = []
    for path in rejects:
        with open(path, newline="") as f:
            sets.append(sorted(tuple(r) for r in csv.reader(f)))
    assert sets[0] == sets[1], "rejects differ"
    return n + len(sets[0]) - 1


def compare_catalogues(a: Path, b: Path) -> int:
    from astropy.table import Table
    from astropy.units import UnitsWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnitsWarning)  # 'dex' is not a FITS unit
        x, y = Table.read(a), Table.read(b)
    assert x.colnames == y.colnames
    key = ["filename", "extname_blue", "extname_red"]
    for t in (x, y):
        keys = list(zip(*(t[k] for k in key), strict=True))
        assert len(set(keys)) == len(keys), "a row is repeated"
        t.sort(key)
    assert len(x) == len(y), (len(x), len(y))
    for name in x.colnames:
        u, v = np.asarray(x[name]), np.asarray(y[name])
        same = np.array_equal(u, v, equal_nan=True) if u.dtype.kind == "f" else (u == v).all()
        assert same, name
    return len(x)


def soak(
    name: str,
    args: list[str],
    output: Path,
    reference: Path,
    seconds: float,
    kills: int,
    rng: random.Random,
    compare,
    moment,
) -> dict:
    landed = builds = compared = orphans = 0
    delays = []
    moments: Counter[str] = Counter()
    new_build = True
    while landed < kills:
        delay = rng.uniform(0, seconds)
        flag = "--overwrite" if new_build else "--resume"
        killed, left = attempt([*args, flag], delay)
        orphans += left
        if killed:
            landed += 1
            delays.append(delay)
            moments[moment(output)] += 1
            new_build = False
        else:
            builds += 1
            compared += compare(output, reference)
            new_build = True
    run([*args, "--resume"])
    builds += 1
    compared += compare(output, reference)
    print(
        f"{name}: {landed} SIGKILLs (delays {min(delays):.2f}-{max(delays):.2f} s, reference run "
        f"{seconds:.1f} s), {landed + builds} runs in all, {builds} finished outputs each "
        f"identical to the uninterrupted run ({compared} rows compared)",
        flush=True,
    )
    print(f"  killed: {', '.join(f'{k}: {v}' for k, v in sorted(moments.items()))}", flush=True)
    print(f"  child processes alive 10 s after their parent's SIGKILL: {orphans}", flush=True)
    return {"kills": landed, "builds": builds, "rows": compared, "orphans": orphans}


def prepare_moment(output: Path) -> str:
    """What a killed ``prepare`` left: how far its build had gone."""
    from lamost_rrnet.dataset import work_dir_for

    work = work_dir_for(output)
    if not work.exists():
        return "before its work directory (or after the build)"
    if (work / "finished").exists() or (work / "assembled.h5").exists():
        return "assembled, before the move or the clean-up"
    if list(work.glob(".assembled.h5.*.part")):
        return "during the assembly"
    parts = len(list(work.glob("part-*.npz")))
    return "with parts committed" if parts else "before the first part"


def predict_moment(output: Path) -> str:
    """What a killed ``predict`` left: how far its journal had gone."""
    from lamost_rrnet.catalogue import journal_dir

    journal = journal_dir(output)
    if not journal.exists():
        return "before its journal (or after the run)"
    chunks = len(list(journal.glob("chunk-*")))
    return "with journal chunks" if chunks else "before the first journal chunk"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stars", type=int, default=150)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    opts = parser.parse_args()
    rng = random.Random(opts.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sim, ref = root / "sim", root / "ref.fits"
        run(["simulate", str(sim), "--stars", str(opts.stars), "--visits", "1-3", "--quiet"])
        n_files = len(list((sim / "spectra").iterdir()))
        run(
            ["crossmatch", str(sim / "lamost_catalogue.csv"), "--labels-file"]
            + [str(sim / "labels.csv"), "-o", str(ref), "--quiet"]
        )
        prep = ["prepare", str(ref), "--spectra-root", str(sim / "spectra")]
        prep += ["--workers", str(opts.workers), "--quiet"]
        fresh = root / "fresh.h5"
        t_prepare = run([*prep, "-o", str(fresh)])
        model = root / "model"
        run(
            ["train", str(fresh), "-o", str(model), "--members", "1", "--epochs", "1"]
            + ["--nr", "2,2,3", "--ns", "30", "--batch-size", "8", "--quiet"]
        )
        pred = ["predict", str(sim / "spectra"), "--model", str(model)]
        pred += ["--catalogue", str(sim / "lamost_catalogue.csv")]
        pred += ["--workers", str(opts.workers), "--batch-size", "16", "--quiet"]
        fresh_cat = root / "fresh.fits"
        t_predict = run([*pred, "-o", str(fresh_cat)])
        print(f"{n_files} simulated files; workers {opts.workers}; seed {opts.seed}", flush=True)
        soak(
            "prepare",
            [*prep, "-o", str(root / "soak.h5")],
            root / "soak.h5",
            fresh,
            t_prepare,
            opts.kills,
            rng,
            compare_datasets,
            prepare_moment,
        )
        soak(
            "predict",
            [*pred, "-o", str(root / "soak.fits")],
            root / "soak.fits",
            fresh_cat,
            t_predict,
            opts.kills,
            rng,
            compare_catalogues,
            predict_moment,
        )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
