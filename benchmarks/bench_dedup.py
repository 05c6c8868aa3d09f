"""Memory of taking each input once: ``predict``'s input selection over a long ``--list``.

Writes a list of N paths (every tenth one a repeat of an earlier line), then, in a fresh
process, streams it through exactly what ``predict`` does before any file is opened:
``iter_input_paths`` reads the list as bytes, and ``select_inputs`` hashes each path's
identity and keeps the first of repeats in a :class:`~lamost_rrnet.identity.HashSet`. It reports
the peak resident memory above the process's memory after its imports (from
``ru_maxrss``), the bytes per path that gives, the set's own bytes, and the time. With
``--python-set`` the same paths go into a Python set of their identities (bytes) instead, for
comparison.

Run: ``python benchmarks/bench_dedup.py [--n 10000000] [--python-set]``. Linux (ru_maxrss in KiB).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date


def write_list(path: str, n: int) -> int:
    """N lines: LAMOST-like paths, every tenth a repeat of an earlier one; the unique count."""
    unique = 0
    with open(path, "w") as fh:
        for i in range(n):
            if i % 10 == 9:
                j = (i * 7919) % i  # an earlier line
                j -= j % 10 == 9
            else:
                j = i
                unique += 1
            fh.write(f"/data/lamost/dr9/{j // 1000:05d}/med-{58000 + j % 997}-sp{j:08d}.fits.gz\n")
    return unique


def rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(list_path: str, python_set: bool) -> dict:
    import numpy as np

    from lamost_rrnet.identity import HashSet, input_identity
    from lamost_rrnet.inputs import iter_input_paths, select_inputs

    # ru_maxrss is the peak so far: read it after the imports, before the work.
    before = rss_kib()
    started = time.perf_counter()
    paths = iter_input_paths(list_file=list_path)
    taken = repeated = 0
    if python_set:
        seen: set[bytes] = set()
        for path in paths:
            identity = input_identity(path)
            if identity in seen:
                repeated += 1
            else:
                seen.add(identity)
                taken += 1
        set_bytes = None
    else:
        hash_set, done = HashSet(), np.empty(0, np.uint64)
        while block := list(itertools.islice(paths, 1024)):
            selected = select_inputs(block, hash_set, done)
            taken += int(selected.take.sum())
            repeated += int(selected.repeated.sum())
        set_bytes = hash_set.nbytes
    seconds = time.perf_counter() - started
    peak = rss_kib()
    return {
        "taken": taken,
        "repeated": repeated,
        "rss_before_mib": before / 1024,
        "peak_above_mib": (peak - before) / 1024,
        "set_mib": None if set_bytes is None else set_bytes / 2**20,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="listed paths")
    parser.add_argument("--python-set", action="store_true", help="a Python set, to compare")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.python_set)))
        return
    print(f"{date.today()} {platform.machine()} Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as scratch:
        listing = os.path.join(scratch, "list.txt")
        unique = write_list(listing, args.n)
        size = os.path.getsize(listing)
        print(f"{args.n:,} listed paths ({unique:,} unique), list file {size / 2**20:.0f} MiB")
        command = [sys.executable, __file__, "--child", listing]
        if args.python_set:
            command.append("--python-set")
        result = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
    assert result["taken"] == unique, result
    kind = "Python set of identities" if args.python_set else "HashSet (sorted uint64 runs)"
    per_path = result["peak_above_mib"] * 2**20 / args.n
    print(
        f"{kind}: peak RSS {result['peak_above_mib']:.0f} MiB above the "
        f"{result['rss_before_mib']:.0f} MiB after imports = {per_path:.1f} bytes per listed path"
    )
    if result["set_mib"] is not None:
        per_unique = result["set_mib"] * 2**20 / unique
        print(
            f"the set itself: {result['set_mib']:.0f} MiB ({per_unique:.1f} bytes per unique path)"
        )
    print(f"{result['taken']:,} taken, {result['repeated']:,} repeats skipped, "
          f"{result['seconds']:.1f} s ({args.n / result['seconds']:,.0f} paths/s)")  # fmt: skip


if __name__ == "__main__":
    main()
