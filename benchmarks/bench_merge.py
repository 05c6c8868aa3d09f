"""Time and peak memory of ``merge``: the shards of a large run into one catalogue.

Writes N synthetic catalogue rows (the 17 published labels; LAMOST-like paths, about 1% failed
rows with NaN labels) as P Parquet parts, each the shard of a P-shard run, with the library's
own writer, then merges them with :func:`~lamost_rrnet.merge.merge_catalogues` (``shards=P``)
into Parquet and into FITS, each in a fresh process. For each output it reports the wall
time, the process's peak resident memory (``ru_maxrss``) above its memory after the imports
(merge starts no child processes: their peak is printed to show it), and the output's size,
and checks the row count and that the first and last batches are bit for bit the parts'.

Run: ``python benchmarks/bench_merge.py [--rows 10000000] [--parts 16] [--dir DIR]``. Linux
(ru_maxrss in KiB). The parts and outputs need about 0.5 KB a row of disk.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lamost_rrnet.catalogue import CatalogueSchema, FlagRule, shard_header, write_catalogue
from lamost_rrnet.labels import CATALOGUE_LABELS

SCHEMA = CatalogueSchema.for_labels(CATALOGUE_LABELS)
BATCH = 131072
HEADER = {
    "MODEL": ("rrnet2022", "lamost-rrnet model name"),
    "MODELVER": ("1.0", "model version"),
    "SIGMA": ("raw", "_err: calibrated, or raw ensemble sigma"),
    "RRNETVER": ("0.1.0", "lamost-rrnet version"),
    "PREPROC": ("rrnet2022", "preprocessing spec"),
    "EXPOSURE": (False, "T: one row per exposure; F: coadds"),
    "DATE": ("2026-01-01T00:00:00", "UTC creation time"),
    **FlagRule().header(),
}


def _text(ids: np.ndarray, width: int) -> pa.Array:
    return pc.utf8_lpad(pc.cast(pa.array(ids), pa.string()), width, "0")


def rows(start: int, n: int, seed: int) -> pa.Table:
    """Rows ``start`` .. ``start + n - 1``, made with array operations only."""
    rng = np.random.default_rng(seed)
    ids = np.arange(start, start + n)
    failed = rng.random(n) < 0.01
    filename = pc.binary_join_element_wise(
        "med-", _text(58000 + ids % 997, 5), "-sp", _text(ids, 8), ".fits.gz", ""
    )
    columns: dict[str, pa.Array] = {
        "obsid": pa.array(ids),
        "filename": filename,
        "ra": pa.array(rng.uniform(0, 360, n)),
        "dec": pa.array(rng.uniform(-10, 90, n)),
        "extname_blue": pa.repeat(pa.scalar("COADD_B"), n),
        "extname_red": pa.repeat(pa.scalar("COADD_R"), n),
        "snr_blue": pa.array(rng.uniform(0, 200, n).astype(np.float32)),
        "snr_red": pa.array(rng.uniform(0, 300, n).astype(np.float32)),
        "flag": pa.array(np.where(failed, 0, rng.integers(0, 2, n)).astype(np.int16)),
        "rv": pa.array(rng.normal(0, 50, n)),
        "rv_source": pc.if_else(pa.array(ids % 3 == 0), "catalogue", "ccf"),
        "status": pc.if_else(pa.array(failed), "unreadable", ""),
        "model": pa.repeat(pa.scalar("rrnet2022@1.0"), n),
        "path": pc.binary_join_element_wise(
            "/data/lamost/dr9", _text(ids // 1000, 5), filename, "/"
        ),
    }
    for label in SCHEMA.labels:
        values = rng.normal(0, 1, n).astype(np.float32)
        values[failed] = np.nan
        columns[label] = pa.array(values)
        columns[f"{label}_err"] = pa.array(np.where(failed, np.nan, np.abs(values) / 10))
    return pa.Table.from_arrays(
        [columns[f.name].cast(f.type) for f in SCHEMA.arrow], schema=SCHEMA.arrow
    )


def write_parts(directory: Path, n_rows: int, n_parts: int) -> list[Path]:
    paths = []
    bounds = np.linspace(0, n_rows, n_parts + 1).astype(np.int64)
    for k in range(n_parts):
        start, stop = int(bounds[k]), int(bounds[k + 1])

        def batches(start: int = start, stop: int = stop, k: int = k) -> Iterator[pa.Table]:
            for first in range(start, stop, BATCH):
                yield rows(first, min(BATCH, stop - first), seed=first)

        path = directory / f"dr9-{k}.parquet"
        header = {**HEADER, **shard_header(k, n_parts)}
        write_catalogue(path, SCHEMA, batches(), stop - start, {}, header)
        paths.append(path)
    return paths


def _rss_kib(who: int = resource.RUSAGE_SELF) -> int:
    return resource.getrusage(who).ru_maxrss


def _bits(table: pa.Table) -> list[list]:
    """Each column's values as bits (numbers) or text: equal only for an exact copy."""
    out = []
    for field in table.schema:
        values = table[field.name].to_numpy()
        if field.type != pa.string():
            values = values.view(f"u{values.dtype.itemsize}")
        out.append(values.tolist())
    return out


def measure(parts: str, output: str, shards: int) -> dict:
    from lamost_rrnet.catalogue import catalogue_info, read_batches
    from lamost_rrnet.merge import merge_catalogues

    before = _rss_kib()  # the peak so far: after the imports, before the work
    started = time.perf_counter()
    summary = merge_catalogues(parts, output, shards=shards)
    seconds = time.perf_counter() - started
    peak, children = _rss_kib(), _rss_kib(resource.RUSAGE_CHILDREN)
    # The first batch of the first part and the last of the last part, bit for bit; the
    # output is streamed, keeping its first and last two batches only.
    names = sorted(Path(parts).glob("*.parquet"))
    first = next(read_batches(names[0], SCHEMA))
    last = deque(read_batches(names[-1], SCHEMA), maxlen=1).pop()
    merged = read_batches(output, SCHEMA)
    head = next(merged).slice(0, first.num_rows)
    tail = pa.concat_tables(deque(merged, maxlen=2))
    tail = tail.slice(tail.num_rows - last.num_rows)
    exact = _bits(head) == _bits(first) and _bits(tail) == _bits(last)
    return {
        "rows": summary.rows,
        "rows_in_output": catalogue_info(output).n_rows,
        "exact": exact,
        "seconds": seconds,
        "rss_before_mib": before / 1024,
        "peak_mib": peak / 1024,
        "children_peak_mib": children / 1024,
        "output_mib": Path(output).stat().st_size / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows in all")
    parser.add_argument("--parts", type=int, default=16, help="parts (shards of the run)")
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        parts, output, shards = args.child
        print(json.dumps(measure(parts, output, int(shards))))
        return
    print(f"{date.today()} {platform.machine()} Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        parts_dir = Path(scratch) / "parts"
        parts_dir.mkdir()
        started = time.perf_counter()
        paths = write_parts(parts_dir, args.rows, args.parts)
        size = sum(p.stat().st_size for p in paths) / 2**20
        print(
            f"{args.rows:,} rows in {args.parts} Parquet parts ({size:,.0f} MiB) written in "
            f"{time.perf_counter() - started:.0f} s"
        )
        for suffix in (".parquet", ".fits"):
            output = str(Path(scratch) / f"merged{suffix}")
            command = [sys.executable, __file__, "--child", str(parts_dir), output, str(args.parts)]
            result = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
            assert result["rows"] == args.rows == result["rows_in_output"], result
            assert result["exact"], result
            above = result["peak_mib"] - result["rss_before_mib"]
            print(
                f"merge to {suffix[1:]}: {result['seconds']:.0f} s "
                f"({args.rows / result['seconds']:,.0f} rows/s); peak RSS "
                f"{result['peak_mib']:,.0f} MiB, {above:,.0f} MiB above the "
                f"{result['rss_before_mib']:.0f} MiB after imports; children "
                f"{result['children_peak_mib']:.0f} MiB; output {result['output_mib']:,.0f} MiB"
            )
            Path(output).unlink()


if __name__ == "__main__":
    main()
